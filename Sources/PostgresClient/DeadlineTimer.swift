import Foundation

/// One thread that ends the waits of every `DatabaseDeadline`. A wait registers what to do at its
/// deadline (a lock and a heap push, no task, no system timer); a wait that ends first leaves its
/// entry behind, and the entry's action finds the wait resumed already and does nothing. The
/// thread sleeps until the earliest deadline plus `slack`, then fires everything due, so under
/// load it wakes at most once per `slack` however many requests are in flight.
final class DeadlineTimer: @unchecked Sendable {
    static let shared = DeadlineTimer(slack: .milliseconds(10))

    private struct Entry {
        let due: ContinuousClock.Instant
        let fire: @Sendable () -> Void
    }

    private let condition = NSCondition()
    private var heap: [Entry] = []
    private let slack: Duration

    private init(slack: Duration) {
        self.slack = slack
        let thread = Thread { [self] in loop() }
        thread.name = "eventline-deadlines"
        thread.stackSize = 1 << 18
        thread.start()
    }

    /// Runs `fire` on the timer's thread at `due` (at most `slack` later).
    func schedule(at due: ContinuousClock.Instant, _ fire: @escaping @Sendable () -> Void) {
        condition.lock()
        let earliest = heap.first?.due
        push(Entry(due: due, fire: fire))
        // Only a deadline earlier than every other one changes how long the thread sleeps.
        if earliest.map({ due < $0 }) ?? true { condition.signal() }
        condition.unlock()
    }

    private func loop() {
        while true {
            condition.lock()
            while heap.isEmpty { condition.wait() }
            let wake = heap[0].due + slack
            let left = ContinuousClock.now.duration(to: wake)
            if left > .zero {
                _ = condition.wait(until: Date(timeIntervalSinceNow: left.seconds))
            }
            var due: [Entry] = []
            let now = ContinuousClock.now
            while let first = heap.first, first.due <= now { due.append(pop()) }
            condition.unlock()
            for entry in due { entry.fire() }
        }
    }

    private func push(_ entry: Entry) {
        heap.append(entry)
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].due < heap[parent].due else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    private func pop() -> Entry {
        let top = heap[0]
        let last = heap.removeLast()
        guard !heap.isEmpty else { return top }
        heap[0] = last
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < heap.count, heap[left].due < heap[smallest].due { smallest = left }
            if right < heap.count, heap[right].due < heap[smallest].due { smallest = right }
            guard smallest != parent else { return top }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
    }
}

extension Duration {
    /// The duration in seconds, as a `TimeInterval`.
    fileprivate var seconds: TimeInterval {
        let (seconds, attoseconds) = components
        return TimeInterval(seconds) + TimeInterval(attoseconds) / 1e18
    }
}

import EventStore
import Synchronization
import Testing

/// Atomics cannot be captured by escaping closures; a class holding one can.
final class SignalCounter: Sendable {
    let count = Atomic<Int>(0)
}

@Suite("Change signals")
struct ChangeSignalTests {
    /// Runs `body` and reports whether it finished before `limit` (a hang, not a timing).
    static func finishes(within limit: Duration, _ body: @escaping @Sendable () async -> Void) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await body()
                return true
            }
            group.addTask {
                try? await Task.sleep(for: limit)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }

    @Test("a wait returns on a signal, at once for a generation already past, and when its task is cancelled at any moment")
    func waitsEnd() async {
        let signal = ChangeSignal()
        // A signal wakes a waiter.
        let before = signal.generation
        let woken = Task { await signal.wait(after: before, timeout: .seconds(3600)) }
        while true {
            signal.signal()
            if await Self.finishes(within: .milliseconds(50), { await woken.value }) { break }
        }
        // A generation already past returns at once.
        #expect(await Self.finishes(within: .seconds(60)) { await signal.wait(after: before, timeout: .seconds(3600)) })

        // Cancelled before, while or just after it begins: every one of these waits ends,
        // though nothing signals and the timeout is an hour away.
        let ended = SignalCounter()
        let allEnded = await Self.finishes(within: .seconds(60)) {
            await withTaskGroup(of: Void.self) { group in
                for index in 0..<500 {
                    let task = Task {
                        if index % 2 == 0 { withUnsafeCurrentTask { $0?.cancel() } }
                        await signal.wait(after: signal.generation, timeout: .seconds(3600))
                        ended.count.add(1, ordering: .relaxed)
                    }
                    if index % 2 == 1 { task.cancel() }
                    group.addTask { await task.value }
                }
            }
        }
        #expect(allEnded, "only \(ended.count.load(ordering: .relaxed)) of 500 cancelled waits ended")
    }
}

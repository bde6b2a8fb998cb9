import Foundation
import Synchronization

/// Something that changes (the log head, a projection's checkpoint), announced by NOTIFY, for
/// tasks to wait on without polling.
public final class ChangeSignal: Sendable {
    /// One wait: announced before its continuation exists, so that a timeout or a
    /// cancellation that comes first is not lost.
    private enum Waiter {
        case announced
        case waiting(CheckedContinuation<Void, Never>)
        /// Timed out or cancelled before it began to wait.
        case released
    }
    private struct State {
        var generation = 0
        var waiters: [UUID: Waiter] = [:]
    }
    private let state = Mutex(State())

    public init() {}

    /// Wakes every waiter.
    public func signal() {
        let waiting = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.generation += 1
            var waiting: [CheckedContinuation<Void, Never>] = []
            for (id, waiter) in state.waiters {
                // Waits not begun yet see the new generation when they begin.
                guard case .waiting(let continuation) = waiter else { continue }
                waiting.append(continuation)
                state.waiters[id] = nil
            }
            return waiting
        }
        for continuation in waiting { continuation.resume() }
    }

    /// Counts signals; read it before checking the state, then wait after it.
    public var generation: Int { state.withLock { $0.generation } }

    /// Returns when signalled after `generation`, after `timeout`, or when the task is cancelled.
    public func wait(after generation: Int, timeout: Duration) async {
        // Signalled already: no wait, and no timer.
        guard let id = announce(after: generation) else { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                try? await Task.sleep(for: timeout)
                self.release(id)
            }
            await park(id, after: generation)
            group.cancelAll()
        }
    }

    /// Returns when signalled after `generation`, or when the task is cancelled: a wait with no
    /// timer, for waiters that are woken often (the signaller guarantees a wake-up every so
    /// often, so none waits for long).
    public func wait(after generation: Int) async {
        guard let id = announce(after: generation) else { return }
        await withTaskCancellationHandler {
            await park(id, after: generation)
        } onCancel: {
            self.release(id)
        }
    }

    /// Registers a wait that has not begun; nil when signalled after `generation` already.
    private func announce(after generation: Int) -> UUID? {
        let id = UUID()
        return state.withLock { state -> UUID? in
            guard state.generation == generation else { return nil }
            state.waiters[id] = .announced
            return id
        }
    }

    /// Waits until the wait `id` is signalled or released, then forgets it.
    private func park(_ id: UUID, after generation: Int) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { state -> Bool in
                if state.generation != generation { return true }
                if case .released = state.waiters[id] { return true }
                state.waiters[id] = .waiting(continuation)
                return false
            }
            if ready { continuation.resume() }
        }
        state.withLock { $0.waiters[id] = nil }
    }

    /// Ends the wait `id` (timed out, or its task cancelled), whether or not it has begun.
    private func release(_ id: UUID) {
        let continuation = state.withLock { state -> CheckedContinuation<Void, Never>? in
            switch state.waiters[id] {
            case .waiting(let continuation)?:
                state.waiters[id] = .released
                return continuation
            case .announced?:
                state.waiters[id] = .released
                return nil
            case .released?, nil:
                return nil
            }
        }
        continuation?.resume()
    }
}

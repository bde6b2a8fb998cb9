import Synchronization

/// How long the current task (an HTTP request) may wait for the database in all. Every wait for
/// the database in this layer draws from one deadline: a pool's wait for a free connection, a
/// statement on a dedicated connection's thread, and (in the event store) an append waiting for
/// its group's commit. A step that has not answered by then is left to finish on its own thread,
/// and the caller gets `PostgresError.deadline` at once: the request answers within its budget
/// however many steps it takes, not in the sum of each step's own timeout.
///
/// The deadline is fixed when the first step asks for it (reading a request's body does not
/// count), and moved later by the waits a request makes on purpose (`excludingWait`: a read
/// that waits for a projection, a long poll).
///
/// ```swift
/// try await DatabaseDeadline.$current.withValue(DatabaseDeadline(budget: .seconds(2))) {
///     try await pool.withConnection { conn in try conn.query("SELECT 1") }
/// }
/// ```
public final class DatabaseDeadline: Sendable {
    /// The deadline of the current task, or nil for none (background work: projectors,
    /// reactors, the log writer's own session).
    @TaskLocal public static var current: DatabaseDeadline?

    /// The time the task's database work may take, waits on purpose aside.
    public let budget: Duration
    private let deadline = Mutex<ContinuousClock.Instant?>(nil)

    public init(budget: Duration) {
        self.budget = budget
    }

    /// The deadline, fixed at the first call.
    public func instant() -> ContinuousClock.Instant {
        deadline.withLock { deadline in
            if let deadline { return deadline }
            let fixed = ContinuousClock.now + budget
            deadline = fixed
            return fixed
        }
    }

    /// Runs `wait` (a wait the task makes on purpose, not for the database) and moves the
    /// current deadline later by the time it took.
    public static func excludingWait<T>(_ wait: () async throws -> T) async rethrows -> T {
        guard let current else { return try await wait() }
        let started = ContinuousClock.now
        defer {
            let waited = ContinuousClock.now - started
            current.deadline.withLock { deadline in deadline = deadline.map { $0 + waited } }
        }
        return try await wait()
    }

    /// The error of a wait that the deadline ended.
    public static func exceeded(_ what: String) -> PostgresError {
        var error = PostgresError(code: .deadline, message: "the request's deadline passed while waiting for \(what)")
        error.timedOut = true
        return error
    }

    /// Waits for the value that `start` produces (it must call the given `Completion` once,
    /// from any thread), or until the current deadline, whichever comes first; at the deadline
    /// `onDeadline` is thrown, and the value, when it comes, is dropped. Without a deadline it
    /// is a plain continuation.
    public static func wait<T: Sendable>(
        _ start: (Completion<T>) -> Void, onDeadline: @escaping @Sendable () -> any Error
    ) async throws -> T {
        guard let deadline = current?.instant() else {
            return try await withCheckedThrowingContinuation { continuation in
                start(Completion(continuation))
            }
        }
        guard deadline > .now else { throw onDeadline() }
        return try await withCheckedThrowingContinuation { continuation in
            let completion = Completion(continuation)
            // One shared thread ends waits at their deadlines (within 10 ms): a task and a timer
            // per wait cost more CPU than the request's own work.
            DeadlineTimer.shared.schedule(at: deadline) { completion.resume(with: .failure(onDeadline())) }
            start(completion)
        }
    }

    /// Resumes a waiting task once: the first result wins, later ones are dropped.
    public final class Completion<T: Sendable>: Sendable {
        private let continuation: Mutex<CheckedContinuation<T, any Error>?>

        init(_ continuation: CheckedContinuation<T, any Error>) {
            self.continuation = Mutex(continuation)
        }

        /// Resumes the waiter with `result`, unless it was resumed already.
        public func resume(with result: Result<T, any Error>) {
            let continuation = self.continuation.withLock { continuation in
                defer { continuation = nil }
                return continuation
            }
            continuation?.resume(with: result)
        }
    }
}

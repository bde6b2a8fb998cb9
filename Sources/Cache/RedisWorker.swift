import Foundation
import Logging
import Synchronization

/// One Redis connection with a thread of its own that runs submitted jobs in order. Socket
/// calls block, so they happen here, never on Swift's cooperative pool or an event loop.
///
/// The thread starts with the first job and the connection opens lazily. Before each job an
/// idle connection is checked (`isUsableWhenIdle`); one the server closed, or one a failed job
/// left broken, is replaced, so a restarted server costs no failed call. A command that was
/// written is never re-sent.
final class RedisWorker: @unchecked Sendable {
    private let condition = NSCondition()
    // Guarded by `condition`.
    private var jobs: [() -> Void] = []
    private var stopping = false
    private var started = false

    /// Jobs submitted and not yet finished, for picking the least busy worker.
    let pending = Atomic<Int>(0)

    private let configuration: RedisConfiguration
    private let name: String
    private let logger: Logger
    // Touched only on the worker thread.
    private var connection: RedisConnection?

    init(configuration: RedisConfiguration, name: String, logger: Logger) {
        self.configuration = configuration
        self.name = name
        self.logger = logger
    }

    /// Runs `body` with the live connection on this worker's thread.
    func run<T: Sendable>(_ body: @escaping @Sendable (RedisConnection) throws -> T) async throws -> T {
        try Task.checkCancellation()
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            pending.add(1, ordering: .relaxed)
            let accepted = submit { [self] in
                let result = Result { try self.withConnection(body) }
                self.pending.subtract(1, ordering: .relaxed)
                continuation.resume(with: result)
            }
            if !accepted {
                pending.subtract(1, ordering: .relaxed)
                continuation.resume(throwing: RedisError.closed)
            }
        }
    }

    /// Lets queued jobs finish, closes the connection, and ends the thread.
    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func submit(_ job: @escaping () -> Void) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !stopping else { return false }
        jobs.append(job)
        if !started {
            started = true
            let thread = Thread { [self] in self.loop() }
            thread.name = name
            thread.stackSize = 1 << 20
            thread.start()
        }
        condition.signal()
        return true
    }

    private func loop() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty && stopping {
                condition.unlock()
                connection?.close()
                connection = nil
                return
            }
            let batch = jobs
            jobs.removeAll(keepingCapacity: true)
            condition.unlock()
            for job in batch { job() }
        }
    }

    private func withConnection<T>(_ body: (RedisConnection) throws -> T) throws -> T {
        if let existing = connection, !existing.isUsableWhenIdle() {
            existing.close()
            connection = nil
            logger.debug("Redis connection found closed; reconnecting", metadata: ["redis.worker": "\(name)"])
        }
        let live: RedisConnection
        if let connection {
            live = connection
        } else {
            live = try RedisConnection(configuration)
            connection = live
        }
        defer {
            if !live.isOpen { connection = nil }
        }
        return try body(live)
    }
}

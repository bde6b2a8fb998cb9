import Foundation

/// A thread that runs submitted jobs in order. libpq calls block, so each connection gets one of
/// these: blocking never happens on Swift's cooperative pool or a NIO event loop.
final class BlockingWorker: @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [() -> Void] = []
    private var stopping = false
    static let nameKey = "eventline.worker"

    /// The name of the worker running the calling code, or nil on any other thread.
    static var currentName: String? { Thread.current.threadDictionary[nameKey] as? String }

    init(name: String) {
        let thread = Thread { [self] in
            Thread.current.threadDictionary[BlockingWorker.nameKey] = name
            self.loop()
        }
        thread.name = name
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Queues a job; returns false once the worker is stopping.
    func submit(_ job: @escaping () -> Void) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !stopping else { return false }
        jobs.append(job)
        condition.signal()
        return true
    }

    /// Lets queued jobs finish, then ends the thread.
    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func loop() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty && stopping {
                condition.unlock()
                return
            }
            let batch = jobs
            jobs.removeAll(keepingCapacity: true)
            condition.unlock()
            for job in batch { job() }
        }
    }
}

/// One PostgreSQL connection with a thread of its own. `run` executes a synchronous closure on
/// that thread. The connection opens on first use; a connection found broken (before or after a
/// job) is discarded and the next job opens a fresh one, so callers never see a stale session.
public final class DedicatedConnection: @unchecked Sendable {
    private let worker: BlockingWorker
    private let conninfo: String
    // Touched only on the worker thread.
    private var connection: PostgresConnection?
    private var onConnect: (@Sendable (PostgresConnection) throws -> Void)?
    private let answerTimeout: Duration?
    private let connectTimeout: Duration

    /// A connection to `conninfo` (opened lazily). `onConnect` runs after every (re)connect, for
    /// session settings such as LISTEN or `SET`. `answerTimeout` is each new session's
    /// `PostgresConnection.answerTimeout`.
    public init(
        conninfo: String, name: String = "eventline-pg", answerTimeout: Duration? = nil,
        connectTimeout: Duration = PostgresConnection.defaultConnectTimeout,
        onConnect: (@Sendable (PostgresConnection) throws -> Void)? = nil
    ) {
        self.conninfo = conninfo
        self.answerTimeout = answerTimeout
        self.connectTimeout = connectTimeout
        self.worker = BlockingWorker(name: name)
        self.onConnect = onConnect
    }

    deinit {
        worker.stop()
    }

    /// The name of the dedicated connection thread running the calling code, or nil when the
    /// caller is on any other thread (the cooperative pool, an event loop).
    public static var currentThreadName: String? { BlockingWorker.currentName }

    /// Runs `body` with the live connection on this connection's thread and returns its value.
    /// With a `DatabaseDeadline`, the caller stops waiting at the deadline (`.deadline`) while
    /// `body` goes on to its end on the thread; the connection's next job runs after it.
    public func run<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        try await DatabaseDeadline.wait({ (completion: DatabaseDeadline.Completion<T>) in
            let accepted = worker.submit { [self] in
                completion.resume(with: Result { try self.withConnectionOnThread(body) })
            }
            if !accepted {
                completion.resume(with: .failure(PostgresError(code: .poolClosed, message: "the connection was shut down")))
            }
        }, onDeadline: { DatabaseDeadline.exceeded("the database") })
    }

    /// Queues `job` to run on this connection's thread; returns false after `shutdown()`.
    /// Inside the job, use `withConnectionOnThread` to reach the connection.
    public func enqueue(_ job: @escaping @Sendable () -> Void) -> Bool {
        worker.submit(job)
    }

    /// Runs `body` with the live connection (opening or replacing it as needed). Call it only
    /// from a job running on this connection's thread (`enqueue`).
    public func withConnectionOnThread<T>(_ body: (PostgresConnection) throws -> T) throws -> T {
        let connection = try liveConnection()
        defer {
            if !connection.isOpen {
                self.connection = nil
            } else if connection.inTransaction {
                // A body that left a transaction open must not leak it to the next user.
                connection.rollbackQuietly()
            }
        }
        return try body(connection)
    }

    private func liveConnection() throws -> PostgresConnection {
        if let connection, connection.probeIdle() { return connection }
        connection?.close()
        connection = nil
        let fresh = try PostgresConnection(conninfo: conninfo, connectTimeout: connectTimeout)
        fresh.answerTimeout = answerTimeout
        try onConnect?(fresh)
        connection = fresh
        return fresh
    }

    /// Closes the connection and ends the thread after queued jobs finish.
    public func shutdown() {
        _ = worker.submit { [self] in
            self.connection?.close()
            self.connection = nil
        }
        worker.stop()
    }
}

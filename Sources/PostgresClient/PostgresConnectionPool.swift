import Foundation
import Synchronization

/// An async pool of PostgreSQL connections, each with its own thread.
///
/// ```swift
/// let pool = PostgresConnectionPool(.init(conninfo: "postgres://localhost/app", size: 8))
/// let head = try await pool.withConnection { conn in
///     try conn.query("SELECT position FROM eventline.log_head").first?.decode(0, as: Int.self)
/// }
/// ```
/// At most `size` connections are open; a caller that finds none free waits up to
/// `acquireTimeout` and then gets `PostgresError.poolTimeout`. Connections open lazily; a broken
/// one is discarded and replaced on its next use.
public final class PostgresConnectionPool: Sendable {
    /// Pool settings; every field has a default.
    public struct Configuration: Sendable {
        /// Any connection string libpq accepts.
        public var conninfo: String
        /// The most connections open at once.
        public var size: Int
        /// How long a caller waits for a free connection.
        public var acquireTimeout: Duration
        /// Thread name prefix, for debuggers and `top -H`.
        public var name: String
        /// With several hosts, each new connection tries them from a turning start, so that a
        /// pool on standbys spreads over all of them (libpq 15 always starts at the first).
        public var spreadOverHosts = false
        /// Session settings made on each new connection (for example `TimeZone: UTC`).
        public var sessionSettings: [String: String] = [:]
        /// How long a statement may wait for the server: past it the server cancels the
        /// statement (`statement_timeout`), and a server that does not answer at all has the
        /// connection closed (`PostgresConnection.answerTimeout`, half a second later). Nil: no limit.
        public var statementTimeout: Duration? = nil
        /// How long opening a connection may take.
        public var connectTimeout: Duration = PostgresConnection.defaultConnectTimeout

        public init(conninfo: String, size: Int = 10, acquireTimeout: Duration = .seconds(10), name: String = "eventline-pool") {
            self.conninfo = conninfo
            self.size = max(1, size)
            self.acquireTimeout = acquireTimeout
            self.name = name
        }
    }

    /// A point-in-time view of the pool, for metrics.
    public struct Statistics: Sendable, Equatable {
        public var size: Int
        public var open: Int
        public var idle: Int
        public var waiting: Int
    }

    private struct Waiter {
        var id: Int
        var continuation: CheckedContinuation<DedicatedConnection, any Error>
        var timer: Task<Void, Never>?
    }

    private struct State {
        var idle: [DedicatedConnection] = []
        var open = 0
        var waiters: [Waiter] = []
        var nextID = 0
        var closed = false
    }

    public let configuration: Configuration
    private let state = Mutex(State())

    public init(_ configuration: Configuration) {
        self.configuration = configuration
    }

    /// Runs `body` with a pooled connection on that connection's thread.
    public func withConnection<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        let connection = try await acquire()
        do {
            let value = try await connection.run(body)
            release(connection)
            return value
        } catch let error as PostgresError where error.code == .deadline {
            // The caller's deadline passed while `body` runs on the connection's thread: the
            // connection is busy until it ends, and goes back to the pool only then.
            Task.detached { [self] in
                await Self.finished(connection)
                release(connection)
            }
            throw error
        } catch {
            release(connection)
            throw error
        }
    }

    /// Returns once every job queued on `connection`'s thread so far has run.
    private static func finished(_ connection: DedicatedConnection) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            if !connection.enqueue({ continuation.resume() }) { continuation.resume() }
        }
    }

    /// Runs `body` in a transaction on a pooled connection: COMMIT when it returns, ROLLBACK when it throws.
    public func withTransaction<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        try await withConnection { conn in try conn.transaction(body) }
    }

    /// Current use of the pool.
    public var statistics: Statistics {
        state.withLock { state in
            Statistics(size: configuration.size, open: state.open, idle: state.idle.count, waiting: state.waiters.count)
        }
    }

    /// Fails waiting callers, closes idle connections, and closes the others as they come back.
    public func close() {
        let (idle, waiters) = state.withLock { state -> ([DedicatedConnection], [Waiter]) in
            state.closed = true
            defer { state.idle = []; state.waiters = [] }
            state.open -= state.idle.count
            return (state.idle, state.waiters)
        }
        for waiter in waiters {
            waiter.timer?.cancel()
            waiter.continuation.resume(throwing: PostgresError(code: .poolClosed, message: "the connection pool was closed"))
        }
        for connection in idle { connection.shutdown() }
    }

    private func acquire() async throws -> DedicatedConnection {
        let id = state.withLock { state -> Int in
            state.nextID += 1
            return state.nextID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<DedicatedConnection, any Error>) in
                enum Decision { case reuse(DedicatedConnection), create, closed, cancelled, wait }
                let cancelled = Task.isCancelled
                let decision = state.withLock { state -> Decision in
                    if state.closed { return .closed }
                    // A cancellation that came before this waiter existed would otherwise be lost.
                    if cancelled { return .cancelled }
                    if let connection = state.idle.popLast() { return .reuse(connection) }
                    if state.open < configuration.size {
                        state.open += 1
                        return .create
                    }
                    state.waiters.append(Waiter(id: id, continuation: continuation, timer: nil))
                    return .wait
                }
                switch decision {
                case .reuse(let connection):
                    continuation.resume(returning: connection)
                case .create:
                    let applicationName = configuration.name
                    var sessionSettings = configuration.sessionSettings
                    if let limit = configuration.statementTimeout {
                        sessionSettings["statement_timeout"] = "\(max(1, limit.milliseconds))"
                    }
                    let settings = sessionSettings
                    let conninfo = configuration.spreadOverHosts
                        ? (try? ConnectionInfo(configuration.conninfo))?.rotated(by: id) ?? configuration.conninfo : configuration.conninfo
                    continuation.resume(returning: DedicatedConnection(
                        conninfo: conninfo, name: "\(configuration.name)-\(id)",
                        answerTimeout: configuration.statementTimeout.map { $0 + .milliseconds(500) },
                        connectTimeout: configuration.connectTimeout
                    ) { conn in
                        // Named after the pool, so that its sessions can be told apart in pg_stat_activity.
                        try conn.execute("SELECT set_config('application_name', \(applicationName), false)")
                        for (name, value) in settings { try conn.execute("SELECT set_config(\(name), \(value), false)") }
                    })
                case .closed:
                    continuation.resume(throwing: PostgresError(code: .poolClosed, message: "the connection pool was closed"))
                case .cancelled:
                    continuation.resume(throwing: CancellationError())
                case .wait:
                    let timeout = configuration.acquireTimeout
                    // The request's deadline, when it comes first, ends the wait.
                    let deadline = DatabaseDeadline.current?.instant()
                    let timer = Task { [weak self] in
                        let limit = ContinuousClock.now + timeout
                        if let deadline, deadline < limit {
                            try? await Task.sleep(until: deadline)
                            guard !Task.isCancelled else { return }
                            self?.failWaiter(id, DatabaseDeadline.exceeded("a free database connection"))
                            return
                        }
                        try? await Task.sleep(until: limit)
                        guard !Task.isCancelled else { return }
                        self?.failWaiter(id, PostgresError(
                            code: .poolTimeout,
                            message: "no database connection became free within \(timeout) (pool size \(self?.configuration.size ?? 0))"))
                    }
                    state.withLock { state in
                        if let index = state.waiters.firstIndex(where: { $0.id == id }) {
                            state.waiters[index].timer = timer
                        } else {
                            timer.cancel()
                        }
                    }
                }
            }
        } onCancel: {
            failWaiter(id, CancellationError())
        }
    }

    private func failWaiter(_ id: Int, _ error: any Error) {
        let waiter = state.withLock { state -> Waiter? in
            guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return state.waiters.remove(at: index)
        }
        waiter?.timer?.cancel()
        waiter?.continuation.resume(throwing: error)
    }

    private func release(_ connection: DedicatedConnection) {
        enum Decision { case handTo(Waiter), keep, shutdown }
        let decision = state.withLock { state -> Decision in
            if state.closed {
                state.open -= 1
                return .shutdown
            }
            if !state.waiters.isEmpty { return .handTo(state.waiters.removeFirst()) }
            state.idle.append(connection)
            return .keep
        }
        switch decision {
        case .handTo(let waiter):
            waiter.timer?.cancel()
            waiter.continuation.resume(returning: connection)
        case .keep:
            break
        case .shutdown:
            connection.shutdown()
        }
    }
}

extension Duration {
    /// Whole milliseconds, rounded down.
    public var milliseconds: Int64 {
        components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
    }
}

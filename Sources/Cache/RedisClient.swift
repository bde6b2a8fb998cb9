import Logging
import Synchronization

/// An async Redis client over a small fixed pool of blocking connections, each owned by a
/// thread of its own: socket calls never run on Swift's cooperative pool.
///
/// ```swift
/// let client = RedisClient(configuration: try RedisConfiguration(url: "redis://127.0.0.1:6379"), logger: logger)
/// try await client.set("greeting", "hello", expireSeconds: 60)
/// let value = try await client.get("greeting")   // [UInt8]?
/// client.shutdown()
/// ```
/// Each call goes to the connection with the fewest calls queued. Connections and threads
/// start on first use. A connection that breaks (I/O error, timeout, invalid reply) is closed
/// and the call fails; the next call on it reconnects. An idle connection the server closed
/// (a restart) is noticed before use and replaced without failing the call. Commands are never
/// retried once written, because their effect is unknown. A call that finds the server down
/// fails at once with `.connection` (or `.timeout` after `connectTimeout`).
public final class RedisClient: Sendable {
    /// Where the client connects and how.
    public let configuration: RedisConfiguration
    private let workers: [RedisWorker]
    private let nextWorker = Atomic<Int>(0)
    /// The SHA-1 digest Redis gave each script `eval` has loaded (SCRIPT LOAD's answer).
    let scriptDigests = Mutex<[String: String]>([:])

    /// A client for `configuration`; nothing connects until the first call.
    public init(configuration: RedisConfiguration, logger: Logger = Logger(label: "eventline.cache")) {
        self.configuration = configuration
        self.workers = (0..<configuration.poolSize).map { index in
            RedisWorker(configuration: configuration, name: "\(configuration.name)-\(index)", logger: logger)
        }
    }

    /// A client for `redis://[user[:password]@]host[:port][/db]`; see `RedisConfiguration(url:)`.
    public convenience init(url: String, poolSize: Int = 4, logger: Logger = Logger(label: "eventline.cache")) throws {
        self.init(configuration: try RedisConfiguration(url: url, poolSize: poolSize), logger: logger)
    }

    deinit {
        for worker in workers { worker.stop() }
    }

    /// Lets calls already queued finish, then closes every connection and ends the threads.
    /// Later calls fail with `RedisError.closed`. Calling it again does nothing.
    public func shutdown() {
        for worker in workers { worker.stop() }
    }

    // MARK: - Commands

    /// Sends one command and returns its reply; an error reply is thrown as `RedisError.server`
    /// and leaves the connection usable.
    @discardableResult
    public func send(_ command: [String]) async throws -> RedisReply {
        try await send(command.map(RedisArgument.string))
    }

    /// Sends one command with binary-safe arguments (`[UInt8]`, `Data` or text, see
    /// `RedisArgument`); an error reply is thrown as `RedisError.server`.
    @discardableResult
    public func send(_ command: [RedisArgument]) async throws -> RedisReply {
        try await run { try $0.send(command) }.throwingServerError()
    }

    /// Writes all `commands` on one connection, then reads their replies, returned in the same
    /// order. Error replies stay in the array as `.error` (the others still happened); a
    /// connection failure throws, and then which commands ran is unknown.
    public func pipeline(_ commands: [[String]]) async throws -> [RedisReply] {
        try await pipeline(commands.map { $0.map(RedisArgument.string) })
    }

    /// `pipeline` with binary-safe arguments.
    public func pipeline(_ commands: [[RedisArgument]]) async throws -> [RedisReply] {
        try await run { try $0.pipeline(commands) }
    }

    /// Runs `body` on a pooled connection's thread. The body may block; it must not keep the
    /// connection.
    func run<T: Sendable>(_ body: @escaping @Sendable (RedisConnection) throws -> T) async throws -> T {
        try await leastBusyWorker().run(body)
    }

    private func leastBusyWorker() -> RedisWorker {
        let count = workers.count
        let start = Int(UInt(bitPattern: nextWorker.wrappingAdd(1, ordering: .relaxed).oldValue) % UInt(count))
        var best = workers[start]
        var bestPending = best.pending.load(ordering: .relaxed)
        for offset in 1..<max(count, 1) where bestPending > 0 {
            let candidate = workers[(start + offset) % count]
            let pending = candidate.pending.load(ordering: .relaxed)
            if pending < bestPending {
                best = candidate
                bestPending = pending
            }
        }
        return best
    }
}

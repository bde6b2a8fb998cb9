#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Synchronization

/// A private, non-persistent Redis server on 127.0.0.1 in a temporary directory. It is stopped
/// and its directory deleted by `stop()`, at process exit, or by a watchdog within seconds of
/// this process being killed; it never outlives the process.
public final class EmbeddedRedis: Sendable {
    /// How to start a server; every field has a default suited to tests.
    public struct Options: Sendable {
        /// The TCP port, or nil to pick a free one (and retry with another on a clash).
        public var port: Int?
        /// How long the server may take to answer PING before `start` fails.
        public var startTimeout: Duration
        /// Extra `redis-server` arguments appended after ours, e.g. `["--maxmemory", "64mb"]`.
        public var extraArguments: [String]

        /// Options with the given overrides; the defaults start a fresh server on a free port.
        public init(port: Int? = nil, startTimeout: Duration = .seconds(60), extraArguments: [String] = []) {
            self.port = port
            self.startTimeout = startTimeout
            self.extraArguments = extraArguments
        }
    }

    /// The TCP port the server accepts connections on.
    public let port: Int
    /// The address the server listens on: always "127.0.0.1".
    public let host: String
    /// The private temporary directory (working directory and `logFile`); it no longer exists
    /// once `stop()` returns.
    public let directory: String
    /// The server's log.
    public let logFile: String
    /// The pid of the redis-server process.
    public let processIdentifier: Int32

    private let watchdog: Watchdog
    private let registration = Mutex<UInt64?>(nil)
    private let stopped = Mutex(false)

    private init(port: Int, directory: String, logFile: String, processIdentifier: Int32, watchdog: Watchdog) {
        self.port = port
        self.host = "127.0.0.1"
        self.directory = directory
        self.logFile = logFile
        self.processIdentifier = processIdentifier
        self.watchdog = watchdog
    }

    /// The server's URL, `redis://127.0.0.1:PORT`.
    public var url: String { "redis://\(host):\(port)" }

    /// Whether `stop()` has been called.
    public var isStopped: Bool { stopped.withLock { $0 } }

    /// Starts a server and returns once it answers PING with +PONG, or throws with an install
    /// hint or the tail of the server's log.
    public static func start(_ options: Options = .init()) async throws -> EmbeddedRedis {
        try await onDedicatedThread("EmbeddedRedis.start") { try startBlocking(options) }
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s), waits for it to exit and deletes
    /// `directory`. Calling it again does nothing.
    public func stop() {
        let first = stopped.withLock { stopped -> Bool in
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        if let id = registration.withLock({ $0 }) { RunningServers.unregister(id) }
        watchdog.cancel()
        ChildProcess.terminate(processIdentifier, signal: SIGTERM, grace: .seconds(10))
        ServerFiles.remove(directory)
    }

    private static let sharedServer = ProcessWideInstance<EmbeddedRedis>()

    /// The one Redis of this process, started with default options by the first caller;
    /// concurrent callers all get the same instance. It runs until the process exits, so do
    /// not `stop()` it.
    public static func shared() async throws -> EmbeddedRedis {
        try await sharedServer.get { try await EmbeddedRedis.start() }
    }

    /// The Redis tests should use: `EVENTLINE_TEST_REDIS_URL` when it is set and not empty,
    /// otherwise `shared().url`.
    public static func testServerURL(
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws -> String {
        if let url = environmentOverride("EVENTLINE_TEST_REDIS_URL", in: environment) { return url }
        return try await shared().url
    }

    // MARK: - Starting

    private static func startBlocking(_ options: Options) throws -> EmbeddedRedis {
        let deadline = ContinuousClock.now + options.startTimeout
        let baseEnvironment = ProcessInfo.processInfo.environment
        guard let redisServer = Executables.find("redis-server", environment: baseEnvironment) else {
            throw EmbeddedServerError("redis-server not found: install redis-server (apt-get install -y redis-server)")
        }
        let directory = try ServerFiles.makeTemporaryDirectory(prefix: "eventline-redis")
        let environment = ServerFiles.childEnvironment(baseEnvironment, home: nil)
        let watchdog: Watchdog
        do {
            watchdog = try Watchdog.start(directory: directory, signal: "TERM", environment: environment)
        } catch {
            ServerFiles.remove(directory)
            throw error
        }
        var started = false
        defer {
            if !started {
                watchdog.cancel()
                ServerFiles.remove(directory)
            }
        }

        let logFile = directory + "/redis.log"
        let attempts = options.port == nil ? 3 : 1
        for attempt in 1...attempts {
            let port = try options.port ?? FreePort.pick()
            let arguments = [
                "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", directory, "--logfile", logFile,
            ] + options.extraArguments
            // Redis writes its own log; stdout gets only what it prints before opening it
            // (argument errors), so both go to the same file.
            let pid = try ChildProcess.spawn(
                redisServer, arguments, environment: environment,
                workingDirectory: directory, outputPath: logFile, truncateOutput: true
            )
            do {
                try Watchdog.recordChild(pid, in: directory)
            } catch {
                ChildProcess.terminate(pid, signal: SIGKILL, grace: .seconds(5))
                throw error
            }

            switch waitUntilReady(pid: pid, port: port, deadline: deadline) {
            case .ready:
                started = true
                let server = EmbeddedRedis(
                    port: port, directory: directory, logFile: logFile, processIdentifier: pid, watchdog: watchdog
                )
                let id = RunningServers.register { server.stop() }
                server.registration.withLock { $0 = id }
                return server
            case .exited(let exit):
                let log = ServerFiles.tail(logFile)
                if log.contains("Address already in use") && attempt < attempts { continue }
                throw EmbeddedServerError("redis-server exited during start-up (\(exit)); log tail:\n\(log)")
            case .timedOut:
                ChildProcess.terminate(pid, signal: SIGTERM, grace: .seconds(5))
                throw EmbeddedServerError(
                    "Redis did not answer PING within \(formatted(options.startTimeout)); log tail:\n\(ServerFiles.tail(logFile))"
                )
            }
        }
        throw EmbeddedServerError("Redis could not find a free port after \(attempts) attempts")
    }

    private enum Readiness {
        case ready
        case exited(ChildExit)
        case timedOut
    }

    private static func waitUntilReady(pid: pid_t, port: Int, deadline: ContinuousClock.Instant) -> Readiness {
        while ContinuousClock.now < deadline {
            if let exit = ChildProcess.poll(pid) { return .exited(exit) }
            if let connection = LoopbackSocket(port: port, timeout: .milliseconds(500)),
                RedisProbe.ping(connection)
            {
                // Whoever answered must be our process, not a stranger that took the port
                // between our pick and redis-server's bind. With INFO renamed away by
                // extraArguments we can only check that ours is still running.
                switch RedisProbe.processID(connection) {
                case .some(let owner?) where owner == Int(pid): return .ready
                case .some(nil) where ChildProcess.poll(pid) == nil: return .ready
                default: break
                }
            }
            usleep(50_000)
        }
        return .timedOut
    }
}

/// Inline-command probes for readiness; the replies are small enough to read whole.
enum RedisProbe {
    static func ping(_ connection: borrowing LoopbackSocket) -> Bool {
        guard connection.send("PING\r\n", timeout: .seconds(2)) else { return false }
        let reply = connection.receive(timeout: .seconds(2)) { $0.contains(10) }
        return String(decoding: reply, as: UTF8.self).hasPrefix("+PONG\r\n")
    }

    /// `process_id` from `INFO server`; `.some(nil)` when the server answered without one
    /// (INFO renamed away: an error reply), nil when it did not answer completely.
    static func processID(_ connection: borrowing LoopbackSocket) -> Int?? {
        guard connection.send("INFO server\r\n", timeout: .seconds(2)) else { return nil }
        let reply = connection.receive(timeout: .seconds(2), until: isCompleteReply)
        guard isCompleteReply(reply) else { return nil }
        let text = String(decoding: reply, as: UTF8.self)
        for line in text.split(whereSeparator: { $0 == "\r\n" || $0 == "\n" || $0 == "\r" }) {
            if line.hasPrefix("process_id:") {
                return .some(Int(line.dropFirst("process_id:".count)))
            }
        }
        return .some(nil)
    }

    /// A whole bulk string (`$LEN\r\n` + LEN bytes + CRLF) or a whole one-line reply.
    private static func isCompleteReply(_ bytes: [UInt8]) -> Bool {
        guard let headerEnd = bytes.firstIndex(of: 10) else { return false }
        guard bytes.first == UInt8(ascii: "$") else { return true }
        let header = String(decoding: bytes[1..<headerEnd], as: UTF8.self)
        guard let length = Int(header.trimmingCharacters(in: .whitespacesAndNewlines)) else { return true }
        return bytes.count >= headerEnd + 1 + max(length, 0) + 2
    }
}

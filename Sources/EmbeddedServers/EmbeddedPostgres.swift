#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Synchronization

/// A private PostgreSQL server in a temporary directory, listening on 127.0.0.1 with trust
/// authentication. It is stopped and its directory deleted by `stop()`, at process exit, or by
/// a watchdog within seconds of this process being killed; it never outlives the process.
public final class EmbeddedPostgres: Sendable {
    /// How to start a server; every field has a default suited to tests.
    public struct Options: Sendable {
        /// Server settings passed as `-c key=value`, applied over `EmbeddedPostgres.defaultSettings`.
        /// `listen_addresses` and `unix_socket_directories` are always 127.0.0.1 and the private
        /// directory, whatever is given here, because `host` and `url` promise them.
        public var settings: [String: String]
        /// The superuser role initdb creates; it connects without a password.
        public var superuser: String
        /// The TCP port, or nil to pick a free one (and retry with another on a clash).
        public var port: Int?
        /// How long initdb plus server start-up may take before `start` fails.
        public var startTimeout: Duration

        /// Options with the given overrides; the defaults start a fresh server on a free port.
        public init(
            settings: [String: String] = [:],
            superuser: String = "eventline",
            port: Int? = nil,
            startTimeout: Duration = .seconds(60)
        ) {
            self.settings = settings
            self.superuser = superuser
            self.port = port
            self.startTimeout = startTimeout
        }
    }

    /// The settings every server starts with unless `Options.settings` overrides them; fsync
    /// and synchronous commit stay on so benchmarks measure durable commits.
    public static let defaultSettings: [String: String] = [
        "max_connections": "200",
        "shared_buffers": "128MB",
        "synchronous_commit": "on",
        "fsync": "on",
        "log_min_messages": "warning",
    ]

    /// The TCP port the server accepts connections on.
    public let port: Int
    /// The address the server listens on: always "127.0.0.1".
    public let host: String
    /// The superuser role; trust authentication, so no password.
    public let superuser: String
    /// The cluster's data directory (inside `directory`).
    public let dataDirectory: String
    /// The private temporary directory holding the data, the Unix socket and `logFile`;
    /// it no longer exists once `stop()` returns.
    public let directory: String
    /// The server's combined stdout and stderr.
    public let logFile: String
    /// The directory of the PostgreSQL binaries used; the matching `psql` lives here.
    public let binDirectory: String
    /// The settings the server was started with (`-c key=value`).
    public let settings: [String: String]
    /// max_connections as started (a standby needs at least as many).
    var maxConnections: String { settings["max_connections"] ?? "100" }
    /// The postmaster's pid (it changes with `resume()`).
    public var processIdentifier: Int32 { processes.withLock { $0.postmaster } }

    /// The process we spawned (the postmaster itself, or runuser standing in front of it) and the postmaster.
    private let processes: Mutex<(child: Int32, postmaster: Int32)>
    /// How the server was started, to start it again after `pause()`.
    private let launch: Launch
    private let watchdog: Watchdog

    private struct Launch: Sendable {
        var command: [String]
        var environment: [String: String]
        var pgIsReady: String?
    }
    private let registration = Mutex<UInt64?>(nil)
    private let stopped = Mutex(false)

    private init(
        port: Int, superuser: String, directory: String, dataDirectory: String, logFile: String,
        binDirectory: String, processIdentifier: Int32, childPID: Int32, watchdog: Watchdog, launch: Launch, settings: [String: String]
    ) {
        self.settings = settings
        self.port = port
        self.host = "127.0.0.1"
        self.superuser = superuser
        self.directory = directory
        self.dataDirectory = dataDirectory
        self.logFile = logFile
        self.binDirectory = binDirectory
        self.processes = Mutex((childPID, processIdentifier))
        self.launch = launch
        self.watchdog = watchdog
    }

    /// A libpq URL for `database` as the superuser, e.g. `postgresql://eventline@127.0.0.1:5433/postgres`.
    public func url(database: String = "postgres") -> String {
        let user = superuser.addingPercentEncoding(withAllowedCharacters: .urlUserAllowed) ?? superuser
        let name = database.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? database
        return "postgresql://\(user)@\(host):\(port)/\(name)"
    }

    /// Whether `stop()` has been called.
    public var isStopped: Bool { stopped.withLock { $0 } }

    /// Initialises a fresh cluster and starts a server on it; returns once it accepts
    /// connections, or throws with an install hint or the tail of the server's log.
    public static func start(_ options: Options = .init()) async throws -> EmbeddedPostgres {
        try await onDedicatedThread("EmbeddedPostgres.start") { try startBlocking(options) }
    }

    /// Stops the server (fast shutdown: SIGINT, then SIGKILL after 10 s), waits for it to exit
    /// and deletes `directory`. Calling it again does nothing.
    public func stop() {
        let first = stopped.withLock { stopped -> Bool in
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        if let id = registration.withLock({ $0 }) { RunningServers.unregister(id) }
        watchdog.cancel()
        let (child, postmaster) = processes.withLock { $0 }
        ChildProcess.terminate(child, signal: SIGINT, grace: .seconds(10), target: postmaster)
        ServerFiles.remove(directory)
    }

    /// Stops the server (fast shutdown) but keeps its data, as a database outage would; clients
    /// see connections refused until `resume()`.
    public func pause() async {
        _ = try? await onDedicatedThread("EmbeddedPostgres.pause") { [self] in
            let (child, postmaster) = processes.withLock { $0 }
            ChildProcess.terminate(child, signal: SIGINT, grace: .seconds(10), target: postmaster)
        }
    }

    /// How `crash(_:)` brings the server down.
    public enum Crash: Sendable, CaseIterable {
        /// `pg_ctl stop -m immediate`: SIGQUIT, every process exits at once without a
        /// checkpoint; the next start recovers from the WAL.
        case immediateStop
        /// SIGKILL of the postmaster, as the OOM killer would; its orphaned backends are
        /// killed too (they would keep the old shared memory and block the restart).
        case killPostmaster
    }

    /// Crashes the server but keeps its data; `resume()` starts it again with crash recovery.
    public func crash(_ how: Crash) async {
        _ = try? await onDedicatedThread("EmbeddedPostgres.crash") { [self] in
            let (child, postmaster) = processes.withLock { $0 }
            switch how {
            case .immediateStop:
                ChildProcess.terminate(child, signal: SIGQUIT, grace: .seconds(10), target: postmaster)
            case .killPostmaster:
                let backends = ProcessTree.children(of: postmaster)
                ChildProcess.terminate(child, signal: SIGKILL, grace: .seconds(10), target: postmaster)
                for backend in backends { kill(backend, SIGKILL) }
                // Orphans are reaped by init; wait until they are gone.
                let deadline = ContinuousClock.now + .seconds(10)
                while backends.contains(where: ProcessTree.isRunning) && ContinuousClock.now < deadline {
                    usleep(10_000)
                }
            }
        }
    }

    /// Starts the server again on the same data directory and port after `pause()`.
    public func resume() async throws {
        try await onDedicatedThread("EmbeddedPostgres.resume") { [self] in
            let command = launch.command
            let pid = try ChildProcess.spawn(
                command[0], Array(command.dropFirst()), environment: launch.environment,
                workingDirectory: directory, outputPath: logFile, truncateOutput: false)
            try Watchdog.recordChild(pid, in: directory)
            switch Self.waitUntilReady(
                pid: pid, port: port, superuser: superuser, dataDirectory: dataDirectory, pgIsReady: launch.pgIsReady,
                environment: launch.environment, deadline: .now + .seconds(60))
            {
            case .ready:
                let postmaster = Self.postmasterPID(dataDirectory) ?? pid
                if postmaster != pid { try Watchdog.recordChild(postmaster, in: directory) }
                processes.withLock { $0 = (pid, postmaster) }
            case .exited(let exit):
                throw EmbeddedServerError("PostgreSQL exited while resuming (\(exit)); log tail:\n\(ServerFiles.tail(logFile))")
            case .timedOut:
                ChildProcess.terminate(pid, signal: SIGKILL, grace: .seconds(5))
                throw EmbeddedServerError("PostgreSQL did not become ready again; log tail:\n\(ServerFiles.tail(logFile))")
            }
        }
    }

    private static let sharedServer = ProcessWideInstance<EmbeddedPostgres>()

    /// The one server of this process, started by the first caller (default options, but 1500
    /// connections); concurrent callers all get the same instance. It runs until the process exits, so do
    /// not `stop()` it.
    public static func shared() async throws -> EmbeddedPostgres {
        // The test suites run in parallel, many with server, projector and deliver processes of
        // their own (each with a pool, a LISTEN session and lease sessions). `make test` peaked at
        // 449 client connections here, and a CI run, timed differently, passed 500: 1500 leaves
        // room (an idle slot costs a few kilobytes of shared memory).
        try await sharedServer.get { try await EmbeddedPostgres.start(.init(settings: ["max_connections": "1500"])) }
    }

    /// The server tests should use: `EVENTLINE_TEST_DATABASE_URL` when it is set and not
    /// empty (CI with a service database), otherwise `shared().url()`.
    public static func testServerURL(
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws -> String {
        if let url = environmentOverride("EVENTLINE_TEST_DATABASE_URL", in: environment) { return url }
        return try await shared().url()
    }

    /// A streaming standby of `primary`: a `pg_basebackup` of it started in hot standby, which
    /// replays what the primary writes and answers read-only queries. `name` is its
    /// `application_name` on the primary (`synchronous_standby_names` names it). It is stopped
    /// like any server; `promote()` makes it a primary.
    public static func startStandby(of primary: EmbeddedPostgres, name: String, _ options: Options = .init()) async throws -> EmbeddedPostgres {
        try await onDedicatedThread("EmbeddedPostgres.startStandby") { try startStandbyBlocking(of: primary, name: name, options) }
    }

    /// Ends recovery (`pg_promote`): the standby becomes a primary that accepts writes, as a
    /// cluster manager does at failover. Returns once it does.
    public func promote() async throws {
        try await onDedicatedThread("EmbeddedPostgres.promote") { [self] in
            let psql = binDirectory + "/psql"
            let exit = try ChildProcess.run(
                psql, ["-h", host, "-p", String(port), "-U", superuser, "-d", "postgres", "-Atqc", "SELECT pg_promote(true, 30)"],
                environment: launch.environment, deadline: .now + .seconds(40))
            guard exit == .exited(0) else { throw EmbeddedServerError("pg_promote failed (\(exit)); log tail:\n\(ServerFiles.tail(logFile))") }
        }
    }

    private static func startStandbyBlocking(of primary: EmbeddedPostgres, name: String, _ options: Options) throws -> EmbeddedPostgres {
        try prepared(prefix: "eventline-pg-standby", timeout: options.startTimeout) { setup in
            // -R writes standby.signal and primary_conninfo; the WAL the backup needs is streamed along.
            try setup.run("pg_basebackup", [
                setup.binaries.directory + "/pg_basebackup", "-D", setup.dataDirectory, "-h", primary.host, "-p", String(primary.port),
                "-U", primary.superuser, "-X", "stream", "-R", "--checkpoint=fast", "--no-sync",
            ])
            var standbyOptions = options
            standbyOptions.settings = [
                // Named on the primary by this name (pg_stat_replication.application_name).
                "primary_conninfo": "host=\(primary.host) port=\(primary.port) user=\(primary.superuser) application_name=\(name)",
                "cluster_name": name,
                "hot_standby": "on",
                // Queries here hold back the primary's vacuum rather than being cancelled by it.
                "hot_standby_feedback": "on",
                "max_connections": primary.maxConnections,
            ].merging(options.settings) { _, override in override }
            return try launch(standbyOptions, setup)
        }
    }

    // MARK: - Starting

    /// What starting a server needs: a private directory (handed to the server's account when
    /// we are root), its watchdog, the binaries and the environment.
    private struct Setup {
        let deadline: ContinuousClock.Instant
        let binaries: PostgresBinaries
        let account: UnprivilegedAccount?
        let directory: String
        let environment: [String: String]
        let watchdog: Watchdog
        var dataDirectory: String { directory + "/data" }

        /// Runs a one-shot tool (initdb, pg_basebackup) as the server's account until it
        /// exits; throws with the tail of its output when it fails or outlives the deadline.
        func run(_ name: String, _ command: [String]) throws {
            let log = directory + "/\(name).log"
            let wrapped = try account?.wrap(command, environment: environment) ?? command
            let pid = try ChildProcess.spawn(
                wrapped[0], Array(wrapped.dropFirst()), environment: environment, workingDirectory: directory, outputPath: log)
            try Watchdog.recordChild(pid, in: directory)
            guard let exit = ChildProcess.wait(pid, timeout: max(deadline - ContinuousClock.now, .zero)) else {
                ChildProcess.terminate(pid, signal: SIGKILL, grace: .seconds(5))
                throw EmbeddedServerError("\(name) did not finish in time; output tail:\n\(ServerFiles.tail(log))")
            }
            guard exit == .exited(0) else {
                throw EmbeddedServerError("\(name) failed (\(exit)); output tail:\n\(ServerFiles.tail(log))")
            }
        }
    }

    /// Runs `body` with a fresh `Setup`; its directory and watchdog go unless `body` returns a server.
    private static func prepared(
        prefix: String, timeout: Duration, _ body: (Setup) throws -> EmbeddedPostgres
    ) throws -> EmbeddedPostgres {
        let deadline = ContinuousClock.now + timeout
        let baseEnvironment = ProcessInfo.processInfo.environment
        let binaries = try PostgresBinaries.locate(environment: baseEnvironment)
        let account = try UnprivilegedAccount.forCurrentProcess()
        let directory = try ServerFiles.makeTemporaryDirectory(prefix: prefix)
        let environment = ServerFiles.childEnvironment(baseEnvironment, home: account == nil ? nil : directory)
        let watchdog: Watchdog
        do {
            watchdog = try Watchdog.start(directory: directory, signal: "INT", environment: environment)
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
        if let account { try account.take(directory) }
        let server = try body(Setup(
            deadline: deadline, binaries: binaries, account: account, directory: directory, environment: environment, watchdog: watchdog))
        started = true
        return server
    }

    private static func startBlocking(_ options: Options) throws -> EmbeddedPostgres {
        try prepared(prefix: "eventline-pg", timeout: options.startTimeout) { setup in
            try setup.run("initdb", [
                setup.binaries.initdb, "-D", setup.dataDirectory, "-U", options.superuser, "--auth=trust",
                "--encoding=UTF8", "--locale=C", "--no-sync",
            ])
            return try launch(options, setup)
        }
    }

    /// Starts `postgres` on an initialised (or backed-up) data directory, on a free port.
    private static func launch(_ options: Options, _ setup: Setup) throws -> EmbeddedPostgres {
        let (binaries, account, directory, dataDirectory) = (setup.binaries, setup.account, setup.directory, setup.dataDirectory)
        let (environment, watchdog, deadline) = (setup.environment, setup.watchdog, setup.deadline)
        var settings = defaultSettings.merging(options.settings) { _, override in override }
        settings["listen_addresses"] = "127.0.0.1"
        settings["unix_socket_directories"] = directory

        let logFile = directory + "/postgres.log"
        let attempts = options.port == nil ? 3 : 1
        for attempt in 1...attempts {
            let port = try options.port ?? FreePort.pick()
            var command = [binaries.postgres, "-D", dataDirectory, "-p", String(port)]
            for key in settings.keys.sorted() {
                command += ["-c", "\(key)=\(settings[key]!)"]
            }
            command = try account?.wrap(command, environment: environment) ?? command
            let pid = try ChildProcess.spawn(
                command[0], Array(command.dropFirst()), environment: environment,
                workingDirectory: directory, outputPath: logFile
            )
            do {
                try Watchdog.recordChild(pid, in: directory)
            } catch {
                ChildProcess.terminate(pid, signal: SIGKILL, grace: .seconds(5))
                throw error
            }

            switch waitUntilReady(
                pid: pid, port: port, superuser: options.superuser, dataDirectory: dataDirectory,
                pgIsReady: binaries.pgIsReady, environment: environment, deadline: deadline
            ) {
            case .ready:
                let postmaster = postmasterPID(dataDirectory) ?? pid
                if postmaster != pid {
                    do {
                        try Watchdog.recordChild(postmaster, in: directory)
                    } catch {
                        ChildProcess.terminate(pid, signal: SIGINT, grace: .seconds(10), target: postmaster)
                        throw error
                    }
                }
                let server = EmbeddedPostgres(
                    port: port, superuser: options.superuser, directory: directory,
                    dataDirectory: dataDirectory, logFile: logFile, binDirectory: binaries.directory,
                    processIdentifier: postmaster, childPID: pid, watchdog: watchdog,
                    launch: Launch(command: command, environment: environment, pgIsReady: binaries.pgIsReady),
                    settings: settings
                )
                let id = RunningServers.register { server.stop() }
                server.registration.withLock { $0 = id }
                return server
            case .exited(let exit):
                let log = ServerFiles.tail(logFile)
                let portClash = log.contains("Address already in use")
                    || log.contains("could not create any TCP/IP sockets")
                if portClash && attempt < attempts { continue }
                throw EmbeddedServerError("PostgreSQL exited during start-up (\(exit)); log tail:\n\(log)")
            case .timedOut:
                ChildProcess.terminate(pid, signal: SIGINT, grace: .seconds(5), target: postmasterPID(dataDirectory))
                throw EmbeddedServerError(
                    "PostgreSQL did not become ready within \(formatted(options.startTimeout)); log tail:\n\(ServerFiles.tail(logFile))"
                )
            }
        }
        throw EmbeddedServerError("PostgreSQL could not find a free port after \(attempts) attempts")
    }

    private enum Readiness {
        case ready
        case exited(ChildExit)
        case timedOut
    }

    private static func waitUntilReady(
        pid: pid_t, port: Int, superuser: String, dataDirectory: String, pgIsReady: String?,
        environment: [String: String], deadline: ContinuousClock.Instant
    ) -> Readiness {
        while ContinuousClock.now < deadline {
            if let exit = ChildProcess.poll(pid) { return .exited(exit) }
            // postmaster.pid says "ready" only for the server started on this data directory,
            // so a stranger that grabbed the port between our pick and our bind is not mistaken
            // for ours.
            if postmasterReports(ready: dataDirectory), LoopbackSocket.accepts(port: port) {
                guard let pgIsReady else { return .ready }
                let probe = try? ChildProcess.run(
                    pgIsReady,
                    ["-q", "-h", "127.0.0.1", "-p", String(port), "-U", superuser, "-d", "postgres", "-t", "2"],
                    environment: environment,
                    deadline: min(deadline, ContinuousClock.now + .seconds(5))
                )
                if probe == .exited(0) { return .ready }
            }
            usleep(50_000)
        }
        return .timedOut
    }

    private static func postmasterReports(ready dataDirectory: String) -> Bool {
        let lines = postmasterPIDFile(dataDirectory)
        // A hot standby that accepts read-only connections says "standby".
        return lines.count > 7 && ["ready", "standby"].contains(lines[7].trimmingCharacters(in: .whitespaces))
    }

    /// The postmaster's own pid, which differs from the one we spawned when runuser sits in between.
    private static func postmasterPID(_ dataDirectory: String) -> pid_t? {
        postmasterPIDFile(dataDirectory).first.flatMap { pid_t($0.trimmingCharacters(in: .whitespaces)) }
    }

    private static func postmasterPIDFile(_ dataDirectory: String) -> [Substring] {
        guard let contents = try? String(contentsOfFile: dataDirectory + "/postmaster.pid", encoding: .utf8) else {
            return []
        }
        return contents.split(separator: "\n", omittingEmptySubsequences: false)
    }
}

/// Where initdb, postgres and pg_isready come from.
struct PostgresBinaries: Sendable {
    let directory: String
    let initdb: String
    let postgres: String
    let pgIsReady: String?

    static let installHint =
        "initdb not found: install the postgresql package (apt-get install -y postgresql), "
        + "or set EVENTLINE_PG_BIN to the directory holding initdb and postgres"

    /// `EVENTLINE_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin` with initdb, else PATH.
    static func locate(environment: [String: String]) throws -> PostgresBinaries {
        if let override = environmentOverride("EVENTLINE_PG_BIN", in: environment) {
            guard let found = inDirectory(override, environment: environment) else {
                throw EmbeddedServerError(
                    "EVENTLINE_PG_BIN=\(override) does not contain executable initdb and postgres"
                )
            }
            return found
        }
        let root = "/usr/lib/postgresql"
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        let newestFirst = versions.sorted { versionKey($0).lexicographicallyPrecedes(versionKey($1)) }.reversed()
        for version in newestFirst {
            if let found = inDirectory("\(root)/\(version)/bin", environment: environment) { return found }
        }
        if let initdb = Executables.find("initdb", environment: environment),
            let found = inDirectory((initdb as NSString).deletingLastPathComponent, environment: environment)
        {
            return found
        }
        throw EmbeddedServerError(installHint)
    }

    private static func inDirectory(_ directory: String, environment: [String: String]) -> PostgresBinaries? {
        let initdb = directory + "/initdb"
        let postgres = directory + "/postgres"
        guard Executables.isExecutable(initdb), Executables.isExecutable(postgres) else { return nil }
        let besideUs = directory + "/pg_isready"
        let pgIsReady = Executables.isExecutable(besideUs)
            ? besideUs : Executables.find("pg_isready", environment: environment)
        return PostgresBinaries(directory: directory, initdb: initdb, postgres: postgres, pgIsReady: pgIsReady)
    }

    /// "9.6" < "15" < "16": compare numerically, component by component.
    private static func versionKey(_ name: String) -> [Int] {
        name.split(separator: ".").map { Int($0) ?? -1 }
    }
}

func formatted(_ duration: Duration) -> String {
    let seconds = duration.seconds
    return seconds == seconds.rounded() ? "\(Int(seconds)) s" : String(format: "%.1f s", seconds)
}

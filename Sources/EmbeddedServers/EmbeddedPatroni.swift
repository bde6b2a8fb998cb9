#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Synchronization

/// A private high-availability PostgreSQL cluster as operators run one: etcd, and Patroni
/// managing a PostgreSQL node on each of `nodes` "machines" (a directory and a port each).
/// Patroni elects a leader, makes the others streaming standbys (one synchronous with
/// `synchronous: true`, Patroni's `synchronous_mode`), and fails over by itself when the
/// leader's machine dies (`killMachine`). Everything runs on 127.0.0.1 with trust
/// authentication, from Debian's `patroni`, `etcd-server` and `postgresql` packages, and is
/// stopped and deleted by `stop()`, at process exit, or by a watchdog if this process is killed.
public final class EmbeddedPatroni: Sendable {
    /// One node: a Patroni process and the PostgreSQL it manages.
    public struct Node: Sendable {
        public let name: String
        /// PostgreSQL's port.
        public let port: Int
        /// Patroni's REST API port.
        public let restPort: Int
        let directory: String
        let configFile: String
        var dataDirectory: String { directory + "/data" }
    }

    public let nodes: [Node]
    /// The superuser on every node (trust authentication: no password).
    public let superuser = "eventline"
    /// The etcd client URL.
    public let etcdURL: String
    private let directory: String
    private let environment: [String: String]
    private let account: UnprivilegedAccount?
    private let patroni: String
    private let psql: String
    private let etcd: (pid: pid_t, watchdog: Watchdog)
    /// Each node's Patroni process and its watchdog, by node name (nil while its machine is down).
    private let running: Mutex<[String: (pid: pid_t, watchdog: Watchdog)]>
    private let stopped = Mutex(false)
    private let registration = Mutex<UInt64?>(nil)

    static let installHint = "Patroni and etcd are needed: apt-get install -y patroni etcd-server"

    private init(
        nodes: [Node], etcdURL: String, directory: String, environment: [String: String], account: UnprivilegedAccount?,
        patroni: String, psql: String, etcd: (pid_t, Watchdog)
    ) {
        self.nodes = nodes
        self.etcdURL = etcdURL
        self.directory = directory
        self.environment = environment
        self.account = account
        self.patroni = patroni
        self.psql = psql
        self.etcd = etcd
        self.running = Mutex([:])
    }

    /// A libpq URL over every node, e.g.
    /// `postgresql://eventline@127.0.0.1:5432,127.0.0.1:5433,127.0.0.1:5434/db?target_session_attrs=read-write`.
    public func url(database: String = "postgres", targetSessionAttributes: String = "read-write") -> String {
        "postgresql://\(superuser)@" + nodes.map { "127.0.0.1:\($0.port)" }.joined(separator: ",")
            + "/\(database)?target_session_attrs=\(targetSessionAttributes)"
    }

    /// A libpq URL of one node.
    public func url(of node: Node, database: String = "postgres") -> String {
        "postgresql://\(superuser)@127.0.0.1:\(node.port)/\(database)"
    }

    /// Starts etcd and a Patroni per node; returns once a leader accepts writes and every other
    /// node streams from it.
    public static func start(nodes count: Int = 3, synchronous: Bool = true, settings: [String: String] = [:]) async throws -> EmbeddedPatroni {
        let cluster = try await onDedicatedThread("EmbeddedPatroni.start") { try startBlocking(nodes: count, synchronous: synchronous, settings: settings) }
        do {
            _ = try await cluster.waitForLeader(timeout: .seconds(90))
            try await cluster.waitForStandbys(count - 1, synchronous: synchronous ? 1 : 0, timeout: .seconds(90))
        } catch {
            cluster.stop()
            throw error
        }
        return cluster
    }

    private static func startBlocking(nodes count: Int, synchronous: Bool, settings: [String: String]) throws -> EmbeddedPatroni {
        let baseEnvironment = ProcessInfo.processInfo.environment
        let binaries = try PostgresBinaries.locate(environment: baseEnvironment)
        guard let patroni = Executables.find("patroni", environment: baseEnvironment),
            let etcdBinary = Executables.find("etcd", environment: baseEnvironment)
        else { throw EmbeddedServerError(installHint) }
        // Patroni's failover check uses a multiprocessing pool, whose locks are POSIX semaphores.
        guard FileManager.default.fileExists(atPath: "/dev/shm") else {
            throw EmbeddedServerError("Patroni needs /dev/shm (POSIX semaphores for its failover checks): mount a tmpfs there")
        }
        let account = try UnprivilegedAccount.forCurrentProcess()
        let directory = try ServerFiles.makeTemporaryDirectory(prefix: "eventline-ha")
        var environment = ServerFiles.childEnvironment(baseEnvironment, home: account == nil ? nil : directory)
        // etcd 3.4 on amd64 needs nothing more; Patroni logs to stderr, which goes to each node's log.
        environment["PYTHONUNBUFFERED"] = "1"
        if let account { try account.take(directory) }
        var started: [Watchdog] = []
        var succeeded = false
        defer {
            if !succeeded {
                for watchdog in started { watchdog.cancel() }
                ServerFiles.remove(directory)
            }
        }

        // etcd, with a directory (and watchdog) of its own.
        let etcdDirectory = directory + "/etcd"
        try ServerFiles.makeDirectory(etcdDirectory, account: account)
        let (clientPort, peerPort) = (try FreePort.pick(), try FreePort.pick())
        let etcdURL = "http://127.0.0.1:\(clientPort)"
        let etcdWatchdog = try Watchdog.start(directory: etcdDirectory, signal: "TERM", environment: environment)
        started.append(etcdWatchdog)
        let etcdCommand = [
            etcdBinary, "--name", "etcd", "--data-dir", etcdDirectory + "/data",
            "--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
            "--listen-peer-urls", "http://127.0.0.1:\(peerPort)", "--initial-advertise-peer-urls", "http://127.0.0.1:\(peerPort)",
            "--initial-cluster", "etcd=http://127.0.0.1:\(peerPort)", "--log-level", "warn",
        ]
        let etcdLaunch = try account?.wrap(etcdCommand, environment: environment) ?? etcdCommand
        let etcdPID = try ChildProcess.spawn(
            etcdLaunch[0], Array(etcdLaunch.dropFirst()), environment: environment, workingDirectory: etcdDirectory,
            outputPath: etcdDirectory + "/etcd.log")
        try Watchdog.recordChild(etcdPID, in: etcdDirectory)
        let etcdReady = ContinuousClock.now + .seconds(30)
        while !LoopbackSocket.accepts(port: clientPort) {
            if let exit = ChildProcess.poll(etcdPID) {
                throw EmbeddedServerError("etcd exited during start-up (\(exit)); log tail:\n\(ServerFiles.tail(etcdDirectory + "/etcd.log"))")
            }
            guard ContinuousClock.now < etcdReady else { throw EmbeddedServerError("etcd did not start within 30 s") }
            usleep(50_000)
        }

        var nodes: [Node] = []
        for index in 1...count {
            let name = "node\(index)"
            let nodeDirectory = directory + "/" + name
            try ServerFiles.makeDirectory(nodeDirectory, account: account)
            let node = Node(
                name: name, port: try FreePort.pick(), restPort: try FreePort.pick(), directory: nodeDirectory,
                configFile: nodeDirectory + "/patroni.yml")
            try configuration(
                node: node, etcd: "127.0.0.1:\(clientPort)", binDirectory: binaries.directory, synchronous: synchronous, settings: settings
            ).write(toFile: node.configFile, atomically: true, encoding: .utf8)
            if let account { _ = chown(node.configFile, account.uid, account.gid) }
            nodes.append(node)
        }
        let cluster = EmbeddedPatroni(
            nodes: nodes, etcdURL: etcdURL, directory: directory, environment: environment, account: account, patroni: patroni,
            psql: binaries.directory + "/psql", etcd: (etcdPID, etcdWatchdog))
        succeeded = true
        let id = RunningServers.register { cluster.stop() }
        cluster.registration.withLock { $0 = id }
        do {
            for node in nodes { try cluster.launch(node) }
        } catch {
            cluster.stop()
            throw error
        }
        return cluster
    }

    /// The Patroni configuration of `node` (YAML; JSON is YAML).
    private static func configuration(
        node: Node, etcd: String, binDirectory: String, synchronous: Bool, settings: [String: String]
    ) -> String {
        var parameters: [String: String] = [
            "max_connections": "300", "shared_buffers": "64MB", "wal_log_hints": "on", "synchronous_commit": "on", "fsync": "on",
            "hot_standby_feedback": "on", "log_min_messages": "warning",
        ]
        parameters.merge(settings) { _, given in given }
        let object: [String: Any] = [
            "scope": "eventline",
            "name": node.name,
            "log": ["level": "WARNING"],
            "restapi": ["listen": "127.0.0.1:\(node.restPort)", "connect_address": "127.0.0.1:\(node.restPort)"],
            "etcd3": ["hosts": etcd],
            "bootstrap": [
                "dcs": [
                    // A dead leader's key expires within ttl: failover in about 10 s.
                    "ttl": 10, "loop_wait": 1, "retry_timeout": 4, "maximum_lag_on_failover": 1_048_576,
                    "synchronous_mode": synchronous,
                    "postgresql": ["use_pg_rewind": true, "parameters": parameters],
                ],
                "initdb": [["encoding": "UTF8"], ["locale": "C"], ["auth": "trust"]],
                "pg_hba": ["local all all trust", "host all all 127.0.0.1/32 trust", "host replication all 127.0.0.1/32 trust"],
            ],
            "postgresql": [
                "listen": "127.0.0.1:\(node.port)",
                "connect_address": "127.0.0.1:\(node.port)",
                "data_dir": node.dataDirectory,
                "bin_dir": binDirectory,
                "pgpass": node.directory + "/pgpass",
                "authentication": [
                    "superuser": ["username": "eventline"], "replication": ["username": "eventline"], "rewind": ["username": "eventline"],
                ],
                "parameters": ["unix_socket_directories": node.directory],
            ],
        ]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    /// Starts `node`'s Patroni (it starts, or bootstraps, its PostgreSQL).
    private func launch(_ node: Node) throws {
        let watchdog = try Watchdog.start(directory: node.directory, signal: "INT", environment: environment)
        let command = try account?.wrap([patroni, node.configFile], environment: environment) ?? [patroni, node.configFile]
        let pid: pid_t
        do {
            pid = try ChildProcess.spawn(
                command[0], Array(command.dropFirst()), environment: environment, workingDirectory: node.directory,
                outputPath: node.directory + "/patroni.log", truncateOutput: false)
            try Watchdog.recordChild(pid, in: node.directory)
        } catch {
            watchdog.cancel()
            throw error
        }
        running.withLock { $0[node.name] = (pid, watchdog) }
    }

    /// The node whose PostgreSQL accepts writes now, if one does.
    public func leader() async -> Node? {
        for node in nodes where await (try? query(node, "SELECT NOT pg_is_in_recovery()")) == "t" { return node }
        return nil
    }

    /// Waits until a node other than `excluding` accepts writes; returns it.
    public func waitForLeader(excluding: String? = nil, timeout: Duration = .seconds(60)) async throws -> Node {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let leader = await leader(), leader.name != excluding { return leader }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw EmbeddedServerError("no leader within \(formatted(timeout)); Patroni's log tail:\n\(logTails())")
    }

    /// Waits until the leader streams to `count` standbys, `synchronous` of them synchronous
    /// (Patroni names one in `synchronous_standby_names` a loop after it streams).
    public func waitForStandbys(_ count: Int, synchronous: Int = 0, timeout: Duration = .seconds(60)) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let leader = await leader(),
                let answer = try? await query(leader, """
                    SELECT count(*) FILTER (WHERE state = 'streaming') || ' ' || count(*) FILTER (WHERE sync_state IN ('sync', 'quorum'))
                    FROM pg_stat_replication
                    """),
                case let numbers = answer.split(separator: " ").compactMap({ Int($0) }), numbers.count == 2,
                numbers[0] >= count, numbers[1] >= synchronous
            {
                return
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw EmbeddedServerError("the leader does not stream to \(count) standbys within \(formatted(timeout)); log tail:\n\(logTails())")
    }

    /// The node's machine dies: its Patroni, its postmaster and every backend SIGKILLed at once.
    public func killMachine(_ node: Node) async {
        let patroniProcess = running.withLock { $0.removeValue(forKey: node.name) }
        _ = try? await onDedicatedThread("EmbeddedPatroni.killMachine") { [self] in
            var victims: [pid_t] = []
            if let patroniProcess {
                patroniProcess.watchdog.cancel()
                victims.append(patroniProcess.pid)
            }
            if let postmaster = Self.postmasterPID(node.dataDirectory) {
                victims.append(postmaster)
                victims += ProcessTree.children(of: postmaster)
            }
            for pid in victims { kill(pid, SIGKILL) }
            if let patroniProcess { _ = ChildProcess.wait(patroniProcess.pid, timeout: .seconds(10)) }
            let deadline = ContinuousClock.now + .seconds(10)
            while victims.contains(where: ProcessTree.isRunning) && ContinuousClock.now < deadline { usleep(10_000) }
            _ = self
        }
    }

    /// Starts a dead machine's Patroni again: it rejoins as a standby (rewinding if it must).
    public func restart(_ node: Node) async throws {
        try await onDedicatedThread("EmbeddedPatroni.restart") { [self] in try launch(node) }
    }

    /// Runs `sql` on `node` with psql and returns its output (unaligned, trimmed).
    public func query(_ node: Node, _ sql: String, database: String = "postgres") async throws -> String {
        try await onDedicatedThread("EmbeddedPatroni.query") { [self] in
            let output = directory + "/psql-\(UUID().uuidString.prefix(8)).out"
            defer { try? FileManager.default.removeItem(atPath: output) }
            let exit = try ChildProcess.run(
                psql, ["-h", "127.0.0.1", "-p", String(node.port), "-U", superuser, "-d", database, "-Atqc", sql],
                environment: environment, outputPath: output, deadline: .now + .seconds(10))
            let text = ((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            guard exit == .exited(0) else { throw EmbeddedServerError("psql on \(node.name) failed (\(exit)): \(text)") }
            return text
        }
    }

    /// The tails of every node's Patroni log, for failure messages.
    public func logTails() -> String {
        nodes.map { "\($0.name):\n" + ServerFiles.tail($0.directory + "/patroni.log") }.joined(separator: "\n")
    }

    /// Stops every Patroni (each stops its PostgreSQL), then etcd, and deletes the directory.
    public func stop() {
        let first = stopped.withLock { stopped -> Bool in
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        if let id = registration.withLock({ $0 }) { RunningServers.unregister(id) }
        let processes = running.withLock { running in
            defer { running = [:] }
            return running
        }
        for (name, process) in processes {
            process.watchdog.cancel()
            let node = nodes.first { $0.name == name }
            kill(process.pid, SIGINT)
            if ChildProcess.wait(process.pid, timeout: .seconds(15)) == nil { kill(process.pid, SIGKILL) }
            // A PostgreSQL that outlived its Patroni stops too.
            if let node, let postmaster = Self.postmasterPID(node.dataDirectory) {
                ChildProcess.terminate(postmaster, signal: SIGINT, grace: .seconds(10))
            }
        }
        for node in nodes where !processes.keys.contains(node.name) {
            if let postmaster = Self.postmasterPID(node.dataDirectory) { ChildProcess.terminate(postmaster, signal: SIGKILL, grace: .seconds(5)) }
        }
        etcd.watchdog.cancel()
        ChildProcess.terminate(etcd.pid, signal: SIGTERM, grace: .seconds(10))
        ServerFiles.remove(directory)
    }

    private static func postmasterPID(_ dataDirectory: String) -> pid_t? {
        guard let contents = try? String(contentsOfFile: dataDirectory + "/postmaster.pid", encoding: .utf8),
            let line = contents.split(separator: "\n").first, let pid = pid_t(line.trimmingCharacters(in: .whitespaces)),
            ProcessTree.isRunning(pid)
        else { return nil }
        return pid
    }
}

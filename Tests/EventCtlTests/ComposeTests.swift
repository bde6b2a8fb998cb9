import EmbeddedServers
import EventlineTestSupport
import Foundation
import Testing
import Yams

/// docker-compose.yml and the Dockerfile, checked without a Docker engine: each eventline
/// service's command line and environment runs as a local process against the private
/// PostgreSQL and Redis, so a typo in a command, a flag or a variable fails here.
@Suite("docker-compose.yml and the Dockerfile", .serialized)
struct ComposeTests {
    struct Service {
        var name: String
        var command: [String]
        var environment: [String: String]
        var replicas: Int
    }

    /// The services that run the eventline image, as compose would start them.
    static func services(file: String = "docker-compose.yml") throws -> [Service] {
        let services = try allServices(file: file)
        return try services.compactMap { name, value -> Service? in
            guard let service = value as? [String: Any], (service["image"] as? String)?.hasPrefix("eventline:") == true else { return nil }
            guard let command = service["command"] as? [String] else { throw TestFailure("service \(name) has no command list") }
            let environment = (service["environment"] as? [String: Any] ?? [:]).mapValues { "\($0)" }
            let replicas = (service["deploy"] as? [String: Any])?["replicas"] as? Int ?? 1
            return Service(name: name, command: command, environment: environment, replicas: replicas)
        }.sorted { $0.name < $1.name }
    }

    /// Every service of a compose file, as YAML (anchors and merge keys resolved).
    static func allServices(file: String) throws -> [String: Any] {
        let text = try String(contentsOfFile: Repository.root + "/" + file, encoding: .utf8)
        guard let document = try Yams.load(yaml: text) as? [String: Any], let services = document["services"] as? [String: Any] else {
            throw TestFailure("\(file) has no services")
        }
        return services
    }

    /// Runs the file's migrate service to its end, then every other service (each replica) as
    /// a background process with `local`'s environment, killed by `running` when the test ends.
    static func startServices(
        _ services: [Service], local: ([String: String]) throws -> [String: String], running: ProcessList
    ) async throws -> [(service: String, process: BackgroundProcess, ports: [String: Int])] {
        let eventctl = try Repository.eventctl
        for service in services {
            #expect(EnvironmentCheck.unknown(service.environment).isEmpty, "\(service.name): \(EnvironmentCheck.unknown(service.environment))")
        }
        let migrate = try #require(services.first { $0.name == "migrate" })
        let migrated = try await runProgram(eventctl, migrate.command, environment: try local(migrate.environment))
        #expect(migrated.status == 0, "\(migrated.stderr)")
        var started: [(service: String, process: BackgroundProcess, ports: [String: Int])] = []
        for service in services where service.name != "migrate" {
            for _ in 0..<service.replicas {
                let (command, ports) = try Self.localCommand(service.command)
                let process = try BackgroundProcess(eventctl, command, environment: try local(service.environment), replaceEnvironment: true)
                running.append(process.process)
                started.append((service.name, process, ports))
            }
        }
        return started
    }

    /// `command` with every `--port`/`--metrics-port` value replaced by a free local port (in
    /// compose each container has its own network), and the ports chosen.
    static func localCommand(_ command: [String]) throws -> (command: [String], ports: [String: Int]) {
        var result = command
        var ports: [String: Int] = [:]
        for index in result.indices.dropLast() where ["--port", "--metrics-port"].contains(result[index]) {
            let port = try FreePort.pick()
            result[index + 1] = "\(port)"
            ports[result[index]] = port
        }
        return (result, ports)
    }

    @Test("every eventline service of docker-compose.yml runs as a process with its command and environment: migrate, server, two projectors, reactor, deliver; a transfer reaches the read models and a webhook; JSON logs; clean SIGTERM")
    func servicesRunAsProcesses() async throws {
        let services = try Self.services()
        #expect(Set(services.map(\.name)) == ["migrate", "server", "projector", "reactor", "deliver"])
        #expect(services.first { $0.name == "projector" }?.replicas == 2)
        let database = try await TestDatabase.create("compose")
        let redis = try await EmbeddedRedis.testServerURL()
        // The image's paths and the containers' host names, as this machine has them.
        func local(_ environment: [String: String]) -> [String: String] {
            var environment = environment
            environment["EVENTLINE_DATABASE_URL"] = database.url
            environment["EVENTLINE_REDIS_URL"] = redis
            // Compose takes it from the operator's environment (and refuses to start without it).
            #expect(environment["EVENTLINE_MASTER_KEY"]?.hasPrefix("${EVENTLINE_MASTER_KEY:?") == true)
            environment["EVENTLINE_MASTER_KEY"] = TestMasterKey.base64
            environment["EVENTLINE_PROJECTIONS_DIR"] = Repository.root + "/Projections"
            environment["PATH"] = "/usr/bin:/bin"
            environment.merge(tolerantDatabaseTimeouts) { $1 }
            return environment
        }
        for service in services {
            #expect(service.environment["EVENTLINE_PROJECTIONS_DIR"] == "/etc/eventline/projections", "\(service.name)")
        }
        let running = ProcessList()
        defer { running.killAll() }
        let started = try await Self.startServices(services, local: local, running: running)
        // Each is up: the server ready, the others' health endpoints live.
        for (name, process, ports) in started {
            let (port, path) = name == "server" ? (ports["--port"]!, "/health/ready") : (ports["--metrics-port"]!, "/health/live")
            try await eventually(timeout: .seconds(60), "\(name) answers \(path)") {
                guard process.isRunning else { throw TestFailure("\(name) exited: \(process.output)") }
                return (try? await LoopbackHTTP.request(port: port, path, timeout: 2))?.status == 200
            }
        }
        let server = try #require(started.first { $0.service == "server" }?.ports["--port"])
        func command(_ path: String, _ body: String) async throws -> [String: Any] {
            let answer = try await LoopbackHTTP.request("POST", port: server, path, body: body)
            #expect(answer.status == 200, "\(path): \(answer.body)")
            return (try? JSONSerialization.jsonObject(with: Data(answer.body.utf8))) as? [String: Any] ?? [:]
        }
        // A webhook for transfers, delivered by the deliver service.
        let receiver = try WebhookReceiver { _ in .status(200) }
        defer { receiver.stop() }
        let hook = try await LoopbackHTTP.request(
            "PUT", port: server, "/v1/consumer-groups/audit",
            body: #"{"categories":["transfer"],"webhook":{"url":"\#(receiver.url)","secret":"s"}}"#)
        #expect(hook.status == 201, "\(hook.body)")
        _ = try await command("/v1/commands/account/c1", #"{"type":"OpenAccount","data":{"owner":"Ada","currency":"EUR"}}"#)
        _ = try await command("/v1/commands/account/c2", #"{"type":"OpenAccount","data":{"owner":"Bo","currency":"EUR"}}"#)
        let deposited = try await command("/v1/commands/account/c1", #"{"type":"DepositMoney","data":{"amount":500}}"#)
        let position = deposited["position"] as? Int ?? 0
        let balance = try await LoopbackHTTP.request(port: server, "/v1/read-models/account_balances/c1?atLeast=\(position)")
        #expect(balance.status == 200, "\(balance.body)")
        #expect(balance.body.contains(#""balance":500"#), "\(balance.body)")
        _ = try await command("/v1/commands/transfer/t1", #"{"type":"StartTransfer","data":{"from":"c1","to":"c2","amount":200}}"#)
        try await eventually(timeout: .seconds(60), "the transfer completes and reaches account_balances") {
            let row = try await LoopbackHTTP.request(port: server, "/v1/read-models/account_balances/c2")
            return row.status == 200 && row.body.contains(#""balance":200"#)
        }
        try await eventually(timeout: .seconds(60), "the transfer's events reach the webhook") {
            receiver.requests.flatMap { WebhookReceiver.messages($0.body) }.contains { $0.stream == "transfer-t1" && $0.version >= 3 }
        }
        // The projectors, the reactor and the deliverer export their lag.
        for (name, _, ports) in started where name != "server" {
            let metrics = try await LoopbackHTTP.request(port: ports["--metrics-port"]!, "/metrics")
            let series = switch name {
            case "reactor": "eventline_reactor_lag_events{reactor=\"transfers\"}"
            case "deliver": "eventline_consumer_group_lag_events{group=\"audit\"}"
            default: "eventline_projection_lag_events{projection=\"account_balances\"}"
            }
            #expect(metrics.body.contains(series), "\(name): \(metrics.body.prefix(2000))")
        }
        for (name, process, _) in started {
            #expect(await process.stop() == 0, "\(name) did not stop cleanly: \(process.output.suffix(2000))")
            // EVENTLINE_LOG_FORMAT=json: every line each process wrote is one JSON object.
            for line in process.output.split(separator: "\n") {
                let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
                #expect(object != nil, "\(name) wrote a line that is not JSON: \(line)")
                #expect(!line.contains("unknown environment variable"), "\(name): \(line)")
            }
        }
    }

    @Test("docker-compose.ha.yml: each Patroni node's configuration passes patroni --validate-config against a live etcd; migrate, the server and two projectors run with its multi-host URLs against a local three-node Patroni cluster; the server writes to the leader, sees the synchronous standby and reads its writes from a standby")
    func highAvailability() async throws {
        let file = "docker-compose.ha.yml"
        let all = try Self.allServices(file: file)
        #expect(Set(all.keys) == ["etcd", "pg1", "pg2", "pg3", "migrate", "server", "projector"])
        let cluster = try await EmbeddedPatroni.start(nodes: 3, synchronous: true)
        defer { cluster.stop() }

        // Patroni's own check of the configuration each node runs with (its variables from the file).
        for name in ["pg1", "pg2", "pg3"] {
            let service = try #require(all[name] as? [String: Any])
            var environment = (service["environment"] as? [String: Any] ?? [:]).mapValues { "\($0)" }
            #expect(environment["PATRONI_NAME"] == name && environment["PATRONI_SCOPE"] == "eventline", "\(name): \(environment)")
            #expect(environment["PATRONI_ETCD3_HOSTS"] == "etcd:2379", "\(name)")
            // Compose's host names and secrets, as this machine has them.
            environment["PATRONI_ETCD3_HOSTS"] = String(cluster.etcdURL.dropFirst("http://".count))
            for (key, value) in environment where value.hasPrefix("${") { environment[key] = "secret" }
            environment["PATH"] = "/usr/bin:/bin"
            let validated = try await runProgram(
                "/usr/bin/patroni", ["--validate-config", Repository.root + "/deploy/patroni/patroni.yml"], environment: environment)
            #expect(validated.status == 0, "\(name): \(validated.stdout) \(validated.stderr)")
        }

        let services = try Self.services(file: file)
        #expect(Set(services.map(\.name)) == ["migrate", "server", "projector"])
        let leader = try await cluster.waitForLeader()
        _ = try await cluster.query(leader, "CREATE DATABASE eventline")
        for node in cluster.nodes {
            try await eventually(timeout: .seconds(30), "\(node.name) has the database") {
                (try? await cluster.query(node, "SELECT count(*) FROM pg_database WHERE datname = 'eventline'")) == "1"
            }
        }
        let hosts = cluster.nodes.map { "127.0.0.1:\($0.port)" }.joined(separator: ",")
        func local(_ environment: [String: String]) throws -> [String: String] {
            var environment = environment
            for key in ["EVENTLINE_DATABASE_URL", "EVENTLINE_READ_DATABASE_URL"] {
                let url = try #require(environment[key])
                #expect(url.contains("@pg1:5432,pg2:5432,pg3:5432/eventline?target_session_attrs="), "\(key): \(url)")
                let attributes = String(url[url.range(of: "target_session_attrs=")!.upperBound...])
                #expect(attributes == (key == "EVENTLINE_DATABASE_URL" ? "read-write" : "prefer-standby"), "\(key): \(url)")
                environment[key] = "postgresql://eventline@\(hosts)/eventline?target_session_attrs=\(attributes)"
            }
            #expect(environment["EVENTLINE_REQUIRE_SYNC_REPLICATION"] == "true")
            environment["EVENTLINE_MASTER_KEY"] = TestMasterKey.base64
            environment["EVENTLINE_PROJECTIONS_DIR"] = Repository.root + "/Projections"
            environment["PATH"] = "/usr/bin:/bin"
            environment.merge(tolerantDatabaseTimeouts) { $1 }
            return environment
        }
        let running = ProcessList()
        defer { running.killAll() }
        let started = try await Self.startServices(services, local: local, running: running)
        let server = try #require(started.first { $0.service == "server" })
        let port = try #require(server.ports["--port"])
        try await eventually(timeout: .seconds(60), "the server is ready") {
            guard server.process.isRunning else { throw TestFailure("the server exited: \(server.process.output)") }
            return (try? await LoopbackHTTP.request(port: port, "/health/ready", timeout: 2))?.status == 200
        }
        let ready = try await LoopbackHTTP.request(port: port, "/health/ready")
        let health = (try? JSONSerialization.jsonObject(with: Data(ready.body.utf8))) as? [String: Any] ?? [:]
        #expect(health["writeNode"] as? String == "127.0.0.1:\(leader.port)", "\(ready.body)")
        #expect((health["synchronousReplication"] as? [String: Any])?["connected"] as? Int == 1, "\(ready.body)")
        #expect((health["readNodes"] as? [[String: Any]])?.count == 3, "\(ready.body)")
        let opened = try await LoopbackHTTP.request(
            "POST", port: port, "/v1/commands/account/ha1", body: #"{"type":"OpenAccount","data":{"owner":"Ada","currency":"EUR"}}"#)
        #expect(opened.status == 200, "\(opened.body)")
        let position = ((try? JSONSerialization.jsonObject(with: Data(opened.body.utf8))) as? [String: Any])?["position"] as? Int ?? 0
        let read = try await LoopbackHTTP.request(port: port, "/v1/streams/account-ha1?atLeast=\(position)")
        #expect(read.status == 200 && read.headers["eventline-served-by"] == "replica", "\(read.headers) \(read.body)")
        let balance = try await LoopbackHTTP.request(port: port, "/v1/read-models/account_balances/ha1?atLeast=\(position)")
        #expect(balance.status == 200 && balance.body.contains(#""owner":"Ada""#), "\(balance.body)")
        for (name, process, _) in started {
            #expect(await process.stop() == 0, "\(name) did not stop cleanly: \(process.output.suffix(2000))")
        }
    }

    @Test("the Dockerfile builds eventctl with a static Swift runtime, and its runtime stage installs the package of every shared library eventctl links (ldd, dpkg -S)")
    func runtimeLibraries() async throws {
        let dockerfile = try String(contentsOfFile: Repository.root + "/Dockerfile", encoding: .utf8)
        #expect(dockerfile.contains("--static-swift-stdlib"))
        #expect(dockerfile.contains("USER eventline") && dockerfile.contains(#"ENTRYPOINT ["eventctl"]"#) && dockerfile.contains("HEALTHCHECK"))
        #expect(dockerfile.contains("COPY Projections /out/etc/eventline/projections"))
        // The last stage's apt-get install line.
        let stages = dockerfile.components(separatedBy: "\nFROM ")
        let runtime = try #require(stages.last)
        #expect(runtime.hasPrefix("debian:bookworm-slim"))
        let install = try #require(runtime.range(of: "apt-get install"))
        let rest = runtime[install.upperBound...].prefix { $0 != "&" }
        let packages = Set(rest.split(whereSeparator: { $0 == " " || $0 == "\\" || $0 == "\n" }).map(String.init).filter { !$0.hasPrefix("-") })

        // The libraries eventctl names itself (the others come with their packages' dependencies),
        // where the loader finds them.
        let dynamic = try await runProgram("/usr/bin/readelf", ["-d", try Repository.eventctl])
        #expect(dynamic.status == 0, "\(dynamic.stderr)")
        let needed = Set(dynamic.stdout.split(separator: "\n").compactMap { line -> String? in
            guard line.contains("(NEEDED)"), let open = line.firstIndex(of: "["), let close = line.lastIndex(of: "]") else { return nil }
            return String(line[line.index(after: open)..<close])
        })
        let ldd = try await runProgram("/usr/bin/ldd", [try Repository.eventctl])
        #expect(ldd.status == 0, "\(ldd.stderr)")
        let toolchain = URL(fileURLWithPath: try await runProgram("/usr/bin/env", ["which", "swift"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines))
            .resolvingSymlinksInPath().deletingLastPathComponent().deletingLastPathComponent().path
        var checked = 0
        for line in ldd.stdout.split(separator: "\n") {
            guard let arrow = line.range(of: "=> ") else { continue }  // linux-vdso, the loader
            guard needed.contains(line[..<arrow.lowerBound].trimmingCharacters(in: .whitespaces)) else { continue }
            let path = String(line[arrow.upperBound...].prefix { $0 != " " })
            // The Swift runtime: linked statically in the image (--static-swift-stdlib).
            if path.hasPrefix(toolchain) { continue }
            var owner = try await runProgram("/usr/bin/dpkg", ["-S", path])
            if owner.status != 0 {
                owner = try await runProgram("/usr/bin/dpkg", ["-S", URL(fileURLWithPath: path).resolvingSymlinksInPath().path])
            }
            #expect(owner.status == 0, "no Debian package provides \(path): \(owner.stderr)")
            let package = String(owner.stdout.prefix { $0 != ":" })
            #expect(packages.contains(package), "\(path) comes from \(package), which the runtime stage does not install (\(packages.sorted()))")
            checked += 1
        }
        #expect(checked >= 3, "\(ldd.stdout)")
    }
}

/// The eventctl check of variable names, from the outside: `eventctl` warns about the same.
enum EnvironmentCheck {
    static func unknown(_ environment: [String: String]) -> [String] {
        let known = Set(((try? String(contentsOfFile: Repository.root + "/README.md", encoding: .utf8)) ?? "")
            .components(separatedBy: "`").filter { $0.hasPrefix("EVENTLINE_") || $0.hasPrefix("OTEL_") })
        return environment.keys.filter { !known.contains($0) }.sorted()
    }
}

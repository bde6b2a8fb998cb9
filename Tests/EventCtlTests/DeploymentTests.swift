import EmbeddedServers
import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Testing

@Suite("eventctl deployed alone", .serialized)
struct DeploymentTests {
    /// A copy of the built eventctl alone in an empty directory: no Schemas/ beside it or above it.
    static func lonelyEventctl() throws -> (binary: String, directory: String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("alone-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let binary = directory + "/eventctl"
        try FileManager.default.copyItem(atPath: try Repository.eventctl, toPath: binary)
        return (binary, directory)
    }

    /// Starts `eventctl serve` on a free port (with `environment` added) and waits until it answers.
    static func serve(
        _ binary: String, url: String, directory: String? = nil, extra: [String] = [], environment: [String: String] = [:],
        defaultTimeouts: Bool = false
    ) async throws -> (process: BackgroundProcess, port: Int) {
        let port = try FreePort.pick()
        let process = try BackgroundProcess(
            binary, ["serve", "--port", "\(port)"] + extra,
            environment: (defaultTimeouts ? [:] : tolerantDatabaseTimeouts).merging(environment) { $1 }.merging(["EVENTLINE_DATABASE_URL": url]) { $1 },
            currentDirectory: directory)
        try await eventually("eventctl serve answers on \(port)") {
            guard process.isRunning else { throw TestFailure("eventctl serve exited: \(process.output)") }
            return await LoopbackHTTP.answers(port: port)
        }
        return (process, port)
    }

    @Test("a copy of eventctl alone in an empty directory migrates a database, serves commands and GET /openapi.yaml")
    func selfContainedBinary() async throws {
        let (binary, directory) = try Self.lonelyEventctl()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let database = try await TestDatabase.create("alone")
        let migrate = try await runProgram(binary, ["migrate"], environment: ["EVENTLINE_DATABASE_URL": database.url], currentDirectory: directory)
        #expect(migrate.status == 0, "\(migrate.stderr)")
        #expect(migrate.stdout.contains("applied 0001_event_log.sql"), "\(migrate.stdout)")

        let (server, port) = try await Self.serve(binary, url: database.url, directory: directory)
        let spec = try await LoopbackHTTP.request(port: port, "/openapi.yaml")
        #expect(spec.status == 200)
        #expect(spec.headers["content-type"] == "application/yaml")
        let file = try String(contentsOfFile: Repository.root + "/Schemas/openapi.yaml", encoding: .utf8)
        #expect(spec.body == file, "the served document is not Schemas/openapi.yaml as built")
        let opened = try await LoopbackHTTP.request(
            "POST", port: port, "/v1/commands/account/7", body: #"{"type":"OpenAccount","data":{"owner":"Ada","currency":"EUR"}}"#)
        #expect(opened.status == 200, "\(opened.body)")
        #expect(await server.stop() == 0, "\(server.output)")
    }

    @Test("serve, project and react refuse an unmigrated database in one line naming the fix; serve --migrate migrates and serves")
    func unmigratedDatabase() async throws {
        let (binary, directory) = try Self.lonelyEventctl()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let database = try await TestDatabase.create("unmigrated")
        let environment = ["EVENTLINE_DATABASE_URL": database.url]
        for arguments in [["serve", "--port", "0"], ["project", "--projections-dir", Repository.root + "/Projections"], ["react"]] {
            let output = try await runProgram(binary, arguments, environment: environment, timeout: 30, currentDirectory: directory)
            EventCtlTests.expectOneLineError(output, containing: "run eventctl migrate, or pass --migrate")
            #expect(output.stderr.contains("the database is not migrated: \(try Migration.embedded().count) pending migrations"), "\(output.stderr)")
        }
        // Half migrated: the one line says the schema is out of date, and what is missing.
        let all = try Migration.embedded()
        try await Migrator(databaseURL: database.url, migrations: Array(all.prefix(3))).migrate()
        let partly = try await runProgram(binary, ["react"], environment: environment, timeout: 30, currentDirectory: directory)
        EventCtlTests.expectOneLineError(partly, containing: "out of date")
        #expect(partly.stderr.contains(all[3].name), "\(partly.stderr)")

        let (server, port) = try await Self.serve(binary, url: database.url, directory: directory, extra: ["--migrate"])
        let ready = try await LoopbackHTTP.request(port: port, "/health/ready")
        #expect(ready.status == 200, "\(ready.body)")
        #expect(await server.stop() == 0, "\(server.output)")
        let status = try await runProgram(binary, ["status"], environment: environment, currentDirectory: directory)
        #expect(status.stdout.contains(", 0 pending"), "\(status.stdout)")
    }
}

@Suite("The live feed of a server process")
struct LiveFeedProcessTests {
    @Test("SIGTERM ends a live stream with a final comment and the server exits at once; the client resumes elsewhere with Last-Event-ID")
    func shutdownEndsStreams() async throws {
        let test = try await TestStore.make("liveterm")
        for n in 1...3 { _ = try await test.store.append(to: "thing-\(n)", events: [NewEvent(type: "Made", data: Data("{}".utf8))]) }
        let (server, port) = try await DeploymentTests.serve(
            try Repository.eventctl, url: test.url, environment: ["EVENTLINE_LIVE_HEARTBEAT": "0.2"])
        let request = Array("GET /v1/events/live?after=1 HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8)
        // The stream stays open until the server goes: its answer is everything it sent.
        let stream = Task { try await LoopbackHTTP.exchange(host: "127.0.0.1", port: port, request, timeout: 30) }
        try await Task.sleep(for: .seconds(1))
        let started = ContinuousClock.now
        let status = await server.stop(signal: SIGTERM, timeout: 15)
        let took = ContinuousClock.now - started
        let answer = try await stream.value.replacingOccurrences(of: "\r\n", with: "\n")
        #expect(status == 0, "\(server.output)")
        #expect(took < .seconds(10), "a live stream must not hold the shutdown: \(took)")
        let ids = answer.split(separator: "\n").filter { $0.hasPrefix("id: ") }.map { String($0.dropFirst(4)) }
        #expect(ids == ["2", "3"], "\(answer)")
        #expect(answer.contains(": heartbeat"))
        #expect(answer.contains(": the server is shutting down; reconnect after 3"), "\(answer)")

        // Another server process: the client resumes with the last id it has.
        let (again, port2) = try await DeploymentTests.serve(try Repository.eventctl, url: test.url)
        _ = try await test.store.append(to: "thing-4", events: [NewEvent(type: "Made", data: Data("{}".utf8))])
        let resumed = try await LoopbackHTTP.exchange(
            host: "127.0.0.1", port: port2,
            Array("GET /v1/events/live HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: 3\r\n\r\n".utf8), timeout: 2)
        #expect(resumed.replacingOccurrences(of: "\r\n", with: "\n").split(separator: "\n").filter { $0.hasPrefix("id: ") } == ["id: 4"])
        await again.stop()
        await test.store.shutdown()
    }
}

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

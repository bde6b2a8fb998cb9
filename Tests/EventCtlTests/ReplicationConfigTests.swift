import EventlineTestSupport
import Foundation
import Testing

/// Replication settings that cannot work are one clear line at start, never a crash.
@Suite("Replication settings")
struct ReplicationConfigTests {
    static func serve(_ environment: [String: String]) async throws -> ProcessOutput {
        var environment = environment
        environment["EVENTLINE_HTTP_PORT"] = "0"
        // No projections directory: nothing to warn about before the line under test.
        environment["EVENTLINE_PROJECTIONS_DIR"] = "/nonexistent/projections"
        return try await runProgram(try Repository.eventctl, ["serve"], environment: environment, timeout: 60)
    }

    @Test("a malformed multi-host URL, an unknown target_session_attrs and a malformed read URL are each one line")
    func badURLs() async throws {
        var output = try await Self.serve(["EVENTLINE_DATABASE_URL": "postgres://eventline@127.0.0.1:5432,127.0.0.1:x/db"])
        EventCtlTests.expectOneLineError(output, containing: "EVENTLINE_DATABASE_URL: not a valid PostgreSQL connection string")
        output = try await Self.serve(["EVENTLINE_DATABASE_URL": "postgres://eventline@127.0.0.1:5432,127.0.0.1:5433/db?target_session_attrs=fastest"])
        EventCtlTests.expectOneLineError(output, containing: "target_session_attrs=fastest is not one of")
        let database = try await TestDatabase.create("replconfig")
        output = try await Self.serve(["EVENTLINE_DATABASE_URL": database.url, "EVENTLINE_READ_DATABASE_URL": "host=a port=5432 bogus=1"])
        EventCtlTests.expectOneLineError(output, containing: "EVENTLINE_READ_DATABASE_URL: not a valid PostgreSQL connection string")
        output = try await Self.serve(["EVENTLINE_DATABASE_URL": database.url, "EVENTLINE_REQUIRE_SYNC_REPLICATION": "maybe"])
        EventCtlTests.expectOneLineError(output, containing: "EVENTLINE_REQUIRE_SYNC_REPLICATION must be true or false")
    }

    @Test("EVENTLINE_REQUIRE_SYNC_REPLICATION=true refuses, in one line, a primary with no synchronous standby configured")
    func requireSynchronous() async throws {
        let test = try await TestStore.make("replsync")
        let output = try await Self.serve([
            "EVENTLINE_DATABASE_URL": test.url, "EVENTLINE_REQUIRE_SYNC_REPLICATION": "true", "EVENTLINE_PERSONAL_DATA": "off",
        ])
        EventCtlTests.expectOneLineError(output, containing: "has no synchronous standby configured")
    }
}

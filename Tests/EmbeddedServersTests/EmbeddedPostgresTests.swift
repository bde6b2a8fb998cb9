#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import EmbeddedServers
import Foundation
import Testing

// Missing binaries make `start()` throw an EmbeddedServerError carrying the install hint, and
// a thrown error fails the test: these tests never skip.
@Suite("EmbeddedPostgres")
struct EmbeddedPostgresTests {
    @Test("A private PostgreSQL answers `select 1` through psql at its URL")
    func answersSelectOne() async throws {
        let server = try await EmbeddedPostgres.start()
        defer { server.stop() }

        #expect(server.host == "127.0.0.1")
        #expect(server.superuser == "eventline")
        #expect(server.url() == "postgresql://eventline@127.0.0.1:\(server.port)/postgres")
        #expect(server.url(database: "other") == "postgresql://eventline@127.0.0.1:\(server.port)/other")
        #expect(try psql(server, "select 1") == "1")
    }

    @Test("The superuser name and -c settings from Options reach the server, defaults stay in force")
    func optionsReachTheServer() async throws {
        let server = try await EmbeddedPostgres.start(
            .init(settings: ["max_connections": "57", "application_name": "embedded-test"], superuser: "tester")
        )
        defer { server.stop() }

        #expect(server.url().hasPrefix("postgresql://tester@127.0.0.1:"))
        #expect(try psql(server, "select current_user") == "tester")
        #expect(try psql(server, "show max_connections") == "57")
        #expect(try psql(server, "show application_name") == "psql")  // a client setting, overridden per session
        #expect(try psql(server, "show fsync") == "on")
        #expect(try psql(server, "show synchronous_commit") == "on")
        #expect(try psql(server, "show shared_buffers") == "128MB")
        #expect(try psql(server, "show listen_addresses") == "127.0.0.1")
        #expect(try psql(server, "show unix_socket_directories") == server.directory)
        #expect(try psql(server, "show server_encoding") == "UTF8")
    }

    @Test("When running as root, PostgreSQL runs as an unprivileged user that owns the data directory")
    func dropsRootPrivileges() async throws {
        let server = try await EmbeddedPostgres.start()
        defer { server.stop() }

        var info = stat()
        try #require(stat(server.dataDirectory, &info) == 0)
        if geteuid() == 0 {
            #expect(info.st_uid != 0, "the data directory must not belong to root")
            #expect(try psql(server, "select 1") == "1")
        } else {
            #expect(info.st_uid == geteuid())
        }
    }

    @Test("stop() shuts PostgreSQL down, frees its port, deletes its directory, and is idempotent")
    func stopCleansUp() async throws {
        let server = try await EmbeddedPostgres.start()
        let port = server.port
        #expect(acceptsConnections(port: port))
        #expect(directoryExists(server.directory))
        #expect(kill(server.processIdentifier, 0) == 0)

        server.stop()

        #expect(server.isStopped)
        #expect(!acceptsConnections(port: port))
        #expect(!directoryExists(server.directory))
        #expect(kill(server.processIdentifier, 0) != 0, "the postmaster must be gone and reaped")
        server.stop()
        #expect(!acceptsConnections(port: port))
    }

    @Test("Two PostgreSQL servers started at once get different ports and both work")
    func twoServersAtOnce() async throws {
        async let first = EmbeddedPostgres.start()
        async let second = EmbeddedPostgres.start()
        let servers = try await [first, second]
        defer { servers.forEach { $0.stop() } }

        #expect(servers[0].port != servers[1].port)
        #expect(servers[0].directory != servers[1].directory)
        #expect(try psql(servers[0], "select 1") == "1")
        #expect(try psql(servers[1], "select 2") == "2")
    }

    @Test("A fixed port that is already taken fails the start with the server's log tail")
    func takenPortIsReported() async throws {
        let occupied = try occupyPort()
        defer { close(occupied.fd) }

        let error = await #expect(throws: EmbeddedServerError.self) {
            _ = try await EmbeddedPostgres.start(.init(port: occupied.port))
        }
        #expect(error?.description.contains("log tail") == true)
        #expect(error?.description.contains("could not create any TCP/IP sockets") == true)
    }

    @Test("Concurrent shared() callers all get the same running PostgreSQL")
    func sharedIsOneServer() async throws {
        let identities = try await withThrowingTaskGroup(of: ObjectIdentifier.self) { group in
            for _ in 0..<16 {
                group.addTask { ObjectIdentifier(try await EmbeddedPostgres.shared()) }
            }
            return try await group.reduce(into: Set<ObjectIdentifier>()) { $0.insert($1) }
        }
        #expect(identities.count == 1)

        let server = try await EmbeddedPostgres.shared()
        #expect(!server.isStopped)
        #expect(try psql(server, "select 1") == "1")
    }

    @Test("testServerURL() uses EVENTLINE_TEST_DATABASE_URL when set, else the shared server")
    func testServerURLHonoursTheEnvironment() async throws {
        let override = "postgresql://ci@db.example:5432/ci"
        #expect(try await EmbeddedPostgres.testServerURL(environment: ["EVENTLINE_TEST_DATABASE_URL": override]) == override)

        let shared = try await EmbeddedPostgres.shared()
        #expect(try await EmbeddedPostgres.testServerURL(environment: [:]) == shared.url())
        #expect(try await EmbeddedPostgres.testServerURL(environment: ["EVENTLINE_TEST_DATABASE_URL": ""]) == shared.url())
    }

    @Test("A SIGKILLed process still takes its PostgreSQL down through the watchdog")
    func watchdogStopsServerOfKilledProcess() async throws {
        let result = await #expect(processExitsWith: .signal(SIGKILL), observing: [\.standardOutputContent]) {
            let server = try await EmbeddedPostgres.start()
            report("SERVER \(server.port) \(server.directory) \(server.processIdentifier)")
            kill(getpid(), SIGKILL)
        }
        let fields = try #require(reportedFields(result?.standardOutputContent ?? [], key: "SERVER"))
        let port = try #require(Int(fields[0]))
        let directory = fields[1]

        #expect(await eventually(within: .seconds(20)) { !acceptsConnections(port: port) })
        #expect(await eventually(within: .seconds(20)) { !directoryExists(directory) })
    }

    @Test("A process that exits normally stops its PostgreSQL before it is gone (atexit)")
    func atExitStopsServer() async throws {
        let result = await #expect(processExitsWith: .success, observing: [\.standardOutputContent]) {
            let server = try await EmbeddedPostgres.start()
            report("SERVER \(server.port) \(server.directory)")
            exit(0)
        }
        let fields = try #require(reportedFields(result?.standardOutputContent ?? [], key: "SERVER"))
        let port = try #require(Int(fields[0]))

        // No waiting: the atexit handler has already stopped it by the time the process is gone.
        #expect(!acceptsConnections(port: port))
        #expect(!directoryExists(fields[1]))
    }

    @Test("A bad EVENTLINE_PG_BIN is reported with what it must contain")
    func badBinDirectoryIsReported() async throws {
        let result = await #expect(processExitsWith: .success, observing: [\.standardOutputContent]) {
            setenv("EVENTLINE_PG_BIN", "/nonexistent/eventline-pg-bin", 1)
            do {
                _ = try await EmbeddedPostgres.start()
                report("ERROR none")
            } catch {
                report("ERROR \(error)")
            }
            exit(0)
        }
        let fields = try #require(reportedFields(result?.standardOutputContent ?? [], key: "ERROR"))
        #expect(fields.joined(separator: " ").contains("EVENTLINE_PG_BIN=/nonexistent/eventline-pg-bin does not contain"))
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import EmbeddedServers
import Foundation
import Testing

@Suite("EmbeddedRedis")
struct EmbeddedRedisTests {
    @Test("A private Redis answers PING with +PONG at its URL")
    func answersPing() async throws {
        let server = try await EmbeddedRedis.start()
        defer { server.stop() }

        #expect(server.host == "127.0.0.1")
        #expect(server.url == "redis://127.0.0.1:\(server.port)")
        #expect(redisCommand(port: server.port, "PING") == "+PONG\r\n")
        #expect(redisCommand(port: server.port, "SET greeting hello") == "+OK\r\n")
        // Nothing may be persisted: the server is private and throwaway.
        #expect(redisCommand(port: server.port, "CONFIG GET save")?.hasPrefix("*2") == true)
    }

    @Test("stop() shuts Redis down, frees its port, deletes its directory, and is idempotent")
    func stopCleansUp() async throws {
        let server = try await EmbeddedRedis.start()
        let port = server.port
        #expect(redisCommand(port: port, "PING") == "+PONG\r\n")

        server.stop()

        #expect(server.isStopped)
        #expect(!acceptsConnections(port: port))
        #expect(!directoryExists(server.directory))
        #expect(kill(server.processIdentifier, 0) != 0)
        server.stop()
    }

    @Test("Two Redis servers started at once get different ports and both answer")
    func twoServersAtOnce() async throws {
        async let first = EmbeddedRedis.start()
        async let second = EmbeddedRedis.start()
        let servers = try await [first, second]
        defer { servers.forEach { $0.stop() } }

        #expect(servers[0].port != servers[1].port)
        #expect(redisCommand(port: servers[0].port, "PING") == "+PONG\r\n")
        #expect(redisCommand(port: servers[1].port, "PING") == "+PONG\r\n")
    }

    @Test("Extra arguments from Options reach redis-server")
    func extraArgumentsReachTheServer() async throws {
        let server = try await EmbeddedRedis.start(.init(extraArguments: ["--databases", "3"]))
        defer { server.stop() }

        #expect(redisCommand(port: server.port, "SELECT 2") == "+OK\r\n")
        #expect(redisCommand(port: server.port, "SELECT 3")?.hasPrefix("-ERR") == true)
    }

    @Test("Start-up still succeeds when extra arguments rename INFO away")
    func readinessWithoutInfo() async throws {
        let server = try await EmbeddedRedis.start(.init(extraArguments: ["--rename-command", "INFO", ""]))
        defer { server.stop() }

        #expect(redisCommand(port: server.port, "PING") == "+PONG\r\n")
        #expect(redisCommand(port: server.port, "INFO server")?.hasPrefix("-ERR") == true)
    }

    @Test("A fixed port that is already taken fails the start with the server's log tail")
    func takenPortIsReported() async throws {
        let occupied = try occupyPort()
        defer { close(occupied.fd) }

        let error = await #expect(throws: EmbeddedServerError.self) {
            _ = try await EmbeddedRedis.start(.init(port: occupied.port))
        }
        #expect(error?.description.contains("log tail") == true)
        #expect(error?.description.contains("Address already in use") == true)
    }

    @Test("Concurrent shared() callers all get the same running Redis; testServerURL() honours EVENTLINE_TEST_REDIS_URL")
    func sharedIsOneServer() async throws {
        let identities = try await withThrowingTaskGroup(of: ObjectIdentifier.self) { group in
            for _ in 0..<16 {
                group.addTask { ObjectIdentifier(try await EmbeddedRedis.shared()) }
            }
            return try await group.reduce(into: Set<ObjectIdentifier>()) { $0.insert($1) }
        }
        #expect(identities.count == 1)

        let shared = try await EmbeddedRedis.shared()
        #expect(redisCommand(port: shared.port, "PING") == "+PONG\r\n")
        #expect(try await EmbeddedRedis.testServerURL(environment: [:]) == shared.url)
        let override = "redis://cache.example:6379"
        #expect(try await EmbeddedRedis.testServerURL(environment: ["EVENTLINE_TEST_REDIS_URL": override]) == override)
    }

    @Test("A SIGKILLed process still takes its Redis down through the watchdog")
    func watchdogStopsServerOfKilledProcess() async throws {
        let result = await #expect(processExitsWith: .signal(SIGKILL), observing: [\.standardOutputContent]) {
            let server = try await EmbeddedRedis.start()
            report("SERVER \(server.port) \(server.directory)")
            kill(getpid(), SIGKILL)
        }
        let fields = try #require(reportedFields(result?.standardOutputContent ?? [], key: "SERVER"))
        let port = try #require(Int(fields[0]))

        #expect(await eventually(within: .seconds(20)) { !acceptsConnections(port: port) })
        #expect(await eventually(within: .seconds(20)) { !directoryExists(fields[1]) })
    }
}

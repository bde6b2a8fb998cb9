import Cache
import EmbeddedServers
import Foundation
import Testing

@Suite("RedisClient failures and recovery")
struct RedisRecoveryTests {
    @Test("With the server stopped calls fail fast with .connection; once it restarts on the same port the same client works again")
    func serverStopsAndRestarts() async throws {
        let server = try await EmbeddedRedis.start()
        defer { server.stop() }
        let port = server.port
        let client = RedisClient(configuration: configuration(for: server, poolSize: 2))
        defer { client.shutdown() }
        try await client.set("before", "restart")

        server.stop()
        for _ in 0..<4 {
            let error = await #expect(throws: RedisError.self) { try await client.get("before") }
            #expect(error?.code == .connection)
            #expect(error?.isConnectionError == true)
        }

        let restarted = try await EmbeddedRedis.start(.init(port: port))
        defer { restarted.stop() }
        // Nothing is persisted, so the new server is empty.
        #expect(try await client.get("before") == nil)
        try await client.set("after", "restart")
        #expect(try await client.get("after") == Array("restart".utf8))
    }

    @Test("A restart while the client sits idle costs no failed call: stale pooled connections are replaced before use")
    func restartWhileIdle() async throws {
        let server = try await EmbeddedRedis.start()
        defer { server.stop() }
        let port = server.port
        let client = RedisClient(configuration: configuration(for: server, poolSize: 4))
        defer { client.shutdown() }
        // Open every pooled connection.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<16 { group.addTask { try await client.ping() } }
            try await group.waitForAll()
        }
        #expect(try await client.send(["CLIENT", "LIST"]).string?.split(separator: "\n").count == 4)

        server.stop()
        let restarted = try await EmbeddedRedis.start(.init(port: port))
        defer { restarted.stop() }

        for round in 0..<8 { try await client.set("key-\(round)", "value") }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<16 { group.addTask { try await client.ping() } }
            try await group.waitForAll()
        }
    }

    @Test("A reply slower than commandTimeout fails with .timeout, and the next call works on a new connection")
    func commandTimeout() async throws {
        let client = try await sharedClient(poolSize: 1, commandTimeout: .milliseconds(300))
        defer { client.shutdown() }
        let key = uniqueKey()
        let before = try await client.send(["CLIENT", "ID"]).int

        let error = await #expect(throws: RedisError.self) { try await client.send(["BLPOP", key, "3"]) }
        #expect(error?.code == .timeout)

        try await client.ping()
        #expect(try await client.send(["CLIENT", "ID"]).int != before)
    }

    @Test("Nothing listening on the port fails with .connection at once, not after the connect timeout")
    func nothingListening() async throws {
        let server = try await EmbeddedRedis.start()
        let port = server.port
        server.stop()
        let client = RedisClient(configuration: RedisConfiguration(port: port, connectTimeout: .seconds(30)))
        defer { client.shutdown() }
        let error = await #expect(throws: RedisError.self) { try await client.ping() }
        #expect(error?.code == .connection)
        #expect(error?.errno == ECONNREFUSED)
    }

    @Test("A host that cannot be resolved fails with .connection naming the host")
    func unresolvableHost() async throws {
        let client = RedisClient(configuration: RedisConfiguration(host: "no-such-host.invalid", connectTimeout: .seconds(2)))
        defer { client.shutdown() }
        let error = await #expect(throws: RedisError.self) { try await client.ping() }
        #expect(error?.code == .connection)
        #expect(error?.message.contains("no-such-host.invalid") == true)
    }

    @Test("AUTH: the password from the URL is percent-decoded and sent on connect; a wrong or missing one is refused")
    func authentication() async throws {
        // EmbeddedRedis probes readiness with an unauthenticated PING, so the password is set
        // once the server runs.
        let server = try await EmbeddedRedis.start()
        defer { server.stop() }
        let admin = RedisClient(configuration: configuration(for: server, poolSize: 1))
        defer { admin.shutdown() }
        try await admin.send(["ACL", "SETUSER", "alice", "on", ">alice pw", "~*", "&*", "+@all"])
        try await admin.send(["CONFIG", "SET", "requirepass", "s3:c/r@t"])

        let withPassword = try RedisClient(url: "redis://:s3%3Ac%2Fr%40t@127.0.0.1:\(server.port)/2")
        defer { withPassword.shutdown() }
        try await withPassword.set("k", "v")
        #expect(try await withPassword.send(["ACL", "WHOAMI"]).string == "default")
        #expect(try await withPassword.send(["CLIENT", "INFO"]).string?.contains(" db=2 ") == true)

        let asAlice = try RedisClient(url: "redis://alice:alice%20pw@127.0.0.1:\(server.port)")
        defer { asAlice.shutdown() }
        #expect(try await asAlice.send(["ACL", "WHOAMI"]).string == "alice")

        let wrong = try RedisClient(url: "redis://:wrong@127.0.0.1:\(server.port)")
        defer { wrong.shutdown() }
        let refused = await #expect(throws: RedisError.self) { try await wrong.ping() }
        #expect(refused?.code == .connection)
        #expect(refused?.serverCode == "WRONGPASS")
        #expect(refused?.message.contains("authentication failed") == true)

        let without = try RedisClient(url: "redis://127.0.0.1:\(server.port)")
        defer { without.shutdown() }
        let missing = await #expect(throws: RedisError.self) { try await without.get("k") }
        #expect(missing?.code == .server)
        #expect(missing?.serverCode == "NOAUTH")
    }
}

import Cache
import EmbeddedServers
import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import Projector
import Testing
import ReadModels

@Suite("A hung Redis", .serialized)
struct HungRedisTests {
    @Test("Redis stopped (SIGSTOP): reads go to PostgreSQL within the 250 ms cap, the breaker stops asking, the projector keeps up; all back once Redis continues")
    func stoppedRedis() async throws {
        let redis = try await EmbeddedRedis.start()
        defer { redis.stop() }
        // The client would wait ten minutes for a reply: only the cache's read cap and breaker
        // can answer reads, and let the projector go on, while Redis is stopped.
        let client = RedisClient(configuration: try RedisConfiguration(url: redis.url, connectTimeout: .seconds(5), commandTimeout: .seconds(600)))
        defer { client.shutdown() }
        let cache = ReadModelCache(client: client, ttlSeconds: 60, readTimeout: .milliseconds(250), breakerCooldown: .seconds(5))
        var server = try await TestServer.make("hungredis")
        server.cache = cache
        let projector = try startProjector(server.test, cache: cache)
        defer { projector.cancel() }
        // Whatever happens, Redis continues before it is stopped for good.
        defer { kill(redis.processIdentifier, SIGCONT) }
        try await server.run { http in
            try await http.command("h1", "OpenAccount", #"{"owner":"Hu","currency":"EUR"}"#)
            var position = http.position(of: try await http.command("h1", "DepositMoney", #"{"amount":100}"#))
            _ = try await http.waitCaughtUp("account_balances", position: position)
            _ = try await http.send(.get, "/v1/read-models/account_balances/h1")
            #expect(try await http.send(.get, "/v1/read-models/account_balances/h1").headers[HTTPField.Name("X-Cache")!] == "hit")

            kill(redis.processIdentifier, SIGSTOP)
            var slowest = Duration.zero
            var sawOpen = false
            for _ in 0..<10 {
                let started = ContinuousClock.now
                let response = try await http.send(.get, "/v1/read-models/account_balances/h1")
                slowest = max(slowest, ContinuousClock.now - started)
                #expect(response.status == .ok)
                #expect(response.json["balance"] as? Int == 100)
                #expect(response.headers[HTTPField.Name("X-Cache")!] == "miss")
                // On a busy machine the cool-down can pass during the reads; once open is enough.
                if cache.isCircuitOpen { sawOpen = true }
            }
            // A figure for the log, not a bound: a read that waited for Redis would not have
            // been answered at all within the test client's 20 s.
            print("hung Redis: slowest of 10 reads \(slowest)")
            #expect(sawOpen, "the breaker did not open during 10 failed reads")

            // The projector's invalidations fail fast: it keeps up, and reads see the write.
            let started = ContinuousClock.now
            position = http.position(of: try await http.command("h1", "DepositMoney", #"{"amount":5}"#))
            _ = try await http.waitCaughtUp("account_balances", position: position, within: .seconds(120))
            print("hung Redis: a write projected and visible after \(ContinuousClock.now - started)")
            #expect(try await http.send(.get, "/v1/read-models/account_balances/h1").json["balance"] as? Int == 105)

            kill(redis.processIdentifier, SIGCONT)
            // After the cool-down the cache is used again, with the current row.
            try await eventually(timeout: .seconds(60), "the cache serves again") {
                let response = try await http.send(.get, "/v1/read-models/account_balances/h1")
                #expect(response.json["balance"] as? Int == 105)
                return response.headers[HTTPField.Name("X-Cache")!] == "hit"
            }
            #expect(!cache.isCircuitOpen)
        }
    }
}

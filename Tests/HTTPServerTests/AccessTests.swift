import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import PostgresClient
import Testing

@Suite("Access: API keys and rate limits", .serialized)
struct AccessTests {
    static func bearer(_ key: String) -> HTTPFields { [.authorization: "Bearer \(key)"] }

    @Test("SHA-256 matches PostgreSQL's for assorted inputs")
    func sha256() async throws {
        let test = try await TestStore.make("sha")
        for input in ["", "abc", String(repeating: "a", count: 55), String(repeating: "b", count: 56), String(repeating: "é", count: 100), "el_0123abcd_" + String(repeating: "f", count: 48)] {
            let expected = try await test.sql { conn in
                try conn.query("SELECT encode(sha256(convert_to(\(input), 'UTF8')), 'hex')").first!.decode(0, as: String.self)
            }
            #expect(SHA256.hex(Array(input.utf8)) == expected, "\(input.prefix(10))")
        }
        await test.store.shutdown()
    }

    @Test("with keys in force: 401 without a key, 403 with too narrow a scope, health stays open; revoked keys stop working")
    func apiKeys() async throws {
        let server = try await TestServer.make("httpkeys") { $0.apiKeyRefresh = .milliseconds(100) }
        let reader = try await server.test.store.createAPIKey(scope: .read, name: "analyst").key
        let writer = try await server.test.store.createAPIKey(scope: .commands).key
        let admin = try await server.test.store.createAPIKey(scope: .admin)
        try await server.run { client in
            #expect(try await client.send(.get, "/health/live").status == .ok)
            #expect(try await client.send(.get, "/health/ready").status == .ok)
            var response = try await client.command("1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#)
            #expect(response.status == .unauthorized)
            #expect(response.headers[.wwwAuthenticate] != nil)
            #expect(response.isProblem)
            #expect(try await client.command("1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#, headers: Self.bearer("el_nope_nope")).status == .unauthorized)
            response = try await client.command("1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#, headers: Self.bearer(reader))
            #expect(response.status == .forbidden)
            #expect(try await client.command("1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#, headers: Self.bearer(writer)).status == .ok)
            #expect(try await client.send(.get, "/v1/streams/account-1", headers: Self.bearer(reader)).status == .ok)
            #expect(try await client.send(.get, "/v1/streams/account-1", headers: Self.bearer(writer)).status == .ok)
            #expect(try await client.send(.get, "/metrics", headers: Self.bearer(writer)).status == .forbidden)
            #expect(try await client.send(.get, "/metrics", headers: Self.bearer(admin.key)).status == .ok)
            #expect(try await client.send(.get, "/v1/events").status == .unauthorized)
            // Consumer groups: admins create, change, delete and retry; a read key consumes.
            let group = #"{"categories":["account"]}"#
            #expect(try await client.send(.put, "/v1/consumer-groups/g", json: group, headers: Self.bearer(writer)).status == .forbidden)
            #expect(try await client.send(.put, "/v1/consumer-groups/g", json: group, headers: Self.bearer(admin.key)).status == .created)
            let fetched = try await client.send(.post, "/v1/consumer-groups/g/fetch", json: #"{"consumer":"c"}"#, headers: Self.bearer(reader))
            #expect(fetched.status == .ok && fetched.text.contains("AccountOpened"), "\(fetched.text)")
            #expect(try await client.send(.get, "/v1/consumer-groups/g", headers: Self.bearer(reader)).status == .ok)
            #expect(try await client.send(.post, "/v1/consumer-groups/g/parked/retry", headers: Self.bearer(writer)).status == .forbidden)
            #expect(try await client.send(.delete, "/v1/consumer-groups/g", headers: Self.bearer(writer)).status == .forbidden)
            #expect(try await client.send(.post, "/v1/consumer-groups/g/parked/retry", headers: Self.bearer(admin.key)).status == .ok)
            #expect(try await client.send(.delete, "/v1/consumer-groups/g", headers: Self.bearer(admin.key)).status == .noContent)

            #expect(try await server.test.store.revokeAPIKey(id: admin.record.id))
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await client.send(.get, "/metrics", headers: Self.bearer(admin.key)).status == .unauthorized)
        }
        #expect(try await server.test.store.headPosition() == 1)
    }

    @Test("over the rate limit: 429 with Retry-After and RateLimit headers, per client")
    func rateLimits() async throws {
        let server = try await TestServer.make("httprate") {
            // One token an hour: however slowly a loaded machine sends the five requests, no
            // token comes back between them.
            $0.rateLimit = RateLimit(perSecond: 1.0 / 3600, burst: 3)
            $0.apiKeyRefresh = .milliseconds(100)
        }
        try await server.run { client in
            var statuses: [HTTPResponse.Status] = []
            var last: TestResponse? = nil
            for _ in 0..<5 {
                let response = try await client.send(.get, "/v1/events")
                statuses.append(response.status)
                last = response
            }
            #expect(statuses.prefix(3).allSatisfy { $0 == .ok })
            #expect(statuses.last == .tooManyRequests)
            #expect(last?.isProblem == true)
            #expect(Int(last?.headers[.retryAfter] ?? "") ?? 0 >= 1)
            #expect(last?.headers[HTTPField.Name("RateLimit-Limit")!] == "3")
            #expect(last?.headers[HTTPField.Name("RateLimit-Remaining")!] == "0")
            // Health checks are never limited.
            #expect(try await client.send(.get, "/health/live").status == .ok)
        }
        // With keys, each key has a bucket of its own.
        let one = try await server.test.store.createAPIKey(scope: .read).key
        let two = try await server.test.store.createAPIKey(scope: .read).key
        try await server.run { (client: any TestClientProtocol) async throws in
            for _ in 0..<3 { #expect(try await client.send(.get, "/v1/events", headers: Self.bearer(one)).status == .ok) }
            #expect(try await client.send(.get, "/v1/events", headers: Self.bearer(one)).status == .tooManyRequests)
            #expect(try await client.send(.get, "/v1/events", headers: Self.bearer(two)).status == .ok)
        }
    }
}

@Suite("Review findings, pinned")
struct ReviewRegressionTests {
    @Test("a path with an empty segment or trailing slash never slips past the scope check")
    func nonCanonicalPaths() async throws {
        let server = try await TestServer.make("httppaths") { $0.apiKeyRefresh = .milliseconds(100) }
        let reader = try await server.test.store.createAPIKey(scope: .read).key
        try await server.run { client in
            let headers: HTTPFields = [.authorization: "Bearer \(reader)"]
            let sneaky = try await client.send(.post, "//v1/commands/account/1", json: #"{"type":"OpenAccount","data":{"owner":"Ada","currency":"EUR"}}"#, headers: headers)
            #expect(sneaky.status == .notFound)
            #expect(try await client.send(.get, "/metrics/", headers: headers).status == .notFound)
        }
        #expect(try await server.test.store.headPosition() == 0)
    }

    @Test("control characters in paths, queries and metadata are 400, not 500")
    func controlCharacters() async throws {
        let server = try await TestServer.make("httpnul")
        try await server.run { client in
            #expect(try await client.send(.get, "/v1/events?category=%00").status == .badRequest)
            #expect(try await client.send(.get, "/v1/events?type=a%00b").status == .badRequest)
            let key: HTTPFields = [HTTPField.Name("Idempotency-Key")!: "k"]
            #expect(try await client.send(.post, "/v1/streams/a%00b/events", json: #"{"events":[{"type":"T","data":{}}]}"#, headers: key).status == .badRequest)
            #expect(try await client.send(.post, "/v1/commands/account/%00", json: #"{"type":"CloseAccount","data":{}}"#, headers: key).status == .badRequest)
            let metadata = try await client.send(.post, "/v1/streams/m-1/events", json: #"{"events":[{"type":"T","data":{},"metadata":{"x":"\u0000"}}]}"#)
            #expect(metadata.status == .badRequest, "\(metadata.text)")
        }
        #expect(try await server.test.store.headPosition() == 0)
    }

    @Test("a command is not refused on a cached state that a raw append has made stale")
    func staleCacheRefusal() async throws {
        let server = try await TestServer.make("httpstale")
        try await server.run { client in
            #expect(try await client.command("7", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#).status == .ok)
            #expect(try await client.send(.post, "/v1/streams/account-7/events", json: #"{"expectedVersion":1,"events":[{"type":"MoneyDeposited","data":{"amount":100}}]}"#).status == .created)
            let withdraw = try await client.command("7", "WithdrawMoney", #"{"amount":50}"#)
            #expect(withdraw.status == .ok, "\(withdraw.text)")
            #expect(withdraw.json["version"] as? Int == 3)
        }
    }

    @Test("raw appends into an aggregate's stream must be events the aggregate can read")
    func rawAppendsIntoAggregates() async throws {
        let server = try await TestServer.make("httpraw")
        try await server.run { client in
            #expect(try await client.command("5", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#).status == .ok)
            for event in [#"{"type":"Bogus","data":{}}"#, #"{"type":"MoneyDeposited","data":{"amount":"x"}}"#] {
                let response = try await client.send(.post, "/v1/streams/account-5/events", json: #"{"events":[\#(event)]}"#)
                #expect(response.status == .unprocessableContent, "\(response.text)")
            }
            #expect(try await client.command("5", "DepositMoney", #"{"amount":5}"#).status == .ok)
            #expect(try await client.send(.post, "/v1/streams/notes-5/events", json: #"{"events":[{"type":"Bogus","data":{}}]}"#).status == .created)
        }
    }
}

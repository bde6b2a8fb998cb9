import Cache
import EmbeddedServers
import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import NIOCore
import Projector
import Testing
import ReadModels

/// Runs the shipped projections in-process against `test`'s database until the task is cancelled.
func startProjector(_ test: TestStore, cache: ReadModelCache? = nil) throws -> Task<Void, Never> {
    var configuration = ProjectorConfiguration(databaseURL: test.url)
    configuration.standbyInterval = .milliseconds(100)
    configuration.pollInterval = .milliseconds(200)
    configuration.retryDelay = .milliseconds(20)
    let projector = Projector(
        projections: try ProjectionDirectory.load(Repository.root + "/Projections"), configuration: configuration,
        invalidations: cache.map(RedisInvalidationSink.init))
    return Task { try? await projector.run() }
}

extension TestClientProtocol {
    /// Polls GET /v1/read-models until `name` has caught up with the log's head (lag 0, head ≥ `position`).
    func waitCaughtUp(_ name: String, position: Int, within timeout: Duration = .seconds(20)) async throws -> [String: Any] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let response = try await send(.get, "/v1/read-models")
            let items = response.json["items"] as? [[String: Any]] ?? []
            if let item = items.first(where: { $0["name"] as? String == name }),
                let checkpoint = item["checkpoint"] as? Int, checkpoint >= position, item["lag"] as? Int == 0
            {
                return item
            }
            guard ContinuousClock.now < deadline else {
                Issue.record("\(name) did not reach \(position): \(response.text)")
                return [:]
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// The position of a command's last event.
    func position(of response: TestResponse) -> Int {
        response.json["position"] as? Int ?? -1
    }
}

@Suite("HTTP read models", .serialized)
struct ReadModelRouteTests {
    @Test("read models list their state; a row is typed JSON with an ETag (304 on a match); missing rows and models are 404")
    func rows() async throws {
        let server = try await TestServer.make("rmrows")
        let projector = try startProjector(server.test)
        defer { projector.cancel() }
        try await server.run { client in
            try await client.command("a1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#)
            try await client.command("a1", "DepositMoney", #"{"amount":500}"#)
            let last = try await client.command("a1", "WithdrawMoney", #"{"amount":200}"#)
            let status = try await client.waitCaughtUp("account_balances", position: client.position(of: last))
            #expect(status["version"] as? Int == 2)
            #expect(status["state"] as? String == "running")
            #expect(status["head"] as? Int == client.position(of: last))
            #expect(status["key"] as? String == "account_id")
            #expect((status["owner"] as? String)?.isEmpty == false)
            // A projection in one piece has one partition, by stream, with the same checkpoint.
            #expect(status["partitionBy"] as? String == "stream")
            let partitions = status["partitions"] as? [[String: Any]] ?? []
            #expect(partitions.count == 1 && partitions.first?["partition"] as? Int == 0)
            #expect(partitions.first?["checkpoint"] as? Int == status["checkpoint"] as? Int)
            #expect(partitions.first?["owner"] as? String == status["owner"] as? String)

            var response = try await client.send(.get, "/v1/read-models/account_balances/a1")
            #expect(response.status == .ok)
            #expect(response.headers[.contentType] == "application/json")
            #expect(response.headers[HTTPField.Name("X-Cache")!] == "miss")
            let row = response.json
            #expect(row["balance"] as? Int == 300)
            #expect(row["owner"] as? String == "Ada")
            #expect(row["status"] as? String == "open")
            let updated = row["updated_at"] as? String ?? ""
            #expect(updated.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$"#, options: .regularExpression) != nil, "\(updated)")
            let etag = try #require(response.headers[.eTag])
            #expect(etag.hasPrefix("\"") && etag.hasSuffix("\""))

            for match in [etag, "W/\(etag)", "\"other\", \(etag)", "*"] {
                response = try await client.send(.get, "/v1/read-models/account_balances/a1", headers: [.ifNoneMatch: match])
                #expect(response.status == .notModified, "\(match)")
                #expect(response.body.readableBytes == 0)
                #expect(response.headers[.eTag] == etag)
            }
            response = try await client.send(.get, "/v1/read-models/account_balances/a1", headers: [.ifNoneMatch: "\"other\""])
            #expect(response.status == .ok)

            // The daily totals of today, keyed by day and currency.
            let day = ISO8601DateFormatter.string(from: Date(), timeZone: TimeZone(identifier: "UTC")!, formatOptions: [.withFullDate])
            response = try await client.send(.get, "/v1/read-models/daily_totals/\(day)%2FEUR")
            #expect(response.status == .ok, "\(response.text)")
            #expect(response.json["deposited"] as? Int == 500)
            #expect(response.json["withdrawn"] as? Int == 200)

            for path in ["/v1/read-models/account_balances/nobody", "/v1/read-models/nothing/a1", "/v1/read-models/Bad-Name/a1"] {
                response = try await client.send(.get, path)
                #expect(response.status == .notFound, "\(path)")
                #expect(response.isProblem)
            }
            response = try await client.send(.get, "/v1/read-models/account_balances/a1?color=red")
            #expect(response.status == .badRequest)
            #expect(response.isProblem)
        }
    }

    @Test("pages filter on real columns with typed values, in key order, and cursors visit every row once")
    func pages() async throws {
        let server = try await TestServer.make("rmpages")
        let projector = try startProjector(server.test)
        defer { projector.cancel() }
        try await server.run { client in
            var last = 0
            for index in 1...7 {
                let response = try await client.command(
                    "p\(index)", "OpenAccount", #"{"owner":"O\#(index)","currency":"\#(index <= 4 ? "EUR" : "USD")"}"#)
                last = client.position(of: response)
            }
            last = client.position(of: try await client.command("p2", "DepositMoney", #"{"amount":70}"#))
            _ = try await client.waitCaughtUp("account_balances", position: last)

            var keys: [String] = []
            var cursor: String? = nil
            repeat {
                let query = cursor.map { "limit=3&after=\($0)" } ?? "limit=3"
                let response = try await client.send(.get, "/v1/read-models/account_balances?\(query)")
                #expect(response.status == .ok, "\(response.text)")
                let items = response.json["items"] as? [[String: Any]] ?? []
                #expect(items.count <= 3)
                keys += items.compactMap { $0["account_id"] as? String }
                cursor = response.json["next"] as? String
            } while cursor != nil && keys.count < 20
            #expect(keys == (1...7).map { "p\($0)" })

            var response = try await client.send(.get, "/v1/read-models/account_balances?currency=USD")
            #expect((response.json["items"] as? [[String: Any]])?.compactMap { $0["account_id"] as? String } == ["p5", "p6", "p7"])
            #expect(response.json["next"] is NSNull)
            response = try await client.send(.get, "/v1/read-models/account_balances?currency=EUR&balance=70")
            #expect((response.json["items"] as? [[String: Any]])?.compactMap { $0["account_id"] as? String } == ["p2"])

            response = try await client.send(.get, "/v1/read-models/account_balances?nope=1")
            #expect(response.status == .badRequest)
            #expect(response.json["type"] as? String == "/problems/unknown-column")
            #expect(response.json["field"] as? String == "nope")
            for query in ["balance=abc", "after=%21%21", "limit=0", "limit=x", "atLeast=-1"] {
                response = try await client.send(.get, "/v1/read-models/account_balances?\(query)")
                #expect(response.status == .badRequest, "\(query): \(response.text)")
                #expect(response.isProblem)
            }
            response = try await client.send(.get, "/v1/read-models/nothing?limit=3")
            #expect(response.status == .notFound)
        }
    }

    @Test("atLeast waits until the projection has passed the position; past the timeout, 504 with the checkpoint")
    func readYourWrites() async throws {
        var server = try await TestServer.make("rmatleast")
        server.readWaitTimeout = .milliseconds(300)
        // The read model exists but no projector runs: it stays behind.
        let projector = try startProjector(server.test)
        let opened = try await server.run { client in
            let response = try await client.command("r1", "OpenAccount", #"{"owner":"Rita","currency":"GBP"}"#)
            _ = try await client.waitCaughtUp("account_balances", position: client.position(of: response))
            return client.position(of: response)
        }
        projector.cancel()
        await projector.value
        try await server.run { client in
            let deposit = try await client.command("r1", "DepositMoney", #"{"amount":5}"#)
            let position = client.position(of: deposit)
            var response = try await client.send(.get, "/v1/read-models/account_balances/r1?atLeast=\(position)")
            #expect(response.status == .gatewayTimeout)
            #expect(response.isProblem)
            #expect(response.json["type"] as? String == "/problems/read-model-behind")
            #expect(response.json["checkpoint"] as? Int == opened)
            response = try await client.send(.get, "/v1/read-models/account_balances", headers: [HTTPField.Name("Eventline-At-Least")!: "\(position)"])
            #expect(response.status == .gatewayTimeout)
            // Without a position the old row answers at once.
            response = try await client.send(.get, "/v1/read-models/account_balances/r1")
            #expect(response.json["balance"] as? Int == 0)
        }
        server.readWaitTimeout = .seconds(20)
        let test = server.test
        try await server.run { client in
            let position = client.position(of: try await client.command("r1", "DepositMoney", #"{"amount":7}"#))
            // The read starts before any projector runs, and is answered once one has caught up.
            async let read = client.send(.get, "/v1/read-models/account_balances/r1", headers: [HTTPField.Name("Eventline-At-Least")!: "\(position)"])
            try await Task.sleep(for: .milliseconds(300))
            let projector = try startProjector(test)
            defer { projector.cancel() }
            let response = try await read
            #expect(response.status == .ok, "\(response.text)")
            #expect(response.json["balance"] as? Int == 12)
        }
    }

    @Test("with Redis: a miss then hits; each committed batch drops its keys and publishes them; reads see every write")
    func cacheAside() async throws {
        let url = try await EmbeddedRedis.testServerURL()
        let client = try RedisClient(url: url)
        defer { client.shutdown() }
        let cache = ReadModelCache(client: client, ttlSeconds: 60, prefix: "test-\(UUID().uuidString)")
        let subscriber = try RedisSubscriber(url: url, channels: [cache.channel])
        defer { subscriber.close() }
        var server = try await TestServer.make("rmcache")
        server.cache = cache
        let projector = try startProjector(server.test, cache: cache)
        defer { projector.cancel() }
        let events = subscriber.events
        try await server.run { http in
            var messages = events.makeAsyncIterator()
            while let event = await messages.next(), event != .subscribed {}
            try await http.command("c1", "OpenAccount", #"{"owner":"Cy","currency":"EUR"}"#)
            let position = http.position(of: try await http.command("c1", "DepositMoney", #"{"amount":100}"#))
            _ = try await http.waitCaughtUp("account_balances", position: position)

            var response = try await http.send(.get, "/v1/read-models/account_balances/c1")
            #expect(response.headers[HTTPField.Name("X-Cache")!] == "miss")
            #expect(response.json["balance"] as? Int == 100)
            let etag = response.headers[.eTag]
            response = try await http.send(.get, "/v1/read-models/account_balances/c1")
            #expect(response.headers[HTTPField.Name("X-Cache")!] == "hit")
            #expect(response.json["balance"] as? Int == 100)
            #expect(response.headers[.eTag] == etag)

            // A write: its batch drops c1 from the cache, and the next reads see it.
            let next = http.position(of: try await http.command("c1", "DepositMoney", #"{"amount":25}"#))
            var published: [String: Any] = [:]
            while let event = await messages.next() {
                guard case .message(let message) = event else { continue }
                let payload = (try? JSONSerialization.jsonObject(with: Data(message.payload))) as? [String: Any] ?? [:]
                if let position = payload["position"] as? Int, position >= next, payload["projection"] as? String == "account_balances" {
                    published = payload
                    break
                }
            }
            #expect(published["keys"] as? [String] == ["c1"])
            #expect(published["generation"] as? Int != nil)
            _ = try await http.waitCaughtUp("account_balances", position: next)
            for _ in 0..<3 {
                response = try await http.send(.get, "/v1/read-models/account_balances/c1")
                #expect(response.json["balance"] as? Int == 125, "\(response.headers)")
            }
            #expect(response.headers[HTTPField.Name("X-Cache")!] == "hit")
        }
    }

    @Test("a projection file replayed while the server runs is served at once, without a restart")
    func newProjection() async throws {
        let server = try await TestServer.make("rmnew")
        let test = server.test
        try await server.run { client in
            try await client.command("n1", "OpenAccount", #"{"owner":"Nia","currency":"EUR"}"#)
            var response = try await client.send(.get, "/v1/read-models/owners/n1")
            #expect(response.status == .notFound)
            let owners = try ProjectionDirectory.parse("""
                name: owners
                version: 1
                key: account_id
                create: |
                  CREATE TABLE $table (account_id text PRIMARY KEY, owner text NOT NULL)
                handlers:
                  AccountOpened: |
                    INSERT INTO $table (account_id, owner) VALUES (:id, :data.owner) RETURNING account_id
                """, source: "owners.yaml")
            let result = try await ProjectionReplay.run(owners, databaseURL: test.url)
            #expect(result.swapped)
            response = try await client.send(.get, "/v1/read-models/owners/n1")
            #expect(response.status == .ok, "\(response.text)")
            #expect(response.json["owner"] as? String == "Nia")
            response = try await client.send(.get, "/v1/read-models")
            let names = (response.json["items"] as? [[String: Any]])?.compactMap { $0["name"] as? String } ?? []
            #expect(names.contains("owners"))
        }
    }
}

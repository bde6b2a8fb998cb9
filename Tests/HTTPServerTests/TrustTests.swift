@testable import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import PostgresClient
import Testing

/// The defects users and attackers found (issue 23), each held by a test that failed before its
/// fix: input PostgreSQL cannot store, a server that opened itself, a statement timeout that was
/// a 500, a quadratic consumer-group fetch, live streams that took every connection, deletes
/// of what never existed, and the smaller ones.
@Suite("Defects that cost trust", .timeLimit(.minutes(3)))
struct TrustTests {
    static func bearer(_ key: String) -> HTTPFields { [.authorization: "Bearer \(key)"] }

    @Test("U+0000 anywhere in a command or an append is 400 naming the field, and nothing is written")
    func nulRefused() async throws {
        let server = try await TestServer.make("trustnul")
        try await server.run { client in
            let command = try await client.command("1", "OpenAccount", #"{"owner":"A\u0000da","currency":"EUR"}"#)
            #expect(command.status == .badRequest && command.isProblem, "\(command.text)")
            #expect(command.json["field"] as? String == "data.owner", "\(command.text)")
            let append = try await client.send(
                .post, "/v1/streams/thing-1/events", json: #"{"events":[{"type":"Made","data":{"note":"x\u0000"}}]}"#)
            #expect(append.status == .badRequest && append.json["field"] as? String == "events[0].data.note", "\(append.text)")
            let metadata = try await client.send(
                .post, "/v1/streams/thing-1/events", json: #"{"events":[{"type":"Made","data":{},"metadata":{"k\u0000":"v"}}]}"#)
            #expect(metadata.status == .badRequest && metadata.json["field"] as? String == "events[0].metadata.k\u{0}", "\(metadata.text)")
            let tags = try await client.send(.post, "/v1/events/query", json: #"{"items":[{"tags":["a\u0000"]}]}"#)
            #expect(tags.status == .badRequest, "\(tags.text)")
            // An escaped backslash followed by the letters is text, not a NUL.
            let text = try await client.command("2", "OpenAccount", #"{"owner":"A\\u0000da","currency":"EUR"}"#)
            #expect(text.status == .ok, "\(text.text)")
        }
        #expect(try await server.test.store.headPosition() == 1)
        // A raw append through the store is refused as well: every writer, not only HTTP.
        await #expect(throws: EventStoreError.self) {
            try await server.test.store.append(to: "thing-2", events: [NewEvent(type: "Made", data: Data(#"{"n":"\u0000"}"#.utf8))])
        }
    }

    @Test("revoking the last key leaves the API closed; EVENTLINE_AUTH=off opens it; /health/ready says which")
    func lastKeyRevoked() async throws {
        var server = try await TestServer.make("trustauth") { $0.apiKeyRefresh = .milliseconds(50) }
        try await server.run { client in
            let ready = try await client.send(.get, "/health/ready")
            #expect(ready.json["auth"] as? String == "open", "\(ready.text)")
            #expect((ready.json["authNote"] as? String)?.contains("no API key has been created") == true, "\(ready.text)")
        }
        let key = try await server.test.store.createAPIKey(scope: .admin)
        #expect(try await server.test.store.revokeAPIKey(id: key.record.id))
        try await server.run { client in
            #expect(try await client.send(.get, "/v1/events").status == .unauthorized)
            #expect(try await client.send(.get, "/v1/events", headers: Self.bearer(key.key)).status == .unauthorized)
            let command = try await client.command("1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#, headers: Self.bearer(key.key))
            #expect(command.status == .unauthorized && command.isProblem)
            let ready = try await client.send(.get, "/health/ready")
            #expect(ready.status == .ok && ready.json["auth"] as? String == "no-key-in-force", "\(ready.text)")
        }
        server.configuration.authentication = .off
        try await server.run { client in
            #expect(try await client.send(.get, "/v1/events").status == .ok)
            let ready = try await client.send(.get, "/health/ready")
            #expect(ready.json["auth"] as? String == "open", "\(ready.text)")
            #expect((ready.json["authNote"] as? String)?.contains("EVENTLINE_AUTH=off") == true, "\(ready.text)")
        }
        #expect(try await server.test.store.headPosition() == 0)
    }

    @Test("a statement timeout (SQLSTATE 57014) is 503 with Retry-After, on a fetch and on a command")
    func statementTimeoutIs503() async throws {
        let test = try await TestStore.make("trusttimeout") { $0.statementTimeout = .milliseconds(300) }
        let server = TestServer(test: test)
        _ = try await test.store.putConsumerGroup("slow", ConsumerGroupSettings())
        _ = try await test.store.append(to: "thing-1", events: [NewEvent(type: "Made", data: Data("{}".utf8))])
        // Another session holds the group's row and the log's head: statements wait on them.
        let holder = try PostgresConnection(conninfo: test.url)
        defer { holder.close() }
        try holder.execute("BEGIN")
        _ = try holder.query("SELECT 1 FROM eventline.consumer_groups WHERE name = 'slow' FOR UPDATE")
        _ = try holder.query("SELECT 1 FROM eventline.log_head FOR UPDATE")
        try await server.run { client in
            let fetch = try await client.send(.post, "/v1/consumer-groups/slow/fetch", json: #"{"consumer":"c"}"#)
            #expect(fetch.status == .serviceUnavailable && fetch.isProblem && fetch.headers[.retryAfter] != nil, "\(fetch.text)")
            let command = try await client.command("1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#)
            #expect(command.status == .serviceUnavailable && command.isProblem && command.headers[.retryAfter] != nil, "\(command.text)")
        }
        try holder.execute("ROLLBACK")
    }

    @Test("one deadline per request: a command, a stream read, a read-model read and a consumer-group fetch that wait on the database answer 503 when it passes, with no statement timeout to end them")
    func oneDeadline() async throws {
        let test = try await TestStore.make("trustdeadline")
        var server = TestServer(test: test)
        server.configuration.port = 0
        server.configuration.databaseDeadline = .milliseconds(500)
        _ = try await test.store.putConsumerGroup("g", ConsumerGroupSettings())
        _ = try await test.store.append(to: "thing-1", events: [NewEvent(type: "Made", data: Data("{}".utf8))])
        try await server.run { client in
            // Before anything waits: everything answers (once the pool's first connection is
            // open, which a loaded machine may take longer than the deadline to do).
            try await eventually("the server answers before anything waits") {
                try await client.send(.get, "/v1/streams/thing-1").status == .ok
            }
            // Another session holds what each request needs, for longer than any deadline.
            let holder = try PostgresConnection(conninfo: test.url)
            defer { holder.close() }
            try holder.execute("BEGIN")
            _ = try holder.query("SELECT 1 FROM eventline.consumer_groups WHERE name = 'g' FOR UPDATE")
            _ = try holder.query("SELECT 1 FROM eventline.log_head FOR UPDATE")
            try holder.execute(unsafeSQL: "LOCK TABLE eventline.events, eventline.projections IN ACCESS EXCLUSIVE MODE")
            let command = try await client.command("1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#)
            #expect(command.status == .serviceUnavailable && command.text.contains("deadline"), "\(command.text)")
            for (method, path, body) in [
                (HTTPRequest.Method.get, "/v1/streams/thing-1", nil), (.get, "/v1/read-models/account_balances/1", nil),
                (.post, "/v1/consumer-groups/g/fetch", #"{"consumer":"c"}"#),
            ] as [(HTTPRequest.Method, String, String?)] {
                let answer = try await client.send(method, path, json: body)
                #expect(answer.status == .serviceUnavailable && answer.isProblem && answer.headers[.retryAfter] != nil, "\(path): \(answer.text)")
                #expect(answer.text.contains("deadline"), "\(path): \(answer.text)")
            }
            try holder.execute("ROLLBACK")
            // The steps left waiting finish on their own; the server answers again.
            try await eventually("the server answers again") {
                try await client.send(.get, "/v1/streams/thing-1").status == .ok
            }
        }
    }

    @Test("a consumer group's fetch reads about the rows it hands out, however many of one stream wait")
    func fetchCost() async throws {
        let test = try await TestStore.make("trustfetch")
        let store = test.store
        try await appendShopBacklog(store)
        _ = try await store.putConsumerGroup("shop", ConsumerGroupSettings(filter: EventFilter(categories: ["shop"])))
        let first = try #require(try await store.fetch(group: "shop", consumer: "c", max: 10))
        #expect(first.map(\.event.position) == [1, 2, 3, 5, 7, 9, 11, 13, 15, 17])
        // The hand-out statement, explained as it runs: its scans return about `max` rows.
        let rowsRead = try await test.sql { conn -> (rows: Int, plan: String) in
            try conn.execute("BEGIN")
            defer { try? conn.execute("ROLLBACK") }
            func explained(_ query: SQLQuery) throws -> (rows: Int, plan: String) {
                let explain = SQLQuery(unsafeSQL: "EXPLAIN (ANALYZE, FORMAT JSON) " + query.sql, binds: query.binds)
                let plan = try conn.query(explain).first!.decode(0, as: String.self)
                return (Self.rowsRead(try JSONSerialization.jsonObject(with: Data(plan.utf8))), plan)
            }
            let positions = try conn.query(EventStore.readyPositions(group: "shop", max: 10)).rows.map { try $0.decode(0, as: Int.self) }
            let picking = try explained(EventStore.readyPositions(group: "shop", max: 10))
            let handing = try explained(
                EventStore.handOut(group: "shop", positions: positions, consumer: "c", ackTimeoutMilliseconds: 30_000))
            return (picking.rows + handing.rows, picking.plan + handing.plan)
        }
        #expect(rowsRead.rows <= 60, "the hand-out read \(rowsRead.rows) rows for 10 events: \(rowsRead.plan)")
        // Every event is delivered once, each stream in order, as acks free the next.
        var delivered: [String: [Int]] = [:]
        var seen = Set(first.map(\.event.position))
        for message in first { delivered[message.event.stream, default: []].append(message.event.position) }
        _ = try await store.acknowledge(group: "shop", deliveryIds: first.map(\.deliveryId))
        while true {
            let batch = try #require(try await store.fetch(group: "shop", consumer: "c", max: 100))
            if batch.isEmpty { break }
            for message in batch {
                #expect(seen.insert(message.event.position).inserted, "position \(message.event.position) delivered twice")
                delivered[message.event.stream, default: []].append(message.event.position)
            }
            _ = try await store.acknowledge(group: "shop", deliveryIds: batch.map(\.deliveryId))
        }
        #expect(seen.count == 1000)
        #expect(delivered["shop-big"] == delivered["shop-big"]?.sorted() && delivered["shop-big"]?.count == 500)
        let status = try #require(try await store.consumerGroup("shop"))
        #expect(status.checkpoint == 1000 && status.waiting == 0 && status.inFlight == 0)
    }

    /// The rows every scan of a plan returned, over all its loops.
    static func rowsRead(_ plan: Any) -> Int {
        var total = 0
        func visit(_ node: Any) {
            if let list = node as? [Any] { list.forEach(visit) }
            guard let object = node as? [String: Any] else { return }
            if let type = object["Node Type"] as? String, type.contains("Scan"),
                let rows = object["Actual Rows"] as? Int, let loops = object["Actual Loops"] as? Int
            {
                total += rows * loops
            }
            for value in object.values { visit(value) }
        }
        visit(plan)
        return total
    }

    @Test("live feed streams are bounded apart from connections: the next gets 503 with Retry-After, health and commands go on")
    func liveClientsBounded() async throws {
        let server = try await TestServer.make("trustlive") {
            $0.liveMaxClients = 3
            $0.liveMaxClientsPerKey = 2
            $0.liveHeartbeat = .milliseconds(300)
        }
        let key = try await server.test.store.createAPIKey(scope: .commands).key
        let other = try await server.test.store.createAPIKey(scope: .read).key
        try await server.run { client in
            let port = try #require(client.port)
            let auth = ["Authorization": "Bearer \(key)"]
            let first = try LiveClient(port: port, path: "/v1/events/live", headers: auth)
            let second = try LiveClient(port: port, path: "/v1/events/live", headers: auth)
            try await eventually("two streams open") { first.text.contains("live feed") && second.text.contains("live feed") }
            // The key's own bound.
            let perKey = try await LoopbackHTTP.request(port: port, "/v1/events/live", headers: auth)
            #expect(perKey.status == 503 && perKey.headers["retry-after"] != nil, "\(perKey)")
            let third = try LiveClient(port: port, path: "/v1/events/live", headers: ["Authorization": "Bearer \(other)"])
            try await eventually("a third stream open") { third.text.contains("live feed") }
            // The server's bound.
            let full = try await LoopbackHTTP.request(port: port, "/v1/events/live", headers: ["Authorization": "Bearer \(other)"])
            #expect(full.status == 503 && full.headers["retry-after"] != nil && full.body.contains("live-clients-exhausted"), "\(full)")
            // Everything else is served.
            #expect(try await LoopbackHTTP.request(port: port, "/health/live").status == 200)
            let command = try await LoopbackHTTP.request(
                "POST", port: port, "/v1/commands/account/1", headers: auth, body: #"{"type":"OpenAccount","data":{"owner":"Ada","currency":"EUR"}}"#)
            #expect(command.status == 200, "\(command)")
            // A stream that ends gives its place back.
            first.disconnect()
            // (A stream is read by a LiveClient: its heartbeats would keep a plain request reading.)
            try await eventually("a place is free again") {
                let again = try LiveClient(port: port, path: "/v1/events/live?after=1", headers: auth)
                defer { again.disconnect() }
                try await eventually(timeout: .seconds(5), "an answer") { again.text.contains("\r\n\r\n") }
                return again.text.hasPrefix("HTTP/1.1 200")
            }
            second.disconnect()
            third.disconnect()
        }
    }

    @Test("deleting a stream that never existed is 404 and leaves its name free; expectedVersion=noStream closes it")
    func deleteNothing() async throws {
        let server = try await TestServer.personal("trustdelete")
        try await server.run { client in
            let missing = try await client.send(.delete, "/v1/streams/order-17")
            #expect(missing.status == .notFound && missing.isProblem, "\(missing.text)")
            let append = try await client.send(.post, "/v1/streams/order-17/events", json: #"{"events":[{"type":"Placed","data":{}}]}"#)
            #expect(append.status == .created, "\(append.text)")
            #expect(try await client.send(.delete, "/v1/streams/order-17").status == .ok)
            let again = try await client.send(.delete, "/v1/streams/order-17")
            #expect(again.status == .ok && again.json["wasAlreadyDeleted"] as? Bool == true, "\(again.text)")
            let reserved = try await client.send(.delete, "/v1/streams/order-18?expectedVersion=noStream")
            #expect(reserved.status == .ok, "\(reserved.text)")
            #expect(try await client.send(.get, "/v1/streams/order-18").status == .gone)

            let unknown = try await client.send(.delete, "/v1/subjects/account-404")
            #expect(unknown.status == .notFound && unknown.isProblem, "\(unknown.text)")
            #expect(try await client.send(.delete, "/v1/subjects/account-404?evenIfUnknown=maybe").status == .badRequest)
            let ahead = try await client.send(.delete, "/v1/subjects/account-405?evenIfUnknown=true")
            #expect(ahead.status == .ok, "\(ahead.text)")
            #expect(try await client.command("1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#).status == .ok)
            let known = try await client.send(.delete, "/v1/subjects/account-1")
            #expect(known.status == .ok && known.json["wasAlreadyForgotten"] as? Bool == false, "\(known.text)")
        }
        // order-17's event, its tombstone, order-18's tombstone, account-405's and account-1's forgets, account-1's opening.
        #expect(try await server.test.store.headPosition() == 6)
    }

    @Test("a bad filter value names its column and type; percent-encoded names are decoded; owners and webhook URLs are checked")
    func smallerOnes() async throws {
        let server = try await TestServer.make("trustsmall")
        let projector = try startProjector(server.test)
        defer { projector.cancel() }
        try await server.run { client in
            let opened = try await client.command("1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#)
            #expect(opened.status == .ok)
            _ = try await client.waitCaughtUp("account_balances", position: client.position(of: opened))
            let bad = try await client.send(.get, "/v1/read-models/account_balances?balance=abc")
            #expect(bad.status == .badRequest && bad.json["field"] as? String == "balance", "\(bad.text)")
            // The detail, not the whole body: a random request id can hold "abc".
            let detail = bad.json["detail"] as? String ?? ""
            #expect(detail.contains("bigint") && !detail.contains("invalid input syntax") && !detail.contains("abc"), "\(bad.text)")
            let encoded = try await client.send(.get, "/v1/read-models/account_balances?curr%65ncy=EUR")
            #expect(encoded.status == .ok && encoded.text.contains("Ada"), "\(encoded.text)")

            for owner in [#"\t"#, " ", "A\\tda", String(repeating: "a\u{301}", count: 20_000)] {
                let response = try await client.command("o", "OpenAccount", #"{"owner":"\#(owner)","currency":"EUR"}"#)
                #expect(response.status == .unprocessableContent, "\(owner.prefix(10)): \(response.text)")
            }
            for url in ["http://127.0.0.1:9/a b", "http://127.0.0.1:9/a\\r\\nX-Evil: 1", "http://127.0.0.1:9/\\t"] {
                let response = try await client.send(.put, "/v1/consumer-groups/hook", json: #"{"webhook":{"url":"\#(url)","secret":"s"}}"#)
                #expect(response.status == .badRequest && response.json["field"] as? String == "webhook.url", "\(response.text)")
            }
        }
    }

    @Test("an idempotency key's request hash is keyed by the master key: the database alone cannot confirm a guessed body")
    func requestHashKeyed() async throws {
        let server = try await TestServer.make("trusthash")
        let body = #"{"type":"OpenAccount","data":{"owner":"Ada","currency":"EUR"}}"#
        try await server.run { client in
            let first = try await client.send(.post, "/v1/commands/account/1", json: body, headers: [HTTPField.Name("Idempotency-Key")!: "k1"])
            #expect(first.status == .ok)
            let replay = try await client.send(.post, "/v1/commands/account/1", json: body, headers: [HTTPField.Name("Idempotency-Key")!: "k1"])
            #expect(replay.status == .ok && replay.text == first.text)
            let other = try await client.send(
                .post, "/v1/commands/account/1", json: body.replacingOccurrences(of: "Ada", with: "Bob"), headers: [HTTPField.Name("Idempotency-Key")!: "k1"])
            #expect(other.status == .unprocessableContent, "\(other.text)")
        }
        let stored = try await server.test.sql { conn in
            try conn.query("SELECT request_hash FROM eventline.idempotency_keys").rows.map { try $0.decode(0, as: String.self) }
        }
        #expect(stored.count == 1 && stored[0].hasPrefix("hmac-") && !stored[0].contains(SHA256.hex(Array(body.utf8))), "\(stored)")
    }
}

import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import PostgresClient
import Synchronization
import Testing

/// 500 single-event streams (`shop-s…`) and 500 events of one stream (`shop-big`), interleaved:
/// a backlog with one hot stream.
func appendShopBacklog(_ store: EventStore) async throws {
    for index in 0..<500 {
        _ = try await store.append(to: "shop-s\(index)", events: [NewEvent(type: "Sold", data: Data("{}".utf8))])
        _ = try await store.append(to: "shop-big", events: [NewEvent(type: "Sold", data: Data("{}".utf8))])
    }
}

/// Consumer groups over real HTTP and PostgreSQL: settings and bad input, then the delivery
/// rules one by one (stream order, acks, nacks, ack timeouts, parking, retries, long polls).
/// A value a `@Sendable` closure sets and the test reads afterwards.
final class Locked<Value: Sendable>: Sendable {
    private let state: Mutex<Value>
    init(_ value: Value) { state = Mutex(value) }
    func set(_ value: Value) { state.withLock { $0 = value } }
    var value: Value { state.withLock { $0 } }
}

@Suite("Consumer groups", .timeLimit(.minutes(3)))
struct ConsumerGroupTests {
    typealias Message = GroupMessage

    static func messages(_ response: TestResponse) -> [Message] { GroupMessage.parse(response.text) }

    static func fetch(_ client: any TestClientProtocol, _ group: String, consumer: String, max: Int = 100, wait: Int = 0) async throws -> [Message] {
        let response = try await client.send(.post, "/v1/consumer-groups/\(group)/fetch", json: #"{"consumer":"\#(consumer)","max":\#(max),"wait":\#(wait)}"#)
        #expect(response.status == .ok, "\(response.text)")
        return messages(response)
    }

    static func ack(_ client: any TestClientProtocol, _ group: String, _ ids: [String]) async throws -> TestResponse {
        try await client.send(.post, "/v1/consumer-groups/\(group)/ack", json: #"{"deliveryIds":[\#(ids.map { "\"\($0)\"" }.joined(separator: ","))]}"#)
    }

    @Test("a group is created, changed, shown, listed and deleted; bad settings are problems that change nothing")
    func settings() async throws {
        let server = try await TestServer.make("cgsettings")
        let store = server.test.store
        try await server.run { client in
            let created = try await client.send(
                .put, "/v1/consumer-groups/billing", json: #"{"categories":["account"],"types":["MoneyDeposited"],"maxDeliveries":3,"ackTimeout":10}"#)
            #expect(created.status == .created, "\(created.text)")
            #expect(created.headers[.location] == "/v1/consumer-groups/billing")
            #expect(created.json["categories"] as? [String] == ["account"])
            #expect(created.json["types"] as? [String] == ["MoneyDeposited"])
            #expect(created.json["maxDeliveries"] as? Int == 3)
            #expect(created.json["ackTimeout"] as? Int == 10)
            #expect(created.json["checkpoint"] as? Int == 0)
            #expect(created.json["webhook"] is NSNull)
            let changed = try await client.send(.put, "/v1/consumer-groups/billing", json: #"{"categories":["account","transfer"]}"#)
            #expect(changed.status == .ok, "\(changed.text)")
            #expect(changed.json["categories"] as? [String] == ["account", "transfer"])
            #expect(changed.json["types"] is NSNull)
            #expect(changed.json["maxDeliveries"] as? Int == 5)

            let hooked = try await client.send(
                .put, "/v1/consumer-groups/hooked", json: #"{"webhook":{"url":"http://127.0.0.1:9/hook","secret":"s3cret","batchSize":10}}"#)
            #expect(hooked.status == .created, "\(hooked.text)")
            #expect(!hooked.text.contains("s3cret"), "the webhook's secret is shown: \(hooked.text)")
            #expect((hooked.json["webhook"] as? [String: Any])?["url"] as? String == "http://127.0.0.1:9/hook")
            // A consumer cannot fetch from a group that delivers itself.
            let refused = try await client.send(.post, "/v1/consumer-groups/hooked/fetch", json: #"{"consumer":"c1"}"#)
            #expect(refused.status == .conflict && refused.isProblem, "\(refused.text)")
            #expect(refused.json["type"] as? String == "/problems/consumer-group-webhook")

            for (path, body, field) in [
                ("/v1/consumer-groups/Bad!", #"{}"#, "name"),
                ("/v1/consumer-groups/g", #"{"maxDeliveries":0}"#, "maxDeliveries"),
                ("/v1/consumer-groups/g", #"{"ackTimeout":"soon"}"#, "ackTimeout"),
                ("/v1/consumer-groups/g", #"{"ackTimeout":0}"#, "ackTimeout"),
                ("/v1/consumer-groups/g", #"{"categories":[]}"#, "categories"),
                ("/v1/consumer-groups/g", #"{"types":[1]}"#, "types"),
                ("/v1/consumer-groups/g", #"{"startAfter":-1}"#, "startAfter"),
                ("/v1/consumer-groups/g", #"{"colour":"red"}"#, "colour"),
                ("/v1/consumer-groups/g", #"{"webhook":{"url":"ftp://x/","secret":"s"}}"#, "webhook.url"),
                ("/v1/consumer-groups/g", #"{"webhook":{"url":"http://x/"}}"#, "webhook.secret"),
                ("/v1/consumer-groups/g", #"{"webhook":{"url":"http://x/","secret":"s","batchSize":0}}"#, "webhook.batchSize"),
            ] {
                let response = try await client.send(.put, path, json: body)
                #expect(response.status == .badRequest && response.isProblem, "\(path) \(body): \(response.text)")
                #expect(response.json["field"] as? String == field, "\(body): \(response.text)")
            }
            let moved = try await client.send(.put, "/v1/consumer-groups/billing", json: #"{"startAfter":7}"#)
            #expect(moved.status == .conflict && moved.json["type"] as? String == "/problems/consumer-group-start-fixed", "\(moved.text)")

            let list = try await client.send(.get, "/v1/consumer-groups")
            #expect((list.json["groups"] as? [[String: Any]])?.compactMap { $0["name"] as? String } == ["billing", "hooked"])
            #expect(try await client.send(.delete, "/v1/consumer-groups/billing").status == .noContent)
            let gone = try await client.send(.get, "/v1/consumer-groups/billing")
            #expect(gone.status == .notFound && gone.json["type"] as? String == "/problems/consumer-group-not-found")
            #expect(try await client.send(.delete, "/v1/consumer-groups/billing").status == .notFound)
            let orphan = try await client.send(.post, "/v1/consumer-groups/billing/fetch", json: #"{"consumer":"c1"}"#)
            #expect(orphan.status == .notFound && orphan.isProblem)
        }
        #expect(try await store.headPosition() == 0)
        await store.shutdown()
    }

    @Test("stream order, acks, nacks, ack timeouts, parking after maxDeliveries, retrying parked events and long polls")
    func deliveryRules() async throws {
        let server = try await TestServer.make("cgdelivery")
        let store = server.test.store
        @Sendable func append(_ stream: String, _ count: Int) async throws {
            _ = try await store.append(to: stream, events: (0..<count).map { _ in NewEvent(type: "Made", data: Data("{}".utf8)) })
        }
        try await append("thing-1", 3)  // positions 1, 2, 3
        try await append("thing-2", 1)  // 4
        try await append("other-1", 1)  // 5, not in the group
        try await server.run { client in
            // No deadline passes by accident here, however slow the machine: an hour to ack.
            let put = try await client.send(.put, "/v1/consumer-groups/g", json: #"{"categories":["thing"],"maxDeliveries":2,"ackTimeout":3600}"#)
            #expect(put.status == .created)
            // thing-1's later events wait behind its first.
            let first = try await Self.fetch(client, "g", consumer: "c1")
            #expect(first.map(\.position) == [1, 4])
            #expect(first.allSatisfy { $0.attempt == 1 })
            #expect(try await Self.fetch(client, "g", consumer: "c2").isEmpty)
            let acked = try await Self.ack(client, "g", [first[0].deliveryId])
            #expect(acked.json["acknowledged"] as? [String] == [first[0].deliveryId], "\(acked.text)")
            let again = try await Self.ack(client, "g", [first[0].deliveryId])
            #expect(again.json["stale"] as? [String] == [first[0].deliveryId], "\(again.text)")

            // Refused twice (its maxDeliveries), 2 is parked and its stream goes on with 3.
            let second = try await Self.fetch(client, "g", consumer: "c2")
            #expect(second.map(\.position) == [2])
            func nack(_ message: Message) async throws -> TestResponse {
                try await client.send(.post, "/v1/consumer-groups/g/nack", json: #"{"deliveryIds":["\#(message.deliveryId)"],"retryAfter":0}"#)
            }
            #expect(try await nack(second[0]).json["nacked"] as? [String] == [second[0].deliveryId])
            let retried = try await Self.fetch(client, "g", consumer: "c2")
            #expect(retried.map(\.position) == [2])
            #expect(retried.first?.attempt == 2)
            #expect(try await nack(retried[0]).json["nacked"] as? [String] == [retried[0].deliveryId])
            let third = try await Self.fetch(client, "g", consumer: "c3")
            #expect(third.map(\.position) == [3], "\(third)")
            let settled = [third[0].deliveryId, first[1].deliveryId]
            #expect(try await Self.ack(client, "g", settled).json["acknowledged"] as? [String] == settled)

            let parked = try await client.send(.get, "/v1/consumer-groups/g/parked")
            let items = parked.json["parked"] as? [[String: Any]] ?? []
            #expect(items.compactMap { $0["position"] as? Int } == [2], "\(parked.text)")
            #expect(items.first?["attempt"] as? Int == 2)
            #expect(items.first?["lastError"] as? String == "refused by the consumer")
            var shown = try await client.send(.get, "/v1/consumer-groups/g")
            #expect(shown.json["parked"] as? Int == 1)
            #expect(shown.json["inFlight"] as? Int == 0)
            #expect(shown.json["checkpoint"] as? Int == 5, "\(shown.text)")
            #expect(shown.json["redeliveries"] as? Int == 1)
            #expect((shown.json["consumers"] as? [[String: Any]])?.compactMap { $0["name"] as? String }.sorted() == ["c1", "c2", "c3"])
            let metrics = try await client.send(.get, "/metrics")
            #expect(metrics.text.contains(#"eventline_consumer_group_parked{group="g"} 1"#), "\(metrics.text)")
            #expect(metrics.text.contains(#"eventline_consumer_group_redeliveries{group="g"} 1"#))

            // Retried, a parked event is delivered afresh; the checkpoint goes back to it meanwhile.
            let retry = try await client.send(.post, "/v1/consumer-groups/g/parked/retry", json: #"{"positions":[2]}"#)
            #expect(retry.json["retried"] as? Int == 1, "\(retry.text)")
            shown = try await client.send(.get, "/v1/consumer-groups/g")
            #expect(shown.json["checkpoint"] as? Int == 1)
            let fourth = try await Self.fetch(client, "g", consumer: "c1")
            #expect(fourth.map(\.position) == [2])
            #expect(fourth.first?.attempt == 1)
            _ = try await Self.ack(client, "g", fourth.map(\.deliveryId))
            shown = try await client.send(.get, "/v1/consumer-groups/g")
            #expect(shown.json["checkpoint"] as? Int == 5 && shown.json["parked"] as? Int == 0, "\(shown.text)")

            // Ack timeouts, in a group of their own: deliveries not acknowledged within a second
            // come again with attempt 2 (at the first fetch after their deadline), then are parked.
            #expect(try await client.send(.put, "/v1/consumer-groups/t", json: #"{"categories":["thing"],"maxDeliveries":2,"ackTimeout":1}"#).status == .created)
            #expect(try await Self.fetch(client, "t", consumer: "slow").map(\.position) == [1, 4])
            // Past their deadline, the two deliveries count as waiting before any fetch has run.
            try await eventually("the deliveries are past their deadline") {
                let shown = try await client.send(.get, "/v1/consumer-groups/t")
                return shown.json["inFlight"] as? Int == 0 && shown.json["waiting"] as? Int == 4
            }
            let redelivered = Locked<[Message]>([])
            try await eventually("the deliveries come again") {
                let got = try await Self.fetch(client, "t", consumer: "slow", wait: 1)
                redelivered.set(got)
                return !got.isEmpty
            }
            #expect(redelivered.value.map(\.position) == [1, 4])
            #expect(redelivered.value.map(\.attempt) == [2, 2])
            let afterParking = Locked<[Message]>([])
            try await eventually("thing-1 goes on once 1 is parked") {
                let got = try await Self.fetch(client, "t", consumer: "slow", wait: 1)
                afterParking.set(got)
                return !got.isEmpty
            }
            #expect(afterParking.value.map(\.position) == [2])
            let timedOut = try await client.send(.get, "/v1/consumer-groups/t/parked")
            let timedOutItems = timedOut.json["parked"] as? [[String: Any]] ?? []
            #expect(timedOutItems.compactMap { $0["position"] as? Int } == [1, 4], "\(timedOut.text)")
            #expect(timedOutItems.allSatisfy { $0["lastError"] as? String == "not acknowledged in time" })
            #expect(try await client.send(.delete, "/v1/consumer-groups/t").status == .noContent)

            // A fetch with nothing to deliver waits for the next matching commit.
            let waiting = Task { try await Self.fetch(client, "g", consumer: "c1", wait: 30) }
            try await Task.sleep(for: .milliseconds(300))
            try await append("other-2", 1)  // 6: not the group's; the fetch goes on waiting
            try await append("thing-3", 1)  // 7
            let woken = try await waiting.value
            #expect(woken.map(\.position) == [7])

            // Bad input: a problem, and nothing settled.
            for (path, body, field) in [
                ("/v1/consumer-groups/g/fetch", #"{}"#, "consumer"),
                ("/v1/consumer-groups/g/fetch", #"{"consumer":"c","max":0}"#, "max"),
                ("/v1/consumer-groups/g/fetch", #"{"consumer":"c","wait":61}"#, "wait"),
                ("/v1/consumer-groups/g/ack", #"{"deliveryIds":[]}"#, "deliveryIds"),
                ("/v1/consumer-groups/g/ack", #"{"deliveryIds":["nope"]}"#, "deliveryIds[0]"),
                ("/v1/consumer-groups/g/nack", #"{"deliveryIds":["\#(woken[0].deliveryId)"],"retryAfter":-1}"#, "retryAfter"),
                ("/v1/consumer-groups/g/parked/retry", #"{"positions":[0]}"#, "positions[0]"),
            ] {
                let response = try await client.send(.post, path, json: body)
                #expect(response.status == .badRequest && response.isProblem, "\(path) \(body): \(response.text)")
                #expect(response.json["field"] as? String == field, "\(body): \(response.text)")
            }
            shown = try await client.send(.get, "/v1/consumer-groups/g")
            #expect(shown.json["inFlight"] as? Int == 1, "\(shown.text)")
        }
        await store.shutdown()
    }

    @Test("a delivery on its last attempt whose ack deadline passes is parked by the server's sweep, with no fetch: …/parked, the group and /metrics show it at once; an earlier attempt's overdue delivery wakes a waiting fetch")
    func parkedAtDeadline() async throws {
        var configured = try await TestServer.make("cgdeadline")
        configured.configuration.consumerGroupSweepInterval = .milliseconds(200)
        let server = configured
        let store = server.test.store
        try await server.run { client in
            let put = try await client.send(.put, "/v1/consumer-groups/late", json: #"{"maxDeliveries":1,"ackTimeout":1}"#)
            #expect(put.status == .created, "\(put.text)")
            _ = try await store.append(to: "thing-1", events: [NewEvent(type: "Made", data: Data("{}".utf8))])
            let first = try await Self.fetch(client, "late", consumer: "c1")
            #expect(first.count == 1 && first.first?.attempt == 1)
            // Nobody fetches or reads the group: the server's sweep parks it past its deadline.
            try await eventually(timeout: .seconds(20), "the sweep parks the overdue delivery") {
                try await server.test.sql { conn in
                    try conn.query("SELECT state FROM eventline.consumer_group_messages WHERE group_name = 'late'").first?.decode(0, as: String.self)
                } == "parked"
            }
            let parked = try await client.send(.get, "/v1/consumer-groups/late/parked")
            #expect(parked.status == .ok && parked.text.contains("not acknowledged in time"), "\(parked.text)")
            let shown = try await client.send(.get, "/v1/consumer-groups/late")
            #expect(shown.json["parked"] as? Int == 1 && shown.json["waiting"] as? Int == 0, "\(shown.text)")
            let metrics = try await client.send(.get, "/metrics")
            #expect(metrics.text.contains(#"eventline_consumer_group_parked{group="late"} 1"#), "\(metrics.text)")

            // With attempts left, an overdue delivery comes back to a fetch that was waiting for it.
            let again = try await client.send(.put, "/v1/consumer-groups/again", json: #"{"maxDeliveries":3,"ackTimeout":1}"#)
            #expect(again.status == .created, "\(again.text)")
            let held = try await Self.fetch(client, "again", consumer: "c1")
            #expect(held.count == 1)
            let redelivered = try await Self.fetch(client, "again", consumer: "c2", wait: 10)
            #expect(redelivered.map(\.attempt) == [2] && redelivered.first?.position == held.first?.position, "\(redelivered)")
        }
        await store.shutdown()
    }

    @Test("maxInFlightPerConsumer bounds what one consumer holds unacknowledged: its fetches get what fits, others get the rest, an ack makes room; out of range is a 400 that changes nothing")
    func inFlightBound() async throws {
        let server = try await TestServer.make("cginflight")
        let store = server.test.store
        try await server.run { client in
            let put = try await client.send(.put, "/v1/consumer-groups/bounded", json: #"{"maxInFlightPerConsumer":2}"#)
            #expect(put.status == .created && put.json["maxInFlightPerConsumer"] as? Int == 2, "\(put.text)")
            for stream in 1...5 {
                _ = try await store.append(to: "thing-\(stream)", events: [NewEvent(type: "Made", data: Data("{}".utf8))])
            }
            let first = try await Self.fetch(client, "bounded", consumer: "greedy", max: 10)
            #expect(first.count == 2, "\(first)")
            #expect(try await Self.fetch(client, "bounded", consumer: "greedy", max: 10).isEmpty)
            let other = try await Self.fetch(client, "bounded", consumer: "other", max: 10)
            #expect(other.count == 2, "\(other)")
            #expect(try await Self.ack(client, "bounded", [first[0].deliveryId]).status == .ok)
            let more = try await Self.fetch(client, "bounded", consumer: "greedy", max: 10)
            #expect(more.count == 1, "\(more)")
            for bad in ["0", "10001", "1.5", "\"2\""] {
                let refused = try await client.send(.put, "/v1/consumer-groups/bounded", json: #"{"maxInFlightPerConsumer":\#(bad)}"#)
                #expect(refused.status == .badRequest && refused.isProblem, "\(bad): \(refused.text)")
            }
            let shown = try await client.send(.get, "/v1/consumer-groups/bounded")
            #expect(shown.json["maxInFlightPerConsumer"] as? Int == 2, "\(shown.text)")
            let unbounded = try await client.send(.put, "/v1/consumer-groups/bounded", json: #"{"maxInFlightPerConsumer":null}"#)
            #expect(unbounded.status == .ok && unbounded.json["maxInFlightPerConsumer"] is NSNull, "\(unbounded.text)")
            // Greedy holds 2; unbounded, it takes 2 more.
            for stream in 6...7 {
                _ = try await store.append(to: "thing-\(stream)", events: [NewEvent(type: "Made", data: Data("{}".utf8))])
            }
            #expect(try await Self.fetch(client, "bounded", consumer: "greedy", max: 10).count == 2)
        }
        await store.shutdown()
    }

    @Test("maxPerStream hands a run of one stream's consecutive events to one consumer; a refused event sends the rest of its run back behind it, so the stream's order holds; out of range is a 400")
    func streamRuns() async throws {
        let server = try await TestServer.make("cgruns")
        let store = server.test.store
        try await server.run { client in
            let put = try await client.send(.put, "/v1/consumer-groups/runs", json: #"{"maxPerStream":10}"#)
            #expect(put.status == .created && put.json["maxPerStream"] as? Int == 10, "\(put.text)")
            _ = try await store.append(to: "hot-1", events: (0..<5).map { _ in NewEvent(type: "Made", data: Data("{}".utf8)) })
            _ = try await store.append(to: "cold-1", events: [NewEvent(type: "Made", data: Data("{}".utf8))])
            let first = try await Self.fetch(client, "runs", consumer: "c1")
            #expect(first.map(\.position) == [1, 2, 3, 4, 5, 6], "\(first)")
            // The second of the run refused: the rest of the run waits behind it, and nothing of
            // the stream goes to anyone while the first is still out.
            let refused = try await client.send(.post, "/v1/consumer-groups/runs/nack", json: #"{"deliveryIds":["\#(first[1].deliveryId)"]}"#)
            #expect(refused.status == .ok, "\(refused.text)")
            #expect(try await Self.fetch(client, "runs", consumer: "c2").isEmpty)
            #expect(try await Self.ack(client, "runs", [first[0].deliveryId, first[5].deliveryId]).status == .ok)
            let again = try await Self.fetch(client, "runs", consumer: "c2")
            #expect(again.map(\.position) == [2, 3, 4, 5] && again.allSatisfy { $0.attempt == 2 }, "\(again)")
            // Acknowledged in order, the stream is done; the stale deliveries of the first run settle nothing.
            let stale = try await Self.ack(client, "runs", first[2...4].map(\.deliveryId))
            #expect((stale.json["stale"] as? [String])?.count == 3, "\(stale.text)")
            #expect(try await Self.ack(client, "runs", again.map(\.deliveryId)).status == .ok)
            let shown = try await client.send(.get, "/v1/consumer-groups/runs")
            #expect(shown.json["checkpoint"] as? Int == 6 && shown.json["inFlight"] as? Int == 0, "\(shown.text)")
            for bad in ["0", "1001", "true"] {
                let refused = try await client.send(.put, "/v1/consumer-groups/runs", json: #"{"maxPerStream":\#(bad)}"#)
                #expect(refused.status == .badRequest && refused.isProblem, "\(bad): \(refused.text)")
            }
        }
        await store.shutdown()
    }

    @Test("one hot stream drains in runs: 500 one-event streams and 500 events of one stream, fetched 100 at a time and acknowledged, take 500 fetches one at a time and a few with maxPerStream 100, each stream in order either way")
    func hotStreamRuns() async throws {
        let test = try await TestStore.make("cghot")
        let store = test.store
        try await appendShopBacklog(store)
        var fetches: [Int: Int] = [:]
        for perStream in [1, 100] {
            let group = "hot\(perStream)"
            _ = try await store.putConsumerGroup(group, ConsumerGroupSettings(filter: EventFilter(categories: ["shop"]), maxPerStream: perStream))
            var last: [String: Int] = [:]
            var acknowledged = 0
            var count = 0
            while acknowledged < 1000 && count < 2000 {
                count += 1
                let batch = try #require(try await store.fetch(group: group, consumer: "c", max: 100))
                for message in batch {
                    #expect(message.event.position > last[message.event.stream, default: 0], "out of order: \(message.event.stream)")
                    last[message.event.stream] = message.event.position
                }
                _ = try await store.acknowledge(group: group, deliveryIds: batch.map(\.deliveryId))
                acknowledged += batch.count
            }
            #expect(acknowledged == 1000)
            fetches[perStream] = count
        }
        print("draining 1,000 events (500 of one stream), 100 per fetch: \(fetches[1] ?? 0) fetches one at a time, \(fetches[100] ?? 0) with maxPerStream 100")
        #expect(fetches[1] == 500 && (fetches[100] ?? 1000) <= 20, "\(fetches)")
        await store.shutdown()
    }
}

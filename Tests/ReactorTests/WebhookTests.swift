import EventStore
import EventlineTestSupport
import Foundation
import Reactors
import Synchronization
import Testing

@Suite("Webhooks", .serialized, .timeLimit(.minutes(3)))
struct WebhookTests {
    @Test("HMAC-SHA256 gives RFC 4231's answers")
    func hmacVectors() {
        #expect(HMACSHA256.hex(key: Array("Jefe".utf8), message: Array("what do ya want for nothing?".utf8))
            == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        #expect(HMACSHA256.hex(key: [UInt8](repeating: 0x0b, count: 20), message: Array("Hi There".utf8))
            == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
    }

    /// `requestTimeout`: short where a test hangs its receiver on purpose; a test that does not
    /// gives a loaded machine's loopback receiver time to answer.
    static func deliverer(_ store: EventStore, only: String, requestTimeout: Duration = .seconds(1)) -> Task<Void, any Error> {
        var configuration = WebhookConfiguration()
        configuration.requestTimeout = requestTimeout
        configuration.retryDelay = .milliseconds(100)
        configuration.maxRetryDelay = .milliseconds(400)
        configuration.refreshInterval = .milliseconds(200)
        configuration.pollInterval = .milliseconds(200)
        configuration.only = [only]
        let deliverer = WebhookDeliverer(store: store, configuration: configuration)
        return Task { try await deliverer.run() }
    }

    @Test("batches are signed, retried after errors and a hung receiver, and every event arrives, each stream in order")
    func retriedUntilDelivered() async throws {
        let test = try await TestStore.make("webhookok")
        let store = test.store
        // The first answer is a 500, the second never comes in time; then all is well.
        let receiver = try WebhookReceiver { index in
            switch index {
            case 0: .status(500)
            case 1: .hang(.seconds(3))
            default: .status(204)
            }
        }
        defer { receiver.stop() }
        let secret = "s3cret-\(UUID())"
        _ = try await store.putConsumerGroup(
            "hooked", ConsumerGroupSettings(
                filter: EventFilter(category: "order"), maxDeliveries: 10, ackTimeout: .seconds(30),
                webhook: ConsumerGroupWebhook(url: receiver.url, secret: secret, batchSize: 5)))
        let delivery = Self.deliverer(store, only: "hooked")
        // Appends while delivery runs: three streams, and noise the group does not take.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for writer in 0..<3 {
                group.addTask {
                    for n in 0..<10 {
                        _ = try await store.append(to: "order-\(writer)", events: [NewEvent(type: "Placed", data: Data(#"{"n":\#(n)}"#.utf8))])
                        _ = try await store.append(to: "noise-\(writer)", events: [NewEvent(type: "Noise", data: Data("{}".utf8))])
                        try await Task.sleep(for: .milliseconds(20))
                    }
                }
            }
            try await group.waitForAll()
        }
        let expected = try await store.readAll(limit: 1000, filter: EventFilter(category: "order")).map(\.position)
        #expect(expected.count == 30)
        try await eventually("every event delivered") {
            let status = try await store.consumerGroup("hooked")
            return status.map { $0.checkpoint >= expected.last! && $0.inFlight == 0 && $0.waiting == 0 } ?? false
        }
        delivery.cancel()
        _ = try? await delivery.value

        let requests = receiver.requests
        #expect(requests.count >= 3)
        #expect(requests[0].status == 500 && requests[1].status == 0)
        for request in requests {
            #expect(request.group == "hooked")
            #expect(request.signature == "sha256=" + HMACSHA256.hex(key: Array(secret.utf8), message: Array(request.body.utf8)))
        }
        // What the receiver accepted holds every event; the first two batches came again.
        let accepted = requests.filter { (200..<300).contains($0.status) }.flatMap { WebhookReceiver.messages($0.body) }
        #expect(Set(accepted.map(\.position)) == Set(expected))
        let first = Set(WebhookReceiver.messages(requests[0].body).map(\.position))
        #expect(!first.isEmpty && first.isSubset(of: Set(accepted.map(\.position))))
        #expect(accepted.contains { $0.attempt >= 3 }, "the first batch was delivered a third time")
        // Each stream's events arrived in order, every batch at most one per stream.
        for stream in Set(accepted.map(\.stream)) {
            let versions = accepted.filter { $0.stream == stream }.map(\.version)
            #expect(versions == versions.sorted(), "\(stream): \(versions)")
        }
        for request in requests {
            let streams = WebhookReceiver.messages(request.body).map(\.stream)
            #expect(Set(streams).count == streams.count)
            #expect(streams.allSatisfy { $0.hasPrefix("order-") })
        }
        await store.shutdown()
    }

    @Test("a receiver that always fails gets maxDeliveries attempts of each event, which is then parked; retried, it is delivered")
    func parkedWhenNeverAccepted() async throws {
        let test = try await TestStore.make("webhookpark")
        let store = test.store
        final class Flag: Sendable { let on = Atomic<Bool>(false) }
        let flag = Flag()
        let receiver = try WebhookReceiver { _ in flag.on.load(ordering: .relaxed) ? .status(200) : .status(503) }
        defer { receiver.stop() }
        for n in 1...3 { _ = try await store.append(to: "order-\(n)", events: [NewEvent(type: "Placed", data: Data("{}".utf8))]) }
        _ = try await store.putConsumerGroup(
            "failing", ConsumerGroupSettings(
                filter: EventFilter(category: "order"), maxDeliveries: 2,
                webhook: ConsumerGroupWebhook(url: receiver.url, secret: "k", batchSize: 10)))
        // A timeout would count as a failed attempt (the full suite once loaded the machine so
        // that the receiver took over a second): only the receiver's 503 may park events here.
        let delivery = Self.deliverer(store, only: "failing", requestTimeout: .seconds(20))
        defer { delivery.cancel() }
        try await eventually("every event parked") { try await store.consumerGroup("failing")?.parked == 3 }
        let parked = try #require(try await store.parkedMessages(group: "failing"))
        #expect(parked.map(\.event.position) == [1, 2, 3])
        #expect(parked.allSatisfy { $0.attempt == 2 && $0.lastError == "HTTP 503" })
        // Each event was sent exactly maxDeliveries times.
        let sent = receiver.requests.flatMap { WebhookReceiver.messages($0.body) }.map(\.position)
        #expect(sent.sorted() == [1, 1, 2, 2, 3, 3], "\(sent)")

        flag.on.store(true, ordering: .relaxed)
        #expect(try await store.retryParked(group: "failing") == 3)
        try await eventually("the retried events delivered") {
            let status = try await store.consumerGroup("failing")
            return status.map { $0.parked == 0 && $0.waiting == 0 && $0.inFlight == 0 && $0.checkpoint == 3 } ?? false
        }
        #expect(receiver.requests.last?.status == 200)
        delivery.cancel()
        _ = try? await delivery.value
        await store.shutdown()
    }
}

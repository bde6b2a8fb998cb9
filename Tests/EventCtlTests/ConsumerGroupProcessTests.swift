import EventStore
import EventlineTestSupport
import Foundation
import Synchronization
import Testing

/// Consumer groups served by `eventctl serve` processes: competing consumers over two servers
/// while appends run, one consumer that dies holding deliveries, and a server SIGKILLed and
/// restarted mid-run.
@Suite("Consumer groups across server processes", .serialized)
struct ConsumerGroupProcessTests {
    struct Delivery: Sendable {
        var consumer: String
        var deliveryId: String
        var attempt: Int
        var position: Int
        var stream: String
        var version: Int
    }

    final class Run: Sendable {
        /// Every delivery, in the order the consumers received them.
        let deliveries = Mutex<[Delivery]>([])
        let acknowledged = Mutex<Set<Int>>([])
        /// Events whose ack was sent but not answered (its server died): acknowledged or not.
        let uncertain = Mutex<Set<Int>>([])
        /// The servers' ports; a consumer whose server fails tries the next.
        let ports: Mutex<[Int]>
        let stop = Atomic<Bool>(false)

        init(ports: [Int]) { self.ports = Mutex(ports) }

        func port(_ index: Int) -> Int { ports.withLock { $0[index % $0.count] } }
    }

    static func parse(_ body: String, consumer: String) -> [Delivery] {
        GroupMessage.parse(body).map {
            Delivery(consumer: consumer, deliveryId: $0.deliveryId, attempt: $0.attempt, position: $0.position, stream: $0.stream, version: $0.version)
        }
    }

    /// One consumer: fetches, records and acknowledges, on server `index` and, when that one
    /// fails, the next. One that `dies` does so after a few batches: it takes one more and
    /// is gone without acknowledging it (as a SIGKILLed consumer would be).
    static func consume(_ run: Run, name: String, index: Int, dies: Bool) async {
        var server = index
        var batches = 0
        while !run.stop.load(ordering: .relaxed) {
            let port = run.port(server)
            do {
                let answer = try await LoopbackHTTP.request(
                    "POST", port: port, "/v1/consumer-groups/orders/fetch", body: #"{"consumer":"\#(name)","max":10,"wait":1}"#,
                    timeout: 10)
                guard answer.status == 200 else { throw POSIXError(.EIO) }
                let got = parse(answer.body, consumer: name)
                run.deliveries.withLock { $0 += got }
                guard !got.isEmpty else { continue }
                batches += 1
                if dies && batches == 5 { return }
                let ids = got.map { "\"\($0.deliveryId)\"" }.joined(separator: ",")
                guard let acked = try? await LoopbackHTTP.request(
                    "POST", port: port, "/v1/consumer-groups/orders/ack", body: #"{"deliveryIds":[\#(ids)]}"#, timeout: 10)
                else {
                    // The server may have committed the ack before it died; if not, the events
                    // come again after their timeout.
                    run.uncertain.withLock { $0.formUnion(got.map(\.position)) }
                    throw POSIXError(.EIO)
                }
                guard acked.status == 200,
                    let object = try? JSONSerialization.jsonObject(with: Data(acked.body.utf8)) as? [String: Any],
                    let settled = object["acknowledged"] as? [String]
                else { throw POSIXError(.EIO) }
                let positions = got.filter { settled.contains($0.deliveryId) }.map(\.position)
                run.acknowledged.withLock { $0.formUnion(positions) }
            } catch {
                // The server is down (or being replaced): the next one.
                server += 1
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    @Test("four consumers on two servers under appends, one dying with deliveries unacknowledged, one server SIGKILLed and restarted: every event acknowledged, each stream in order, no event held twice at once")
    func competingConsumers() async throws {
        let test = try await TestStore.make("cgprocs")
        let environment = ["EVENTLINE_PROJECTIONS_DIR": "/nonexistent"]
        let (first, firstPort) = try await DeploymentTests.serve(try Repository.eventctl, url: test.url, environment: environment)
        let (second, secondPort) = try await DeploymentTests.serve(try Repository.eventctl, url: test.url, environment: environment)
        let replacement = Mutex<BackgroundProcess?>(nil)
        defer {
            killProcessTree(first.pid)
            killProcessTree(second.pid)
            if let process = replacement.withLock({ $0 }) { killProcessTree(process.pid) }
        }
        let created = try await LoopbackHTTP.request(
            "PUT", port: firstPort, "/v1/consumer-groups/orders", body: #"{"categories":["order"],"ackTimeout":3,"maxDeliveries":100}"#)
        #expect(created.status == 201, "\(created.body)")

        let run = Run(ports: [firstPort, secondPort])
        let consumers = Task {
            await withTaskGroup(of: Void.self) { group in
                for index in 0..<4 {
                    group.addTask { await Self.consume(run, name: "c\(index + 1)", index: index, dies: index == 3) }
                }
            }
        }
        // Four appenders, 60 events each over ten streams, with noise the group does not take.
        let store = test.store
        let appenders = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<4 {
                    group.addTask {
                        for n in 0..<60 {
                            _ = try await store.append(to: "order-\((writer * 60 + n) % 10)", events: [NewEvent(type: "Placed", data: Data(#"{"n":\#(n)}"#.utf8))])
                            if n % 10 == 0 { _ = try await store.append(to: "other-\(writer)", events: [NewEvent(type: "Noise", data: Data("{}".utf8))]) }
                            try await Task.sleep(for: .milliseconds(15))
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        // Mid-run, the first server is killed outright and another takes its place.
        try await eventually("some events acknowledged") { run.acknowledged.withLock { $0.count } >= 40 }
        killProcessTree(first.pid)
        let (third, thirdPort) = try await DeploymentTests.serve(try Repository.eventctl, url: test.url, environment: environment)
        replacement.withLock { $0 = third }
        run.ports.withLock { $0[0] = thirdPort }

        try await appenders.value
        let expected = try await store.readAll(limit: 10_000, filter: EventFilter(category: "order"))
        #expect(expected.count == 240)
        // Done when the group says so: every event up to the last acknowledged (or parked, and
        // nothing is), none in flight or waiting.
        let last = try #require(expected.last?.position)
        /// The group's parked count and redeliveries, as last shown.
        let status = Mutex<(parked: Int, redeliveries: Int)>((0, 0))
        try await eventually(timeout: .seconds(90), "every event acknowledged") {
            guard let shown = try? await LoopbackHTTP.request(port: run.port(1), "/v1/consumer-groups/orders"),
                let group = try? JSONSerialization.jsonObject(with: Data(shown.body.utf8)) as? [String: Any]
            else { return false }
            let counts = (group["parked"] as? Int ?? -1, group["redeliveries"] as? Int ?? -1)
            status.withLock { $0 = counts }
            return (group["checkpoint"] as? Int ?? 0) >= last && group["inFlight"] as? Int == 0 && group["waiting"] as? Int == 0
        }
        run.stop.store(true, ordering: .relaxed)
        await consumers.value

        let deliveries = run.deliveries.withLock { $0 }
        // Every event reached a consumer, and each one's ack was answered (or lost with a server).
        #expect(Set(deliveries.map(\.position)).isSuperset(of: expected.map(\.position)))
        let settled = run.acknowledged.withLock { $0 }.union(run.uncertain.withLock { $0 })
        #expect(settled.isSuperset(of: expected.map(\.position)), "\(Set(expected.map(\.position)).subtracting(settled).sorted())")
        #expect(status.withLock { $0.parked } == 0)
        // No event was held by two consumers at once: each attempt of a position was handed out
        // once, by whichever server (two servers deciding alone would repeat an attempt).
        var attempts: [Int: [Int]] = [:]
        for delivery in deliveries { attempts[delivery.position, default: []].append(delivery.attempt) }
        for (position, seen) in attempts {
            #expect(Set(seen).count == seen.count, "position \(position) was handed out twice at attempt \(seen)")
        }
        #expect(Set(deliveries.map(\.deliveryId)).count == deliveries.count)
        // Each stream's events reached the consumers in order (an event comes again only after
        // its ack timeout, never after a later one of its stream).
        for stream in Set(deliveries.map(\.stream)) {
            let versions = deliveries.filter { $0.stream == stream }.map(\.version)
            #expect(versions == versions.sorted(), "\(stream) was delivered out of order: \(versions)")
        }
        // What the consumer that died held went to the others, after its ack timeout.
        let held = Set(deliveries.filter { $0.consumer == "c4" }.map(\.position))
        #expect(!held.isEmpty)
        #expect(deliveries.contains { $0.attempt > 1 && held.contains($0.position) && $0.consumer != "c4" })
        #expect(deliveries.allSatisfy { $0.stream.hasPrefix("order-") })

        #expect(status.withLock { $0.redeliveries } > 0)
        #expect(await second.stop() == 0, "\(second.output)")
        #expect(await third.stop() == 0, "\(third.output)")
        await store.shutdown()
    }
}

@Suite("eventctl consumer-groups")
struct ConsumerGroupCommandTests {
    @Test("lists and shows groups, lists parked events and retries them; a missing group or schema is one line")
    func listShowParkedRetry() async throws {
        let test = try await TestStore.make("cgcli")
        let store = test.store
        for n in 1...3 { _ = try await store.append(to: "order-\(n)", events: [NewEvent(type: "Placed", data: Data(#"{"n":\#(n)}"#.utf8))]) }
        #expect(try await store.putConsumerGroup("shipping", ConsumerGroupSettings(filter: EventFilter(category: "order"), maxDeliveries: 1)))
        // The first event is refused on its only attempt: parked.
        let messages = try #require(try await store.fetch(group: "shipping", consumer: "c1", max: 1))
        #expect(messages.map(\.event.position) == [1])
        _ = try await store.refuse(group: "shipping", deliveryIds: messages.map(\.deliveryId), reason: "no address")

        var output = try await EventCtlTests.eventctl(["consumer-groups"], url: test.url)
        #expect(output.status == 0, "\(output.stderr)")
        #expect(output.stdout.contains("shipping"), "\(output.stdout)")
        output = try await EventCtlTests.eventctl(["consumer-groups", "show", "shipping"], url: test.url)
        #expect(output.stdout.contains("categories:     order"), "\(output.stdout)")
        #expect(output.stdout.contains("parked:         1"), "\(output.stdout)")
        #expect(output.stdout.contains("consumer:       c1"), "\(output.stdout)")
        output = try await EventCtlTests.eventctl(["consumer-groups", "parked", "shipping"], url: test.url)
        #expect(output.stdout.hasPrefix("1\torder-1@1\tPlaced"), "\(output.stdout)")
        #expect(output.stdout.contains("no address"))
        output = try await EventCtlTests.eventctl(["consumer-groups", "retry", "shipping", "--position", "1"], url: test.url)
        #expect(output.stdout.contains("retried 1 parked event of shipping"), "\(output.stdout) \(output.stderr)")
        let again = try #require(try await store.fetch(group: "shipping", consumer: "c2", max: 10))
        #expect(again.map(\.event.position) == [1, 2, 3])
        #expect(again.first?.attempt == 1)

        EventCtlTests.expectOneLineError(
            try await EventCtlTests.eventctl(["consumer-groups", "show", "nope"], url: test.url), containing: "no consumer group nope")
        EventCtlTests.expectOneLineError(
            try await EventCtlTests.eventctl(["consumer-groups", "parked", "shipping", "--limit", "0"], url: test.url), containing: "--limit")
        output = try await EventCtlTests.eventctl(["consumer-groups", "delete", "shipping"], url: test.url)
        #expect(output.stdout.contains("deleted consumer group shipping"))
        #expect(try await store.consumerGroups().isEmpty)

        let empty = try await TestDatabase.create("cgclibare")
        EventCtlTests.expectOneLineError(try await EventCtlTests.eventctl(["consumer-groups"], url: empty.url), containing: "migrate")
        await store.shutdown()
    }
}

@Suite("eventctl deliver", .serialized)
struct DeliverProcessTests {
    @Test("two deliver processes: the one that delivers is SIGKILLed mid-run and the other takes over; every event reaches the receiver, signed")
    func failover() async throws {
        let test = try await TestStore.make("deliverfail")
        let store = test.store
        let receiver = try WebhookReceiver { _ in .status(200) }
        defer { receiver.stop() }
        _ = try await store.putConsumerGroup(
            "hook", ConsumerGroupSettings(
                filter: EventFilter(category: "order"), ackTimeout: .seconds(2),
                webhook: ConsumerGroupWebhook(url: receiver.url, secret: "k3y", batchSize: 5)))
        let environment = ["EVENTLINE_DATABASE_URL": test.url]
        let first = try BackgroundProcess(try Repository.eventctl, ["deliver", "--timeout", "2"], environment: environment)
        try await Task.sleep(for: .milliseconds(500))
        let second = try BackgroundProcess(try Repository.eventctl, ["deliver", "--timeout", "2"], environment: environment)
        defer {
            killProcessTree(first.pid)
            killProcessTree(second.pid)
        }
        func append(_ range: Range<Int>) async throws {
            for n in range { _ = try await store.append(to: "order-\(n % 4)", events: [NewEvent(type: "Placed", data: Data(#"{"n":\#(n)}"#.utf8))]) }
        }
        try await append(0..<20)
        try await eventually("the first events delivered") { receiver.requests.count > 0 }
        // The process that holds the lease (it says so) is killed; the other takes it over.
        let taken = "webhook lease taken"
        let (holder, standby) = first.output.contains(taken) ? (first, second) : (second, first)
        #expect(holder.output.contains(taken) && !standby.output.contains(taken), "\(first.output)\n\(second.output)")
        killProcessTree(holder.pid)
        try await append(20..<40)
        let expected = try await store.readAll(limit: 1000, filter: EventFilter(category: "order")).map(\.position)
        try await eventually(timeout: .seconds(60), "every event delivered") {
            let status = try await store.consumerGroup("hook")
            return status.map { $0.checkpoint >= expected.last! && $0.inFlight == 0 && $0.waiting == 0 } ?? false
        }
        let accepted = receiver.requests.flatMap { WebhookReceiver.messages($0.body) }
        #expect(Set(accepted.map(\.position)) == Set(expected))
        #expect(receiver.requests.allSatisfy { $0.signature == "sha256=" + HMACSHA256.hex(key: Array("k3y".utf8), message: Array($0.body.utf8)) })
        #expect(standby.output.contains(taken), "\(standby.output)")
        #expect(await standby.stop() == 0, "\(standby.output)")
        await store.shutdown()
    }
}

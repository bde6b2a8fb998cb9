import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Synchronization
import Testing

/// Collects what a subscription yields, from a task of its own.
final class Collector: Sendable {
    private let events = Mutex<[RecordedEvent]>([])
    private let ended = Mutex(false)
    var all: [RecordedEvent] { events.withLock { $0 } }
    /// Whether the subscription's sequence has finished.
    var finished: Bool { ended.withLock { $0 } }
    var lastPosition: Int { events.withLock { $0.last?.position ?? 0 } }

    func follow(_ subscription: EventSubscription) -> Task<Void, any Error> {
        Task {
            for try await event in subscription {
                events.withLock { $0.append(event) }
            }
            ended.withLock { $0 = true }
        }
    }
}

@Suite("Subscriptions", .serialized)
struct SubscriptionTests {
    @Test("a subscriber started before concurrent load sees every event exactly once, in position order")
    func liveDuringLoad() async throws {
        let test = try await TestStore.make("sublive")
        let collector = Collector()
        let following = collector.follow(test.store.subscribe(after: 0))
        let attempts = try await ConcurrencyTests.load(stores: [test.store], appenders: 32, appendsEach: 30)
        let head = try await test.store.headPosition()
        try await eventually("the subscriber reaches the head \(head)") { collector.lastPosition >= head }
        following.cancel()
        let seen = collector.all
        #expect(seen.map(\.position) == Array(1...head))
        let acknowledged = attempts.reduce(0) { total, attempt in
            if case .acknowledged(let result) = attempt.outcome { return total + result.events.count }
            return total
        }
        #expect(seen.count == acknowledged)
        // What the subscriber saw is what the table holds.
        let rows = try await test.allRows()
        #expect(seen.map(\.id) == rows.map(\.id))
        await test.store.shutdown()
    }

    @Test("a subscriber started after the load catches up from the table, then continues live")
    func catchUpThenLive() async throws {
        let test = try await TestStore.make("subcatch") { $0.subscriptionBatchSize = 64 }
        for index in 0..<300 {
            _ = try await test.store.append(to: "s-\(index % 5)", events: [NewEvent(type: "Before", data: Data("{}".utf8))])
        }
        let collector = Collector()
        let following = collector.follow(test.store.subscribe(after: 100))
        try await eventually("catch-up to 300") { collector.lastPosition == 300 }
        for index in 0..<50 {
            _ = try await test.store.append(to: "s-\(index % 5)", events: [NewEvent(type: "After", data: Data("{}".utf8))])
        }
        try await eventually("live events to 350") { collector.lastPosition == 350 }
        following.cancel()
        #expect(collector.all.map(\.position) == Array(101...350))
        #expect(collector.all.suffix(50).allSatisfy { $0.type == "After" })
        await test.store.shutdown()
    }

    @Test("a subscription filtered by category yields only that category, in order")
    func filtered() async throws {
        let test = try await TestStore.make("subfilter")
        let collector = Collector()
        let following = collector.follow(test.store.subscribe(after: 0, filter: EventFilter(category: "order")))
        for index in 0..<40 {
            _ = try await test.store.append(to: index % 2 == 0 ? "order-\(index)" : "invoice-\(index)", events: [NewEvent(type: "E", data: Data("{}".utf8))])
        }
        try await eventually("20 order events") { collector.all.count == 20 }
        following.cancel()
        #expect(collector.all.allSatisfy { $0.category == "order" })
        #expect(collector.all.map(\.position) == collector.all.map(\.position).sorted())
        await test.store.shutdown()
    }

    @Test("a subscription survives its database sessions being killed and misses nothing")
    func reconnects() async throws {
        let test = try await TestStore.make("subkill")
        let collector = Collector()
        let following = collector.follow(test.store.subscribe(after: 0))
        for round in 0..<5 {
            for index in 0..<20 {
                _ = try await test.store.append(to: "r-\(index)", events: [NewEvent(type: "Round\(round)", data: Data("{}".utf8))])
            }
            // Kill every session of this database but our own: the listener, the read pool, the writer.
            _ = try await test.sql { conn in
                try conn.query("""
                    SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                    WHERE datname = current_database() AND pid <> pg_backend_pid()
                    """)
            }
        }
        try await eventually("the subscriber reaches 100") { collector.lastPosition == 100 }
        following.cancel()
        #expect(collector.all.map(\.position) == Array(1...100))
        await test.store.shutdown()
    }

    @Test("a slow consumer holds at most one page in memory")
    func backPressure() async throws {
        let test = try await TestStore.make("subslow") { $0.subscriptionBatchSize = 10 }
        for _ in 0..<5 {
            _ = try await test.store.append(to: "bp-1", events: (0..<100).map { _ in NewEvent(type: "E", data: Data("{}".utf8)) })
        }
        var iterator = test.store.subscribe(after: 0).makeAsyncIterator()
        // The iterator pulls a page at a time: after 15 events it has read 2 pages, never the whole log.
        var positions: [Int] = []
        for _ in 0..<15 { positions.append(try await iterator.next()!.position) }
        #expect(positions == Array(1...15))
        #expect(iterator.position == 15)
        await test.store.shutdown()
    }

    @Test("a subscription ends when its store shuts down")
    func endsOnShutdown() async throws {
        let test = try await TestStore.make("subend")
        _ = try await test.store.append(to: "e-1", events: [NewEvent(type: "E", data: Data("{}".utf8))])
        let collector = Collector()
        let following = collector.follow(test.store.subscribe(after: 0))
        try await eventually("the first event") { collector.lastPosition == 1 }
        await test.store.shutdown()
        try await eventually(timeout: .seconds(10), "the subscription ends") { collector.finished }
        try await following.value
    }
}

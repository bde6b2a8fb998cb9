import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Synchronization
import Testing

private func event(_ type: String = "Happened") -> NewEvent {
    NewEvent(type: type, data: Data("{}".utf8))
}

/// What the appenders of a tombstone race share.
private final class TombstoneRace: Sendable {
    /// The positions of the appends that committed, by stream.
    let committed = Mutex<[String: [Int]]>([:])
    let refused = Atomic<Int>(0)
    let deleted = Atomic<Bool>(false)
}

@Suite("Tombstones: deleting a stream for good")
struct TombstoneTests {
    @Test("a deleted stream is read as deleted and refuses appends; its events and the tombstone stay in the log; deleting again is idempotent; the expected version is checked")
    func deletedStream() async throws {
        let test = try await TestStore.make("tombstone")
        let store = test.store
        defer { Task { await store.shutdown() } }
        try await store.append(to: "order-1", events: [event(), event()])
        try await store.append(to: "order-2", events: [event()])

        let conflict = await #expect(throws: EventStoreError.self) { try await store.deleteStream("order-1", expected: .exact(1)) }
        #expect(conflict?.code == .wrongExpectedVersion && conflict?.currentVersion == 2)
        let deleted = try await store.deleteStream("order-1", expected: .exact(2))
        #expect(!deleted.wasAlreadyAppended && deleted.version == 3 && deleted.position == 4)
        let again = try await store.deleteStream("order-1")
        #expect(again.wasAlreadyAppended && again.position == 4)

        // Every read of it says so, from any place in it and in both directions.
        for read in [
            { try await store.readStream("order-1") }, { try await store.readStream("order-1", from: 1, limit: 1) },
            { try await store.readStream("order-1", from: 9) }, { try await store.readStream("order-1", direction: .backward) },
            { try await store.readStream("order-1", from: 1, direction: .backward) },
        ] as [@Sendable () async throws -> [RecordedEvent]] {
            let error = await #expect(throws: EventStoreError.self) { try await read() }
            #expect(error?.code == .streamDeleted)
        }
        // Appends are refused by this store's writer and by another's (the long way).
        let other = test.secondStore()
        defer { Task { await other.shutdown() } }
        for writer in [store, other] {
            for expected in [ExpectedVersion.any, .exact(3), .exists] {
                let refused = await #expect(throws: EventStoreError.self) { try await writer.append(to: "order-1", expected: expected, events: [event()]) }
                #expect(refused?.code == .streamDeleted)
            }
        }
        // The log keeps every event in place, the tombstone last.
        let log = try await store.readAll()
        #expect(log.map(\.type) == ["Happened", "Happened", "Happened", "$StreamDeleted"])
        #expect(log.map(\.position) == [1, 2, 3, 4])
        #expect(try await store.deletedStreamCount() == 1)
        // Another stream is untouched; a stream never written can be deleted too.
        #expect(try await store.readStream("order-2").count == 1)
        try await store.deleteStream("order-3", expected: .noStream)
        let never = await #expect(throws: EventStoreError.self) { try await store.append(to: "order-3", expected: .noStream, events: [event()]) }
        #expect(never?.code == .streamDeleted)
        let platform = await #expect(throws: EventStoreError.self) { try await store.deleteStream(EventStore.forgottenStream) }
        #expect(platform?.code == .invalidArgument)
    }

    @Test("under concurrent appends from two log writers, no append commits after the tombstone, and every append before it is kept")
    func concurrentAppends() async throws {
        let test = try await TestStore.make("tombstone-race")
        let store = test.store
        let second = test.secondStore()
        defer { Task { await store.shutdown(); await second.shutdown() } }
        try await store.append(to: "cart-1", events: [event()])
        let race = TombstoneRace()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for appender in 0..<8 {
                let writer = appender % 2 == 0 ? store : second
                group.addTask {
                    for _ in 0..<2000 {
                        do {
                            let result = try await writer.append(to: "cart-1", events: [event(), event()])
                            race.committed.withLock { $0["cart-1", default: []] += result.events.map(\.position) }
                        } catch let error as EventStoreError where error.code == .streamDeleted {
                            race.refused.add(1, ordering: .relaxed)
                            return
                        }
                        // Another stream goes on beside it and is never refused.
                        let other = try await writer.append(to: "cart-\(appender + 2)", events: [event()])
                        race.committed.withLock { $0["cart-\(appender + 2)", default: []] += other.events.map(\.position) }
                    }
                }
            }
            group.addTask {
                try await Task.sleep(for: .milliseconds(150))
                // Both writers delete it at once: one tombstone.
                async let one = store.deleteStream("cart-1")
                async let two = second.deleteStream("cart-1")
                let results = try await [one, two]
                #expect(results.filter { !$0.wasAlreadyAppended }.count == 1)
                race.deleted.store(true, ordering: .relaxed)
            }
            try await group.waitForAll()
        }
        #expect(race.refused.load(ordering: .relaxed) == 8)
        // From the table: the tombstone is the stream's last event; every acknowledged append
        // is in the log before it.
        let rows = try await test.sql { conn in
            try conn.query("SELECT position, version, type FROM eventline.events WHERE stream = 'cart-1' ORDER BY version").rows.map {
                (position: try $0.decode(0, as: Int.self), version: try $0.decode(1, as: Int.self), type: try $0.decode(2, as: String.self))
            }
        }
        let tombstone = try #require(rows.last)
        #expect(tombstone.type == "$StreamDeleted")
        #expect(rows.filter { $0.type == "$StreamDeleted" }.count == 1)
        #expect(rows.map(\.version) == Array(1...rows.count))
        let committed = race.committed.withLock { $0 }
        #expect(Set(committed["cart-1"] ?? []).union([1, tombstone.position]) == Set(rows.map(\.position)))
        #expect(committed["cart-1"]?.allSatisfy { $0 < tombstone.position } == true)
        for appender in 0..<8 {
            let stream = "cart-\(appender + 2)"
            #expect(try await store.readStream(stream, limit: 10_000).map(\.position) == committed[stream] ?? [], "\(stream)")
        }
    }
}

import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Testing

private func event(_ type: String = "Happened", _ json: String = "{}", id: UUID? = nil) -> NewEvent {
    NewEvent(id: id, type: type, data: Data(json.utf8))
}

@Suite("Appending and reading")
struct AppendTests {
    @Test("each expected-version mode accepts the right versions and reports the current version on conflict")
    func expectedVersionModes() async throws {
        let test = try await TestStore.make("modes")
        let store = test.store
        defer { Task { await store.shutdown() } }

        // exists on a missing stream
        let exists = await #expect(throws: EventStoreError.self) { try await store.append(to: "acc-1", expected: .exists, events: [event()]) }
        #expect(exists?.code == .wrongExpectedVersion)
        #expect(exists?.currentVersion == 0)
        // exact on a missing stream
        let exact = await #expect(throws: EventStoreError.self) { try await store.append(to: "acc-1", expected: .exact(2), events: [event()]) }
        #expect(exact?.currentVersion == 0)

        let first = try await store.append(to: "acc-1", expected: .noStream, events: [event(), event()])
        #expect(first.version == 2)
        #expect(first.events.map(\.version) == [1, 2])
        #expect(first.events.map(\.position) == [1, 2])

        let noStream = await #expect(throws: EventStoreError.self) { try await store.append(to: "acc-1", expected: .noStream, events: [event()]) }
        #expect(noStream?.code == .wrongExpectedVersion)
        #expect(noStream?.currentVersion == 2)
        #expect(noStream?.message.contains("current version is 2") == true)

        let stale = await #expect(throws: EventStoreError.self) { try await store.append(to: "acc-1", expected: .exact(1), events: [event()]) }
        #expect(stale?.currentVersion == 2)

        #expect(try await store.append(to: "acc-1", expected: .exact(2), events: [event()]).version == 3)
        #expect(try await store.append(to: "acc-1", expected: .exists, events: [event()]).version == 4)
        #expect(try await store.append(to: "acc-1", expected: .any, events: [event()]).version == 5)
        #expect(try await store.append(to: "acc-2", expected: .any, events: [event()]).version == 1)

        // Failed appends wrote nothing.
        #expect(try await store.streamVersion("acc-1") == 5)
        #expect(try await store.headPosition() == 6)
        #expect(try await test.allRows().count == 6)
    }

    @Test("re-appending the same event ids at the same versions succeeds without writing again")
    func idempotentRetry() async throws {
        let test = try await TestStore.make("idem")
        let store = test.store
        defer { Task { await store.shutdown() } }
        let ids = [UUID(), UUID()]
        let events = ids.map { event("Deposited", #"{"amount":1}"#, id: $0) }
        let first = try await store.append(to: "acc-9", expected: .noStream, events: events)
        #expect(!first.wasAlreadyAppended)

        for expected in [ExpectedVersion.noStream, .any] {
            let again = try await store.append(to: "acc-9", expected: expected, events: events)
            #expect(again.wasAlreadyAppended)
            #expect(again.version == first.version)
            #expect(again.events == first.events)
        }
        // Concurrent retries of the same append: exactly one write.
        let retryIds = [UUID()]
        let outcomes = try await withThrowingTaskGroup(of: AppendResult.self) { group in
            for _ in 0..<10 {
                group.addTask { try await store.append(to: "acc-9", expected: .exact(2), events: [event("Again", id: retryIds[0])]) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(outcomes.filter { !$0.wasAlreadyAppended }.count == 1)
        #expect(Set(outcomes.map(\.position)).count == 1)
        #expect(try await test.allRows().count == 3)
        #expect(try await store.streamVersion("acc-9") == 3)
    }

    @Test("an event is found by its id wherever it is, with its data decompressed; an unknown id finds nothing")
    func eventByID() async throws {
        let test = try await TestStore.make("byid")
        let store = test.store
        defer { Task { await store.shutdown() } }
        let small = UUID()
        let large = UUID()
        let big = #"{"text":"\#(String(repeating: "abc", count: 400))"}"#
        _ = try await store.append(to: "acc-1", events: [event("Opened"), event("Noted", #"{"n":1}"#, id: small)])
        _ = try await store.append(to: "other-2", events: [NewEvent(id: large, type: "Big", data: Data(big.utf8), metadata: Data(#"{"transfer":"t1"}"#.utf8))])
        let found = try #require(try await store.event(id: small))
        #expect(found.stream == "acc-1")
        #expect(found.version == 2)
        #expect(found.position == 2)
        #expect(found.type == "Noted")
        #expect(found.data == Data(#"{"n":1}"#.utf8))
        let compressed = try #require(try await store.event(id: large))
        #expect(compressed.stream == "other-2")
        #expect(compressed.data == Data(big.utf8))
        #expect(try compressed.metadataFields()["transfer"] == "t1")
        #expect(try await test.allRows().first { $0.id == large }?.codec != 0, "stored compressed")
        #expect(try await store.event(id: UUID()) == nil)
    }

    @Test("an event id already used by another stream, or only partly appended, is refused and nothing is written")
    func eventIdReuse() async throws {
        let test = try await TestStore.make("reuse")
        let store = test.store
        defer { Task { await store.shutdown() } }
        let id = UUID()
        _ = try await store.append(to: "a-1", events: [event(id: id)])

        let otherStream = await #expect(throws: EventStoreError.self) { try await store.append(to: "b-1", events: [event(id: id)]) }
        #expect(otherStream?.code == .duplicateEventId)
        #expect(otherStream?.message.contains("a-1") == true)

        let partly = await #expect(throws: EventStoreError.self) {
            try await store.append(to: "a-1", events: [event(id: id), event(id: UUID())])
        }
        #expect(partly?.code == .duplicateEventId)

        let twiceInOne = await #expect(throws: EventStoreError.self) {
            let twice = UUID()
            return try await store.append(to: "c-1", events: [event(id: twice), event(id: twice)])
        }
        #expect(twiceInOne?.code == .invalidEvent)
        #expect(try await test.allRows().count == 1)
    }

    @Test("invalid stream names, types and payloads are refused before any SQL runs")
    func validation() async throws {
        // A store on a database that does not exist: any SQL would fail with `unavailable`.
        var configuration = EventStoreConfiguration(databaseURL: "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
        configuration.acquireTimeout = .seconds(1)
        let store = EventStore(configuration)
        defer { Task { await store.shutdown() } }
        for name in ["", "-abc", "has\nnewline", "tab\there", String(repeating: "x", count: 256), " padded", "nul\u{0}"] {
            let error = await #expect(throws: EventStoreError.self) { try await store.append(to: name, events: [event()]) }
            #expect(error?.code == .invalidStreamName, "\(name.debugDescription)")
        }
        let cases: [(NewEvent, String)] = [
            (event("", "{}"), "empty type"),
            (event("Has Space", "{}"), "type with space"),
            (event("Fine", "{not json"), "invalid JSON"),
            (NewEvent(type: "Fine", data: Data("{}".utf8), metadata: Data("[1]".utf8)), "metadata not an object"),
            (NewEvent(type: "Fine", data: Data("{}".utf8), metadata: Data(#"{"x":"a\u0000"}"#.utf8)), "NUL in metadata"),
            (NewEvent(type: "Fine", data: Data("{}".utf8), metadata: Data(#"{"x":"\\\u0000"}"#.utf8)), "NUL after an escaped backslash"),
        ]
        for (bad, label) in cases {
            let error = await #expect(throws: EventStoreError.self, "\(label)") { try await store.append(to: "ok-1", events: [bad]) }
            #expect(error?.code == .invalidEvent, "\(label)")
        }
        let empty = await #expect(throws: EventStoreError.self) { try await store.append(to: "ok-1", events: []) }
        #expect(empty?.code == .invalidEvent)
        let negative = await #expect(throws: EventStoreError.self) { try await store.append(to: "ok-1", expected: .exact(-1), events: [event()]) }
        #expect(negative?.code == .invalidArgument)
        // A valid append reaches the (missing) database and fails as unavailable: the checks above really ran first.
        let unreachable = await #expect(throws: EventStoreError.self) { try await store.append(to: "ok-1", events: [event()]) }
        #expect(unreachable?.code == .unavailable)
    }

    @Test("metadata with an escaped backslash before u0000 is text, not NUL, and is stored")
    func escapedBackslashIsNotNUL() async throws {
        let test = try await TestStore.make("nul")
        let store = test.store
        defer { Task { await store.shutdown() } }
        let metadata = Data(#"{"path":"C:\\u0000dir"}"#.utf8)
        _ = try await store.append(to: "m-1", events: [NewEvent(type: "Fine", data: Data("{}".utf8), metadata: metadata)])
        let stored = try await store.readStream("m-1")
        let parsed = try JSONSerialization.jsonObject(with: stored[0].metadata) as? [String: String]
        #expect(parsed?["path"] == #"C:\u0000dir"#)
    }

    @Test("generated event ids are random version-4 UUIDs")
    func randomIDs() {
        let ids = (0..<10_000).map { _ in UUID.random() }
        #expect(Set(ids).count == ids.count)
        for id in ids.prefix(100) {
            let text = id.uuidString.lowercased()
            #expect(Array(text)[14] == "4", "\(text)")
            #expect("89ab".contains(Array(text)[19]), "\(text)")
        }
    }

    @Test("large payloads are stored LZ4-compressed and read back unchanged; small ones stay plain")
    func payloadCompression() async throws {
        let test = try await TestStore.make("lz4") { $0.compressionThreshold = 512 }
        let store = test.store
        defer { Task { await store.shutdown() } }
        let big = "{\"text\":\"" + String(repeating: "eventline ", count: 500) + "\"}"
        let small = #"{"amount":42}"#
        _ = try await store.append(to: "doc-1", events: [event("Big", big), event("Small", small)])
        let rows = try await test.allRows()
        #expect(rows.map(\.codec) == [1, 0])
        let storedSize = try await test.sql { conn in
            try conn.query("SELECT length(data) FROM eventline.events WHERE position = 1").first!.decode(0, as: Int.self)
        }
        #expect(storedSize < big.utf8.count / 4)
        let events = try await store.readStream("doc-1")
        #expect(events.map { String(decoding: $0.data, as: UTF8.self) } == [big, small])
        // Random (incompressible) data above the threshold stays plain rather than grow.
        let random = "{\"r\":\"" + (0..<1000).map { _ in String(UInt8.random(in: 0...255), radix: 16) }.joined() + "\"}"
        _ = try await store.append(to: "doc-2", events: [event("Random", random)])
        #expect(try await store.readStream("doc-2").first.map { String(decoding: $0.data, as: UTF8.self) } == random)
    }

    @Test("streams read forward and backward from a version; the log reads after a position with category and type filters")
    func reads() async throws {
        let test = try await TestStore.make("reads")
        let store = test.store
        defer { Task { await store.shutdown() } }
        let correlation = UUID().uuidString
        for index in 1...5 {
            _ = try await store.append(to: "order-1", events: [try NewEvent(type: index % 2 == 0 ? "Even" : "Odd", payload: ["n": index], correlationId: correlation)])
            _ = try await store.append(to: "invoice-1", events: [event("Issued", #"{"n":\#(index)}"#)])
        }
        let forward = try await store.readStream("order-1", from: 2, limit: 2)
        #expect(forward.map(\.version) == [2, 3])
        let backward = try await store.readStream("order-1", direction: .backward, limit: 2)
        #expect(backward.map(\.version) == [5, 4])
        let backwardFrom = try await store.readStream("order-1", from: 3, direction: .backward, limit: 10)
        #expect(backwardFrom.map(\.version) == [3, 2, 1])
        #expect(try await store.readStream("missing-1").isEmpty)
        #expect(try forward[0].metadataFields()[MetadataKey.correlationId]?.stringValue == correlation)
        #expect(try forward[0].decode([String: Int].self) == ["n": 2])

        let all = try await store.readAll(after: 0, limit: 100)
        #expect(all.map(\.position) == Array(1...10))
        let page = try await store.readAll(after: 4, limit: 3)
        #expect(page.map(\.position) == [5, 6, 7])
        let orders = try await store.readAll(filter: EventFilter(category: "order"))
        #expect(orders.count == 5 && orders.allSatisfy { $0.stream == "order-1" })
        let evens = try await store.readAll(filter: EventFilter(types: ["Even"]))
        #expect(evens.map(\.type) == ["Even", "Even"])
        #expect(try await store.streamVersion("order-1") == 5)
        #expect(try await store.streamVersion("missing-1") == 0)
        #expect(try await store.headPosition() == 10)

        for bad in [0, -1, 10_001] {
            await #expect(throws: EventStoreError.self) { try await store.readAll(limit: bad) }
        }
        await #expect(throws: EventStoreError.self) { try await store.readAll(after: -5) }
    }

    @Test("the events table is append-only")
    func appendOnly() async throws {
        let test = try await TestStore.make("ro")
        _ = try await test.store.append(to: "x-1", events: [event()])
        for statement in ["UPDATE eventline.events SET type = 'Changed'", "DELETE FROM eventline.events", "TRUNCATE eventline.events"] {
            let error = await #expect(throws: PostgresError.self) {
                try await test.sql { conn in try conn.execute(unsafeSQL: statement) }
            }
            #expect(error?.message.contains("append-only") == true, "\(statement)")
        }
        #expect(try await test.allRows().count == 1)
        await test.store.shutdown()
    }

    @Test("canonically equivalent stream names (NFC and NFD) are one stream, as Swift compares them")
    func unicodeNormalization() async throws {
        let test = try await TestStore.make("nfc")
        let decomposed = "cafe\u{301}-1"
        let composed = "caf\u{E9}-1"
        _ = try await test.store.append(to: decomposed, expected: .noStream, events: [event()])
        let second = try await test.store.append(to: composed, expected: .exact(1), events: [event()])
        #expect(second.version == 2)
        #expect(try await test.store.readStream(decomposed).count == 2)
        #expect(try await test.store.streamVersion(composed) == 2)
        #expect(Set(try await test.allRows().map(\.stream)).count == 1)
        #expect(try StreamName("a-\u{301}b").category == "a")
        await test.store.shutdown()
    }

    @Test("a page of the log can be bounded by bytes, and always holds at least one event")
    func pageBytes() async throws {
        let test = try await TestStore.make("bytes") { $0.compressionThreshold = 1 << 20 }
        let payload = "\"" + String(repeating: "x", count: 998) + "\""  // 1000 bytes of JSON
        _ = try await test.store.append(to: "big-1", events: (0..<10).map { _ in event("Big", payload) })
        #expect(try await test.store.readAll(maxBytes: 2500).count == 3)
        #expect(try await test.store.readAll(maxBytes: 1).count == 1)
        #expect(try await test.store.readAll(after: 8, maxBytes: 10_000).map(\.position) == [9, 10])
        await test.store.shutdown()
    }
}

import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Synchronization
import Testing

private func event(_ type: String = "Moved", tags: [String] = [], id: UUID? = nil) -> NewEvent {
    NewEvent(id: id, type: type, data: Data("{}".utf8), tags: tags)
}

/// Every event of the log with its tags, straight from the tables.
private func taggedRows(_ test: TestStore) async throws -> [(position: Int, stream: String, id: UUID, type: String, tags: [String], indexed: [String])] {
    try await test.sql { conn in
        try conn.query("""
            SELECT e.position, e.stream, e.event_id, e.type, coalesce(array_to_string(e.tags, ','), ''),
                   coalesce((SELECT string_agg(t.tag, ',' ORDER BY t.tag) FROM eventline.event_tags t WHERE t.position = e.position), '')
            FROM eventline.events e ORDER BY e.position
            """).rows.map { row in
            let split = { (text: String) in text.isEmpty ? [] : text.split(separator: ",").map(String.init) }
            return (
                try row.decode(0), try row.decode(1), try row.decode(2), try row.decode(3), split(try row.decode(4, as: String.self)),
                split(try row.decode(5, as: String.self))
            )
        }
    }
}

@Suite("Appends across streams: multi-stream appends, tags, queries and DCB conditions")
struct BoundaryTests {
    @Test("a multi-stream append writes every part at consecutive positions in the order given; a failed expectation writes nothing and names every stream at fault; conditions check streams not written; a retry is recognised")
    func multiStream() async throws {
        let test = try await TestStore.make("multi")
        let store = test.store
        defer { Task { await store.shutdown() } }
        try await store.append(to: "stock-x", events: [event()])

        let (a1, a2, b1) = (UUID(), UUID(), UUID())
        let first = [
            StreamAppend(stream: "stock-a", expected: .noStream, events: [event(id: a1), event(id: a2)]),
            StreamAppend(stream: "stock-b", expected: .noStream, events: [event(id: b1)]),
        ]
        let written = try await store.append(first, conditions: [StreamCondition(stream: "stock-x", expected: .exact(1))])
        #expect(written.appends.map(\.stream) == ["stock-a", "stock-b"])
        #expect(written.appends.map(\.version) == [2, 1])
        #expect(written.appends.flatMap(\.events).map(\.position) == [2, 3, 4])
        #expect(written.position == 4 && !written.wasAlreadyAppended)

        // Two expectations fail: both are named with their versions, and nothing is written.
        let conflict = await #expect(throws: EventStoreError.self) {
            try await store.append(
                [
                    StreamAppend(stream: "stock-a", expected: .exact(2), events: [event()]),
                    StreamAppend(stream: "stock-b", expected: .exact(5), events: [event()]),
                ],
                conditions: [StreamCondition(stream: "stock-c", expected: .exists)])
        }
        #expect(conflict?.code == .wrongExpectedVersion)
        #expect(conflict?.conflicts.map(\.stream) == ["stock-b", "stock-c"])
        #expect(conflict?.conflicts.map(\.current) == [1, 0])
        // A condition on a stream not written fails the same way.
        let checked = await #expect(throws: EventStoreError.self) {
            try await store.append(
                [StreamAppend(stream: "stock-d", events: [event()])], conditions: [StreamCondition(stream: "stock-x", expected: .exact(7))])
        }
        #expect(checked?.conflicts == [StreamConflict(stream: "stock-x", expected: .exact(7), current: 1)])
        #expect(try await store.headPosition() == 4)

        // The same request again is recognised, from this writer and from another.
        let again = try await store.append(first, conditions: [StreamCondition(stream: "stock-x", expected: .exact(1))])
        #expect(again.wasAlreadyAppended && again.appends.flatMap(\.events).map(\.position) == [2, 3, 4])
        let other = test.secondStore()
        defer { Task { await other.shutdown() } }
        #expect(try await other.append(first).wasAlreadyAppended)
        // Reusing one part's ids with new events elsewhere is not a retry.
        let reused = await #expect(throws: EventStoreError.self) {
            try await store.append([
                StreamAppend(stream: "stock-a", expected: .any, events: [event(id: a1), event(id: a2)]),
                StreamAppend(stream: "stock-e", events: [event()]),
            ])
        }
        #expect(reused?.code == .duplicateEventId)
        #expect(try await store.headPosition() == 4)
        #expect(try await test.allRows().map(\.stream) == ["stock-x", "stock-a", "stock-a", "stock-b"])
    }

    @Test("bad multi-stream appends and conditions are refused before anything is written")
    func badInput() async throws {
        let test = try await TestStore.make("multibad")
        let store = test.store
        defer { Task { await store.shutdown() } }
        let tagItem = EventQuery.Item(tags: ["user:u1"])
        let cases: [(String, @Sendable () async throws -> MultiAppendResult)] = [
            ("no appends", { try await store.append([StreamAppend]()) }),
            ("a stream twice", { try await store.append([StreamAppend(stream: "s-1", events: [event()]), StreamAppend(stream: "s-1", events: [event()])]) }),
            ("a condition on a written stream", {
                try await store.append([StreamAppend(stream: "s-1", events: [event()])], conditions: [StreamCondition(stream: "s-1", expected: .noStream)])
            }),
            ("too many appends", { try await store.append((0...EventStore.maxAppendsPerRequest).map { StreamAppend(stream: "s-\($0)", events: [event()]) }) }),
            ("a tag with a comma", { try await store.append([StreamAppend(stream: "s-1", events: [event(tags: ["a,b"])])]) }),
            ("an empty tag", { try await store.append(events: [event(tags: [""])]) }),
            ("a tag with a control character", { try await store.append(events: [event(tags: ["a\u{7}"])]) }),
            ("a tag twice", { try await store.append(events: [event(tags: ["a", "a"])]) }),
            ("too many tags", { try await store.append(events: [event(tags: (0...EventTag.maxPerEvent).map { "t\($0)" })]) }),
            ("a condition with no items", {
                try await store.append(events: [event(tags: ["x"])], condition: AppendCondition(failIfEventsMatch: EventQuery(items: []), after: 0))
            }),
            ("an item naming nothing", {
                try await store.append(events: [event()], condition: AppendCondition(failIfEventsMatch: EventQuery(EventQuery.Item()), after: 0))
            }),
            ("a negative after", { try await store.append(events: [event()], condition: AppendCondition(failIfEventsMatch: EventQuery(tagItem), after: -1)) }),
            ("a platform stream", { try await store.append([StreamAppend(stream: "$tagged-Moved", events: [event()])]) }),
            ("a platform type without a stream", { try await store.append(events: [event("$StreamDeleted")]) }),
            ("one id in two streams", {
                let id = UUID()
                return try await store.append([StreamAppend(stream: "s-1", events: [event(id: id)]), StreamAppend(stream: "s-2", events: [event(id: id)])])
            }),
            ("one id in two runs of a type", {
                let id = UUID()
                return try await store.append(events: [event("A", id: id), event("B"), event("A", id: id)])
            }),
            ("more events in all streams than one append may carry", {
                try await store.append((0..<3).map { index in StreamAppend(stream: "s-\(index)", events: (0..<400).map { _ in event() }) })
            }),
            ("an after beyond the head", { try await store.append(events: [event()], condition: AppendCondition(failIfEventsMatch: EventQuery(tagItem), after: 5)) }),
            ("too many types in a query", {
                let items = (0..<3).map { item in EventQuery.Item(types: (0..<30).map { "T\(item)-\($0)" }) }
                return try await store.append(events: [event()], condition: AppendCondition(failIfEventsMatch: EventQuery(items: items), after: 0))
            }),
        ]
        for (what, attempt) in cases {
            await #expect(throws: EventStoreError.self, "\(what)") { try await attempt() }
        }
        await #expect(throws: EventStoreError.self) { try await store.read(matching: EventQuery(items: [])) }
        await #expect(throws: EventStoreError.self) { try await store.read(matching: EventQuery(EventQuery.Item(types: ["A"], tags: ["a,b"]))) }
        #expect(try await store.headPosition() == 0)
    }

    @Test("tags are one tag whatever their Unicode spelling: a claim in one spelling blocks a claim in another, in the database and within one group")
    func normalizedTags() async throws {
        let test = try await TestStore.make("nfc")
        let store = test.store
        defer { Task { await store.shutdown() } }
        let (composed, decomposed) = ("username:Jos\u{E9}", "username:Jose\u{301}")
        #expect(Array(composed.utf8) != Array(decomposed.utf8))
        let claim = { (tag: String) in
            try await store.append(
                events: [event("UsernameClaimed", tags: [tag])],
                condition: AppendCondition(failIfEventsMatch: EventQuery(EventQuery.Item(types: ["UsernameClaimed"], tags: [tag])), after: 0))
        }
        _ = try await claim(composed)
        let refused = await #expect(throws: EventStoreError.self) { try await claim(decomposed) }
        #expect(refused?.code == .appendConditionFailed)
        #expect(try await store.read(matching: EventQuery(EventQuery.Item(tags: [decomposed]))).events.map(\.tags) == [[composed]])
        // Two claims racing into one group, each in its own spelling: one commits.
        let outcomes = await withTaskGroup(of: Bool.self) { group in
            for tag in ["team:Caf\u{E9}", "team:Cafe\u{301}", "team:Caf\u{E9}", "team:Cafe\u{301}"] {
                group.addTask {
                    let query = EventQuery(EventQuery.Item(tags: [tag]))
                    return (try? await store.append(events: [event("TeamNamed", tags: [tag])], condition: AppendCondition(failIfEventsMatch: query, after: 1))) != nil
                }
            }
            var committed = 0
            for await won in group where won { committed += 1 }
            return committed
        }
        #expect(outcomes == 1)
        #expect(try await store.headPosition() == 2)
    }

    @Test("multi-stream appends under concurrent load, with the log writer's session killed again and again, are all or nothing: positions consecutive in the given order, or no event at all")
    func allOrNothingUnderKills() async throws {
        let test = try await TestStore.make("multikill")
        struct Unit: Sendable {
            var parts: [(stream: String, ids: [UUID])]
            var failing: Bool
            var outcome: Result<MultiAppendResult, EventStoreError>
        }
        let (units, kills) = try await test.whileKillingWriterSessions(every: .milliseconds(120)) {
            try await withThrowingTaskGroup(of: [Unit].self) { group in
                for worker in 0..<16 {
                    group.addTask {
                        var units: [Unit] = []
                        for round in 0..<40 {
                            let streams = Array(Set((0..<3).map { _ in "item-\(Int.random(in: 0..<12))" })).sorted()
                            let parts = streams.map { stream in (stream: stream, ids: (0..<Int.random(in: 1...3)).map { _ in UUID() }) }
                            // One unit in four checks a stream that never exists, so it fails in a group of others.
                            let failing = round % 4 == worker % 4
                            let conditions = failing ? [StreamCondition(stream: "nowhere-\(worker)", expected: .exists)] : []
                            let appends = parts.map { StreamAppend(stream: $0.stream, events: $0.ids.map { event(id: $0) }) }
                            do {
                                units.append(Unit(parts: parts, failing: failing, outcome: .success(try await test.store.append(appends, conditions: conditions))))
                            } catch let error as EventStoreError {
                                units.append(Unit(parts: parts, failing: failing, outcome: .failure(error)))
                            }
                        }
                        return units
                    }
                }
                var all: [Unit] = []
                for try await units in group { all += units }
                return all
            }
        }
        #expect(kills > 0, "the writer's session was never killed")

        let rows = try await test.allRows()
        #expect(rows.map(\.position) == Array(stride(from: 1, through: rows.count, by: 1)))
        var versions: [String: Int] = [:]
        for row in rows {
            #expect(row.version == (versions[row.stream] ?? 0) + 1)
            versions[row.stream] = row.version
        }
        let byId = Dictionary(uniqueKeysWithValues: rows.map { ($0.id, $0) })
        var acknowledged = 0
        for unit in units {
            let ids = unit.parts.flatMap(\.ids)
            let stored = ids.compactMap { byId[$0] }
            switch unit.outcome {
            case .success(let result):
                acknowledged += 1
                #expect(!unit.failing)
                #expect(stored.count == ids.count, "an acknowledged unit lost events")
                // In the order given, at consecutive positions, each in its own stream.
                #expect(stored.map(\.position) == Array(stored[0].position..<stored[0].position + ids.count))
                #expect(stored.map(\.stream) == unit.parts.flatMap { part in part.ids.map { _ in part.stream } })
                #expect(result.appends.flatMap(\.events).map(\.id) == ids)
            case .failure(let error) where error.code == .wrongExpectedVersion:
                #expect(unit.failing, "a unit without failing expectations conflicted: \(error)")
                #expect(stored.isEmpty, "a refused unit left events")
            case .failure(let error):
                // The session was killed under it: written whole or not at all.
                #expect(error.code == .unavailable || error.code == .commitOutcomeUnknown || error.code == .database, "\(error)")
                #expect(stored.isEmpty || stored.count == ids.count, "a unit was written in part: \(stored.count) of \(ids.count)")
            }
        }
        #expect(acknowledged > 100)
        await test.store.shutdown()
    }

    @Test("32 clients race to claim each of 8 usernames with a DCB condition, from two writers: exactly one claim per name commits, and the database holds exactly that one")
    func usernameClaims() async throws {
        let test = try await TestStore.make("claims")
        let other = test.secondStore()
        defer { Task { await other.shutdown() } }
        let names = (0..<8).map { "user\($0)" }
        let winners = try await withThrowingTaskGroup(of: (String, UUID)?.self) { group in
            for name in names {
                for client in 0..<32 {
                    let store = client % 2 == 0 ? test.store : other
                    group.addTask {
                        let query = EventQuery(EventQuery.Item(types: ["UsernameClaimed"], tags: ["username:\(name)"]))
                        let seen = try await store.read(matching: query)
                        guard seen.events.isEmpty else { return nil }
                        let claim = event("UsernameClaimed", tags: ["username:\(name)", "client:\(client)"])
                        do {
                            let result = try await store.append(
                                events: [claim], condition: AppendCondition(failIfEventsMatch: query, after: seen.evaluatedUpTo))
                            #expect(result.appends[0].stream == "$tagged-UsernameClaimed")
                            return (name, claim.id)
                        } catch let error as EventStoreError where error.code == .appendConditionFailed {
                            #expect(error.conflictingPosition.map { $0 > seen.evaluatedUpTo } == true)
                            return nil
                        }
                    }
                }
            }
            var all: [(String, UUID)] = []
            for try await winner in group { if let winner { all.append(winner) } }
            return all
        }
        #expect(winners.count == names.count)
        #expect(Set(winners.map(\.0)) == Set(names))
        // The checker: from the database alone, one claim per name, and it is the acknowledged one.
        let stored = try await test.sql { conn in
            try conn.query("""
                SELECT t.tag, e.event_id FROM eventline.event_tags t JOIN eventline.events e ON e.position = t.position
                WHERE t.tag LIKE 'username:%' ORDER BY t.tag
                """).rows.map { (try $0.decode(0, as: String.self), try $0.decode(1, as: UUID.self)) }
        }
        #expect(stored.map(\.0) == names.map { "username:\($0)" })
        #expect(Set(stored.map(\.1)) == Set(winners.map(\.1)))
        await test.store.shutdown()
    }

    @Test("32 students race for the last seats of a course: each reads the course's events, decides, and appends to its own stream with the query as condition, retrying on conflict; exactly the capacity commits")
    func lastSeats() async throws {
        let test = try await TestStore.make("seats")
        let store = test.store
        defer { Task { await store.shutdown() } }
        let capacity = 5
        try await store.append(
            to: "course-c1", events: [NewEvent(type: "CourseDefined", data: Data(#"{"capacity":\#(capacity)}"#.utf8), tags: ["course:c1"])])
        let query = EventQuery(EventQuery.Item(types: ["CourseDefined", "StudentEnrolled"], tags: ["course:c1"]))
        let enrolled = try await withThrowingTaskGroup(of: Bool.self) { group in
            for student in 0..<32 {
                group.addTask {
                    while true {
                        let seen = try await store.read(matching: query)
                        let taken = seen.events.filter { $0.type == "StudentEnrolled" }.count
                        guard taken < capacity else { return false }
                        do {
                            try await store.append(
                                [StreamAppend(stream: "student-s\(student)", events: [event("StudentEnrolled", tags: ["course:c1", "student:s\(student)"])])],
                                condition: AppendCondition(failIfEventsMatch: query, after: seen.evaluatedUpTo))
                            return true
                        } catch let error as EventStoreError where error.code == .appendConditionFailed {
                            continue
                        }
                    }
                }
            }
            var count = 0
            for try await won in group where won { count += 1 }
            return count
        }
        #expect(enrolled == capacity)
        let stored = try await test.sql { conn in
            try conn.query("""
                SELECT count(*) FROM eventline.events WHERE type = 'StudentEnrolled' AND tags @> ARRAY['course:c1']
                """).first!.decode(0, as: Int.self)
        }
        #expect(stored == capacity)
    }

    @Test("queries and their indexes return exactly the matching events, page by page; conditions fail exactly when a match follows after, naming the first; tags are stored as given and indexed once each")
    func queriesMatchTheModel() async throws {
        let test = try await TestStore.make("queries")
        let store = test.store
        defer { Task { await store.shutdown() } }
        let types = ["A", "B", "C", "D"]
        let pool = (0..<10).map { "k:\($0)" }
        var generator = SystemRandomNumberGenerator()
        // 2,000 events in multi-stream appends and streamless ones, with 0 to 3 tags each.
        var model: [(position: Int, type: String, tags: [String])] = []
        for batch in 0..<100 {
            let events = (0..<20).map { _ in event(types.randomElement(using: &generator)!, tags: Array(pool.shuffled().prefix(Int.random(in: 0...3)))) }
            let result: MultiAppendResult
            if batch % 2 == 0 {
                result = try await store.append([
                    StreamAppend(stream: "q-\(batch)", events: Array(events.prefix(10))), StreamAppend(stream: "r-\(batch)", events: Array(events.suffix(10))),
                ])
            } else {
                result = try await store.append(events: events)
            }
            let positions = result.appends.flatMap(\.events).map(\.position)
            for (position, event) in zip(positions, events) { model.append((position, event.type, event.tags)) }
        }
        model.sort { $0.position < $1.position }
        #expect(model.map(\.position) == Array(1...2000))

        // The tables hold the tags as given, and one index row per tag.
        let rows = try await taggedRows(test)
        #expect(rows.map(\.tags) == model.map(\.tags))
        #expect(rows.map { $0.indexed.sorted() } == model.map { $0.tags.sorted() })

        func randomQuery() -> EventQuery {
            EventQuery(items: (0..<Int.random(in: 1...3)).map { _ in
                var item = EventQuery.Item(types: Array(types.shuffled().prefix(Int.random(in: 0...2))), tags: Array(pool.shuffled().prefix(Int.random(in: 0...2))))
                if item.types.isEmpty && item.tags.isEmpty { item.tags = [pool.randomElement()!] }
                return item
            })
        }
        let head = try await store.headPosition()
        for _ in 0..<150 {
            let query = randomQuery()
            let after = Int.random(in: 0...head)
            let expected = model.filter { $0.position > after && query.matches(type: $0.type, tags: $0.tags) }.map(\.position)
            var read: [Int] = []
            var from = after
            while true {
                let page = try await store.read(matching: query, after: from, limit: 37)
                read += page.events.map(\.position)
                #expect(page.events.allSatisfy(query.matches))
                if page.events.count < 37 {
                    #expect(page.evaluatedUpTo == head)
                    break
                }
                #expect(page.evaluatedUpTo == page.events.last!.position)
                from = page.evaluatedUpTo
            }
            #expect(read == expected, "query \(query) after \(after)")
        }
        // Conditions against the same model: an untagged Probe never matches a query above.
        for _ in 0..<60 {
            let query = randomQuery()
            let current = try await store.headPosition()
            let after = Int.random(in: max(0, current - 300)...current)
            let first = model.first { $0.position > after && query.matches(type: $0.type, tags: $0.tags) }?.position
            do {
                let result = try await store.append(events: [event("Probe")], condition: AppendCondition(failIfEventsMatch: query, after: after))
                #expect(first == nil, "the append passed though position \(first ?? 0) matches \(query)")
                model.append((result.position, "Probe", []))
            } catch let error as EventStoreError where error.code == .appendConditionFailed {
                #expect(error.conflictingPosition == first)
            }
        }
    }

    @Test("tags survive an export and import: the imported log answers the same queries")
    func archiveKeepsTags() async throws {
        let source = try await TestStore.make("tagsrc")
        defer { Task { await source.store.shutdown() } }
        try await source.store.append(events: [event("Claimed", tags: ["user:u1", "team:t1"]), event("Claimed", tags: ["user:u2"])])
        try await source.store.append(to: "plain-1", events: [event()])
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("tags-\(UUID()).lz4").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(try await EventArchive.export(databaseURL: source.url, to: file) == 3)
        let target = try await TestStore.make("tagdst")
        defer { Task { await target.store.shutdown() } }
        #expect(try await EventArchive.import(databaseURL: target.url, from: file) == 3)
        let query = EventQuery(EventQuery.Item(tags: ["user:u1"]), EventQuery.Item(types: ["Moved"]))
        let read = try await target.store.read(matching: query)
        #expect(read.events.map(\.position) == [1, 3])
        #expect(read.events.map(\.tags) == [["user:u1", "team:t1"], []])
        // The imported events are indexed: a condition over them fails.
        let refused = await #expect(throws: EventStoreError.self) {
            try await target.store.append(events: [event("Claimed", tags: ["user:u1"])], condition: AppendCondition(failIfEventsMatch: query, after: 0))
        }
        #expect(refused?.conflictingPosition == 1)
    }
}

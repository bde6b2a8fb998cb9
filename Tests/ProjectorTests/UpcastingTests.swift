import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Projector
import Reactors
import Synchronization
import Testing

/// One domain's evolution, read through every reader of the platform: the log's version 1 of
/// `ThingMade` was `{"count": N}`, version 2 is `{"n": N}`, and the type was once called
/// `ThingBuilt`. The log is never rewritten.
@Suite("Upcasting across the platform's readers", .timeLimit(.minutes(2)))
struct UpcastingTests {
    static var upcasters: EventUpcasters {
        var upcasters = EventUpcasters()
        upcasters.register("ThingMade", from: 1) { data in try data.renamingMember("count", to: "n") }
        upcasters.alias("ThingBuilt", as: "ThingMade")
        return upcasters
    }

    /// A log that mixes the shapes: old name and old data, current name and old data (no
    /// version named), and the current shape at version 2.
    static func writeMixedLog(_ store: EventStore) async throws {
        _ = try await store.append(to: "thing-1", events: [NewEvent(type: "ThingBuilt", data: Data(#"{"count":1}"#.utf8))])
        _ = try await store.append(to: "thing-2", events: [NewEvent(type: "ThingMade", data: Data(#"{"count":2}"#.utf8))])
        _ = try await store.append(to: "thing-3", events: [NewEvent(type: "ThingMade", data: Data(#"{"n":3}"#.utf8), schemaVersion: 2)])
        _ = try await store.append(to: "noise-1", events: [NewEvent(type: "Noise", data: Data("{}".utf8))])
    }

    @Test("the store's reads upcast and rename, filter by old names too, and leave the stored bytes alone")
    func storeReads() async throws {
        let test = try await TestStore.make("upcastreads") { $0.upcasters = Self.upcasters }
        try await Self.writeMixedLog(test.store)
        let log = try await test.store.readAll(filter: EventFilter(types: ["ThingMade"]))
        #expect(log.map(\.type) == ["ThingMade", "ThingMade", "ThingMade"])
        #expect(log.map { String(decoding: $0.data, as: UTF8.self) } == [#"{"n":1}"#, #"{"n":2}"#, #"{"n":3}"#])
        #expect(log.map(\.schemaVersion) == [2, 2, 2])
        #expect(try await test.store.readStream("thing-1").first?.type == "ThingMade")
        // A store without the domain's upcasters reads what is stored.
        let raw = try await EventStore(EventStoreConfiguration(databaseURL: test.url)).readAll(filter: EventFilter(types: ["ThingMade"]))
        #expect(raw.map { String(decoding: $0.data, as: UTF8.self) } == [#"{"count":2}"#, #"{"n":3}"#])
        #expect(raw.map(\.schemaVersion) == [1, 2])
        let stored = try await test.sql { conn in
            try conn.query("SELECT type, schema_version FROM eventline.events ORDER BY position").rows.map {
                "\(try $0.decode(0, as: String.self))/\(try $0.decode(1, as: Int?.self).map(String.init) ?? "-")"
            }
        }
        #expect(stored == ["ThingBuilt/-", "ThingMade/-", "ThingMade/2", "Noise/-"])
        await test.store.shutdown()
    }

    @Test("a reactor is handed every event in its current shape, old names included")
    func reactors() async throws {
        let test = try await TestStore.make("upcastreact") { $0.upcasters = Self.upcasters }
        try await Self.writeMixedLog(test.store)
        let seen = SeenEvents()
        let runner = ReactorRunner(
            reactors: [Collector(filter: EventFilter(category: "thing", types: ["ThingMade"]), seen: seen)], store: test.store)
        let task = Task { try? await runner.run() }
        defer { task.cancel() }
        try await eventually("the reactor saw all three") { seen.all.count == 3 }
        #expect(seen.all == [#"ThingMade {"n":1}"#, #"ThingMade {"n":2}"#, #"ThingMade {"n":3}"#])
        await test.store.shutdown()
    }

    @Test("a YAML projection binds :data.… from the current shape, live and in a replay")
    func projections() async throws {
        let test = try await TestStore.make("upcastproj") { $0.upcasters = Self.upcasters }
        try await Self.writeMixedLog(test.store)
        let projection = try ProjectionDirectory.parse("""
            name: things
            version: 1
            key: id
            create: |
              CREATE TABLE $table (id text PRIMARY KEY, n bigint NOT NULL)
            handlers:
              ThingMade: |
                INSERT INTO $table (id, n) VALUES (:id, :data.n::bigint) RETURNING id
            """, source: "things.yaml")
        var configuration = ProjectorConfiguration(databaseURL: test.url)
        configuration.upcasters = Self.upcasters
        let projector = Projector(projections: [projection], configuration: configuration)
        let task = Task { try? await projector.run() }
        defer { task.cancel() }
        @Sendable func rows() async throws -> [String] {
            try await test.sql { conn in
                guard try conn.query("SELECT to_regclass('read_models.things') IS NOT NULL").first!.decode(0, as: Bool.self) else { return [] }
                return try conn.query("SELECT id || '=' || n FROM read_models.things ORDER BY id").rows.map { try $0.decode(0, as: String.self) }
            }
        }
        try await eventually("the projection caught up") { try await rows().count == 3 }
        #expect(try await rows() == ["1=1", "2=2", "3=3"])
        let replay = try await ProjectionReplay.run(projection, databaseURL: test.url, dryRun: true, reading: EventReading(upcasters: Self.upcasters))
        #expect(replay.matches == true)
        // Without the upcasters, the old data has no n: the replay cannot apply it.
        await #expect(throws: ReplayError.self) { try await ProjectionReplay.run(projection, databaseURL: test.url, dryRun: true) }
        await test.store.shutdown()
    }

    @Test("an archive keeps each event as stored, schema versions included, and an import restores them")
    func archives() async throws {
        let source = try await TestStore.make("upcastexport") { $0.upcasters = Self.upcasters }
        try await Self.writeMixedLog(source.store)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("upcast-\(UUID().uuidString).lz4").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(try await EventArchive.export(databaseURL: source.url, to: path) == 4)
        let target = try await TestStore.make("upcastimport") { $0.upcasters = Self.upcasters }
        #expect(try await EventArchive.import(databaseURL: target.url, from: path) == 4)
        let stored = try await target.sql { conn in
            try conn.query("SELECT type, convert_from(data, 'UTF8'), schema_version FROM eventline.events ORDER BY position").rows.map {
                "\(try $0.decode(0, as: String.self)) \(try $0.decode(1, as: String.self)) \(try $0.decode(2, as: Int?.self).map(String.init) ?? "-")"
            }
        }
        #expect(stored == [#"ThingBuilt {"count":1} -"#, #"ThingMade {"count":2} -"#, #"ThingMade {"n":3} 2"#, "Noise {} -"])
        #expect(try await target.store.readStream("thing-2").first?.data == Data(#"{"n":2}"#.utf8))
        await source.store.shutdown()
        await target.store.shutdown()
    }

    @Test("appends the upcasters could not read are refused before anything is written; a stored one fails its reads, naming it")
    func badInput() async throws {
        let test = try await TestStore.make("upcastbad") { $0.upcasters = Self.upcasters }
        let refused: [NewEvent] = [
            NewEvent(type: "ThingMade", data: Data("{}".utf8), schemaVersion: 0),
            NewEvent(type: "ThingMade", data: Data("{}".utf8), schemaVersion: 40_000),
            // Newer than the current version 2: it would skip a step added later.
            NewEvent(type: "ThingMade", data: Data(#"{"n":1}"#.utf8), schemaVersion: 3),
            // Version 1 data that is not an object: the step from 1 cannot read it.
            NewEvent(type: "ThingMade", data: Data("[1]".utf8)),
            NewEvent(type: "ThingBuilt", data: Data("7".utf8)),
        ]
        for event in refused {
            let error = await #expect(throws: EventStoreError.self) { try await test.store.append(to: "thing-9", events: [event]) }
            #expect(error?.code == .invalidEvent, "\(event)")
        }
        #expect(try await test.store.headPosition() == 0)
        // A type with no upcasters may carry any version its own consumers understand.
        _ = try await test.store.append(to: "other-1", events: [NewEvent(type: "Other", data: Data("{}".utf8), schemaVersion: 5)])
        #expect(try await test.store.readStream("other-1").first?.schemaVersion == 5)
        // Written around the store (by hand), the event is reported, not skipped or crashed on.
        try await test.sql { conn in
            try conn.execute("""
                INSERT INTO eventline.events (position, stream, version, event_id, type, data, recorded_at)
                VALUES (2, 'thing-9', 1, gen_random_uuid(), 'ThingMade', convert_to('[1]', 'UTF8'), now())
                """)
            try conn.execute("UPDATE eventline.log_head SET position = 2")
        }
        let error = await #expect(throws: EventStoreError.self) { try await test.store.readStream("thing-9") }
        #expect(error?.code == .corruptEvent)
        #expect(error?.description.contains("event 2 (ThingMade in thing-9)") == true, "\(error?.description ?? "")")
        await test.store.shutdown()
    }

    @Test("a projection handler under an old (aliased) name is an error, not silently never called")
    func aliasedHandler() async throws {
        let test = try await TestStore.make("upcastalias") { $0.upcasters = Self.upcasters }
        try await Self.writeMixedLog(test.store)
        let projection = try ProjectionDirectory.parse("""
            name: built
            version: 1
            key: id
            create: |
              CREATE TABLE $table (id text PRIMARY KEY)
            handlers:
              ThingBuilt: |
                INSERT INTO $table (id) VALUES (:id) RETURNING id
            """, source: "built.yaml")
        let error = await #expect(throws: (any Error).self) {
            try await ProjectionReplay.run(projection, databaseURL: test.url, reading: EventReading(upcasters: Self.upcasters))
        }
        #expect("\(error.map { "\($0)" } ?? "")".contains("ThingBuilt is renamed to ThingMade"))
        await test.store.shutdown()
    }

    @Test("upcasters chain from any stored version to the current one")
    func chains() throws {
        var upcasters = EventUpcasters()
        upcasters.register("T", from: 1) { try $0.renamingMember("a", to: "b") }
        upcasters.register("T", from: 2) { try $0.settingMember("c", to: .integer(3)) }
        #expect(upcasters.currentVersion(of: "T") == 3)
        #expect(upcasters.currentVersion(of: "U") == 1)
        #expect(try upcasters.upcast(type: "T", version: 1, data: ["a": 1]) == ["b": 1, "c": 3])
        #expect(try upcasters.upcast(type: "T", version: 2, data: ["b": 2]) == ["b": 2, "c": 3])
        #expect(try upcasters.upcast(type: "T", version: 3, data: ["b": 2]) == ["b": 2])
        #expect(upcasters.storedNames(of: ["T"]) == ["T"])
    }
}

/// Events as `type data`, in the order a reactor was handed them.
final class SeenEvents: Sendable {
    private let events = Mutex<[String]>([])
    var all: [String] { events.withLock { $0 } }
    func add(_ event: RecordedEvent) {
        events.withLock { $0.append("\(event.type) \(String(decoding: event.data, as: UTF8.self))") }
    }
}

/// Records each event it is handed.
struct Collector: Reactor {
    let name = "collector"
    let filter: EventFilter
    let seen: SeenEvents

    func react(to event: RecordedEvent) async throws {
        seen.add(event)
    }
}

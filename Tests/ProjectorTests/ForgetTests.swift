import Cache
import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Projector
import ReadModels
import Testing

@Suite("Projections and forgotten subjects")
struct ForgetProjectionTests {
    /// A store that seals the account owner, as the bank declares it.
    static func bankStore(_ label: String) async throws -> TestStore {
        try await TestStore.make(label) { configuration in
            configuration.personalData.declare("AccountOpened", fields: ["owner"])
        }
    }

    @Test("a forget: handler runs in log order when a subject is forgotten, live and in a replay, which then gives the same read model")
    func forgetHandler() async throws {
        let test = try await Self.bankStore("projforget")
        let store = test.store
        defer { Task { await store.shutdown() } }
        for (account, owner) in [("1", "Ada"), ("2", "Bob")] {
            try await store.append(to: "account-\(account)", events: [
                NewEvent(type: "AccountOpened", data: Data(#"{"owner":"\#(owner)","currency":"EUR"}"#.utf8)),
                NewEvent(type: "MoneyDeposited", data: Data(#"{"amount":5,"currency":"EUR"}"#.utf8)),
            ])
        }
        let projection = try #require(try ProjectorTests.shipped().first { $0.name == "account_balances" })
        #expect(projection.eventTypes.contains("SubjectForgotten"))
        var settings = configuration(test)
        settings.masterKey = store.configuration.masterKey
        let (cache, redis) = try await ReadModelCacheTests.cache()
        defer { redis.shutdown() }
        let projector = Projector(projections: [projection], configuration: settings, invalidations: RedisInvalidationSink(cache: cache))
        let running = Task { try? await projector.run() }
        defer { running.cancel() }
        @Sendable func owners() async throws -> [String] {
            try await test.sql { conn in
                try conn.query("SELECT account_id || '=' || coalesce(owner, 'null') FROM read_models.account_balances ORDER BY account_id")
                    .rows.map { try $0.decode(0, as: String.self) }
            }
        }
        try await eventually("the projection caught up") { (try? await owners()) == ["1=Ada", "2=Bob"] }
        // A server has cached both rows (as it does when they are read).
        let (generation, checkpoint) = try await test.sql { conn in
            let row = try conn.query("SELECT generation, eventline.projection_checkpoint(name) FROM eventline.projections WHERE name = 'account_balances'").first!
            return (try row.decode(0, as: Int.self), try row.decode(1, as: Int.self))
        }
        for key in ["1", "2"] {
            #expect(try await cache.store(projection: "account_balances", generation: generation, key: key, row: Array("cached \(key)".utf8), checkpoint: checkpoint))
        }
        try await store.forget(subject: "account-1")
        try await eventually("the forget handler ran") { try await owners() == ["1=null", "2=Bob"] }
        // The forgotten account's cached row is gone; the other stays.
        try await eventually("the cached row is dropped") {
            try await cache.get(projection: "account_balances", generation: generation, key: "1") == nil
        }
        #expect(try await cache.get(projection: "account_balances", generation: generation, key: "2") != nil)
        // A rebuild from the log reads the forgotten owner as null and runs the handler again: the same table.
        let replay = try await ProjectionReplay.run(
            projection, databaseURL: test.url, dryRun: true, reading: EventReading(masterKey: store.configuration.masterKey))
        #expect(replay.matches == true, "\(replay)")
        let rows = try await test.sql { conn in
            try conn.query("SELECT count(*) FROM read_models.account_balances WHERE owner IS NULL").first!.decode(0, as: Int.self)
        }
        #expect(rows == 1)
    }

    @Test("a projection that cannot read personal data (no master key) parks, saying why, instead of retrying in silence")
    func parksWithoutMasterKey() async throws {
        let test = try await Self.bankStore("projnokey")
        let store = test.store
        defer { Task { await store.shutdown() } }
        try await store.append(to: "account-1", events: [NewEvent(type: "AccountOpened", data: Data(#"{"owner":"Ada","currency":"EUR"}"#.utf8))])
        let projection = try #require(try ProjectorTests.shipped().first { $0.name == "account_balances" })
        var settings = configuration(test)
        settings.maxAttempts = 2
        let projector = Projector(projections: [projection], configuration: settings)
        let running = Task { try? await projector.run() }
        defer { running.cancel() }
        try await eventually("the projection parked") {
            try await test.sql { conn in
                try conn.query("SELECT state = 'parked' AND error LIKE '%no master key%' FROM eventline.checkpoints WHERE kind = 'projection' AND name = 'account_balances'")
                    .first?.decode(0, as: Bool.self) ?? false
            }
        }
    }

    @Test("forget: binds :subject, and only there; a handler of SubjectForgotten beside it is refused")
    func forgetValidation() throws {
        let base = """
            name: people
            version: 1
            key: id
            create: |
              CREATE TABLE $table (id text PRIMARY KEY, name text)
            handlers:
              PersonAdded: |
                INSERT INTO $table (id, name) VALUES (:id, :data.name) RETURNING id
            """
        let parsed = try ProjectionDirectory.parse(base + "\nforget: |\n  DELETE FROM $table WHERE id = :subject RETURNING id\n", source: "people.yaml")
        #expect(parsed.eventTypes == ["PersonAdded", "SubjectForgotten"])
        // A SubjectForgotten outside the platform's stream is no forget.
        let forged = try parsed.statements(
            for: RecordedEvent(
                position: 3, stream: "x-1", version: 1, id: UUID(), type: "SubjectForgotten",
                data: Data(#"{"subject":"p-1"}"#.utf8), metadata: Data("{}".utf8), recordedAt: Date(), schemaVersion: 1),
            table: "t")
        #expect(forged.isEmpty)
        let query = try parsed.statements(
            for: RecordedEvent(
                position: 3, stream: "$subjects-forgotten", version: 1, id: UUID(), type: "SubjectForgotten",
                data: Data(#"{"subject":"p-1"}"#.utf8), metadata: Data("{}".utf8), recordedAt: Date(), schemaVersion: 1),
            table: "t")
        #expect(query.count == 1)
        #expect(throws: ProjectionError.self) {
            try ProjectionDirectory.parse(base.replacingOccurrences(of: ":data.name", with: ":subject"), source: "people.yaml")
        }
        #expect(throws: ProjectionError.self) {
            try ProjectionDirectory.parse(base + "\n  SubjectForgotten: |\n    DELETE FROM $table RETURNING id\nforget: |\n  DELETE FROM $table WHERE id = :subject RETURNING id\n", source: "people.yaml")
        }
        #expect(throws: ProjectionError.self) { try ProjectionDirectory.parse(base + "\nforget:\n  a: b\n", source: "people.yaml") }
    }
}

import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Testing

@Suite("Migrations")
struct MigrationTests {
    static func migrations() throws -> [Migration] {
        try Migration.load(from: Repository.migrationsDirectory)
    }

    @Test("the migrations compiled into the binary are Schemas/migrations byte for byte, so their checksums match databases migrated from the files")
    func embeddedMatchFiles() throws {
        let embedded = try Migration.embedded()
        let files = try Self.migrations()
        #expect(embedded.map(\.name) == files.map(\.name))
        #expect(embedded == files)
    }

    @Test("a fresh database is migrated, and running again changes nothing")
    func freshThenRerun() async throws {
        let database = try await TestDatabase.create("mig")
        let migrator = Migrator(databaseURL: database.url, migrations: try Self.migrations())
        let applied = try await migrator.migrate()
        #expect(applied.map(\.version) == migrator.migrations.map(\.version))
        #expect(try await migrator.migrate().isEmpty)
        let statuses = try await migrator.status()
        #expect(statuses.allSatisfy { $0.state == .applied })
    }

    @Test("migration 0012 puts consumer-group queues of the schema before it in stream order: waiting events behind an outstanding one of their stream are blocked, and every event is still delivered once, in order")
    func consumerGroupQueuesUpgrade() async throws {
        let database = try await TestDatabase.create("migcg")
        let all = try Self.migrations()
        try await Migrator(databaseURL: database.url, migrations: all.filter { $0.version < 12 }).migrate()
        var configuration = EventStoreConfiguration(databaseURL: database.url)
        configuration.masterKey = TestMasterKey.key
        // Queues as the old schema keeps them: every waiting event 'ready', one delivered.
        let conn = try PostgresConnection(conninfo: database.url)
        defer { conn.close() }
        try conn.execute("""
            INSERT INTO eventline.consumer_groups (name, start_after, max_deliveries, ack_timeout_ms, scanned) VALUES ('g', 0, 5, 30000, 0)
            """)
        let streams = ["s-1", "s-1", "s-2", "s-1", "s-2", "s-3"]
        for (index, stream) in streams.enumerated() {
            let position = index + 1
            try conn.execute("""
                INSERT INTO eventline.consumer_group_messages (group_name, position, stream, state, attempt, delivery_id, due_at)
                VALUES ('g', \(position), \(stream), \(position == 1 ? "delivered" : "ready"), \(position == 1 ? 1 : 0),
                        \(position == 1 ? UUID() : nil), now() + interval '1 hour')
                """)
        }
        try await Migrator(databaseURL: database.url, migrations: all).migrate()
        let states = try conn.query("SELECT position, state FROM eventline.consumer_group_messages ORDER BY position").rows.map {
            "\(try $0.decode(0, as: Int.self)):\(try $0.decode(1, as: String.self))"
        }
        #expect(states == ["1:delivered", "2:blocked", "3:ready", "4:blocked", "5:blocked", "6:ready"])
        // The outstanding delivery is acknowledged: its stream goes on, in order.
        let store = EventStore(configuration)
        defer { Task { await store.shutdown() } }
        let delivered = try conn.query("SELECT delivery_id FROM eventline.consumer_group_messages WHERE position = 1").first!.decode(0, as: UUID.self)
        #expect(try await store.acknowledge(group: "g", deliveryIds: [delivered])?.settled == [delivered])
        let after = try conn.query("SELECT position FROM eventline.consumer_group_messages WHERE state = 'ready' ORDER BY position").rows.map {
            try $0.decode(0, as: Int.self)
        }
        #expect(after == [2, 3, 6])
    }

    @Test("several migrators started at once apply each migration exactly once")
    func concurrentMigrators() async throws {
        let database = try await TestDatabase.create("migconc")
        let migrations = try Self.migrations()
        let applied = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<4 {
                group.addTask { try await Migrator(databaseURL: database.url, migrations: migrations).migrate().count }
            }
            return try await group.reduce(0, +)
        }
        #expect(applied == migrations.count)
        let recorded = try await DedicatedConnection(conninfo: database.url).run { conn in
            try conn.query("SELECT count(*) FROM eventline.schema_migrations").first!.decode(0, as: Int.self)
        }
        #expect(recorded == migrations.count)
    }

    @Test("an applied migration whose file changed is refused with a clear message, and nothing runs")
    func changedFileRefused() async throws {
        let database = try await TestDatabase.create("migchg")
        var migrations = try Self.migrations()
        try await Migrator(databaseURL: database.url, migrations: migrations).migrate()
        migrations[0].sql += "\n-- an edit after release\n"
        migrations.append(Migration(version: 9999, name: "9999_later.sql", sql: "CREATE TABLE eventline.later (id int);"))
        let error = await #expect(throws: EventStoreError.self) {
            try await Migrator(databaseURL: database.url, migrations: migrations).migrate()
        }
        #expect(error?.code == .migration)
        #expect(error?.message.contains("\(migrations[0].name) was already applied") == true)
        #expect(error?.message.contains("changed") == true)
        let statuses = try await Migrator(databaseURL: database.url, migrations: migrations).status()
        #expect(statuses.first?.state == .changed)
        #expect(statuses.last?.state == .pending)
    }

    @Test("a failing migration is rolled back whole and not recorded")
    func failingMigrationRollsBack() async throws {
        let database = try await TestDatabase.create("migfail")
        var migrations = try Self.migrations()
        migrations.append(Migration(version: 9998, name: "9998_broken.sql", sql: "CREATE TABLE eventline.half (id int); SELECT no_such_function();"))
        let error = await #expect(throws: EventStoreError.self) {
            try await Migrator(databaseURL: database.url, migrations: migrations).migrate()
        }
        #expect(error?.message.contains("9998_broken.sql") == true)
        let (half, recorded) = try await DedicatedConnection(conninfo: database.url).run { conn in
            let row = try conn.query("SELECT to_regclass('eventline.half') IS NOT NULL, (SELECT count(*) FROM eventline.schema_migrations)").first!
            return (try row.decode(0, as: Bool.self), try row.decode(1, as: Int.self))
        }
        #expect(!half)
        #expect(recorded == migrations.count - 1)
    }

    @Test("migration files must be numbered and unique")
    func badFileNames() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("mig-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "SELECT 1;".write(toFile: directory + "/0001_a.sql", atomically: true, encoding: .utf8)
        try "SELECT 1;".write(toFile: directory + "/0001_b.sql", atomically: true, encoding: .utf8)
        #expect(throws: EventStoreError.self) { try Migration.load(from: directory) }
        try FileManager.default.removeItem(atPath: directory + "/0001_b.sql")
        try "SELECT 1;".write(toFile: directory + "/notnumbered.sql", atomically: true, encoding: .utf8)
        #expect(throws: EventStoreError.self) { try Migration.load(from: directory) }
    }
}

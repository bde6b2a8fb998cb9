import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Projector
import Testing

/// Runs `projector` in a task of its own; cancel the returned task to stop it.
private func start(_ projector: Projector) -> Task<Void, Never> {
    Task { try? await projector.run() }
}

private func bank(_ type: String, _ json: String) -> NewEvent {
    NewEvent(type: type, data: Data(json.utf8))
}

/// Short intervals for tests.
func configuration(_ test: TestStore, batchSize: Int = 50, interval: Duration = .milliseconds(200)) -> ProjectorConfiguration {
    var configuration = ProjectorConfiguration(databaseURL: test.url)
    configuration.retryDelay = .milliseconds(20)
    configuration.standbyInterval = interval
    configuration.pollInterval = interval
    configuration.batchSize = batchSize
    return configuration
}

@Suite("Projector", .serialized)
struct ProjectorTests {
    static func shipped() throws -> [YAMLProjection] {
        try ProjectionDirectory.load(Repository.root + "/Projections")
    }

    @Test("the shipped projections check out against PostgreSQL; bad SQL, a missing or non-unique key are refused by name")
    func validation() async throws {
        let test = try await TestStore.make("projcheck")
        for projection in try Self.shipped() {
            try await test.sql { conn in try ProjectionCatalog.validate(projection, on: conn) }
        }
        let base = """
            name: things
            version: 1
            key: id
            create: |
              CREATE TABLE $table (id text PRIMARY KEY, n bigint NOT NULL, other text)
            handlers:
              ThingMade: |
                INSERT INTO $table (id, n) VALUES (:id, :data.n::bigint) RETURNING id
            """
        let cases: [(String, String)] = [
            (base.replacingOccurrences(of: "INSERT INTO $table (id, n)", with: "INSERT INTO $table (id, nope)"), "handler ThingMade: column \"nope\""),
            (base.replacingOccurrences(of: "key: id", with: "key: missing"), "the key column missing is not a column"),
            (base.replacingOccurrences(of: "key: id", with: "key: other"), "must be unique"),
            (base.replacingOccurrences(of: "bigint NOT NULL,", with: "bigint NOT NULL"), "create:"),
        ]
        for (text, expected) in cases {
            let projection = try ProjectionDirectory.parse(text, source: "things.yaml")
            let error = await #expect(throws: ProjectionError.self) {
                try await test.sql { conn in try ProjectionCatalog.validate(projection, on: conn) }
            }
            #expect(error?.description.contains(expected) == true, "\(error?.description ?? "")")
            #expect(error?.description.hasPrefix("things.yaml") == true)
        }
        // Nothing was left behind.
        let tables = try await test.sql { conn in
            try conn.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'read_models'").first!.decode(0, as: Int.self)
        }
        #expect(tables == 0)
        await test.store.shutdown()
    }

    @Test("the shipped projections catch up, follow the log live, and match the log exactly")
    func catchUpAndFollow() async throws {
        let test = try await TestStore.make("projlive")
        let store = test.store
        _ = try await store.append(to: "account-1", events: [
            bank("AccountOpened", #"{"owner":"Ada","currency":"EUR"}"#), bank("MoneyDeposited", #"{"amount":500,"currency":"EUR"}"#),
            bank("MoneyWithdrawn", #"{"amount":200,"currency":"EUR"}"#),
        ])
        _ = try await store.append(to: "account-2", events: [
            bank("AccountOpened", #"{"owner":"Bob","currency":"CHF"}"#), bank("MoneyDeposited", #"{"amount":9223372036854775807}"#),
        ])
        for index in 0..<120 { _ = try await store.append(to: "noise-\(index)", events: [bank("Unrelated", "{}")]) }
        let projector = Projector(projections: try Self.shipped(), configuration: configuration(test))
        let task = start(projector)
        defer { task.cancel() }
        try await eventually("caught up") {
            let statuses = try await test.sql { conn in try ProjectionCatalog.status(on: conn) }
            return statuses.count == 3 && statuses.allSatisfy { $0.lag == 0 && $0.checkpoint == 125 }
        }
        var rows = try await test.sql { conn in
            try conn.query("SELECT account_id, owner, currency, balance, status FROM read_models.account_balances ORDER BY account_id").rows.map {
                "\(try $0.decode(0, as: String.self)) \(try $0.decode(1, as: String.self)) \(try $0.decode(2, as: String.self)) \(try $0.decode(3, as: Int.self)) \(try $0.decode(4, as: String.self))"
            }
        }
        #expect(rows == ["1 Ada EUR 300 open", "2 Bob CHF 9223372036854775807 open"])
        // Live: new events arrive through NOTIFY.
        _ = try await store.append(to: "account-1", events: [bank("MoneyWithdrawn", #"{"amount":300,"currency":"EUR"}"#), bank("AccountClosed", "{}")])
        try await eventually("live events applied") {
            try await test.sql { conn in
                try conn.query("SELECT status FROM read_models.account_balances WHERE account_id = '1'").first?.decode(0, as: String.self)
            } == "closed"
        }
        // Each projection has a runner of its own: daily_totals may be a moment behind.
        let liveHead = try await store.headPosition()
        try await eventually("every projection applied the live events") {
            try await test.sql { conn in try ProjectionCatalog.status(on: conn) }.allSatisfy { $0.checkpoint == liveHead }
        }
        rows = try await test.sql { conn in
            try conn.query("SELECT id, deposited, withdrawn, events FROM read_models.daily_totals ORDER BY currency").rows.map {
                "\(try $0.decode(0, as: String.self).split(separator: "/").last!) \(try $0.decode(1, as: Int.self)) \(try $0.decode(2, as: Int.self)) \(try $0.decode(3, as: Int.self))"
            }
        }
        #expect(rows == ["EUR 500 500 3", "XXX 9223372036854775807 0 1"])
        let statuses = try await test.sql { conn in try ProjectionCatalog.status(on: conn) }
        #expect(statuses.allSatisfy { $0.owner != nil && $0.state == "running" })
        task.cancel()
        await store.shutdown()
    }

    @Test("an event whose value cannot be bound (a NUL in text, from a log written before appends refused it) parks its key like any failing event; other keys go on")
    func parksOnUnbindableValue() async throws {
        let test = try await TestStore.make("projnul")
        let store = test.store
        let names = try ProjectionDirectory.parse("""
            name: names
            version: 1
            key: id
            create: |
              CREATE TABLE $table (id text PRIMARY KEY, name text NOT NULL)
            handlers:
              Named: |
                INSERT INTO $table (id, name) VALUES (:id, :data.name) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name RETURNING id
            """, source: "names.yaml")
        _ = try await store.append(to: "person-1", events: [bank("Named", #"{"name":"Ada"}"#)])
        // Appends refuse the character now; a log written before keeps it. Written as the log
        // writer would (position 2, the head moved in the same transaction).
        try await test.sql { conn in
            try conn.execute("BEGIN")
            try conn.execute("""
                INSERT INTO eventline.events (position, stream, version, event_id, type, data, recorded_at)
                VALUES (2, 'person-2', 1, gen_random_uuid(), 'Named', convert_to('{"name":"A\\u0000da"}', 'UTF8'), now())
                """)
            try conn.execute("UPDATE eventline.log_head SET position = 2")
            try conn.execute("COMMIT")
        }
        _ = try await store.append(to: "person-3", events: [bank("Named", #"{"name":"Bo"}"#)])
        var settings = configuration(test)
        settings.maxAttempts = 2
        let task = start(Projector(projections: [names], configuration: settings))
        defer { task.cancel() }
        try await eventually("person-2 parked, the others applied") {
            let status = try await test.sql { conn in try ProjectionCatalog.status(on: conn, name: "names") }.first
            return status?.parkedKeys == 1 && status?.lag == 0
        }
        let parked = try #require(try await test.sql { conn in try CheckpointStore.parked(.projection, name: "names", on: conn) }.first)
        #expect(parked.key == "person-2" && parked.position == 2 && parked.attempts == 2 && parked.held == 1, "\(parked)")
        #expect(parked.error.contains("NUL"), "\(parked.error)")
        let applied = try await test.sql { conn in try conn.query("SELECT id FROM read_models.names ORDER BY id").rows.map { try $0.decode(0, as: String.self) } }
        #expect(applied == ["1", "3"])
        task.cancel()
        await store.shutdown()
    }

    @Test("with onError then: pause, an event that keeps failing stops its projection (error, position, handler); others go on; resume retries it")
    func parking() async throws {
        let test = try await TestStore.make("projpark")
        let store = test.store
        let strict = try ProjectionDirectory.parse("""
            name: strict
            version: 1
            key: id
            create: |
              CREATE TABLE $table (id text PRIMARY KEY, n bigint NOT NULL CONSTRAINT small CHECK (n < 100))
            onError: { retries: 2, backoff: 10ms, then: pause }
            handlers:
              Num: |
                INSERT INTO $table (id, n) VALUES (:id, :data.n::bigint) ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n RETURNING id
            """, source: "strict.yaml")
        let lenient = try ProjectionDirectory.parse("""
            name: lenient
            version: 1
            key: id
            create: |
              CREATE TABLE $table (id text PRIMARY KEY, n bigint NOT NULL)
            handlers:
              Num: |
                INSERT INTO $table (id, n) VALUES (:id, :data.n::bigint) ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n RETURNING id
            """, source: "lenient.yaml")
        for n in [1, 2, 500, 3] { _ = try await store.append(to: "num-\(n)", events: [bank("Num", #"{"n":\#(n)}"#)]) }
        var settings = configuration(test)
        settings.maxAttempts = 3
        let task = start(Projector(projections: [strict, lenient], configuration: settings))
        defer { task.cancel() }
        try await eventually("strict parked, lenient done") {
            let statuses = try await test.sql { conn in try ProjectionCatalog.status(on: conn) }
            return statuses.first { $0.name == "strict" }?.state == "parked" && statuses.first { $0.name == "lenient" }?.lag == 0
        }
        let parked = try await test.sql { conn in try ProjectionCatalog.status(on: conn, name: "strict") }.first!
        #expect(parked.errorPosition == 3)
        #expect(parked.errorHandler == "Num")
        #expect(parked.error?.contains("small") == true)
        #expect(parked.checkpoint == 2, "the events before the failing one are applied")
        #expect(parked.failedAttempts == 3)
        let strictRows = try await test.sql { conn in try conn.query("SELECT count(*) FROM read_models.strict").first!.decode(0, as: Int.self) }
        #expect(strictRows == 2)
        // An operator fixes the cause and resumes: the event is retried and the rest follows.
        try await test.sql { conn in
            try conn.execute(unsafeSQL: "ALTER TABLE read_models.strict DROP CONSTRAINT small")
            #expect(try ProjectionCatalog.resume("strict", on: conn))
            #expect(try !ProjectionCatalog.resume("nope", on: conn))
        }
        try await eventually("strict resumed and caught up") {
            let status = try await test.sql { conn in try ProjectionCatalog.status(on: conn, name: "strict") }.first!
            return status.state == "running" && status.lag == 0 && status.error == nil
        }
        let count = try await test.sql { conn in try conn.query("SELECT count(*) FROM read_models.strict").first!.decode(0, as: Int.self) }
        #expect(count == 4)
        task.cancel()
        await store.shutdown()
    }
}

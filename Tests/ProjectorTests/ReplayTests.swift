import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Projector
import Synchronization
import Testing

private func deposit(_ amount: Int, _ currency: String = "EUR") -> NewEvent {
    NewEvent(type: "MoneyDeposited", data: Data(#"{"amount":\#(amount),"currency":"\#(currency)"}"#.utf8))
}

private func opened(_ owner: String, _ currency: String = "EUR") -> NewEvent {
    NewEvent(type: "AccountOpened", data: Data(#"{"owner":"\#(owner)","currency":"\#(currency)"}"#.utf8))
}

private func settings(_ test: TestStore) -> ProjectorConfiguration {
    configuration(test, batchSize: 200, interval: .milliseconds(100))
}

private func shipped(_ name: String) throws -> YAMLProjection {
    try #require(try ProjectionDirectory.load(Repository.root + "/Projections").first { $0.name == name })
}

/// Rows and checksum of a read model table, in key order.
private func digest(_ test: TestStore, _ table: String, key: String) async throws -> String {
    try await test.sql { conn in
        let row = try conn.query(SQLQuery(unsafeSQL: """
            SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t.\(quoteIdentifier(key)))), '')
            FROM read_models.\(quoteIdentifier(table)) t
            """)).first!
        return try row.decode(0, as: String.self)
    }
}

private func registry(_ test: TestStore, _ name: String) async throws -> (version: Int, generation: Int, checkpoint: Int) {
    try await test.sql { conn in
        // (0, 0, 0) until a projector or replay registers it.
        guard let row = try conn.query("SELECT version, generation, eventline.projection_checkpoint(name) FROM eventline.projections WHERE name = \(name)").first else {
            return (0, 0, 0)
        }
        return (try row.decode(0), try row.decode(1), try row.decode(2))
    }
}

@Suite("Replay", .serialized)
struct ReplayTests {
    @Test("replay equals incremental projection for the shipped projections, also with writers and the live projector running")
    func equalsIncremental() async throws {
        let test = try await TestStore.make("replayeq")
        for account in 0..<40 {
            _ = try await test.store.append(to: "account-\(account)", events: [opened("O\(account)", account % 3 == 0 ? "USD" : "EUR")])
        }
        let projections = try [shipped("account_balances"), shipped("daily_totals")]
        let projector = Projector(projections: projections, configuration: settings(test))
        let live = Task { try? await projector.run() }
        defer { live.cancel() }
        // Writers run before, during and after the replays.
        let writing = Flag()
        let writers = Task {
            await withTaskGroup(of: Void.self) { group in
                for worker in 0..<4 {
                    group.addTask {
                        var round = 0
                        while writing.isSet || round < 100 {
                            round += 1
                            let account = (worker * 10 + round) % 40
                            _ = try? await test.store.append(
                                to: "account-\(account)", events: [deposit(round % 50 + 1, account % 3 == 0 ? "USD" : "EUR")])
                        }
                    }
                }
            }
        }
        // The live projector has registered both and applied the openings.
        try await eventually("projecting") {
            let balances = try await registry(test, "account_balances").checkpoint
            let totals = try await registry(test, "daily_totals").checkpoint
            return balances >= 40 && totals >= 40
        }
        var generations: [String: Int] = [:]
        for projection in projections {
            let before = try await registry(test, projection.name).generation
            let result = try await ProjectionReplay.run(projection, databaseURL: test.url, batchSize: 300)
            #expect(result.swapped)
            #expect(result.generation == before + 1)
            generations[projection.name] = result.generation
        }
        writing.clear()
        await writers.value
        let head = try await test.store.headPosition()
        try await eventually("caught up after the swap") {
            let balances = try await registry(test, "account_balances").checkpoint
            let totals = try await registry(test, "daily_totals").checkpoint
            return balances == head && totals == head
        }
        // The live tables, kept by the projector across the swap, equal a fresh rebuild.
        for projection in projections {
            let result = try await ProjectionReplay.run(projection, databaseURL: test.url, dryRun: true, batchSize: 500)
            #expect(result.matches == true, "\(projection.name): \(result)")
            #expect(result.position == head)
            #expect(try await registry(test, projection.name).generation == generations[projection.name])
        }
        // And the balances equal the log's sums.
        let sums = try await test.sql { conn in
            try conn.query("""
                SELECT count(*) FROM read_models.account_balances b
                WHERE b.balance <> (SELECT coalesce(sum((convert_from(e.data, 'UTF8')::jsonb->>'amount')::bigint), 0)
                                    FROM eventline.events e WHERE e.stream = 'account-' || b.account_id AND e.type = 'MoneyDeposited')
                """).first!.decode(0, as: Int.self)
        }
        #expect(sums == 0)
        // No rebuild table or stray index is left.
        let relations = try await test.sql { conn in
            try conn.query("SELECT relname::text FROM pg_class WHERE relnamespace = 'read_models'::regnamespace ORDER BY 1").rows.map {
                try $0.decode(0, as: String.self)
            }
        }
        #expect(relations == ["account_balances", "account_balances_pkey", "daily_totals", "daily_totals_day_currency_key", "daily_totals_pkey"])
    }

    @Test("a dry run builds and compares without swapping, and finds a tampered row")
    func dryRun() async throws {
        let test = try await TestStore.make("replaydry")
        for account in 0..<10 { _ = try await test.store.append(to: "account-\(account)", events: [opened("D\(account)"), deposit(account + 1)]) }
        let projection = try shipped("account_balances")
        let projector = Projector(projections: [projection], configuration: settings(test))
        let live = Task { try? await projector.run() }
        defer { live.cancel() }
        try await eventually("caught up") { try await registry(test, "account_balances").checkpoint == 20 }
        var result = try await ProjectionReplay.run(projection, databaseURL: test.url, dryRun: true)
        #expect(result.matches == true)
        #expect(result.swapped == false)
        #expect(result.liveRows == 10 && result.rebuiltRows == 10)
        #expect(try await registry(test, "account_balances").generation == 1)
        try await test.sql { conn in try conn.execute("UPDATE read_models.account_balances SET balance = 999 WHERE account_id = '3'") }
        result = try await ProjectionReplay.run(projection, databaseURL: test.url, dryRun: true)
        #expect(result.matches == false)
        #expect(result.liveRows == result.rebuiltRows)
        // A real replay repairs it.
        _ = try await ProjectionReplay.run(projection, databaseURL: test.url)
        let balance = try await test.sql { conn in
            try conn.query("SELECT balance FROM read_models.account_balances WHERE account_id = '3'").first!.decode(0, as: Int.self)
        }
        #expect(balance == 4)
    }

    @Test("a replay killed half-way leaves the live read model untouched; run again, it cleans up and swaps")
    func killedHalfWay() async throws {
        let test = try await TestStore.make("replaykill")
        for chunk in 0..<60 {
            _ = try await test.store.append(to: "account-\(chunk)", events: [opened("K\(chunk)")] + (0..<499).map { deposit($0 % 7 + 1) })
        }
        let projection = try shipped("account_balances")
        let projector = Projector(projections: [projection], configuration: settings(test))
        let live = Task { try? await projector.run() }
        try await eventually(timeout: .seconds(120), "caught up") { try await registry(test, "account_balances").checkpoint == 30_000 }
        live.cancel()
        await live.value
        let before = try await digest(test, "account_balances", key: "account_id")
        let registered = try await registry(test, "account_balances")

        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Repository.eventctl)
        process.arguments = ["replay", "account_balances", "--batch-size", "100", "--projections-dir", Repository.root + "/Projections"]
        var environment = ProcessInfo.processInfo.environment.merging(["EVENTLINE_DATABASE_URL": test.url]) { $1 }
        TestMasterKey.applied(to: &environment)  // the bank declares personal data: no key, no start
        process.environment = environment
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Killed once the new table holds rows, long before its 30,000 events are in.
        try await eventually(timeout: .seconds(60), "the replay is building") {
            try await test.sql { conn in
                guard try conn.query("SELECT to_regclass('read_models.account_balances__rebuild') IS NOT NULL").first!.decode(0, as: Bool.self) else {
                    return false
                }
                return try conn.query("SELECT count(*) FROM read_models.account_balances__rebuild").first!.decode(0, as: Int.self) > 0
            }
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(try await digest(test, "account_balances", key: "account_id") == before)
        let after = try await registry(test, "account_balances")
        #expect(after.generation == registered.generation && after.checkpoint == registered.checkpoint)

        let output = try await runProgram(
            try Repository.eventctl, ["replay", "account_balances", "--projections-dir", Repository.root + "/Projections"],
            environment: ["EVENTLINE_DATABASE_URL": test.url], timeout: 300)
        #expect(output.status == 0, "\(output.stderr)")
        #expect(output.stdout.contains("swapped in at position 30000"), "\(output.stdout)")
        #expect(try await digest(test, "account_balances", key: "account_id") == before)
        #expect(try await registry(test, "account_balances").generation == registered.generation + 1)
        let leftover = try await test.sql { conn in
            try conn.query("SELECT to_regclass('read_models.account_balances__rebuild') IS NULL").first!.decode(0, as: Bool.self)
        }
        #expect(leftover)
    }

    @Test("a changed version makes the projector rebuild the read model by itself; a new projection file replays over all history")
    func versionChangeAndNewProjection() async throws {
        let test = try await TestStore.make("replayversion")
        for account in 0..<5 { _ = try await test.store.append(to: "account-\(account)", events: [opened("V\(account)"), deposit(10)]) }
        let v1 = """
            name: owners
            version: 1
            key: account_id
            create: |
              CREATE TABLE $table (account_id text PRIMARY KEY, owner text NOT NULL)
            handlers:
              AccountOpened: |
                INSERT INTO $table (account_id, owner) VALUES (:id, :data.owner) RETURNING account_id
            """
        // A projection nobody ran yet: replayed over the whole history straight away.
        let first = try ProjectionDirectory.parse(v1, source: "owners.yaml")
        let result = try await ProjectionReplay.run(first, databaseURL: test.url)
        #expect(result.swapped && result.position == 10)
        #expect(try await digest(test, "owners", key: "account_id").hasPrefix("5:"))
        // Kept live by a projector from there.
        let projector = Projector(projections: [first], configuration: settings(test))
        let live = Task { try? await projector.run() }
        _ = try await test.store.append(to: "account-5", events: [opened("V5")])
        try await eventually("kept live") { try await digest(test, "owners", key: "account_id").hasPrefix("6:") }
        live.cancel()
        await live.value

        // Version 2 adds a column: the projector rebuilds the table before it goes on.
        let v2 = try ProjectionDirectory.parse(
            v1.replacingOccurrences(of: "version: 1", with: "version: 2")
                .replacingOccurrences(of: "owner text NOT NULL)", with: "owner text NOT NULL, upper_owner text NOT NULL)")
                .replacingOccurrences(of: "(account_id, owner) VALUES (:id, :data.owner)", with: "(account_id, owner, upper_owner) VALUES (:id, :data.owner, upper(:data.owner))"),
            source: "owners.yaml")
        let upgraded = Projector(projections: [v2], configuration: settings(test))
        let task = Task { try? await upgraded.run() }
        defer { task.cancel() }
        try await eventually("rebuilt at version 2") { try await registry(test, "owners").version == 2 }
        _ = try await test.store.append(to: "account-6", events: [opened("v6")])
        try await eventually("version 2 is live") {
            try await test.sql { conn in
                try conn.query("SELECT upper_owner FROM read_models.owners WHERE account_id = '6'").first?.decode(0, as: String.self)
            } == "V6"
        }
        let owners = try await test.sql { conn in
            try conn.query("SELECT count(*) FROM read_models.owners WHERE upper_owner = upper(owner)").first!.decode(0, as: Int.self)
        }
        #expect(owners == 7)
    }
}

extension ReplayTests {
    @Test("a running projector picks up a projection file added to its directory, and rebuilds one whose version went up")
    func directoryReload() async throws {
        let test = try await TestStore.make("replayreload")
        for account in 0..<4 { _ = try await test.store.append(to: "account-\(account)", events: [opened("R\(account)"), deposit(5)]) }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("eventline-reload-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func owners(version: Int) -> String {
            """
            name: owners
            version: \(version)
            key: account_id
            create: |
              CREATE TABLE $table (account_id text PRIMARY KEY, owner text NOT NULL, v int NOT NULL)
            handlers:
              AccountOpened: |
                INSERT INTO $table (account_id, owner, v) VALUES (:id, :data.owner, \(version)) RETURNING account_id
            """
        }
        try String(contentsOfFile: Repository.root + "/Projections/account_balances.yaml", encoding: .utf8)
            .write(toFile: directory + "/account_balances.yaml", atomically: true, encoding: .utf8)
        let projector = Projector(
            projections: try ProjectionDirectory.load(directory), configuration: settings(test),
            reload: { try ProjectionDirectory.load(directory) }, reloadInterval: .milliseconds(200))
        let task = Task { try? await projector.run() }
        defer { task.cancel() }
        try await eventually("account_balances runs") { try await registry(test, "account_balances").checkpoint == 8 }
        // A new file: projected from the first event, with nothing restarted.
        try owners(version: 1).write(toFile: directory + "/owners.yaml", atomically: true, encoding: .utf8)
        try await eventually("the new projection runs") { try await registry(test, "owners").checkpoint == 8 }
        #expect(try await digest(test, "owners", key: "account_id").hasPrefix("4:"))
        // Version 2: the running projection restarts with it and is rebuilt.
        try owners(version: 2).write(toFile: directory + "/owners.yaml", atomically: true, encoding: .utf8)
        try await eventually("rebuilt at version 2") { try await registry(test, "owners").version == 2 }
        try await eventually("every row rebuilt") {
            try await test.sql { conn in
                try conn.query("SELECT count(*) FROM read_models.owners WHERE v = 2").first!.decode(0, as: Int.self)
            } == 4
        }
        task.cancel()
        await task.value
    }
}

/// Set until cleared, shared between tasks.
private final class Flag: Sendable {
    private let value = Atomic<Bool>(true)
    var isSet: Bool { value.load(ordering: .relaxed) }
    func clear() { value.store(false, ordering: .relaxed) }
}

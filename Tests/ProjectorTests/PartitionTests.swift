import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Projector
import ReadModels
import Testing

/// A projection that can tell order and duplicates apart: each stream's row counts its events and
/// keeps the version it last applied, and an event is applied only right after its predecessor.
func tallies(partitions: Int, version: Int = 1, partitionBy: String? = nil) throws -> YAMLProjection {
    var text = try String(contentsOfFile: Repository.root + "/Tests/ProjectorTests/tallies.yaml", encoding: .utf8)
    text = text.replacingOccurrences(of: "partitions: 1", with: "partitions: \(partitions)")
        .replacingOccurrences(of: "version: 1", with: "version: \(version)")
    if let partitionBy { text += "partitionBy: \(partitionBy)\n" }
    return try ProjectionDirectory.parse(text, source: "tallies.yaml")
}

/// A projections directory of its own holding `tallies` in `partitions` partitions (for
/// eventctl processes); the caller removes it.
func talliesDirectory(partitions: Int) throws -> String {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("eventline-tallies-\(UUID().uuidString.prefix(8))").path
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let yaml = try String(contentsOfFile: Repository.root + "/Tests/ProjectorTests/tallies.yaml", encoding: .utf8)
    try yaml.replacingOccurrences(of: "partitions: 1", with: "partitions: \(partitions)").write(
        toFile: directory + "/tallies.yaml", atomically: true, encoding: .utf8)
    return directory
}

private func counted(_ n: Int) -> NewEvent {
    NewEvent(type: "Counted", data: Data(#"{"n":\#(n)}"#.utf8))
}

/// Each stream's (events, sum of n, last version) from the log, and from the read model.
func talliesMatchLog(_ test: TestStore) async throws -> (expected: [String: [Int]], actual: [String: [Int]]) {
    try await test.sql { conn in
        let expected = try conn.query("""
            SELECT split_part(stream, '-', 2), count(*), sum((convert_from(data, 'UTF8')::jsonb->>'n')::bigint)::bigint, max(version)
            FROM eventline.events WHERE type = 'Counted' AND codec = 0 GROUP BY 1
            """).rows.map { (try $0.decode(0, as: String.self), [try $0.decode(1, as: Int.self), try $0.decode(2, as: Int.self), try $0.decode(3, as: Int.self)]) }
        let actual = try conn.query("SELECT id, events, n, last_version FROM read_models.tallies").rows.map {
            (try $0.decode(0, as: String.self), [try $0.decode(1, as: Int.self), try $0.decode(2, as: Int.self), try $0.decode(3, as: Int.self)])
        }
        return (Dictionary(uniqueKeysWithValues: expected), Dictionary(uniqueKeysWithValues: actual))
    }
}

@Suite("Partitioned projections", .serialized)
struct PartitionTests {
    @Test("partitions and partitionBy are read from YAML and checked; the partition of a key is the same in every process and release")
    func declaration() throws {
        let projection = try tallies(partitions: 8, partitionBy: ":data.account")
        #expect(projection.partitions == 8 && projection.partitionBy == "data.account")
        #expect(try tallies(partitions: 1).partitionBy == "stream")
        for (partitions, by, expected) in [(0, nil, "partitions must be an integer from 1 to 256"), (257, nil, "from 1 to 256"),
                                           (4, ":nope", "unknown parameter :nope"), (4, ":data.", "unknown parameter")] as [(Int, String?, String)] {
            let error = #expect(throws: ProjectionError.self) { try tallies(partitions: partitions, partitionBy: by) }
            #expect(error?.description.contains(expected) == true, "\(error?.description ?? "")")
            #expect(error?.description.hasPrefix("tallies.yaml") == true)
        }
        // onError: each field checked; an unknown `then` is refused by name.
        for (policy, expected) in [("{ then: drop }", "then must be park-key, pause or skip, not drop"), ("{ retries: -1 }", "retries must be"),
                                   ("{ backoff: soon }", "backoff must be a duration"), ("{ tries: 3 }", "unknown field tries"), ("skip", "onError takes")] {
            let text = try String(contentsOfFile: Repository.root + "/Tests/ProjectorTests/tallies.yaml", encoding: .utf8) + "onError: \(policy)\n"
            let error = #expect(throws: ProjectionError.self) { try ProjectionDirectory.parse(text, source: "tallies.yaml") }
            #expect(error?.description.contains(expected) == true, "\(error?.description ?? "")")
        }
        let policy = try ProjectionDirectory.parse(
            try String(contentsOfFile: Repository.root + "/Tests/ProjectorTests/tallies.yaml", encoding: .utf8)
                + "onError: { retries: 3, backoff: 2s, then: skip }\n", source: "tallies.yaml").onError
        #expect(policy == ErrorPolicy(retries: 3, backoff: .seconds(2), then: .skip))
        // FNV-1a, fixed: a change would move keys between partitions of running projections.
        // (FNV-1a 64 of "account-1" is 0xde637fc248681e56; of "", the offset basis 0xcbf29ce484222325.)
        #expect(ProjectionPartitioner.partition(ofKey: "account-1", partitions: 8) == 6)
        #expect(ProjectionPartitioner.partition(ofKey: "", partitions: 7) == 2)
        // Keys spread over the partitions.
        let used = Set((1...200).map { ProjectionPartitioner.partition(ofKey: "tally-\($0)", partitions: 8) })
        #expect(used.count == 8)
    }

    @Test("a projection in 4 partitions applies every stream's events once and in order; a read with atLeast waits for every partition; status shows each")
    func partitionedInOrder() async throws {
        let test = try await TestStore.make("parts")
        let store = test.store
        for round in 1...5 {
            for stream in 1...12 { _ = try await store.append(to: "tally-\(stream)", events: [counted(round * stream)]) }
        }
        let projector = Projector(projections: [try tallies(partitions: 4)], configuration: configuration(test, batchSize: 7))
        let task = Task { try? await projector.run() }
        defer { task.cancel() }
        let built = try await store.headPosition()
        try await eventually("caught up in every partition") {
            let status = try await test.sql { conn in try ProjectionCatalog.status(on: conn, name: "tallies") }.first
            return status?.partitions.count == 4 && status?.checkpoint == built && status?.partitions.allSatisfy { $0.owner != nil } == true
        }
        var (expected, actual) = try await talliesMatchLog(test)
        #expect(actual == expected)
        #expect(Set((1...12).map { ProjectionPartitioner.partition(ofKey: "tally-\($0)", partitions: 4) }).count > 1)

        // One partition stops (parked): the others go on, and the projection's checkpoint, which
        // a read with atLeast waits for, stays behind with it.
        let stuck = ProjectionPartitioner.partition(ofKey: "tally-1", partitions: 4)
        let other = (1...12).first { ProjectionPartitioner.partition(ofKey: "tally-\($0)", partitions: 4) != stuck }!
        try await test.sql { conn in
            try conn.execute("UPDATE eventline.checkpoints SET state = 'parked', error = 'held for the test' WHERE kind = 'projection' AND name = 'tallies' AND partition = \(stuck)")
        }
        let before = built
        _ = try await store.append(to: "tally-1", events: [counted(1000)])
        _ = try await store.append(to: "tally-\(other)", events: [counted(1000)])
        let head = try await store.headPosition()
        let info = try #require(try await test.sql { conn in try ReadModelReader.catalog(on: conn)["tallies"] })
        try await eventually("the other partitions passed the head") {
            let row = try await test.sql { conn in try ReadModelReader.row(info, key: String(other), on: conn) }
            return row?.json?.contains(#""events":6"#) == true
        }
        let waiting = try await test.sql { conn in try ReadModelReader.row(info, key: String(other), on: conn) }
        #expect(waiting?.checkpoint == before, "the checkpoint readers see is the parked partition's")
        let status = try #require(try await test.sql { conn in try ProjectionCatalog.status(on: conn, name: "tallies") }.first)
        #expect(status.state == "parked" && status.error == "held for the test" && status.checkpoint == before)
        #expect(status.partitions.filter { $0.checkpoint == head }.count == 3)
        #expect(try await test.sql { conn in try ProjectionCatalog.resume("tallies", on: conn) })
        try await eventually("resumed, every partition at the head") {
            try await test.sql { conn in try ReadModelReader.row(info, key: "1", on: conn) }?.checkpoint == head
        }
        (expected, actual) = try await talliesMatchLog(test)
        #expect(actual == expected)
        task.cancel()
        await task.value
        await store.shutdown()
    }

    @Test("changing partitions without a new version is refused (the projection stays as built); with a new version it is rebuilt with the new count")
    func repartition() async throws {
        let test = try await TestStore.make("repart")
        let store = test.store
        for stream in 1...10 { _ = try await store.append(to: "tally-\(stream)", events: [counted(stream), counted(1)]) }
        func run(_ projection: YAMLProjection, until: String, _ condition: @escaping @Sendable () async throws -> Bool) async throws {
            let projector = Projector(projections: [projection], configuration: configuration(test))
            let task = Task { try? await projector.run() }
            defer { task.cancel() }
            try await eventually(until, condition)
            task.cancel()
            await task.value
        }
        @Sendable func status() async throws -> ProjectionStatus? {
            try await test.sql { conn in try ProjectionCatalog.status(on: conn, name: "tallies") }.first
        }
        let built = try await store.headPosition()
        try await run(try tallies(partitions: 2), until: "built in 2 partitions") {
            let status = try await status()
            return status?.checkpoint == built && status?.partitions.count == 2
        }
        // Same version, 4 partitions: not run at all (the rows and the registry stay as built).
        _ = try await store.append(to: "tally-1", events: [counted(5)])
        let refused = Projector(projections: [try tallies(partitions: 4)], configuration: configuration(test))
        let task = Task { try? await refused.run() }
        try await Task.sleep(for: .seconds(2))
        task.cancel()
        await task.value
        var current = try #require(try await status())
        #expect(current.partitions.count == 2 && current.checkpoint == built && current.owner == nil)
        // A new version: rebuilt blue/green with 4 partitions, from the whole log.
        let head = try await store.headPosition()
        try await run(try tallies(partitions: 4, version: 2), until: "rebuilt in 4 partitions") {
            let status = try await status()
            return status?.version == 2 && status?.checkpoint == head && status?.partitions.count == 4
                && status?.partitions.allSatisfy { $0.owner != nil } == true
        }
        current = try #require(try await status())
        #expect(current.partitionBy == "stream")
        let (expected, actual) = try await talliesMatchLog(test)
        #expect(actual == expected)
        await store.shutdown()
    }

    @Test("a projector still running the old definition applies nothing once a rebuild swaps in a new version with 4 partitions; the new definition's runners take over, each event once")
    func fencedAfterSwap() async throws {
        let test = try await TestStore.make("partfence")
        let store = test.store
        // A counter with no guard against duplicates: an event applied twice shows in `events`.
        func unguarded(partitions: Int, version: Int) throws -> YAMLProjection {
            var text = try String(contentsOfFile: Repository.root + "/Tests/ProjectorTests/tallies.yaml", encoding: .utf8)
            text = text.replacingOccurrences(of: "    WHERE t.last_version = excluded.last_version - 1\n", with: "")
                .replacingOccurrences(of: "partitions: 1", with: "partitions: \(partitions)").replacingOccurrences(of: "version: 1", with: "version: \(version)")
            return try ProjectionDirectory.parse(text, source: "tallies.yaml")
        }
        for stream in 1...20 { _ = try await store.append(to: "tally-\(stream)", events: [counted(1)]) }
        let old = Task { try? await Projector(projections: [try unguarded(partitions: 1, version: 1)], configuration: configuration(test)).run() }
        defer { old.cancel() }
        let built = try await store.headPosition()
        try await eventually("the old definition caught up") {
            try await test.sql { conn in try ProjectionCatalog.status(on: conn, name: "tallies") }.first?.checkpoint == built
        }
        // A rebuild of version 2 in 4 partitions swaps in while the old projector runs on.
        _ = try await ProjectionReplay.run(try unguarded(partitions: 4, version: 2), databaseURL: test.url)
        let new = Task { try? await Projector(projections: [try unguarded(partitions: 4, version: 2)], configuration: configuration(test)).run() }
        defer { new.cancel() }
        for round in 2...6 {
            for stream in 1...20 { _ = try await store.append(to: "tally-\(stream)", events: [counted(round)]) }
        }
        let head = try await store.headPosition()
        try await eventually("the new definition's 4 partitions at the head") {
            let status = try await test.sql { conn in try ProjectionCatalog.status(on: conn, name: "tallies") }.first
            return status?.checkpoint == head && status?.partitions.count == 4 && status?.partitions.allSatisfy { $0.owner != nil } == true
        }
        try await Task.sleep(for: .milliseconds(500))  // time for a stale runner to do harm, if it could
        let (expected, actual) = try await talliesMatchLog(test)
        #expect(actual.mapValues { Array($0.prefix(2)) } == expected.mapValues { Array($0.prefix(2)) }, "each event applied once")
        old.cancel()
        new.cancel()
        await old.value
        await new.value
        await store.shutdown()
    }

    @Test("eventctl replay of a projection in 4 partitions builds them in parallel, equals the log, and reports progress as JSON lines when stderr is not a terminal")
    func parallelReplay() async throws {
        let test = try await TestStore.make("partreplay")
        let store = test.store
        for round in 1...30 {
            for stream in 1...100 { _ = try await store.append(to: "tally-\(stream)", events: [counted(round)]) }
        }
        let directory = try talliesDirectory(partitions: 4)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var environment = ["EVENTLINE_DATABASE_URL": test.url]
        TestMasterKey.applied(to: &environment)
        let output = try await runProgram(
            try Repository.eventctl, ["replay", "tallies", "--projections-dir", directory, "--batch-size", "100"], environment: environment, timeout: 120)
        #expect(output.status == 0, "\(output.stdout)\(output.stderr)")
        #expect(output.stdout.contains("tallies: rebuilt from 3000 events"), "\(output.stdout)")
        let lines = output.stderr.split(separator: "\n").filter { $0.hasPrefix("{") }
        #expect(!lines.isEmpty, "\(output.stderr)")
        for line in lines {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] ?? [:]
            #expect(object["progress"] as? String == "tallies" && object["events"] is Int && object["target"] is Int, "\(line)")
        }
        let status = try #require(try await test.sql { conn in try ProjectionCatalog.status(on: conn, name: "tallies") }.first)
        #expect(status.partitions.count == 4 && status.checkpoint == 3000)
        let (expected, actual) = try await talliesMatchLog(test)
        #expect(actual == expected && actual.count == 100)
        await store.shutdown()
    }

    @Test("a database at the schema before the one checkpoint store upgrades with every checkpoint, state and error of projections, reactors and webhook groups intact; a projector goes on from its checkpoint")
    func upgradeKeepsCheckpoints() async throws {
        let database = try await TestDatabase.create("migckpt")
        let all = try Migration.load(from: Repository.migrationsDirectory)
        try await Migrator(databaseURL: database.url, migrations: all.filter { $0.version <= 13 }).migrate()
        var storeConfiguration = EventStoreConfiguration(databaseURL: database.url)
        storeConfiguration.masterKey = TestMasterKey.key
        let store = EventStore(storeConfiguration)
        for stream in 1...6 { _ = try await store.append(to: "tally-\(stream)", events: [counted(stream), counted(10)]) }
        let built = 8  // the old projector had applied the first 8 events
        let projection = try tallies(partitions: 1)
        let conn = try PostgresConnection(conninfo: database.url)
        defer { conn.close() }
        // The state the previous version leaves: the read model up to its checkpoint, the
        // registry rows with checkpoints, a parked projection, a reactor retrying, a webhook group.
        try conn.execute(unsafeSQL: try projection.createStatements(table: "read_models.tallies"))
        let events = try await store.readAll(after: 0, limit: built)
        for event in events {
            for statement in try projection.statements(for: event, table: "read_models.tallies") { _ = try conn.query(statement) }
        }
        try conn.execute("""
            INSERT INTO eventline.projections (name, version, key_column, checkpoint, owner) VALUES ('tallies', 1, 'id', \(built), 'old:1')
            """)
        try conn.execute("""
            INSERT INTO eventline.projections (name, version, key_column, checkpoint, state, error, error_position, error_handler, failed_attempts)
            VALUES ('stuck', 3, 'id', 5, 'parked', 'boom', 6, 'Counted', 5)
            """)
        try conn.execute("""
            INSERT INTO eventline.reactors (name, checkpoint, error, error_position, failed_attempts) VALUES ('transfers', 7, 'refused', 8, 2)
            """)
        try conn.execute("""
            INSERT INTO eventline.consumer_groups (name, start_after, max_deliveries, ack_timeout_ms, scanned, webhook_url, webhook_secret, webhook_batch_size)
            VALUES ('hooked', 0, 5, 30000, 0, 'http://127.0.0.1:9/', 'secret', 10)
            """)

        try await Migrator(databaseURL: database.url, migrations: all).migrate()
        let rows = try CheckpointStore.list(.projection, on: conn) + CheckpointStore.list(.reactor, on: conn)
            + CheckpointStore.list(.webhook, on: conn)
        let summary = rows.map {
            "\($0.consumer) \($0.checkpoint) \($0.state) \($0.error ?? "-") \($0.errorPosition ?? 0) \($0.errorHandler ?? "-") \($0.failedAttempts)"
        }
        #expect(summary == [
            "projection stuck 5 parked boom 6 Counted 5", "projection tallies 8 running - 0 - 0", "reactor transfers 7 running refused 8 - 2",
            "webhook hooked 0 running - 0 - 0",
        ])
        #expect(try conn.query("SELECT to_regclass('eventline.reactors') IS NULL").first!.decode(0, as: Bool.self))

        // The projector carries on from checkpoint 8: nothing applied twice (an event applied
        // again would be refused by the version check and show in the counts), nothing skipped.
        var projectorConfiguration = ProjectorConfiguration(databaseURL: database.url)
        projectorConfiguration.standbyInterval = .milliseconds(200)
        projectorConfiguration.pollInterval = .milliseconds(200)
        let projector = Projector(projections: [projection], configuration: projectorConfiguration)
        let task = Task { try? await projector.run() }
        defer { task.cancel() }
        let head = try await store.headPosition()
        let probe = DedicatedConnection(conninfo: database.url)
        defer { probe.shutdown() }
        try await eventually("the projector went on from its checkpoint") {
            try await probe.run { conn in try CheckpointStore.list(.projection, name: "tallies", on: conn).first?.checkpoint } == head
        }
        let counts = try conn.query("SELECT id, events, n, last_version FROM read_models.tallies ORDER BY id").rows.map {
            "\(try $0.decode(0, as: String.self)):\(try $0.decode(1, as: Int.self)):\(try $0.decode(2, as: Int.self)):\(try $0.decode(3, as: Int.self))"
        }
        #expect(counts == (1...6).map { "\($0):2:\($0 + 10):2" })
        task.cancel()
        await task.value
        await store.shutdown()
    }
}

@Suite("Partitioned projections: processes SIGKILLed under load", .serialized)
struct PartitionKillTests {
    @Test("4 project processes share 8 partitions while 16 appenders write to 1,000 streams; 2 are SIGKILLed; the others take their partitions, and every stream is applied once, in order")
    func killedPartitionOwners() async throws {
        let test = try await TestStore.make("partkill")
        let store = test.store
        let directory = try talliesDirectory(partitions: 8)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func start() throws -> Process {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: try Repository.eventctl)
            process.arguments = ["project", "--projections-dir", directory]
            var environment = ProcessInfo.processInfo.environment
            environment["EVENTLINE_DATABASE_URL"] = test.url
            TestMasterKey.applied(to: &environment)
            process.environment = environment
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            return process
        }
        var processes = try (0..<4).map { _ in try start() }
        defer { for process in processes where process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        @Sendable func partitions() async throws -> [ConsumerCheckpoint] {
            try await test.sql { conn in try CheckpointStore.list(.projection, name: "tallies", on: conn) }
        }
        // 16 appenders over 1,000 streams, each stream written by one appender (stream s by
        // appender s mod 16), so that each stream's versions follow one writer.
        let writers = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<16 {
                    group.addTask {
                        let streams = Array(stride(from: writer, to: 1000, by: 16))
                        var round = 0
                        while !Task.isCancelled {
                            _ = try await store.append(to: "tally-\(streams[round % streams.count])", events: [counted(round + 1)])
                            round += 1
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        // The partitions spread over the processes (each holds at most ⌈8/4⌉ = 2 once all run).
        try await eventually(timeout: .seconds(60), "every partition owned, by all 4 processes") {
            let rows = try await partitions()
            let owners = rows.compactMap(\.owner)
            return rows.count == 8 && owners.count == 8 && Set(owners).count == 4
        }
        var killed = 0
        for _ in 0..<2 {
            let before = try await store.headPosition()
            try await eventually(timeout: .seconds(60), "200 more events written") { try await store.headPosition() >= before + 200 }
            let owners = Set(try await partitions().compactMap(\.owner))
            guard let victim = processes.first(where: { process in owners.contains { $0.hasSuffix(":\(process.processIdentifier)") } }) else {
                Issue.record("no process owns a partition")
                break
            }
            kill(victim.processIdentifier, SIGKILL)
            victim.waitUntilExit()
            processes.removeAll { $0 === victim }
            killed += 1
        }
        #expect(killed == 2)
        let written = try await store.headPosition()
        // Every one of the 1,000 streams written at least once (and more, after the kills).
        try await eventually(timeout: .seconds(120), "2,000 events written") { try await store.headPosition() >= max(2000, written + 200) }
        writers.cancel()
        _ = await writers.result
        let head = try await store.headPosition()
        #expect(head > written, "the appenders wrote on after the kills")
        // The two survivors took the dead ones' partitions and caught up.
        let survivors = Set(processes.map { ":\($0.processIdentifier)" })
        let stopped = ContinuousClock.now
        defer { print("partition kill test: \(head) events over 1,000 streams, 2 of 4 projectors SIGKILLed, the survivors at the head \(ContinuousClock.now - stopped) after the appenders stopped") }
        try await eventually(timeout: .seconds(90), "the survivors hold every partition at the head") {
            let rows = try await partitions()
            return rows.count == 8 && rows.allSatisfy { row in
                row.checkpoint == head && survivors.contains { suffix in row.owner?.hasSuffix(suffix) == true }
            }
        }
        // eventctl status shows each partition's checkpoint, lag and owner.
        var environment = ["EVENTLINE_DATABASE_URL": test.url]
        TestMasterKey.applied(to: &environment)
        let status = try await runProgram(try Repository.eventctl, ["status"], environment: environment, timeout: 60)
        #expect(status.stdout.contains("8 partitions by stream"), "\(status.stdout)\(status.stderr)")
        for partition in 0..<8 { #expect(status.stdout.contains("#\(partition)  running  checkpoint \(head)  lag 0  owner "), "\(status.stdout)") }
        let (expected, actual) = try await talliesMatchLog(test)
        #expect(expected.count == 1000)
        #expect(actual == expected, "every stream once and in order")
        for process in processes where process.isRunning { kill(process.processIdentifier, SIGKILL) }
        await store.shutdown()
    }
}

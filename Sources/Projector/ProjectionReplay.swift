import EventStore
import Foundation
import Logging
import PostgresClient
import ReadModels
import Synchronization

/// How far a replay has got.
public struct ReplayProgress: Sendable {
    public var projection: String
    /// Events applied to the new table so far.
    public var events: Int
    /// The log position the new table has reached, and the head it is heading for.
    public var position: Int
    public var target: Int
    /// building, catching up, comparing, swapping.
    public var phase: String
}

/// What a replay did.
public struct ReplayResult: Sendable, Equatable {
    public var projection: String
    public var events: Int
    /// The checkpoint of the new table when it was swapped in (or compared).
    public var position: Int
    public var swapped: Bool
    /// The cache generation after the swap.
    public var generation: Int?
    /// For a dry run: rows and content checksum of the live and the rebuilt table, at the same checkpoint.
    public var liveRows: Int?
    public var rebuiltRows: Int?
    public var liveChecksum: String?
    public var rebuiltChecksum: String?

    /// For a dry run: whether the rebuilt table equals the live one.
    public var matches: Bool? {
        guard let liveRows, let rebuiltRows else { return nil }
        return liveRows == rebuiltRows && liveChecksum == rebuiltChecksum
    }
}

/// A replay that cannot go on: another replay runs, or an event's statement failed.
public struct ReplayError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Rebuilds a projection from the whole log without stopping anything.
///
/// The new table (`read_models.<name>__rebuild`, unlogged while it is built) fills from the
/// first event to the head in batches, then catches up. The swap is one transaction: it locks
/// the live table (waiting for the live projector's batch in flight, and holding back its
/// next), applies what arrived meanwhile, replaces the table, and sets the checkpoint, the
/// declared version and a new cache generation (which drops the projection's cache). Readers
/// see the old table until that commit and the new one after it, never a half-built one. The
/// live projector's next checkpoint move then fails (the checkpoint moved), and it continues
/// from the new checkpoint. A replay killed half-way leaves only its own table, which the next
/// replay drops before it starts.
public enum ProjectionReplay {
    /// Replays `projection` into a new table; with `dryRun`, compares the new table with the
    /// live one at the same checkpoint (rows and checksum) and drops it instead of swapping.
    public static func run(
        _ projection: any Projection, databaseURL: String, dryRun: Bool = false, batchSize: Int = 1000,
        lockTimeout: Duration = .seconds(5), progress: (@Sendable (ReplayProgress) -> Void)? = nil,
        reading: EventReading = EventReading(), logger: Logger = Logger(label: "eventline.replay")
    ) async throws -> ReplayResult {
        let connection = DedicatedConnection(conninfo: databaseURL, name: "eventline-replay-\(projection.name)") { conn in
            try conn.execute(unsafeSQL: "SET application_name = 'eventline-replay'")
            // Handlers see the same session as the projector's (UTC); a crash only loses a
            // table that the next replay rebuilds, so commits need not wait for the disk.
            try conn.execute(unsafeSQL: "SET TimeZone = 'UTC'")
            try conn.execute(unsafeSQL: "SET synchronous_commit = off")
            try conn.execute(unsafeSQL: "SET jit = off")
            try conn.execute(unsafeSQL: "SET client_min_messages = warning")
        }
        defer { connection.shutdown() }
        return try await connection.run { conn in
            var replay = Replay(
                projection: projection, databaseURL: databaseURL, conn: conn, batchSize: max(1, batchSize), progress: progress,
                lockTimeoutMilliseconds: Int(lockTimeout.milliseconds), reading: reading)
            return try replay.run(dryRun: dryRun)
        }
    }

    /// A replay whose handlers see events through `upcasters` only (no master key: events with
    /// personal data cannot be read); `reading:` also opens personal data.
    public static func run(
        _ projection: any Projection, databaseURL: String, dryRun: Bool = false, batchSize: Int = 1000,
        lockTimeout: Duration = .seconds(5), progress: (@Sendable (ReplayProgress) -> Void)? = nil,
        upcasters: EventUpcasters, logger: Logger = Logger(label: "eventline.replay")
    ) async throws -> ReplayResult {
        try await run(
            projection, databaseURL: databaseURL, dryRun: dryRun, batchSize: batchSize, lockTimeout: lockTimeout, progress: progress,
            reading: EventReading(upcasters: upcasters), logger: logger)
    }

    /// The rebuild table of `name`.
    public static func rebuildTable(_ name: String) -> String { name + "__rebuild" }
}

/// One replay, on its connection's thread.
private struct Replay {
    let projection: any Projection
    let databaseURL: String
    let conn: PostgresConnection
    let batchSize: Int
    let progress: (@Sendable (ReplayProgress) -> Void)?
    let lockTimeoutMilliseconds: Int
    let reading: EventReading
    var position = 0
    var applied = 0

    var live: String { ReadModelNames.qualified(projection.name) }
    var rebuild: String { ReadModelNames.qualified(ProjectionReplay.rebuildTable(projection.name)) }

    init(
        projection: any Projection, databaseURL: String, conn: PostgresConnection, batchSize: Int,
        progress: (@Sendable (ReplayProgress) -> Void)?, lockTimeoutMilliseconds: Int, reading: EventReading
    ) {
        self.reading = reading
        self.projection = projection
        self.databaseURL = databaseURL
        self.conn = conn
        self.batchSize = batchSize
        self.progress = progress
        self.lockTimeoutMilliseconds = lockTimeoutMilliseconds
    }

    mutating func run(dryRun: Bool) throws -> ReplayResult {
        let name = projection.name
        // Registered if new (a projection file dropped into the directory), with its partitions' rows.
        try conn.execute("""
            INSERT INTO eventline.projections (name, version, key_column, partitions, partition_by)
            VALUES (\(name), \(projection.version), \(projection.keyColumn), \(projection.partitions), \(projection.partitionBy))
            ON CONFLICT (name) DO NOTHING
            """)
        try CheckpointStore.register(.projection, name: name, partitions: projection.partitions, on: conn)
        // One replay of a projection at a time: a lock of its own, beside the partitions' leases.
        guard try conn.query("""
            SELECT pg_try_advisory_lock(eventline.lease_lock_namespace() + 1, hashtext(\(name)))
            """).first!.decode(0, as: Bool.self) else {
            throw ReplayError("another replay of \(name) is running")
        }
        defer { _ = try? conn.query("SELECT pg_advisory_unlock(eventline.lease_lock_namespace() + 1, hashtext(\(name)))") }

        // What a replay killed half-way left behind goes first.
        try conn.execute(unsafeSQL: "DROP TABLE IF EXISTS \(rebuild)")
        try conn.execute(unsafeSQL: "BEGIN")
        do {
            try conn.execute(unsafeSQL: try projection.createStatements(table: rebuild))
            try conn.execute(unsafeSQL: "ALTER TABLE \(rebuild) SET UNLOGGED")
            try conn.execute(unsafeSQL: "COMMIT")
        } catch {
            conn.rollbackQuietly()
            throw error
        }

        if dryRun {
            // Built up to the live table's checkpoint, then compared at the same position.
            try follow(until: .liveCheckpoint, phase: "building")
            return try compare()
        }
        // A partitioned projection builds its partitions in parallel, each on a connection and
        // thread of its own, up to the head as it was; the rest follows in log order.
        if projection.partitions > 1 { try buildPartitions() }
        try follow(until: .head, phase: "building")
        // The rewrite that makes the table durable is the slow part: done before the swap.
        try conn.execute(unsafeSQL: "ALTER TABLE \(rebuild) SET LOGGED")
        try follow(until: .head, phase: "catching up")
        return try swap()
    }

    func head() throws -> Int {
        try conn.query("SELECT position FROM eventline.log_head").first!.decode(0, as: Int.self)
    }

    func liveCheckpoint() throws -> Int {
        try conn.query("SELECT eventline.projection_checkpoint(\(projection.name))").first!.decode(0, as: Int.self)
    }

    enum Target { case head, liveCheckpoint }

    func read(_ target: Target) throws -> Int {
        switch target {
        case .head: return try head()
        case .liveCheckpoint: return try liveCheckpoint()
        }
    }

    /// Applies batches until the new table is within one batch of `target`.
    mutating func follow(until target: Target, phase: String) throws {
        var goal = try read(target)
        while true {
            if goal - position > 2 * batchSize {
                // Long ranges: the next batches are read and prepared on another connection and
                // thread while this one applies, so the client's work overlaps PostgreSQL's.
                let prefetcher = ReplayPrefetcher(
                    projection: projection, table: rebuild, databaseURL: databaseURL, after: position, upTo: goal, batchSize: batchSize,
                    reading: reading)
                defer { prefetcher.stop() }
                while let batch = try prefetcher.next() {
                    try execute(batch, inTransaction: true)
                    progress?(ReplayProgress(projection: projection.name, events: applied, position: position, target: goal, phase: phase))
                }
            }
            while position < goal {
                try applyBatch(upTo: goal, inTransaction: true)
                progress?(ReplayProgress(projection: projection.name, events: applied, position: position, target: goal, phase: phase))
            }
            let next = try read(target)
            if next - position <= batchSize { return }
            goal = next
        }
    }

    /// Reads the next events after `position` up to `goal` and applies them to the new table.
    mutating func applyBatch(upTo goal: Int, inTransaction: Bool, including: (RecordedEvent) -> Bool = { _ in true }) throws {
        let batch = try ReplayBatch.read(
            projection: projection, table: rebuild, after: position, upTo: goal, batchSize: batchSize, inTransaction: inTransaction,
            reading: reading, including: including, on: conn)
        try execute(batch, inTransaction: inTransaction)
    }

    /// Runs a batch's statements in one pipeline; any failure rolls the batch back.
    mutating func execute(_ batch: ReplayBatch, inTransaction: Bool) throws {
        try Self.execute(batch, inTransaction: inTransaction, on: conn)
        applied += batch.events.count
        position = batch.reached
    }

    static func execute(_ batch: ReplayBatch, inTransaction: Bool, on conn: PostgresConnection) throws {
        for (offset, result) in try conn.pipeline(batch.queries).enumerated() {
            guard case .failure(let error) = result else { continue }
            if inTransaction { conn.rollbackQuietly() }
            if error.isConnectionError || batch.owners[offset] < 0 { throw error }
            let event = batch.events[batch.owners[offset]]
            throw ReplayError("event \(event.position) (handler \(event.type)) failed: \(error.message)")
        }
    }

    /// Builds every partition from `position` to the head as it is now, in parallel: one
    /// thread and connection per partition (at most 16 at once), each applying its own events
    /// in log order. Progress reports the events applied and the slowest partition's position.
    mutating func buildPartitions() throws {
        let goal = try head()
        guard goal > position else { return }
        let partitioner = try ProjectionPartitioner(projection)
        let partitions = projection.partitions
        let start = position
        struct Shared {
            var events: [Int]
            var positions: [Int]
            var failure: (any Error)?
            var finished = 0
            var next = 0
        }
        let shared = Mutex(Shared(events: Array(repeating: 0, count: partitions), positions: Array(repeating: start, count: partitions)))
        let (projection, rebuild, databaseURL, batchSize, reading) = (self.projection, self.rebuild, self.databaseURL, self.batchSize, self.reading)
        let workers = min(partitions, 16)
        let done = DispatchSemaphore(value: 0)
        for _ in 0..<workers {
            let thread = Thread {
                defer { done.signal() }
                do {
                    let conn = try PostgresConnection(conninfo: databaseURL)
                    defer { conn.close() }
                    for setting in ["SET TimeZone = 'UTC'", "SET synchronous_commit = off", "SET jit = off", "SET client_min_messages = warning"] {
                        try conn.execute(unsafeSQL: setting)
                    }
                    // Each worker takes the next partition not yet built until none is left.
                    while let partition = shared.withLock({ state -> Int? in
                        guard state.failure == nil, state.next < partitions else { return nil }
                        defer { state.next += 1 }
                        return state.next
                    }) {
                        var reached = start
                        while reached < goal {
                            let batch = try ReplayBatch.read(
                                projection: projection, table: rebuild, after: reached, upTo: goal, batchSize: batchSize, inTransaction: true,
                                reading: reading, including: { partitioner.partition(of: $0).map { $0 == partition } ?? true }, on: conn)
                            try Replay.execute(batch, inTransaction: true, on: conn)
                            reached = batch.reached
                            let stop = shared.withLock { state -> Bool in
                                state.events[partition] += batch.events.count
                                state.positions[partition] = reached
                                return state.failure != nil
                            }
                            if stop { return }
                        }
                    }
                } catch {
                    shared.withLock { if $0.failure == nil { $0.failure = error } }
                }
            }
            thread.name = "eventline-replay-partition"
            thread.start()
        }
        var running = workers
        while running > 0 {
            if done.wait(timeout: .now() + .milliseconds(200)) == .success {
                running -= 1
                continue
            }
            let (events, slowest) = shared.withLock { ($0.events.reduce(0, +), $0.positions.min() ?? start) }
            progress?(ReplayProgress(
                projection: projection.name, events: applied + events, position: slowest, target: goal,
                phase: "building \(partitions) partitions in parallel"))
        }
        let outcome = shared.withLock { $0 }
        if let failure = outcome.failure { throw failure }
        applied += outcome.events.reduce(0, +)  // (a forget, applied by every partition, counts once per partition)
        position = goal
    }

    /// Dry run: under a share lock on the live table (its projector waits), brings the new
    /// table to the live checkpoint and compares the two; then drops the new table.
    mutating func compare() throws -> ReplayResult {
        let name = projection.name
        let key = quoteIdentifier(projection.keyColumn)
        try conn.execute(unsafeSQL: "BEGIN")
        do {
            try conn.execute(unsafeSQL: "SET LOCAL lock_timeout = \(lockTimeoutMilliseconds)")
            let exists = try conn.query("SELECT to_regclass(\(live)) IS NOT NULL").first!.decode(0, as: Bool.self)
            if exists { try conn.execute(unsafeSQL: "LOCK TABLE \(live) IN SHARE MODE") }
            // Each partition of the live table is at its own checkpoint: the new table takes each
            // event up to its partition's, so that both hold the same events.
            let partitions = try conn.query("""
                SELECT partition, checkpoint FROM eventline.checkpoints WHERE kind = 'projection' AND name = \(name) ORDER BY partition FOR SHARE
                """).rows.map { (try $0.decode(0, as: Int.self), try $0.decode(1, as: Int.self)) }
            let reached = Dictionary(uniqueKeysWithValues: partitions)
            let checkpoint = partitions.map(\.1).max() ?? 0
            // The live table's partitions are those it was built with.
            let built = try conn.query("SELECT partitions, partition_by FROM eventline.projections WHERE name = \(name)").first
            let partitioner = try built.map { try ProjectionPartitioner(partitions: try $0.decode(0), by: try $0.decode(1)) }
                ?? ProjectionPartitioner(projection)
            while position < checkpoint {
                try applyBatch(upTo: checkpoint, inTransaction: false) { event in
                    guard let partition = partitioner.partition(of: event) else { return true }
                    return event.position <= reached[partition] ?? 0
                }
            }
            progress?(ReplayProgress(projection: name, events: applied, position: position, target: checkpoint, phase: "comparing"))
            func digest(_ table: String) throws -> (Int, String) {
                let row = try conn.query(SQLQuery(unsafeSQL: """
                    SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t.\(key))), md5('')) FROM \(table) t
                    """)).first!
                return (try row.decode(0), try row.decode(1))
            }
            let rebuilt = try digest(rebuild)
            let current = exists ? try digest(live) : (0, "")
            try conn.execute(unsafeSQL: "DROP TABLE \(rebuild)")
            try conn.execute(unsafeSQL: "COMMIT")
            return ReplayResult(
                projection: name, events: applied, position: position, swapped: false, generation: nil, liveRows: current.0,
                rebuiltRows: rebuilt.0, liveChecksum: current.1, rebuiltChecksum: rebuilt.1)
        } catch {
            conn.rollbackQuietly()
            throw error
        }
    }

    /// The swap, in one transaction; retried when the live table's lock cannot be had in time
    /// (a long query on it), so that waiting readers are never held up for long.
    mutating func swap() throws -> ReplayResult {
        var attempt = 0
        while true {
            attempt += 1
            let saved = (position, applied)
            do {
                return try swapOnce()
            } catch let error as PostgresError where error.sqlState == SQLState.lockNotAvailable && attempt < 10 {
                // lock_not_available: the batches applied inside the rolled-back swap are undone.
                (position, applied) = saved
                progress?(ReplayProgress(projection: projection.name, events: applied, position: position, target: position, phase: "waiting for the live table"))
                Thread.sleep(forTimeInterval: 0.2 * Double(attempt))
            }
        }
    }

    private mutating func swapOnce() throws -> ReplayResult {
        let name = projection.name
        let rebuildName = ProjectionReplay.rebuildTable(name)
        try conn.execute(unsafeSQL: "BEGIN")
        do {
            try conn.execute(unsafeSQL: "SET LOCAL lock_timeout = \(lockTimeoutMilliseconds)")
            let exists = try conn.query("SELECT to_regclass(\(live)) IS NOT NULL").first!.decode(0, as: Bool.self)
            // The live projector's batch in flight finishes first; its next one waits for the swap.
            if exists { try conn.execute(unsafeSQL: "LOCK TABLE \(live) IN ACCESS EXCLUSIVE MODE") }
            _ = try conn.query("SELECT 1 FROM eventline.projections WHERE name = \(name) FOR UPDATE")
            let goal = try head()
            while position < goal { try applyBatch(upTo: goal, inTransaction: false) }
            progress?(ReplayProgress(projection: name, events: applied, position: position, target: goal, phase: "swapping"))
            if exists { try conn.execute(unsafeSQL: "DROP TABLE \(live)") }
            try conn.execute(unsafeSQL: "ALTER TABLE \(rebuild) RENAME TO \(quoteIdentifier(name))")
            // Index and sequence names are schema-wide: give them the live table's names, so
            // that the next replay can create its own.
            let related = try conn.query("""
                SELECT c.relname::text, c.relkind = 'S' FROM pg_class c
                WHERE c.relnamespace = \(ReadModelNames.schema)::regnamespace AND c.relkind IN ('i', 'S')
                  AND starts_with(c.relname, \(rebuildName + "_"))
                """).rows.map { (try $0.decode(0, as: String.self), try $0.decode(1, as: Bool.self)) }
            for (relation, isSequence) in related {
                let renamed = name + relation.dropFirst(rebuildName.count)
                let kind = isSequence ? "SEQUENCE" : "INDEX"
                try conn.execute(unsafeSQL: """
                    ALTER \(kind) \(ReadModelNames.schema).\(quoteIdentifier(relation)) RENAME TO \(quoteIdentifier(String(renamed)))
                    """)
            }
            // Every partition starts at the new table's checkpoint: the live projectors' next
            // checkpoint moves fail, and they carry on from here.
            try CheckpointStore.setPartitions(.projection, name: name, partitions: projection.partitions, checkpoint: position, on: conn)
            // The new table was built from every event: no key of the old one is parked any more.
            try conn.execute("DELETE FROM eventline.parked_keys WHERE kind = 'projection' AND name = \(name)")
            let generation = try conn.query("""
                UPDATE eventline.projections
                SET generation = generation + 1, version = \(projection.version), key_column = \(projection.keyColumn),
                    partitions = \(projection.partitions), partition_by = \(projection.partitionBy), updated_at = now()
                WHERE name = \(name)
                RETURNING generation, pg_notify('eventline_projections', name || ':generation:' || generation)
                """).first!.decode(0, as: Int.self)
            try conn.execute(unsafeSQL: "COMMIT")
            return ReplayResult(projection: name, events: applied, position: position, swapped: true, generation: generation)
        } catch {
            conn.rollbackQuietly()
            throw error
        }
    }
}

/// A batch of events and the statements that apply them, in pipeline order.
struct ReplayBatch: @unchecked Sendable {
    var events: [RecordedEvent]
    var queries: [SQLQuery]
    /// For each query, the index of its event (-1: BEGIN, COMMIT).
    var owners: [Int]
    /// The position the table reaches once the batch is applied.
    var reached: Int

    /// Reads the events after `after` up to `upTo` that `projection` handles, and builds their statements.
    static func read(
        projection: any Projection, table: String, after: Int, upTo goal: Int, batchSize: Int, inTransaction: Bool,
        reading: EventReading, including: (RecordedEvent) -> Bool = { _ in true }, on conn: PostgresConnection
    ) throws -> ReplayBatch {
        let page = try EventStore.readEvents(
            on: conn, after: after, upTo: goal, types: projection.eventTypes, limit: batchSize, reading: reading)
        let events = page.filter(including)
        var batch = ReplayBatch(events: events, queries: [], owners: [], reached: page.count < batchSize ? goal : page.last!.position)
        batch.queries.reserveCapacity(events.count + 2)
        if inTransaction { batch.queries.append("BEGIN"); batch.owners.append(-1) }
        for (index, event) in events.enumerated() {
            let statements: [SQLQuery]
            do {
                statements = try projection.statements(for: event, table: table)
            } catch {
                throw ReplayError("event \(event.position) (\(event.type)) cannot be applied: \(error)")
            }
            for statement in statements {
                batch.queries.append(statement)
                batch.owners.append(index)
            }
        }
        if inTransaction { batch.queries.append("COMMIT"); batch.owners.append(-1) }
        return batch
    }
}

/// Reads and prepares the batches of a range on a thread and connection of its own, at most
/// two ahead of the one being applied.
final class ReplayPrefetcher: @unchecked Sendable {
    private let condition = NSCondition()
    private var ready: [Result<ReplayBatch, any Error>] = []
    private var done = false
    private var stopped = false

    init(
        projection: any Projection, table: String, databaseURL: String, after: Int, upTo goal: Int, batchSize: Int,
        reading: EventReading
    ) {
        let thread = Thread { [self] in
            produce(
                projection: projection, table: table, databaseURL: databaseURL, after: after, goal: goal, batchSize: batchSize,
                reading: reading)
        }
        thread.name = "eventline-replay-prefetch"
        thread.start()
    }

    private func produce(
        projection: any Projection, table: String, databaseURL: String, after: Int, goal: Int, batchSize: Int, reading: EventReading
    ) {
        do {
            let conn = try PostgresConnection(conninfo: databaseURL)
            defer { conn.close() }
            try conn.execute(unsafeSQL: "SET TimeZone = 'UTC'")
            try conn.execute(unsafeSQL: "SET jit = off")
            var position = after
            while position < goal {
                let batch = try ReplayBatch.read(
                    projection: projection, table: table, after: position, upTo: goal, batchSize: batchSize, inTransaction: true,
                    reading: reading, on: conn)
                condition.lock()
                while ready.count >= 2 && !stopped { condition.wait() }
                if stopped {
                    condition.unlock()
                    return
                }
                ready.append(.success(batch))
                condition.signal()
                condition.unlock()
                position = batch.reached
            }
            finish(nil)
        } catch {
            finish(error)
        }
    }

    private func finish(_ error: (any Error)?) {
        condition.lock()
        if let error { ready.append(.failure(error)) }
        done = true
        condition.broadcast()
        condition.unlock()
    }

    /// The next batch in order, or nil once the range is done.
    func next() throws -> ReplayBatch? {
        condition.lock()
        defer { condition.unlock() }
        while ready.isEmpty && !done { condition.wait() }
        guard !ready.isEmpty else { return nil }
        let result = ready.removeFirst()
        condition.signal()
        return try result.get()
    }

    /// Lets the producer go (it stops at its next batch).
    func stop() {
        condition.lock()
        stopped = true
        condition.broadcast()
        condition.unlock()
    }
}

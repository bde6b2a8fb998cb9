import EventStore
import Foundation
import Logging
import Metrics
import PostgresClient
import Synchronization
import Tracing
import ReadModels

/// Told after each committed batch which read-model keys changed (the Redis cache drops them).
public protocol InvalidationSink: Sendable {
    /// `keys` of `projection` (cache generation `generation`) changed in the batch that moved
    /// its checkpoint to `position`.
    func invalidate(projection: String, generation: Int, keys: [String], position: Int) async throws
}

/// Projector settings; every field has a default.
public struct ProjectorConfiguration: Sendable {
    public var databaseURL: String
    /// Events read and applied per transaction.
    public var batchSize = 1000
    /// Attempts at an event that keeps failing before its projection is parked.
    public var maxAttempts = 5
    /// The first retry's delay; doubles each attempt.
    public var retryDelay: Duration = .milliseconds(200)
    /// How often a standby process tries to take over a projection owned by another process.
    public var standbyInterval: Duration = .seconds(1)
    /// How often a live projection looks for new events without being woken by NOTIFY.
    public var pollInterval: Duration = .seconds(1)
    /// Whether a projection whose declared version differs from the stored one is rebuilt
    /// (`ProjectionReplay`) by this process; otherwise it waits for `eventctl replay`.
    public var rebuildOnVersionChange = true
    /// `host:pid`, shown as the owner of the projections this process runs.
    public var ownerName = "\(ProcessInfo.processInfo.hostName):\(getpid())"
    /// The domain's upcasters: handlers bind `:data.…` from events in their current shape.
    public var upcasters = EventUpcasters()
    /// Opens the personal fields of events (nil: a projection of events with personal data
    /// fails, and parks, until the projector runs with the master key).
    public var masterKey: MasterKey? = nil

    /// How events reach the handlers.
    public var reading: EventReading { EventReading(upcasters: upcasters, masterKey: masterKey) }

    public init(databaseURL: String) {
        self.databaseURL = databaseURL
    }
}


/// How many partitions of each projection this process holds, against its fair share: with K
/// projector processes connected, each takes at most ⌈N / K⌉ of a projection's N partitions,
/// and gives back what it holds beyond that when more processes join.
final class PartitionShare: Sendable {
    let partitions: Int
    private let held = Mutex(0)
    /// The share as last counted, and when (counted at most every `recount`).
    private let counted = Mutex<(share: Int, at: ContinuousClock.Instant?)>((Int.max, nil))
    static let recount: Duration = .seconds(3)

    init(partitions: Int) { self.partitions = partitions }

    /// ⌈N / processes⌉ (all of them for one process).
    static func share(partitions: Int, processes: Int) -> Int {
        let processes = max(1, processes)
        return (partitions + processes - 1) / processes
    }

    /// The share to hold now; `count` asks the database how many processes there are.
    func share(count: () async throws -> Int) async throws -> Int {
        let now = ContinuousClock.now
        if let cached = counted.withLock({ state -> Int? in
            guard let at = state.at, now - at < Self.recount else { return nil }
            return state.share
        }) { return cached }
        let share = Self.share(partitions: partitions, processes: try await count())
        counted.withLock { $0 = (share, now) }
        return share
    }

    /// Reserves one more partition if the process holds fewer than `share`.
    func reserve(share: Int) -> Bool {
        held.withLock { held in
            guard held < share else { return false }
            held += 1
            return true
        }
    }

    /// Gives one back (a lease not taken after all, released, or lost).
    func unreserve() { held.withLock { $0 = max(0, $0 - 1) } }

    /// Gives one back when the process holds more than `share` (one runner at a time sees it).
    func yield(share: Int) -> Bool {
        held.withLock { held in
            guard held > share else { return false }
            held -= 1
            return true
        }
    }
}

/// One partition of a projection as a consumer of the log, run by a `LogFollower`: stands by
/// until it holds the partition's lease (in the one lease and checkpoint store), then catches
/// up in batches and follows the log. Each batch's statements and the checkpoint commit in one
/// transaction on the session that holds the lease, so a process that lost its lease can never
/// commit. A partition applies the events whose key hashes to it and moves past the others.
final class ProjectionRunner: LogConsumer {
    let projection: any Projection
    let configuration: ProjectorConfiguration
    let sink: (any InvalidationSink)?
    let head: ChangeSignal
    let logger: Logger
    let consumer: ConsumerID
    private let session: LeaseSession
    private let partitioner: ProjectionPartitioner
    private let share: PartitionShare
    /// Whether this runner counts one partition in `share` (from taking the lease to releasing it).
    private let reserved = Mutex(false)
    /// What `reportOnce` said last.
    private let reported = Mutex<String?>(nil)
    let table: String
    private let metrics: Metrics
    /// How events reach the handlers (one keyring for the runner's life).
    private let reading: EventReading

    /// What an event that keeps failing does.
    var policy: ErrorPolicy {
        projection.onError ?? ErrorPolicy(retries: max(0, configuration.maxAttempts - 1), backoff: configuration.retryDelay, then: .parkKey)
    }

    /// The application name of projector sessions; fair shares count its processes.
    static let application = "eventline-projector"

    /// What the runner reports through swift-metrics (the process decides where it goes).
    struct Metrics: Sendable {
        let batchEvents: Recorder
        let batchDuration: Timer
        let retries: Counter
        let parked: Gauge
        let parkedKeys: Gauge
        let skipped: Counter

        init(projection: String, partition: Int) {
            let dimensions = [("projection", projection), ("partition", String(partition))]
            batchEvents = Recorder(label: "eventline_projection_batch_events", dimensions: dimensions)
            batchDuration = Timer(label: "eventline_projection_batch_seconds", dimensions: dimensions)
            retries = Counter(label: "eventline_projection_retries_total", dimensions: dimensions)
            parked = Gauge(label: "eventline_projection_parked_state", dimensions: dimensions)
            parkedKeys = Gauge(label: "eventline_projection_parked_keys", dimensions: dimensions)
            skipped = Counter(label: "eventline_projection_skipped_events_total", dimensions: dimensions)
        }
    }

    init(
        projection: any Projection, partition: Int = 0, share: PartitionShare? = nil, configuration: ProjectorConfiguration,
        sink: (any InvalidationSink)?, head: ChangeSignal, logger: Logger
    ) throws {
        self.projection = projection
        self.configuration = configuration
        self.sink = sink
        self.head = head
        self.partitioner = try ProjectionPartitioner(projection)
        self.share = share ?? PartitionShare(partitions: projection.partitions)
        self.consumer = ConsumerID(.projection, projection.name, partition: partition)
        var logger = logger
        logger[metadataKey: "projection.name"] = "\(projection.name)"
        if projection.partitions > 1 { logger[metadataKey: "projection.partition"] = "\(partition)" }
        self.logger = logger
        self.table = ReadModelNames.qualified(projection.name)
        self.metrics = Metrics(projection: projection.name, partition: partition)
        self.reading = configuration.reading
        self.session = LeaseSession(
            databaseURL: configuration.databaseURL, application: Self.application,
            threadName: "eventline-projection-\(projection.name)-\(partition)", group: projection.partitions > 1 ? projection.name : nil
        ) { conn in
            try conn.execute(unsafeSQL: "SET TimeZone = 'UTC'")
        }
    }

    /// The lease as this process holds it: the session it lives in.
    struct Lease: Sendable {
        var held: HeldLease
        var generation: Int
        var checkpoint: Int { get { held.checkpoint } set { held.checkpoint = newValue } }
        /// Failed attempts at the event after the checkpoint.
        var attempts = 0
        /// A cache invalidation failed: some changed rows may still be cached.
        var invalidationLost = false
        /// The projection was parked when last looked at.
        var parked = false
        /// When the fair share was last looked at.
        var shareCheckedAt = ContinuousClock.now
        /// The partition's parked keys: their events are held, not applied.
        var parkedKeys: Set<String> = []
        /// The position of the event the attempts are at.
        var failing: Int? = nil
    }

    /// Follows the log until the task is cancelled.
    func run() async {
        let timing = FollowSchedule.Timing(
            pollInterval: configuration.pollInterval, standbyInterval: configuration.standbyInterval, retryDelay: policy.backoff)
        await LogFollower(consumer: self, wakeups: head, timing: timing, logger: logger).run()
        session.shutdown()
    }

    /// Registers the projection, takes its lease if free (and within this process's share of
    /// partitions), and creates its table if missing. A projection whose declared version
    /// differs from the stored one is rebuilt first (or waits for `eventctl replay`).
    func acquire() async throws -> Lease? {
        let lease: Lease?
        do {
            lease = try await takeLease()
        } catch let error where !(error is VersionChanged) {
            // The lock may have been taken before the failure: another process may take over.
            await release()
            throw error
        } catch let pause as VersionChanged {
            await release()
            let metadata: Logger.Metadata = [
                "projection.version.stored": "\(pause.stored)", "projection.version.declared": "\(pause.declared)",
            ]
            if let problem = pause.problem {
                reportOnce(problem, metadata: metadata)
                return nil
            }
            guard pause.declared > pause.stored else {
                // Another process built a newer definition: rebuilding this older one would undo it.
                reportOnce(
                    "projection \(projection.name) is built at version \(pause.stored), newer than this process's \(pause.declared): standing by (update its projections)",
                    metadata: metadata)
                return nil
            }
            guard configuration.rebuildOnVersionChange, consumer.partition == 0 else {
                reportOnce("projection version changed: rebuild it with eventctl replay", metadata: metadata)
                return nil
            }
            logger.notice("projection version changed: rebuilding it from the log", metadata: metadata)
            do {
                let result = try await ProjectionReplay.run(
                    projection, databaseURL: configuration.databaseURL, reading: configuration.reading, logger: logger)
                logger.notice("projection rebuilt", metadata: ["projection.checkpoint": "\(result.position)", "events": "\(result.events)"])
                return try await takeLease()
            } catch let error as VersionChanged {
                throw error
            } catch {
                logger.error("projection rebuild failed; will try again", metadata: ["error": "\(error)"])
                return nil
            }
        }
        if let lease { logger.info("projection lease taken", metadata: ["projection.checkpoint": "\(lease.checkpoint)"]) }
        return lease
    }

    /// Logs why the projection cannot run, once per runner and cause (and for the first
    /// partition only): it stands by and would say so again at every try.
    private func reportOnce(_ message: String, metadata: Logger.Metadata) {
        guard consumer.partition == 0, reported.withLock({ let new = $0 != message; $0 = message; return new }) else { return }
        logger.error("\(message)", metadata: metadata)
    }

    struct VersionChanged: Error {
        var stored: Int
        var declared: Int
        /// Why the declared definition cannot replace the stored one at all (same version).
        var problem: String? = nil
    }

    private func takeLease() async throws -> Lease? {
        let projection = self.projection
        let table = self.table
        let caching = sink != nil
        // The registry first: a definition of another version (or partitioning) takes no lease.
        try await session.withSession { conn in
            try conn.execute("""
                INSERT INTO eventline.projections (name, version, key_column, partitions, partition_by)
                VALUES (\(projection.name), \(projection.version), \(projection.keyColumn), \(projection.partitions), \(projection.partitionBy))
                ON CONFLICT (name) DO NOTHING
                """)
            let row = try conn.query("SELECT version, partitions, partition_by FROM eventline.projections WHERE name = \(projection.name)").first!
            let stored = try row.decode(0, as: Int.self)
            guard stored == projection.version else { throw VersionChanged(stored: stored, declared: projection.version) }
            let partitions = try row.decode(1, as: Int.self)
            let partitionBy = try row.decode(2, as: String.self)
            if partitions != projection.partitions || partitionBy != projection.partitionBy {
                throw VersionChanged(
                    stored: stored, declared: projection.version,
                    problem: "projection \(projection.name) is built with \(partitions) partition(s) by \(partitionBy); "
                        + "changing partitions or partitionBy needs a new version (it is rebuilt blue/green)")
            }
        }
        var share = Int.max
        if projection.partitions > 1 { share = try await self.share.share(count: processes) }
        if !reserved.withLock({ $0 }) {
            guard self.share.reserve(share: share) else { return nil }
            reserved.withLock { $0 = true }
        }
        guard let held = try await session.acquire(consumer, owner: configuration.ownerName, partitions: projection.partitions) else {
            unreserve()
            return nil
        }
        do {
            let generation = try await session.run(held) { conn -> Int in
                var generation = try conn.query("SELECT generation FROM eventline.projections WHERE name = \(projection.name)").first!.decode(0, as: Int.self)
                // An owner that did not release the lease may have died between a commit and its
                // cache invalidation: start a new cache generation, which drops every cached row.
                if caching, held.previousOwner != nil {
                    generation = try Self.bumpGeneration(projection.name, on: conn)
                }
                try conn.transaction { conn in
                    // Partitions taken at once by several processes create the table once.
                    try conn.execute("SELECT pg_advisory_xact_lock(eventline.lease_lock_namespace() + 2, hashtext(\(projection.name)))")
                    let exists = try conn.query("SELECT to_regclass(\(table)) IS NOT NULL").first!.decode(0, as: Bool.self)
                    if !exists {
                        try conn.execute(unsafeSQL: try projection.createStatements(table: table))
                    }
                    try conn.execute("UPDATE eventline.projections SET key_column = \(projection.keyColumn) WHERE name = \(projection.name) AND key_column <> \(projection.keyColumn)")
                }
                return generation
            }
            let parkedKeys = try await session.run(held) { conn in try CheckpointStore.parkedKeys(held.consumer, on: conn) }
            metrics.parkedKeys.record(parkedKeys.count)
            return Lease(held: held, generation: generation, parked: held.state == "parked", parkedKeys: parkedKeys)
        }
    }

    private func unreserve() {
        if reserved.withLock({ let was = $0; $0 = false; return was }) { share.unreserve() }
    }

    /// Starts a new cache generation for `name` and tells servers (NOTIFY `name:generation:G`).
    static func bumpGeneration(_ name: String, on conn: PostgresConnection) throws -> Int {
        try conn.query("""
            WITH bumped AS (
                UPDATE eventline.projections SET generation = generation + 1, updated_at = now() WHERE name = \(name) RETURNING generation
            )
            SELECT generation, pg_notify('eventline_projections', \(name) || ':generation:' || generation) FROM bumped
            """).first!.decode(0, as: Int.self)
    }

    /// Gives the lease up. Called after a lease was lost or given back as well, so the share
    /// counts what the process holds: the follower calls it once per lease it took.
    func release() async {
        await session.release(consumer, owner: configuration.ownerName)
        unreserve()
    }

    /// How many processes run this projection's partitions (this one included).
    private func processes() async throws -> Int {
        let name = projection.name
        return try await session.withSession { conn in try CheckpointStore.processes(group: name, on: conn) }
    }

    /// Gives a partition back when the process holds more than its share (checked every few
    /// seconds): the follower releases it, and another process takes it.
    private func overShare(_ lease: inout Lease) async throws -> Bool {
        guard projection.partitions > 1, ContinuousClock.now - lease.shareCheckedAt >= PartitionShare.recount else { return false }
        lease.shareCheckedAt = ContinuousClock.now
        let share = try await self.share.share(count: processes)
        guard self.share.yield(share: share) else { return false }
        reserved.withLock { $0 = false }  // given back already: the release that follows does not count it again
        logger.info("partition handed over: this process holds more than its share", metadata: ["share": "\(share)"])
        return true
    }

    /// Applies the next batch in one transaction, then drops its changed keys from the cache.
    func step(_ lease: inout Lease) async throws -> FollowOutcome {
        if try await overShare(&lease) { return .released }
        if lease.invalidationLost {
            // Some changed rows may still be cached: a new generation makes them unreachable.
            let name = projection.name
            lease.generation = try await session.run(lease.held) { conn in try Self.bumpGeneration(name, on: conn) }
            lease.invalidationLost = false
            logger.info("new cache generation after a failed invalidation", metadata: ["projection.generation": "\(lease.generation)"])
        }
        let started = ContinuousClock.now
        let step: Step
        do {
            step = try await applyBatch(lease: lease)
        } catch let error as EventStoreError where error.code == .masterKey || error.code == .corruptEvent {
            // An event the projector cannot read (no master key, or not the right one) is a
            // failure of the projection, shown and parked, not a lost connection to retry blindly.
            step = .failed(
                event: nil, position: lease.checkpoint + 1, handler: "(reading)", message: error.message, checkpoint: lease.checkpoint)
        }
        switch step {
        case .applied(let to, let keys, let events):
            metrics.batchEvents.record(events)
            metrics.batchDuration.record(duration: ContinuousClock.now - started)
            lease.checkpoint = to
            lease.attempts = 0
            if !keys.isEmpty, let sink {
                do {
                    try await sink.invalidate(projection: projection.name, generation: lease.generation, keys: keys, position: to)
                } catch {
                    logger.warning("cache invalidation failed", metadata: ["error": "\(error)", "projection.checkpoint": "\(to)"])
                    lease.invalidationLost = true
                }
            }
            return .progressed
        case .caughtUp:
            return .caughtUp
        case .failed(let event, let position, let handler, let message, let committed):
            lease.checkpoint = committed
            // Attempts count at one event: another event failing starts again from one.
            if lease.failing != position { lease.attempts = 0 }
            lease.failing = position
            lease.attempts += 1
            metrics.retries.increment()
            let policy = self.policy
            let metadata: Logger.Metadata = ["event.position": "\(position)", "projection.handler": "\(handler)", "error": "\(message)"]
            guard lease.attempts >= policy.attempts else {
                try await recordFailure(position: position, handler: handler, message: message, attempts: lease.attempts, park: false, lease: lease)
                logger.warning("event failed; retrying", metadata: metadata.merging(["attempt": "\(lease.attempts)"]) { $1 })
                return .failed
            }
            // A failure of one event (not of reading the log) parks or skips its key's event;
            // anything else, or `pause`, stops the partition.
            if let event, let key = partitioner.key(of: event), policy.then != .pause {
                try await settle(event, key: key, message: message, attempts: lease.attempts, parkKey: policy.then == .parkKey, lease: &lease)
                return .progressed
            }
            try await recordFailure(position: position, handler: handler, message: message, attempts: lease.attempts, park: true, lease: lease)
            logger.error("projection parked: an event keeps failing", metadata: metadata)
            metrics.parked.record(1)
            lease.parked = true
            return .paused
        case .requests(let keys, let unparked, let events):
            // Parked keys retried or skipped on request: applied in order, or parked again.
            lease.parkedKeys.subtract(unparked)
            metrics.parkedKeys.record(lease.parkedKeys.count)
            metrics.batchEvents.record(events)
            if !unparked.isEmpty { logger.notice("parked keys released", metadata: ["keys": "\(unparked.sorted())"]) }
            // Rows changed without the checkpoint moving: a read at the current checkpoint may
            // already be on its way to the cache with a row from before. A new generation
            // (at the next step) makes every such entry unreachable.
            if !keys.isEmpty, sink != nil { lease.invalidationLost = true }
            return .progressed
        case .parked:
            metrics.parked.record(1)
            lease.parked = true
            return .paused
        case .resumed(let checkpoint):
            // Resumed (`eventctl` may have skipped the failing event): start again from the stored checkpoint.
            metrics.parked.record(0)
            lease.parked = false
            lease.attempts = 0
            lease.checkpoint = checkpoint
            return .progressed
        }
    }

    enum Step: Sendable {
        case applied(to: Int, keys: [String], events: Int)
        case caughtUp
        /// An event failed (nil: the log could not be read there); the events before it
        /// committed, up to `checkpoint`.
        case failed(event: RecordedEvent?, position: Int, handler: String, message: String, checkpoint: Int)
        /// Parked keys' requests carried out: the read-model keys changed, the keys released,
        /// and the events applied.
        case requests(keys: [String], unparked: Set<String>, events: Int)
        case parked
        /// Running again after being parked, from this stored checkpoint.
        case resumed(checkpoint: Int)
    }

    /// One transaction: the next events after `checkpoint` (of the types the projection
    /// handles), their statements, and the checkpoint. When an event fails, the events before it
    /// commit and the failure is reported.
    private func applyBatch(lease: Lease) async throws -> Step {
        let projection = self.projection
        let table = self.table
        let batchSize = configuration.batchSize
        let reading = self.reading
        let consumer = self.consumer
        let partitioner = self.partitioner
        return try await session.run(lease.held) { conn -> Step in
            // The partition's state, its checkpoint, the log head and whether an operator asked
            // about a parked key, in one round trip.
            // A rebuild may have swapped in another definition (version, partitions) meanwhile:
            // this runner's then is not the built one, and it must not apply a single event.
            guard let row = try conn.query("""
                SELECT c.state, h.position, c.checkpoint,
                       EXISTS (SELECT 1 FROM eventline.parked_keys k
                               WHERE k.kind = c.kind AND k.name = c.name AND k.partition = c.partition AND k.request IS NOT NULL)
                FROM eventline.checkpoints c
                JOIN eventline.projections p ON p.name = c.name
                     AND p.version = \(projection.version) AND p.partitions = \(projection.partitions) AND p.partition_by = \(projection.partitionBy)
                CROSS JOIN eventline.log_head h
                WHERE c.kind = 'projection' AND c.name = \(consumer.name) AND c.partition = \(consumer.partition)
                """).first
            else { throw LogLeaseLost() }  // rebuilt with another definition meanwhile: take the lease again, which says why
            guard try row.decode(0, as: String.self) == "running" else { return .parked }
            if try row.decode(3, as: Bool.self) {
                return try Self.carryOutRequests(consumer, projection: projection, table: table, reading: reading, on: conn)
            }
            if lease.parked { return .resumed(checkpoint: try row.decode(2, as: Int.self)) }
            let checkpoint = lease.checkpoint
            let head = try row.decode(1, as: Int.self)
            guard head > checkpoint else { return .caughtUp }
            let page = try EventStore.readEvents(
                on: conn, after: checkpoint, upTo: head, types: projection.eventTypes, limit: batchSize, reading: reading)
            // Caught up to the head when the page is short: events of other types are done too.
            let target = page.count < batchSize ? head : page.last!.position
            // Other partitions' events are theirs: this one moves past them.
            let events = partitioner.partitions == 1 ? page : page.filter { partitioner.partition(of: $0).map { $0 == consumer.partition } ?? true }
            // The batch continues the trace of the request that wrote its first event, linked
            // to the traces of the others.
            let span = EventTrace.isEnabled && !events.isEmpty
                ? EventTrace.startSpan("eventline.projection.apply \(projection.name)", ofKind: .consumer, for: events) : nil
            span?.attributes["eventline.batch.events"] = events.count
            defer { span?.end() }
            return try Self.commit(
                events, from: checkpoint, to: target, projection: projection, consumer: consumer, table: table, parked: lease.parkedKeys,
                partitioner: partitioner, on: conn)
        }
    }

    /// Parks `key` at `event` (its later events are held) or skips the event (recorded), and
    /// moves the checkpoint past it, in one transaction on the lease's session.
    private func settle(_ event: RecordedEvent, key: String, message: String, attempts: Int, parkKey: Bool, lease: inout Lease) async throws {
        let consumer = self.consumer
        let from = lease.checkpoint
        try await session.run(lease.held) { conn in
            try conn.transaction { conn in
                let statements = parkKey
                    ? CheckpointStore.park(consumer, key: key, event: event, error: message, attempts: attempts)
                    : [CheckpointStore.skip(consumer, key: key, event: event, error: message, by: "policy")]
                for statement in statements { _ = try conn.query(statement) }
                do {
                    _ = try conn.query(CheckpointStore.advance(consumer, from: from, to: event.position))
                } catch let error as PostgresError where error.sqlState == SQLState.serializationFailure {
                    throw LogLeaseLost()
                }
            }
        }
        lease.checkpoint = event.position
        lease.attempts = 0
        let metadata: Logger.Metadata = [
            "event.position": "\(event.position)", "event.type": "\(event.type)", "projection.key": "\(key)", "error": "\(message)",
        ]
        if parkKey {
            lease.parkedKeys.insert(key)
            metrics.parkedKeys.record(lease.parkedKeys.count)
            logger.error("key parked: its event keeps failing; its later events wait, other keys go on", metadata: metadata)
        } else {
            metrics.skipped.increment()
            logger.error("event skipped after failing (onError: skip); recorded in eventline.skipped_events", metadata: metadata)
        }
    }

    /// Carries out the operators' requests about this partition's parked keys: a skip records
    /// the key's failing event as skipped; then the key's held events are applied in log order,
    /// each in a savepoint. A key whose held events all apply is released; one whose event fails
    /// again stays parked at that event, with the events before it applied.
    private static func carryOutRequests(
        _ consumer: ConsumerID, projection: any Projection, table: String, reading: EventReading, on conn: PostgresConnection
    ) throws -> Step {
        var changed: [String] = []
        var unparked: Set<String> = []
        var applied = 0
        for (key, request) in try CheckpointStore.requests(consumer, on: conn) {
            try conn.transaction { conn in
                var events = try EventStore.readEvents(on: conn, positions: try CheckpointStore.held(consumer, key: key, on: conn), reading: reading)
                if request == "skip", let first = events.first {
                    try CheckpointStore.skipFirst(consumer, key: key, event: first, on: conn)
                    events.removeFirst()
                }
                for event in events {
                    try conn.execute("SAVEPOINT eventline_held")
                    do {
                        let statements = try projection.statements(for: event, table: table)
                        for statement in statements {
                            try statement.checkSendable()
                            changed += Self.keys(try conn.query(statement))
                        }
                        try conn.execute("RELEASE SAVEPOINT eventline_held")
                        applied += 1
                    } catch let error as PostgresError where error.isConnectionError {
                        throw error
                    } catch {
                        try conn.execute("ROLLBACK TO SAVEPOINT eventline_held")
                        let message = (error as? PostgresError)?.message ?? "\(error)"
                        try CheckpointStore.repark(consumer, key: key, at: event, error: message, handled: request, on: conn)
                        return
                    }
                }
                try CheckpointStore.unpark(consumer, key: key, on: conn)
                unparked.insert(key)
            }
        }
        return .requests(keys: Array(Set(changed)).sorted(), unparked: unparked, events: applied)
    }

    /// Commits `events` and the checkpoint `to`; on a failing statement, commits the events
    /// before it (checkpoint just before the failing event) and reports it.
    private static func commit(
        _ events: [RecordedEvent], from checkpoint: Int, to target: Int, projection: any Projection, consumer: ConsumerID,
        table: String, parked: Set<String>, partitioner: ProjectionPartitioner, on conn: PostgresConnection
    ) throws -> Step {
        var queries: [SQLQuery] = ["BEGIN"]
        /// For each query, the index of the event whose statement it is (nil: BEGIN, checkpoint, COMMIT, holds).
        var owners: [Int?] = [nil]
        for (index, event) in events.enumerated() {
            // A parked key's events wait behind it, in order.
            if !parked.isEmpty, let key = partitioner.key(of: event), parked.contains(key) {
                queries.append(CheckpointStore.hold(consumer, key: key, position: event.position))
                owners.append(nil)
                continue
            }
            let statements: [SQLQuery]
            do {
                statements = try projection.statements(for: event, table: table)
                // A value libpq cannot send (text with a NUL) fails the whole pipeline before
                // anything is sent: checked here, it is this event's failure, counted and parked
                // like a statement the server refused.
                for statement in statements { try statement.checkSendable() }
            } catch {
                return try failure(
                    events, at: index, message: "\(error)", from: checkpoint, projection: projection, consumer: consumer, table: table,
                    parked: parked, partitioner: partitioner, on: conn)
            }
            for statement in statements {
                queries.append(statement)
                owners.append(index)
            }
        }
        queries.append(CheckpointStore.advance(consumer, from: checkpoint, to: target))
        owners.append(nil)
        queries.append("COMMIT")
        owners.append(nil)
        let results = try conn.pipeline(queries)
        var keys: [String] = []
        for (offset, result) in results.enumerated() {
            switch result {
            case .success(let rows):
                if owners[offset] != nil { keys += Self.keys(rows) }
            case .failure(let error):
                if error.isConnectionError { throw error }
                guard let index = owners[offset] else {
                    if error.sqlState == SQLState.serializationFailure { throw LogLeaseLost() }  // the checkpoint moved under us
                    throw error
                }
                return try failure(
                    events, at: index, message: error.message, from: checkpoint, projection: projection, consumer: consumer, table: table,
                    parked: parked, partitioner: partitioner, on: conn)
            }
        }
        return .applied(to: target, keys: Array(Set(keys)).sorted(), events: events.count)
    }

    /// events[index] failed: commits the events before it, then reports the failure.
    private static func failure(
        _ events: [RecordedEvent], at index: Int, message: String, from checkpoint: Int, projection: any Projection,
        consumer: ConsumerID, table: String, parked: Set<String>, partitioner: ProjectionPartitioner, on conn: PostgresConnection
    ) throws -> Step {
        let failing = events[index]
        var committed = checkpoint
        if failing.position - 1 > checkpoint {
            let prefix = try commit(
                Array(events[..<index]), from: checkpoint, to: failing.position - 1, projection: projection, consumer: consumer,
                table: table, parked: parked, partitioner: partitioner, on: conn)
            switch prefix {
            case .applied(let to, _, _): committed = to
            case .failed: return prefix  // an earlier event of the batch failed this time: it is the one reported
            default: break
            }
        }
        return .failed(event: failing, position: failing.position, handler: failing.type, message: message, checkpoint: committed)
    }

    /// The first column of each returned row, as text.
    static func keys(_ result: PostgresResult) -> [String] {
        result.rows.compactMap { row in
            if let text = try? row.decode(0, as: String.self) { return text }
            if let number = try? row.decode(0, as: Int.self) { return String(number) }
            return nil
        }
    }

    private func recordFailure(position: Int, handler: String, message: String, attempts: Int, park: Bool, lease: Lease) async throws {
        try await session.recordFailure(lease.held, position: position, handler: handler, message: message, attempts: attempts, park: park)
    }
}

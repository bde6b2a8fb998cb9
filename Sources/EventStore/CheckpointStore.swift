import Foundation
import PostgresClient

/// A consumer of the log that takes a lease and keeps a checkpoint: a projection (one row per
/// partition), a reactor, or a consumer group's webhook delivery (a lease only).
public struct ConsumerID: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable, CaseIterable {
        case projection, reactor, webhook
    }

    public var kind: Kind
    public var name: String
    /// 0 for a consumer in one piece; 0 … N-1 for a projection of N partitions.
    public var partition: Int

    public init(_ kind: Kind, _ name: String, partition: Int = 0) {
        self.kind = kind
        self.name = name
        self.partition = partition
    }

    public var description: String { partition == 0 ? "\(kind.rawValue) \(name)" : "\(kind.rawValue) \(name)#\(partition)" }
}

/// One consumer partition's row in the store, as its lease and checkpoint stand.
public struct ConsumerCheckpoint: Sendable, Equatable {
    public var consumer: ConsumerID
    public var checkpoint: Int
    /// The log's head when the row was read (same snapshot); lag is `head - checkpoint`, exactly.
    public var head: Int
    public var lag: Int { max(0, head - checkpoint) }
    /// running or parked.
    public var state: String
    /// The process holding the lease (host:pid), or nil when none holds it.
    public var owner: String?
    public var error: String?
    public var errorPosition: Int?
    public var errorHandler: String?
    public var failedAttempts: Int
    /// Behind the head with its checkpoint unmoved for `CheckpointStore.stallAfter` (parked,
    /// failing, or with no process running it).
    public var stalled: Bool
}

/// The one lease and checkpoint store (`eventline.checkpoints`). Each consumer partition has a
/// row: its checkpoint, its state (running, or parked with the error that parked it) and the
/// process that last took its lease. The lease itself is a session advisory lock
/// (`eventline.lease_lock_namespace()`, the row's `lock_id`), held by a `LeaseSession`: a
/// process that dies or loses its connection loses the lease with its session, and a process
/// that lost its lease can move no checkpoint, because every move runs on the lease's session
/// and only from where that owner left it.
public enum CheckpointStore {
    /// How long a consumer that is behind may go without moving before it counts as stalled (seconds).
    public static let stallAfter = 60.0

    /// Every row of `kind` (or only `name`'s), with the log head read in the same snapshot;
    /// `owner` is set only while a session holds the lease.
    public static func list(_ kind: ConsumerID.Kind, name: String? = nil, on conn: PostgresConnection) throws -> [ConsumerCheckpoint] {
        // The held locks and the head are read once, not per row: a per-row subplan over these
        // small tables (no statistics) was estimated costly enough to be JIT-compiled (~0.2 s).
        let rows = try conn.query("""
            WITH held AS (
                SELECT l.objid FROM pg_locks l
                WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                  AND l.classid = eventline.lease_lock_namespace()::oid
                  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            )
            SELECT c.name, c.partition, c.checkpoint, (SELECT position FROM eventline.log_head), c.state,
                   CASE WHEN c.lock_id::oid IN (SELECT objid FROM held) THEN c.owner END,
                   c.error, c.error_position, c.error_handler, c.failed_attempts,
                   c.checkpoint < (SELECT position FROM eventline.log_head)
                     AND coalesce(c.advanced_at, c.created_at) < now() - make_interval(secs => \(stallAfter))
            FROM eventline.checkpoints c
            WHERE c.kind = \(kind.rawValue) AND (\(name)::text IS NULL OR c.name = \(name)::text)
            ORDER BY c.name, c.partition
            """)
        return try rows.rows.map { row in
            ConsumerCheckpoint(
                consumer: ConsumerID(kind, try row.decode(0), partition: try row.decode(1)), checkpoint: try row.decode(2),
                head: try row.decode(3), state: try row.decode(4), owner: try row.decode(5), error: try row.decode(6),
                errorPosition: try row.decode(7), errorHandler: try row.decode(8), failedAttempts: try row.decode(9),
                stalled: try row.decode(10))
        }
    }

    /// Sets every parked partition of `name` running again (each retries the event it stopped
    /// at); returns the number of rows of that consumer (0: none has that name).
    @discardableResult
    public static func resume(_ kind: ConsumerID.Kind, name: String, on conn: PostgresConnection) throws -> Int {
        try conn.query("""
            WITH resumed AS (
                UPDATE eventline.checkpoints SET state = 'running', failed_attempts = 0, updated_at = now()
                WHERE kind = \(kind.rawValue) AND name = \(name) AND state = 'parked' RETURNING 1
            )
            SELECT count(*) FROM eventline.checkpoints WHERE kind = \(kind.rawValue) AND name = \(name)
            """).first!.decode(0, as: Int.self)
    }

    /// The statement that moves `consumer`'s checkpoint from `from` to `to`, for a transaction of
    /// the caller's (a projection's batch): it fails with serialization_failure, rolling the
    /// transaction back, when the checkpoint is not at `from` or the consumer is parked.
    public static func advance(_ consumer: ConsumerID, from: Int, to: Int) -> SQLQuery {
        """
        SELECT eventline.advance_checkpoint(\(consumer.kind.rawValue)::text, \(consumer.name)::text, \(consumer.partition)::integer, \(from), \(to))
        """
    }

    /// Makes `name`'s rows be exactly partitions 0 ..< `partitions` (at `checkpoint`, running,
    /// for those it adds), in the caller's transaction: a projection rebuilt with a new
    /// partition count.
    public static func setPartitions(
        _ kind: ConsumerID.Kind, name: String, partitions: Int, checkpoint: Int, on conn: PostgresConnection
    ) throws {
        try conn.execute("""
            DELETE FROM eventline.checkpoints WHERE kind = \(kind.rawValue) AND name = \(name) AND partition >= \(partitions)
            """)
        try conn.execute("""
            UPDATE eventline.checkpoints
            SET checkpoint = \(checkpoint), state = 'running', error = NULL, error_position = NULL, error_handler = NULL,
                failed_attempts = 0, updated_at = now()
            WHERE kind = \(kind.rawValue) AND name = \(name)
            """)
        try conn.execute("""
            INSERT INTO eventline.checkpoints (kind, name, partition, checkpoint)
            SELECT \(kind.rawValue), \(name), p, \(checkpoint) FROM generate_series(0, \(partitions) - 1) p
            ON CONFLICT (kind, name, partition) DO NOTHING
            """)
    }

    /// Registers `name` with rows for partitions 0 ..< `partitions` (at checkpoint 0) unless it
    /// has rows already, in one statement: a reader never sees some partitions and not others.
    public static func register(_ kind: ConsumerID.Kind, name: String, partitions: Int = 1, on conn: PostgresConnection) throws {
        try conn.execute("""
            INSERT INTO eventline.checkpoints (kind, name, partition)
            SELECT \(kind.rawValue), \(name), p FROM generate_series(0, \(max(1, partitions)) - 1) p
            WHERE NOT EXISTS (SELECT 1 FROM eventline.checkpoints WHERE kind = \(kind.rawValue) AND name = \(name))
            ON CONFLICT (kind, name, partition) DO NOTHING
            """)
    }

    /// Releases every lease lock the session holds (and nothing else it holds, such as its
    /// group membership), without a warning for a lock it does not hold.
    /// (One row: whether it released any.)
    static let unlockLeases: SQLQuery = """
        SELECT bool_or(pg_advisory_unlock(eventline.lease_lock_namespace(), l.objid::bigint::integer)) FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid() AND l.granted AND l.objsubid = 2
          AND l.classid = eventline.lease_lock_namespace()::oid
        """

    /// The advisory key of `group`'s membership (a shared lock each of its sessions holds).
    static func joinGroup(_ group: String) -> SQLQuery {
        "SELECT pg_advisory_lock_shared(eventline.lease_lock_namespace() + 3, hashtext(\(group)) & 2147483647)"
    }

    /// How many processes have sessions in `group` (each names its sessions `application
    /// pid@host`): what a process's fair share of a projection's partitions is counted
    /// against. A process that dies leaves with its sessions.
    public static func processes(group: String, on conn: PostgresConnection) throws -> Int {
        try conn.query("""
            SELECT count(DISTINCT a.application_name) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
              AND l.classid = (eventline.lease_lock_namespace() + 3)::oid
              AND l.objid = (hashtext(\(group)) & 2147483647)::bigint::oid
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            """).first!.decode(0, as: Int.self)
    }
}

/// A consumer partition's lease as a process holds it: the session it lives in, and the row as
/// it stood when the lease was taken.
public struct HeldLease: Sendable {
    public let consumer: ConsumerID
    /// The session holding the advisory lock; a statement on any other session is refused.
    public let backendPID: Int32
    public var checkpoint: Int
    public var state: String
    public var failedAttempts: Int
    /// The owner recorded before this one took the lease (nil: released cleanly, or new).
    public var previousOwner: String?
}

/// The session that holds a consumer partition's lease, with a thread of its own: takes the
/// lease, gives it up, and runs the consumer's statements (a projection's batch, a checkpoint
/// move) on the session that holds it, never on another.
public final class LeaseSession: Sendable {
    private let connection: DedicatedConnection

    /// A session to `databaseURL` (opened on first use) named `application` in
    /// pg_stat_activity; `setup` runs after every (re)connect. With `group`, the session also
    /// counts its process as one running that group (a projection: fair shares of its
    /// partitions count such processes, `CheckpointStore.processes(group:)`).
    public init(
        databaseURL: String, application: String, threadName: String, group: String? = nil,
        setup: (@Sendable (PostgresConnection) throws -> Void)? = nil
    ) {
        let name = String("\(application) \(getpid())@\(ProcessInfo.processInfo.hostName)".utf8.prefix(63)) ?? application
        connection = DedicatedConnection(conninfo: databaseURL, name: threadName) { conn in
            try conn.execute("SELECT set_config('application_name', \(name), false)")
            if let group { _ = try conn.query(CheckpointStore.joinGroup(group)) }
            try setup?(conn)
        }
    }

    /// Closes the session (and so gives up any lease it holds).
    public func shutdown() { connection.shutdown() }

    /// Registers `consumer`'s rows if new (`partitions` of them), then takes its lease if it is
    /// free and records `owner`; nil when another session holds it.
    public func acquire(_ consumer: ConsumerID, owner: String, partitions: Int = 1) async throws -> HeldLease? {
        try await connection.run { conn -> HeldLease? in
            try CheckpointStore.register(consumer.kind, name: consumer.name, partitions: partitions, on: conn)
            guard let row = try conn.query("""
                SELECT lock_id FROM eventline.checkpoints
                WHERE kind = \(consumer.kind.rawValue) AND name = \(consumer.name) AND partition = \(consumer.partition)
                """).first
            else { throw EventStoreError(code: .invalidArgument, message: "\(consumer) is not registered") }
            let lockID = try row.decode(0, as: Int.self)
            guard try conn.query("SELECT pg_try_advisory_lock(eventline.lease_lock_namespace(), \(Int32(lockID)))").first!.decode(0, as: Bool.self)
            else { return nil }
            guard let taken = try conn.query("""
                UPDATE eventline.checkpoints c SET owner = \(owner), owner_since = now(), updated_at = now()
                FROM eventline.checkpoints old
                WHERE c.kind = old.kind AND c.name = old.name AND c.partition = old.partition
                  AND c.kind = \(consumer.kind.rawValue) AND c.name = \(consumer.name) AND c.partition = \(consumer.partition)
                RETURNING c.checkpoint, c.state, c.failed_attempts, old.owner
                """).first
            else {
                // The row went between the look-up and the lock (a rebuild to fewer partitions).
                _ = try conn.query(CheckpointStore.unlockLeases)
                return nil
            }
            return HeldLease(
                consumer: consumer, backendPID: conn.backendPID, checkpoint: try taken.decode(0), state: try taken.decode(1),
                failedAttempts: try taken.decode(2), previousOwner: try taken.decode(3))
        }
    }

    /// Gives every lease of this session up and, when it held one, clears `consumer`'s owner
    /// (if it is `owner`: another process may hold the lease by now); never fails (a session
    /// that is gone has given its leases up already).
    public func release(_ consumer: ConsumerID, owner: String) async {
        try? await connection.run { conn in
            guard try conn.query(CheckpointStore.unlockLeases).first?.decode(0, as: Bool?.self) == true else { return }
            try conn.execute("""
                UPDATE eventline.checkpoints SET owner = NULL
                WHERE kind = \(consumer.kind.rawValue) AND name = \(consumer.name) AND partition = \(consumer.partition)
                  AND owner = \(owner)
                """)
        }
    }

    /// Runs `body` on the session that holds `lease`; throws `LogLeaseLost` when the session is
    /// no longer that one (it died, and with it the lease).
    public func run<T: Sendable>(_ lease: HeldLease, _ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        let backendPID = lease.backendPID
        return try await connection.run { conn in
            guard conn.backendPID == backendPID else { throw LogLeaseLost() }
            return try body(conn)
        }
    }

    /// Throws `LogLeaseLost` unless the lease's session still answers (and so still holds it).
    public func verify(_ lease: HeldLease) async throws {
        try await run(lease) { conn in _ = try conn.query("SELECT 1") }
    }

    /// Moves the checkpoint from `from` to `to` on the lease's session; throws `LogLeaseLost`
    /// when it is not at `from` (another owner moved it) or the session is gone.
    public func advance(_ lease: HeldLease, from: Int, to: Int) async throws {
        try await run(lease) { conn in
            do {
                _ = try conn.query(CheckpointStore.advance(lease.consumer, from: from, to: to))
            } catch let error as PostgresError where error.sqlState == SQLState.serializationFailure {
                throw LogLeaseLost()
            }
        }
    }

    /// Runs `statements` and moves the checkpoint from `from` to `to` in one transaction on the
    /// lease's session (an event held behind its parked key, a key parked, an event skipped).
    public func advance(_ lease: HeldLease, from: Int, to: Int, with statements: [SQLQuery]) async throws {
        try await run(lease) { conn in
            try conn.transaction { conn in
                for statement in statements { _ = try conn.query(statement) }
                do {
                    _ = try conn.query(CheckpointStore.advance(lease.consumer, from: from, to: to))
                } catch let error as PostgresError where error.sqlState == SQLState.serializationFailure {
                    throw LogLeaseLost()
                }
            }
        }
    }

    /// The partition's state (running or parked) and whether an operator's request about one of
    /// its parked keys waits.
    public func state(_ lease: HeldLease) async throws -> (state: String, requests: Bool) {
        let consumer = lease.consumer
        return try await run(lease) { conn in
            guard let row = try conn.query("""
                SELECT c.state, EXISTS (SELECT 1 FROM eventline.parked_keys k
                                        WHERE k.kind = c.kind AND k.name = c.name AND k.partition = c.partition AND k.request IS NOT NULL)
                FROM eventline.checkpoints c
                WHERE c.kind = \(consumer.kind.rawValue) AND c.name = \(consumer.name) AND c.partition = \(consumer.partition)
                """).first
            else { throw LogLeaseLost() }
            return (try row.decode(0), try row.decode(1))
        }
    }

    /// Records a failed attempt at the event at `position` (and parks the partition when `park`).
    public func recordFailure(
        _ lease: HeldLease, position: Int, handler: String?, message: String, attempts: Int, park: Bool = false
    ) async throws {
        let consumer = lease.consumer
        try await run(lease) { conn in
            try conn.execute("""
                UPDATE eventline.checkpoints
                SET error = \(message), error_position = \(position), error_handler = \(handler), failed_attempts = \(attempts),
                    state = CASE WHEN \(park) THEN 'parked' ELSE state END, updated_at = now()
                WHERE kind = \(consumer.kind.rawValue) AND name = \(consumer.name) AND partition = \(consumer.partition)
                """)
        }
    }

    // Parked keys, on the lease's session: for consumers that do their work outside PostgreSQL
    // (a reactor), between those steps.

    /// The partition's parked keys.
    public func parkedKeys(_ lease: HeldLease) async throws -> Set<String> {
        try await run(lease) { conn in try CheckpointStore.parkedKeys(lease.consumer, on: conn) }
    }

    /// The partition's parked keys with an operator's request waiting, and the request.
    public func requests(_ lease: HeldLease) async throws -> [(key: String, request: String)] {
        try await run(lease) { conn in try CheckpointStore.requests(lease.consumer, on: conn) }
    }

    /// The positions `key` holds, in log order.
    public func held(_ lease: HeldLease, key: String) async throws -> [Int] {
        try await run(lease) { conn in try CheckpointStore.held(lease.consumer, key: key, on: conn) }
    }

    /// Records `event`, the first `key` holds, as skipped by an operator, and drops it.
    public func skipFirst(_ lease: HeldLease, key: String, event: RecordedEvent) async throws {
        try await run(lease) { conn in try conn.transaction { conn in try CheckpointStore.skipFirst(lease.consumer, key: key, event: event, on: conn) } }
    }

    /// `key`'s held event at `position` went through: it is held no more.
    public func handled(_ lease: HeldLease, key: String, position: Int) async throws {
        let consumer = lease.consumer
        try await run(lease) { conn in
            try conn.execute("""
                DELETE FROM eventline.parked_events
                WHERE kind = \(consumer.kind.rawValue) AND name = \(consumer.name) AND key = \(key) AND position = \(position)
                """)
        }
    }

    /// Keeps `key` parked at `event`, which failed again (clearing the request `handled`).
    public func repark(_ lease: HeldLease, key: String, at event: RecordedEvent, error: String, handled: String) async throws {
        try await run(lease) { conn in
            try conn.transaction { conn in try CheckpointStore.repark(lease.consumer, key: key, at: event, error: error, handled: handled, on: conn) }
        }
    }

    /// Releases `key`: every event it held went through.
    public func unpark(_ lease: HeldLease, key: String) async throws {
        try await run(lease) { conn in try CheckpointStore.unpark(lease.consumer, key: key, on: conn) }
    }

    /// Runs `body` on this session whether or not it holds a lease (registration, DDL).
    public func withSession<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        try await connection.run(body)
    }
}

// MARK: - Per-key parking

/// What a consumer does with an event that keeps failing: retry it `retries` times, `backoff`
/// apart (doubling), then park its key (its later events wait, every other key goes on), pause
/// the whole consumer (partition), or skip the event (recorded in `eventline.skipped_events`).
public struct ErrorPolicy: Sendable, Equatable, CustomStringConvertible {
    public enum Then: String, Sendable, CaseIterable {
        case parkKey = "park-key"
        case pause
        case skip
    }

    /// Tries after the first failure (0: park, pause or skip at the first failure).
    public var retries: Int
    /// The first retry's delay; doubles with each retry.
    public var backoff: Duration
    public var then: Then

    public init(retries: Int = 4, backoff: Duration = .milliseconds(200), then: Then = .parkKey) {
        self.retries = retries
        self.backoff = backoff
        self.then = then
    }

    /// Attempts in all before `then`.
    public var attempts: Int { retries + 1 }

    public var description: String { "retries \(retries), backoff \(backoff), then \(then.rawValue)" }

    /// A duration as policies write it: a whole number with ms, s or m (`200ms`, `2s`, `1m`).
    public static func duration(_ text: String) -> Duration? {
        for (suffix, scale) in [("ms", 1), ("s", 1000), ("m", 60_000)] where text.hasSuffix(suffix) {
            guard let value = Int(text.dropLast(suffix.count)), value >= 0, value <= 3_600_000 / scale else { return nil }
            return .milliseconds(value * scale)
        }
        return nil
    }
}

/// A parked key: the event it failed on, why, and how many of its events wait behind it.
public struct ParkedKey: Sendable, Equatable {
    public var consumer: ConsumerID
    public var key: String
    public var position: Int
    public var eventType: String
    public var error: String
    public var attempts: Int
    /// Events held, the failing one included.
    public var held: Int
    /// retry or skip, while an operator's request waits for the key's process.
    public var request: String?
    public var parkedAt: Date
}

/// An event a consumer skipped, and why.
public struct SkippedEvent: Sendable, Equatable {
    public var consumer: ConsumerID
    public var key: String
    public var position: Int
    public var eventType: String
    public var error: String
    /// operator or policy.
    public var skippedBy: String
    public var skippedAt: Date
}

/// A request about parked keys that cannot be carried out; nothing changed.
public struct ParkingError: Error, Sendable, CustomStringConvertible, Equatable {
    public enum Code: String, Sendable { case consumerNotFound, keyNotParked, keysRequired }
    public var code: Code
    public var message: String
    public var keys: [String]
    public var description: String { message }
}

extension CheckpointStore {
    /// The parked keys of `name` (every kind's partition), oldest first.
    public static func parked(_ kind: ConsumerID.Kind, name: String, on conn: PostgresConnection) throws -> [ParkedKey] {
        try conn.query("""
            SELECT k.key, k.partition, k.position, k.event_type, k.error, k.attempts,
                   (SELECT count(*) FROM eventline.parked_events e WHERE e.kind = k.kind AND e.name = k.name AND e.key = k.key),
                   k.request, k.parked_at
            FROM eventline.parked_keys k WHERE k.kind = \(kind.rawValue) AND k.name = \(name)
            ORDER BY k.position
            """).rows.map { row in
            ParkedKey(
                consumer: ConsumerID(kind, name, partition: try row.decode(1)), key: try row.decode(0), position: try row.decode(2),
                eventType: try row.decode(3), error: try row.decode(4), attempts: try row.decode(5), held: try row.decode(6),
                request: try row.decode(7), parkedAt: try row.decode(8))
        }
    }

    /// How many keys each consumer of `kind` has parked (consumers with none are absent).
    public static func parkedCounts(_ kind: ConsumerID.Kind, on conn: PostgresConnection) throws -> [String: Int] {
        Dictionary(uniqueKeysWithValues: try conn.query("""
            SELECT name, count(*) FROM eventline.parked_keys WHERE kind = \(kind.rawValue) GROUP BY name
            """).rows.map { (try $0.decode(0, as: String.self), try $0.decode(1, as: Int.self)) })
    }

    /// The events `name` skipped, in log order.
    public static func skipped(_ kind: ConsumerID.Kind, name: String, on conn: PostgresConnection) throws -> [SkippedEvent] {
        try conn.query("""
            SELECT key, position, event_type, error, skipped_by, skipped_at FROM eventline.skipped_events
            WHERE kind = \(kind.rawValue) AND name = \(name) ORDER BY position
            """).rows.map { row in
            SkippedEvent(
                consumer: ConsumerID(kind, name), key: try row.decode(0), position: try row.decode(1), eventType: try row.decode(2),
                error: try row.decode(3), skippedBy: try row.decode(4), skippedAt: try row.decode(5))
        }
    }

    /// Asks the process that holds each key's partition to retry it (apply its held events in
    /// order) or skip its failing event (recorded) and apply the rest. `keys` nil: every parked
    /// key (retry only). Returns the keys asked about; throws `ParkingError` and changes nothing
    /// when the consumer does not exist or a key is not parked.
    @discardableResult
    public static func request(
        _ action: String, _ kind: ConsumerID.Kind, name: String, keys: [String]?, on conn: PostgresConnection
    ) throws -> [String] {
        precondition(action == "retry" || action == "skip")
        if action == "skip", keys?.isEmpty ?? true {
            throw ParkingError(code: .keysRequired, message: "skip needs the keys whose failing event to skip", keys: [])
        }
        return try conn.transaction { conn in
            guard try conn.query("""
                SELECT EXISTS (SELECT 1 FROM eventline.checkpoints WHERE kind = \(kind.rawValue) AND name = \(name))
                """).first!.decode(0, as: Bool.self)
            else { throw ParkingError(code: .consumerNotFound, message: "no \(kind.rawValue) named \(name)", keys: []) }
            let requested = try conn.query("""
                UPDATE eventline.parked_keys SET request = \(action), requested_at = now(), updated_at = now()
                WHERE kind = \(kind.rawValue) AND name = \(name) AND (\(keys)::text[] IS NULL OR key = ANY(\(keys)::text[]))
                RETURNING key
                """).rows.map { try $0.decode(0, as: String.self) }
            if let keys {
                let missing = Array(Set(keys).subtracting(requested)).sorted()
                if !missing.isEmpty {
                    throw ParkingError(
                        code: .keyNotParked, message: "not parked in \(kind.rawValue) \(name): \(missing.joined(separator: ", "))", keys: missing)
                }
            }
            return requested.sorted()
        }
    }

    /// The parked keys of one consumer partition (the runner's, when it takes the lease).
    public static func parkedKeys(_ consumer: ConsumerID, on conn: PostgresConnection) throws -> Set<String> {
        Set(try conn.query("""
            SELECT key FROM eventline.parked_keys WHERE kind = \(consumer.kind.rawValue) AND name = \(consumer.name) AND partition = \(consumer.partition)
            """).rows.map { try $0.decode(0, as: String.self) })
    }

    /// The statements that park `key` at `event` (held first), for the transaction that moves the
    /// checkpoint past it.
    public static func park(_ consumer: ConsumerID, key: String, event: RecordedEvent, error: String, attempts: Int) -> [SQLQuery] {
        [
            """
            INSERT INTO eventline.parked_keys (kind, name, key, partition, position, event_type, error, attempts)
            VALUES (\(consumer.kind.rawValue), \(consumer.name), \(key), \(consumer.partition)::integer, \(event.position), \(event.type), \(error), \(attempts))
            """,
            hold(consumer, key: key, position: event.position),
        ]
    }

    /// The statement that holds the event at `position` behind its parked key.
    public static func hold(_ consumer: ConsumerID, key: String, position: Int) -> SQLQuery {
        "INSERT INTO eventline.parked_events (kind, name, key, position) VALUES (\(consumer.kind.rawValue), \(consumer.name), \(key), \(position))"
    }

    /// The statement that records `event` as skipped.
    public static func skip(_ consumer: ConsumerID, key: String, event: RecordedEvent, error: String, by: String) -> SQLQuery {
        """
        INSERT INTO eventline.skipped_events (kind, name, key, position, event_type, error, skipped_by)
        VALUES (\(consumer.kind.rawValue), \(consumer.name), \(key), \(event.position), \(event.type), \(error), \(by))
        ON CONFLICT DO NOTHING
        """
    }

    /// The keys of one partition with an operator's request waiting, and the request.
    public static func requests(_ consumer: ConsumerID, on conn: PostgresConnection) throws -> [(key: String, request: String)] {
        try conn.query("""
            SELECT key, request FROM eventline.parked_keys
            WHERE kind = \(consumer.kind.rawValue) AND name = \(consumer.name) AND partition = \(consumer.partition) AND request IS NOT NULL
            ORDER BY position
            """).rows.map { (try $0.decode(0), try $0.decode(1)) }
    }

    /// The positions a parked key holds, in log order.
    public static func held(_ consumer: ConsumerID, key: String, on conn: PostgresConnection) throws -> [Int] {
        try conn.query("""
            SELECT position FROM eventline.parked_events WHERE kind = \(consumer.kind.rawValue) AND name = \(consumer.name) AND key = \(key)
            ORDER BY position
            """).rows.map { try $0.decode(0, as: Int.self) }
    }

    /// Releases `key`: its held events were applied (or skipped).
    public static func unpark(_ consumer: ConsumerID, key: String, on conn: PostgresConnection) throws {
        try conn.execute("DELETE FROM eventline.parked_keys WHERE kind = \(consumer.kind.rawValue) AND name = \(consumer.name) AND key = \(key)")
    }

    /// Keeps `key` parked at `event` (a retry failed on it): the events before it were applied.
    /// The request carried out (`handled`) is cleared; one an operator made meanwhile stays.
    public static func repark(
        _ consumer: ConsumerID, key: String, at event: RecordedEvent, error: String, handled: String, on conn: PostgresConnection
    ) throws {
        try conn.execute("""
            DELETE FROM eventline.parked_events
            WHERE kind = \(consumer.kind.rawValue) AND name = \(consumer.name) AND key = \(key) AND position < \(event.position)
            """)
        try conn.execute("""
            UPDATE eventline.parked_keys
            SET position = \(event.position), event_type = \(event.type), error = \(error),
                attempts = CASE WHEN position = \(event.position) THEN attempts + 1 ELSE 1 END,
                request = CASE WHEN request = \(handled) THEN NULL ELSE request END,
                requested_at = CASE WHEN request = \(handled) THEN NULL ELSE requested_at END, updated_at = now()
            WHERE kind = \(consumer.kind.rawValue) AND name = \(consumer.name) AND key = \(key)
            """)
    }

    /// Drops the first held event of `key` (recorded as skipped by an operator).
    public static func skipFirst(_ consumer: ConsumerID, key: String, event: RecordedEvent, on conn: PostgresConnection) throws {
        let error = try conn.query("""
            SELECT error FROM eventline.parked_keys WHERE kind = \(consumer.kind.rawValue) AND name = \(consumer.name) AND key = \(key)
            """).first?.decode(0, as: String.self) ?? ""
        _ = try conn.query(skip(consumer, key: key, event: event, error: error, by: "operator"))
        try conn.execute("""
            DELETE FROM eventline.parked_events
            WHERE kind = \(consumer.kind.rawValue) AND name = \(consumer.name) AND key = \(key) AND position = \(event.position)
            """)
    }
}

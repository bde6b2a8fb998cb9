import EventStore
import Foundation
import PostgresClient

/// A projection's state as the registry, the checkpoint store and PostgreSQL's lock table show it.
public struct ProjectionStatus: Sendable, Equatable {
    public var name: String
    public var version: Int
    public var keyColumn: String
    public var generation: Int
    /// Every partition has applied every event up to here (the smallest partition checkpoint).
    public var checkpoint: Int
    /// The log's head when the status was read; lag is `head - checkpoint`, exactly.
    public var head: Int
    public var lag: Int { max(0, head - checkpoint) }
    /// running, or parked when any partition is parked.
    public var state: String
    /// The process holding the first partition's lease that is held (host:pid), or nil when no
    /// process runs the projection.
    public var owner: String?
    /// The first failing partition's error.
    public var error: String?
    public var errorPosition: Int?
    public var errorHandler: String?
    public var failedAttempts: Int
    /// How the projection is partitioned, and each partition's checkpoint, lag and owner.
    public var partitionBy: String
    public var partitions: [ConsumerCheckpoint]
    /// Keys parked (their events held) in any partition.
    public var parkedKeys: Int
    /// Behind the head with some partition unmoved for `CheckpointStore.stallAfter`.
    public var stalled: Bool { partitions.contains(where: \.stalled) }

    /// The status of a projection from its registry row and its partitions' rows.
    init(
        name: String, version: Int, keyColumn: String, generation: Int, partitionBy: String, head: Int, partitions: [ConsumerCheckpoint],
        parkedKeys: Int
    ) {
        self.parkedKeys = parkedKeys
        self.name = name
        self.version = version
        self.keyColumn = keyColumn
        self.generation = generation
        self.partitionBy = partitionBy
        self.head = head
        self.partitions = partitions
        checkpoint = partitions.map(\.checkpoint).min() ?? 0
        state = partitions.contains { $0.state == "parked" } ? "parked" : "running"
        owner = partitions.first { $0.owner != nil }?.owner
        let failing = partitions.first { $0.state == "parked" } ?? partitions.first { $0.error != nil }
        error = failing?.error
        errorPosition = failing?.errorPosition
        errorHandler = failing?.errorHandler
        failedAttempts = failing?.failedAttempts ?? 0
    }
}

/// The projections registered in a database: status, resume, and checks of definitions
/// against PostgreSQL.
public enum ProjectionCatalog {
    /// Every registered projection (or only `name`), with the log head read in the same snapshot.
    public static func status(on conn: PostgresConnection, name: String? = nil) throws -> [ProjectionStatus] {
        // One snapshot for the registry and the checkpoints.
        try conn.transaction(isolation: "REPEATABLE READ READ ONLY") { conn in
            let checkpoints = Dictionary(grouping: try CheckpointStore.list(.projection, name: name, on: conn), by: \.consumer.name)
            let head = try conn.query("SELECT position FROM eventline.log_head").first!.decode(0, as: Int.self)
            let parked = try CheckpointStore.parkedCounts(.projection, on: conn)
            return try conn.query("""
                SELECT name, version, key_column, generation, partition_by FROM eventline.projections
                WHERE \(name)::text IS NULL OR name = \(name)::text ORDER BY name
                """).rows.map { row in
                let name: String = try row.decode(0)
                return ProjectionStatus(
                    name: name, version: try row.decode(1), keyColumn: try row.decode(2), generation: try row.decode(3),
                    partitionBy: try row.decode(4), head: head, partitions: checkpoints[name] ?? [], parkedKeys: parked[name] ?? 0)
            }
        }
    }

    /// Resumes a parked projection (each parked partition retries the event it stopped at).
    /// Returns false when no projection has that name.
    @discardableResult
    public static func resume(_ name: String, on conn: PostgresConnection) throws -> Bool {
        try CheckpointStore.resume(.projection, name: name, on: conn) > 0
    }

    /// Checks `projection` against PostgreSQL without changing anything: the DDL runs on a
    /// temporary table, the key column must exist and be unique, and every handler must
    /// prepare. Errors name the source and the handler.
    public static func validate(_ projection: any Projection, on conn: PostgresConnection) throws {
        let table = "pg_temp.\(quoteIdentifier("eventline_check_" + projection.name))"
        try conn.execute(unsafeSQL: "BEGIN")
        defer { conn.rollbackQuietly() }
        do {
            try conn.execute(unsafeSQL: try projection.createStatements(table: table))
        } catch let error as PostgresError {
            throw ProjectionError(source: projection.source, "create: \(error.message)")
        }
        let unique = try conn.query("""
            SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = \(table)::regclass AND attname = \(projection.keyColumn) AND NOT attisdropped),
                   EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                           WHERE i.indrelid = \(table)::regclass AND i.indisunique AND i.indnkeyatts = 1 AND a.attname = \(projection.keyColumn))
            """).first!
        guard try unique.decode(0, as: Bool.self) else {
            throw ProjectionError(source: projection.source, "the key column \(projection.keyColumn) is not a column of the table")
        }
        guard try unique.decode(1, as: Bool.self) else {
            throw ProjectionError(source: projection.source, "the key column \(projection.keyColumn) must be unique (PRIMARY KEY or UNIQUE)")
        }
        for type in projection.eventTypes {
            let sample = RecordedEvent(
                position: 1, stream: "x-1", version: 1, id: UUID(), type: type, data: Data("{}".utf8),
                metadata: Data("{}".utf8), recordedAt: Date())
            for (index, statement) in try projection.statements(for: sample, table: table).enumerated() {
                do {
                    _ = try conn.query(SQLQuery(unsafeSQL: "PREPARE eventline_check_\(index) AS \(statement.sql)"))
                } catch let error as PostgresError {
                    throw ProjectionError(source: projection.source, handler: type, error.message)
                }
                try? conn.execute(unsafeSQL: "DEALLOCATE eventline_check_\(index)")
            }
        }
    }
}

import EventStore
import Foundation
import PostgresClient

/// A reactor's state as the registry and PostgreSQL's lock table show it.
public struct ReactorStatus: Sendable, Equatable {
    public var name: String
    public var checkpoint: Int
    /// The log's head when the status was read; lag is `head - checkpoint`, exactly.
    public var head: Int
    public var lag: Int { max(0, head - checkpoint) }
    /// The process holding the lease (host:pid), or nil when no process runs the reactor.
    public var owner: String?
    /// The event the reactor keeps failing on, if any (it is being retried).
    public var error: String?
    public var errorPosition: Int?
    public var failedAttempts: Int
}

/// The reactors registered in a database.
public enum ReactorCatalog {
    /// Whether `name` can name a reactor: `[a-z][a-z0-9_]*`, at most 63 characters.
    public static func isValidName(_ name: String) -> Bool {
        guard let first = name.utf8.first, (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(first), name.utf8.count <= 63 else {
            return false
        }
        return name.utf8.allSatisfy {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: "_")
        }
    }

    /// Every registered reactor (or only `name`), with the log head read in the same snapshot.
    package static func status(on conn: PostgresConnection, name: String? = nil) throws -> [ReactorStatus] {
        // The head and the held locks are read once, not per reactor: the planner has no
        // statistics for these small tables, and a per-row subplan over a cross join was
        // estimated costly enough to be JIT-compiled on every call (~0.2 s).
        let rows = try conn.query("""
            SELECT r.name, r.checkpoint, (SELECT position FROM eventline.log_head),
                   CASE WHEN r.lock_id::oid IN (
                       SELECT l.objid FROM pg_locks l
                       WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                         AND l.classid = eventline.reactor_lock_namespace()::oid
                         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   ) THEN r.owner END,
                   r.error, r.error_position, r.failed_attempts
            FROM eventline.reactors r
            WHERE \(name)::text IS NULL OR r.name = \(name)::text
            ORDER BY r.name
            """)
        return try rows.rows.map { row in
            ReactorStatus(
                name: try row.decode(0), checkpoint: try row.decode(1), head: try row.decode(2), owner: try row.decode(3),
                error: try row.decode(4), errorPosition: try row.decode(5), failedAttempts: try row.decode(6))
        }
    }
}

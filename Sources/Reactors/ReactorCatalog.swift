import EventStore
import Foundation

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
    /// running, or parked (paused by `onError: then: pause`).
    public var state: String = "running"
    /// Streams parked (their events held).
    public var parkedKeys: Int = 0
    /// Behind the head and unmoved for `CheckpointStore.stallAfter`.
    public var stalled: Bool = false
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

    /// The reactors' rows of the checkpoint store (`CheckpointStore.list(.reactor)`) as
    /// statuses, with each one's count of parked streams (`CheckpointStore.parkedCounts`).
    public static func status(_ rows: [ConsumerCheckpoint], parked: [String: Int] = [:]) -> [ReactorStatus] {
        rows.map { row in
            ReactorStatus(
                name: row.consumer.name, checkpoint: row.checkpoint, head: row.head, owner: row.owner, error: row.error,
                errorPosition: row.errorPosition, failedAttempts: row.failedAttempts, state: row.state,
                parkedKeys: parked[row.consumer.name] ?? 0, stalled: row.stalled)
        }
    }
}

import EventStore
import Foundation
import PostgresClient

/// A projection replayed over a few events (one stream's, say) for debugging, with nothing
/// written: a temporary copy of its table, empty at first, takes the events one by one inside a
/// transaction that is always rolled back, and after each event the rows it changed are shown
/// before and after.
public enum ProjectionStepper {
    /// One event applied: the rows it changed (keyed by the projection's key column), or the
    /// error that stopped the replay there.
    public struct Step: Sendable {
        public var event: RecordedEvent
        public var changes: [Change]
        public var error: String?
    }

    public struct Change: Sendable, Equatable {
        public var key: String
        /// The row as JSON before the event, nil when the event made it.
        public var before: String?
        /// The row as JSON after the event, nil when the event deleted it.
        public var after: String?
    }

    /// The temporary table the steps run against (gone with the transaction).
    static let table = "pg_temp.eventline_step"

    /// Applies `events` in order (those the projection has no handler for change nothing),
    /// stopping at the first that fails; rolls everything back.
    public static func run(_ projection: some Projection, events: [RecordedEvent], on conn: PostgresConnection) throws -> [Step] {
        try conn.execute("BEGIN")
        defer { conn.rollbackQuietly() }
        try conn.execute(unsafeSQL: try projection.createStatements(table: table))
        let key = projection.keyColumn
        func rows() throws -> [String: String] {
            var rows: [String: String] = [:]
            for row in try conn.query("SELECT to_jsonb(t) ->> \(key), to_jsonb(t)::text FROM \(unsafeSQL: table) t").rows {
                rows[try row.decode(0, as: String?.self) ?? "null"] = try row.decode(1, as: String.self)
            }
            return rows
        }
        var steps: [Step] = []
        var before = try rows()
        for event in events {
            let statements = try projection.statements(for: event, table: table)
            guard !statements.isEmpty else { continue }
            do {
                try conn.execute("SAVEPOINT step")
                for statement in statements { _ = try conn.query(statement) }
                try conn.execute("RELEASE SAVEPOINT step")
            } catch {
                steps.append(Step(event: event, changes: [], error: "\(error)"))
                return steps
            }
            let after = try rows()
            let changes = Set(before.keys).union(after.keys).sorted().compactMap { key -> Change? in
                before[key] == after[key] ? nil : Change(key: key, before: before[key], after: after[key])
            }
            steps.append(Step(event: event, changes: changes, error: nil))
            before = after
        }
        return steps
    }
}

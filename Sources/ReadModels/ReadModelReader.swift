import Foundation
import PostgresClient

/// What a server needs to know to query a read model: its key, its columns and their types,
/// and its cache generation.
public struct ReadModelInfo: Sendable, Equatable {
    public var name: String
    public var keyColumn: String
    public var generation: Int
    /// Column name → SQL type (`format_type`), in table order; empty while the table does not exist.
    public var columns: [(name: String, type: String)]

    public static func == (lhs: ReadModelInfo, rhs: ReadModelInfo) -> Bool {
        lhs.name == rhs.name && lhs.keyColumn == rhs.keyColumn && lhs.generation == rhs.generation
            && lhs.columns.elementsEqual(rhs.columns, by: { $0.name == $1.name && $0.type == $1.type })
    }

    public func type(of column: String) -> String? {
        columns.first(where: { $0.name == column })?.type
    }
}

/// One row read with the checkpoint of the snapshot it was read in.
public struct ReadModelRow: Sendable {
    /// The projection's checkpoint in the same snapshot (the smallest of its partitions'): the
    /// row reflects every event up to it.
    public var checkpoint: Int
    public var generation: Int
    /// The row as a JSON object (`to_json`), nil when there is none with that key.
    public var json: String?
}

/// A page of rows in key order.
public struct ReadModelPage: Sendable {
    public var checkpoint: Int
    public var generation: Int
    /// Each row's key (as text, for the cursor) and the row as a JSON object.
    public var items: [(key: String, json: String)]
}

/// Queries over read models. Every query reads the rows and the projection's checkpoint in one
/// statement, hence one snapshot: the checkpoint says exactly which events the rows reflect.
/// Values are always bound (cast to the column's own type, so indexes are used); identifiers
/// come from the catalog and are quoted.
public enum ReadModelReader {
    /// Every registered projection with its table's columns.
    public static func catalog(on conn: PostgresConnection) throws -> [String: ReadModelInfo] {
        let rows = try conn.query("""
            SELECT p.name, p.key_column, p.generation, a.attname::text, format_type(a.atttypid, a.atttypmod)
            FROM eventline.projections p
            LEFT JOIN pg_attribute a
              ON a.attrelid = to_regclass(\(ReadModelNames.schema) || '.' || quote_ident(p.name)) AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY p.name, a.attnum
            """)
        var catalog: [String: ReadModelInfo] = [:]
        for row in rows.rows {
            let name: String = try row.decode(0)
            var info = try catalog[name] ?? ReadModelInfo(name: name, keyColumn: row.decode(1), generation: row.decode(2), columns: [])
            if let column = try row.decode(3, as: String?.self), let type = try row.decode(4, as: String?.self) {
                info.columns.append((column, type))
            }
            catalog[name] = info
        }
        return catalog
    }

    /// The row whose key is `key` (text, cast to the key column's type); nil when the projection
    /// is not registered.
    public static func row(_ info: ReadModelInfo, key: String, on conn: PostgresConnection) throws -> ReadModelRow? {
        let keyType = info.type(of: info.keyColumn) ?? "text"
        let table = ReadModelNames.qualified(info.name)
        let result = try conn.query("""
            SELECT eventline.projection_checkpoint(p.name), p.generation,
                   (SELECT to_json(t)::text FROM \(unsafeSQL: table) t WHERE t.\(identifier: info.keyColumn) = \(key)::text::\(unsafeSQL: keyType))
            FROM eventline.projections p WHERE p.name = \(info.name)
            """)
        guard let row = result.first else { return nil }
        return ReadModelRow(checkpoint: try row.decode(0), generation: try row.decode(1), json: try row.decode(2))
    }

    /// Up to `limit` rows matching every `filters` equality, after the key `after`, in key
    /// order; nil when the projection is not registered.
    public static func page(
        _ info: ReadModelInfo, filters: [(column: String, value: String)], after: String?, limit: Int, on conn: PostgresConnection
    ) throws -> ReadModelPage? {
        let keyType = info.type(of: info.keyColumn) ?? "text"
        let key = quoteIdentifier(info.keyColumn)
        var query = SQLQuery(unsafeSQL: """
            SELECT eventline.projection_checkpoint(p.name), p.generation, q.key, q.row
            FROM eventline.projections p
            LEFT JOIN LATERAL (
                SELECT t.\(key)::text AS key, to_json(t)::text AS row FROM \(ReadModelNames.qualified(info.name)) t WHERE true
            """)
        for filter in filters {
            let type = info.type(of: filter.column) ?? "text"
            let value = query.bind(filter.value)
            query.append(unsafeSQL: " AND t.\(quoteIdentifier(filter.column)) = \(value)::text::\(type)")
        }
        if let after {
            let cursor = query.bind(after)
            query.append(unsafeSQL: " AND t.\(key) > \(cursor)::text::\(keyType)")
        }
        let limitBind = query.bind(limit)
        let nameBind = query.bind(info.name)
        query.append(unsafeSQL: " ORDER BY t.\(key) LIMIT \(limitBind)) q ON true WHERE p.name = \(nameBind)")
        let result = try conn.query(query)
        guard let first = result.first else { return nil }
        var items: [(key: String, json: String)] = []
        for row in result.rows {
            if let key = try row.decode(2, as: String?.self), let json = try row.decode(3, as: String?.self) {
                items.append((key, json))
            }
        }
        return ReadModelPage(checkpoint: try first.decode(0), generation: try first.decode(1), items: items)
    }
}

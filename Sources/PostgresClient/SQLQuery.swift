import Foundation

/// One bound parameter as libpq sends it: a type OID, a wire format and the bytes (nil is SQL NULL).
public struct PostgresBind: Sendable, Hashable {
    /// The parameter's type OID; 0 lets the server infer it from the statement.
    public var oid: UInt32
    /// 0 for text, 1 for binary.
    public var format: Int32
    /// The value's bytes, or nil for NULL.
    public var bytes: [UInt8]?

    public init(oid: UInt32, format: Int32, bytes: [UInt8]?) {
        self.oid = oid
        self.format = format
        self.bytes = bytes
    }

    /// SQL NULL with an inferred type.
    public static let null = PostgresBind(oid: 0, format: 0, bytes: nil)

    static func text(_ value: String, oid: UInt32 = 0) -> PostgresBind {
        PostgresBind(oid: oid, format: 0, bytes: Array(value.utf8))
    }
}

/// A value that can be sent as a bound query parameter.
public protocol PostgresEncodable: Sendable {
    /// The bind for this value.
    var postgresBind: PostgresBind { get }
}

/// An SQL statement whose interpolated values become `$n` binds, as postgres-nio's `PostgresQuery`.
///
/// ```swift
/// let rows = try conn.query("SELECT * FROM eventline.events WHERE stream = \(name) LIMIT \(limit)")
/// ```
/// Raw SQL text enters only through `init(unsafeSQL:)` or `\(unsafeSQL:)`, and identifiers only
/// through `\(identifier:)`, so a reviewer can grep for `unsafeSQL` to find every risk.
public struct SQLQuery: Sendable, Hashable, ExpressibleByStringInterpolation, CustomStringConvertible {
    /// The statement text with `$1…$n` placeholders.
    public private(set) var sql: String
    /// The bound values, in placeholder order.
    public private(set) var binds: [PostgresBind]
    /// Whether a connection keeps this statement prepared and reuses its plan (for statements
    /// whose text never changes and that run often).
    public private(set) var isPrepared = false

    /// Throws `.invalidParameter` for binds libpq cannot send: more than 65535, one of 2 GiB or
    /// more, or text with a NUL character (PostgreSQL's text cannot hold one). Every statement is
    /// checked before it is sent; a caller that must know which of several statements is at
    /// fault (a projection's event, say) checks each one itself first.
    public func checkSendable() throws {
        guard binds.count <= 65535 else {
            throw PostgresError(
                code: .invalidParameter, message: "a statement takes at most 65535 parameters, got \(binds.count)", query: sql)
        }
        for bind in binds {
            guard let bytes = bind.bytes else { continue }
            guard bytes.count < Int(Int32.max) else {
                throw PostgresError(code: .invalidParameter, message: "a parameter is larger than 2 GiB", query: sql)
            }
            if bind.format == 0 && bytes.contains(0) {
                throw PostgresError(code: .invalidParameter, message: "a text parameter contains a NUL character", query: sql)
            }
        }
    }

    /// This statement, marked to be prepared once per connection and reused.
    public func prepared() -> SQLQuery {
        var copy = self
        copy.isPrepared = true
        return copy
    }

    /// A statement from text that is not a compile-time literal. The caller vouches that it holds
    /// no untrusted input.
    public init(unsafeSQL sql: String, binds: [PostgresBind] = []) {
        self.sql = sql
        self.binds = binds
    }

    public init(stringLiteral value: String) {
        self.sql = value
        self.binds = []
    }

    public init(stringInterpolation: StringInterpolation) {
        self.sql = stringInterpolation.sql
        self.binds = stringInterpolation.binds
    }

    public var description: String { sql }

    /// Builds an SQL string with binds from literals and interpolated values.
    public struct StringInterpolation: StringInterpolationProtocol {
        var sql: String
        var binds: [PostgresBind]

        public init(literalCapacity: Int, interpolationCount: Int) {
            sql = ""
            sql.reserveCapacity(literalCapacity + interpolationCount * 3)
            binds = []
            binds.reserveCapacity(interpolationCount)
        }

        public mutating func appendLiteral(_ literal: String) {
            sql += literal
        }

        /// Binds a value as the next `$n` parameter.
        public mutating func appendInterpolation(_ value: some PostgresEncodable) {
            binds.append(value.postgresBind)
            sql += "$\(binds.count)"
        }

        /// Binds an optional value; nil becomes NULL.
        public mutating func appendInterpolation(_ value: (some PostgresEncodable)?) {
            binds.append(value?.postgresBind ?? .null)
            sql += "$\(binds.count)"
        }

        /// Appends a quoted SQL identifier (table, column or schema name).
        public mutating func appendInterpolation(identifier: String) {
            sql += quoteIdentifier(identifier)
        }

        /// Appends raw SQL text; the caller vouches it holds no untrusted input.
        public mutating func appendInterpolation(unsafeSQL text: String) {
            sql += text
        }
    }

    /// Appends a bound value and returns its `$n` placeholder, for statements built in a loop
    /// (multi-row VALUES lists).
    public mutating func bind(_ value: (some PostgresEncodable)?) -> String {
        binds.append(value?.postgresBind ?? .null)
        return "$\(binds.count)"
    }

    /// Appends raw SQL text; the caller vouches it holds no untrusted input.
    public mutating func append(unsafeSQL text: String) {
        sql += text
    }
}

/// Quotes an SQL identifier: wraps it in double quotes and doubles any inside.
public func quoteIdentifier(_ name: String) -> String {
    "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
}

// MARK: - Encodable values

extension String: PostgresEncodable {
    public var postgresBind: PostgresBind { .text(self) }
}

extension Substring: PostgresEncodable {
    public var postgresBind: PostgresBind { .text(String(self)) }
}

extension Int: PostgresEncodable {
    public var postgresBind: PostgresBind { .text(String(self), oid: PostgresOID.int8) }
}

extension Int64: PostgresEncodable {
    public var postgresBind: PostgresBind { .text(String(self), oid: PostgresOID.int8) }
}

extension Int32: PostgresEncodable {
    public var postgresBind: PostgresBind { .text(String(self), oid: PostgresOID.int4) }
}

extension Int16: PostgresEncodable {
    public var postgresBind: PostgresBind { .text(String(self), oid: PostgresOID.int2) }
}

extension Bool: PostgresEncodable {
    public var postgresBind: PostgresBind { .text(self ? "t" : "f", oid: PostgresOID.bool) }
}

extension Double: PostgresEncodable {
    public var postgresBind: PostgresBind { .text(String(self), oid: PostgresOID.float8) }
}

extension UUID: PostgresEncodable {
    public var postgresBind: PostgresBind { .text(uuidString.lowercased(), oid: PostgresOID.uuid) }
}

extension Date: PostgresEncodable {
    public var postgresBind: PostgresBind {
        // Microseconds since the Unix epoch, sent as an exact numeric expression of the server's own type.
        let micros = (timeIntervalSince1970 * 1_000_000).rounded()
        // Beyond PostgreSQL's range (or NaN) becomes ±infinity, PostgreSQL's own extremes, never a trap.
        let value = Int64(exactly: micros).map { $0 - 946_684_800_000_000 } ?? (micros < 0 ? Int64.min : Int64.max)
        return PostgresBind(oid: PostgresOID.timestamptz, format: 1, bytes: withUnsafeBytes(of: value.bigEndian) { Array($0) })
    }
}

extension Data: PostgresEncodable {
    public var postgresBind: PostgresBind { PostgresBind(oid: PostgresOID.bytea, format: 1, bytes: Array(self)) }
}

extension Array: PostgresEncodable where Element: PostgresArrayElement {
    public var postgresBind: PostgresBind {
        var text = "{"
        for (index, element) in enumerated() {
            if index > 0 { text += "," }
            text += "\""
            for scalar in element.postgresArrayText.unicodeScalars {
                if scalar == "\"" || scalar == "\\" { text += "\\" }
                text.unicodeScalars.append(scalar)
            }
            text += "\""
        }
        text += "}"
        return .text(text, oid: Element.postgresArrayOID)
    }
}

/// A value that can be an element of a bound array parameter (sent in text form).
public protocol PostgresArrayElement: Sendable {
    static var postgresArrayOID: UInt32 { get }
    var postgresArrayText: String { get }
}

extension String: PostgresArrayElement {
    public static var postgresArrayOID: UInt32 { PostgresOID.textArray }
    public var postgresArrayText: String { self }
}

extension Int: PostgresArrayElement {
    public static var postgresArrayOID: UInt32 { PostgresOID.int8Array }
    public var postgresArrayText: String { String(self) }
}

extension Int64: PostgresArrayElement {
    public static var postgresArrayOID: UInt32 { PostgresOID.int8Array }
    public var postgresArrayText: String { String(self) }
}

extension UUID: PostgresArrayElement {
    public static var postgresArrayOID: UInt32 { PostgresOID.uuidArray }
    public var postgresArrayText: String { uuidString.lowercased() }
}

/// JSON text bound as `jsonb`.
public struct PostgresJSONB: PostgresEncodable, Hashable {
    /// The UTF-8 JSON document.
    public var json: [UInt8]
    public init(_ json: [UInt8]) { self.json = json }
    public init(_ json: Data) { self.json = Array(json) }
    public var postgresBind: PostgresBind {
        // Binary jsonb is a version byte (1) followed by the JSON text; binary keeps NUL-free checks simple.
        PostgresBind(oid: PostgresOID.jsonb, format: 1, bytes: [1] + json)
    }
}

/// Type OIDs from pg_type that this layer sends or decodes.
public enum PostgresOID {
    public static let bool: UInt32 = 16
    public static let bytea: UInt32 = 17
    public static let char: UInt32 = 18
    public static let name: UInt32 = 19
    public static let int8: UInt32 = 20
    public static let int2: UInt32 = 21
    public static let int4: UInt32 = 23
    public static let text: UInt32 = 25
    public static let oid: UInt32 = 26
    public static let json: UInt32 = 114
    public static let float4: UInt32 = 700
    public static let float8: UInt32 = 701
    public static let unknown: UInt32 = 705
    public static let bpchar: UInt32 = 1042
    public static let varchar: UInt32 = 1043
    public static let timestamp: UInt32 = 1114
    public static let timestamptz: UInt32 = 1184
    public static let numeric: UInt32 = 1700
    public static let uuid: UInt32 = 2950
    public static let jsonb: UInt32 = 3802
    public static let textArray: UInt32 = 1009
    public static let int8Array: UInt32 = 1016
    public static let uuidArray: UInt32 = 2951
}

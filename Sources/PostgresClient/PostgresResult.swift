import CLibPQ
import Foundation

/// The rows of one statement, in binary format. Immutable once made: libpq's `PGresult` is not
/// touched after creation, so it may be read from any thread; it is freed when the last reference goes.
public final class PostgresResult: @unchecked Sendable {
    let handle: OpaquePointer?
    /// The number of rows.
    public let count: Int
    /// The number of columns.
    public let columnCount: Int
    /// The column names, in order.
    public let columns: [String]
    /// The rows affected, from the command tag (INSERT/UPDATE/DELETE), or 0.
    public let affectedRows: Int
    private let columnIndex: [String: Int]
    let sql: String

    init(handle: OpaquePointer?, sql: String) {
        self.handle = handle
        self.sql = sql
        guard let handle else {
            count = 0; columnCount = 0; columns = []; affectedRows = 0; columnIndex = [:]
            return
        }
        count = Int(PQntuples(handle))
        columnCount = Int(PQnfields(handle))
        var names: [String] = []
        var index: [String: Int] = [:]
        for column in 0..<columnCount {
            let name = String(cString: PQfname(handle, Int32(column)))
            names.append(name)
            if index[name] == nil { index[name] = column }
        }
        columns = names
        columnIndex = index
        affectedRows = Int(String(cString: PQcmdTuples(handle))) ?? 0
    }

    deinit {
        if let handle { PQclear(handle) }
    }

    /// The row at `index`.
    public subscript(index: Int) -> PostgresRow {
        precondition(index >= 0 && index < count, "row index out of range")
        return PostgresRow(result: self, row: Int32(index))
    }

    /// The rows in order.
    public var rows: [PostgresRow] { (0..<count).map { self[$0] } }

    /// The first row, if any.
    public var first: PostgresRow? { count > 0 ? self[0] : nil }

    func column(named name: String) throws -> Int {
        guard let column = columnIndex[name] else {
            throw PostgresError(code: .decoding, message: "no column named \(name) in the result", query: sql)
        }
        return column
    }
}

/// One row of a `PostgresResult` with typed access by position or by name.
public struct PostgresRow: Sendable {
    let result: PostgresResult
    let row: Int32

    /// Decodes the column at `index` as `T` (an Optional type accepts NULL).
    public func decode<T: PostgresDecodable>(_ index: Int, as type: T.Type = T.self) throws -> T {
        guard index >= 0 && index < result.columnCount, let handle = result.handle else {
            throw PostgresError(code: .decoding, message: "column \(index) out of range", query: result.sql)
        }
        let column = Int32(index)
        let oid = UInt32(PQftype(handle, column))
        if PQgetisnull(handle, row, column) == 1 {
            guard let value = T.postgresNull else {
                throw PostgresError(
                    code: .decoding, message: "column \(result.columns[index]) is NULL, expected \(T.self)",
                    query: result.sql)
            }
            return value
        }
        let length = Int(PQgetlength(handle, row, column))
        let pointer = PQgetvalue(handle, row, column)
        let buffer = UnsafeRawBufferPointer(start: pointer.map { UnsafeRawPointer($0) }, count: length)
        do {
            return try T.decode(postgres: buffer, oid: oid)
        } catch let error as PostgresError {
            var error = error
            error.message = "column \(result.columns[index]): \(error.message)"
            error.query = result.sql
            throw error
        }
    }

    /// Decodes the column called `name` as `T`.
    public func decode<T: PostgresDecodable>(_ name: String, as type: T.Type = T.self) throws -> T {
        try decode(result.column(named: name), as: type)
    }

    /// Whether the column at `index` is NULL.
    public func isNull(_ index: Int) -> Bool {
        guard let handle = result.handle else { return true }
        return PQgetisnull(handle, row, Int32(index)) == 1
    }
}

/// A Swift type that a binary-format column can be decoded into.
public protocol PostgresDecodable {
    /// Decodes from the column's binary wire bytes for the type `oid`.
    static func decode(postgres bytes: UnsafeRawBufferPointer, oid: UInt32) throws -> Self
    /// The value for SQL NULL, or nil if NULL is an error for this type.
    static var postgresNull: Self? { get }
}

extension PostgresDecodable {
    public static var postgresNull: Self? { nil }
}

func decodingError(_ type: Any.Type, oid: UInt32) -> PostgresError {
    PostgresError(code: .decoding, message: "cannot decode type oid \(oid) as \(type); cast it in SQL")
}

private func readBigEndian<T: FixedWidthInteger>(_ bytes: UnsafeRawBufferPointer, as: T.Type) throws -> T {
    guard bytes.count == MemoryLayout<T>.size else {
        throw PostgresError(code: .decoding, message: "expected \(MemoryLayout<T>.size) bytes, got \(bytes.count)")
    }
    var value: T = 0
    withUnsafeMutableBytes(of: &value) { $0.copyMemory(from: bytes) }
    return T(bigEndian: value)
}

extension Optional: PostgresDecodable where Wrapped: PostgresDecodable {
    public static func decode(postgres bytes: UnsafeRawBufferPointer, oid: UInt32) throws -> Self {
        try Wrapped.decode(postgres: bytes, oid: oid)
    }
    public static var postgresNull: Self? { .some(.none) }
}

extension Int: PostgresDecodable {
    public static func decode(postgres bytes: UnsafeRawBufferPointer, oid: UInt32) throws -> Int {
        switch oid {
        case PostgresOID.int8: return Int(try readBigEndian(bytes, as: Int64.self))
        case PostgresOID.int4: return Int(try readBigEndian(bytes, as: Int32.self))
        case PostgresOID.int2: return Int(try readBigEndian(bytes, as: Int16.self))
        case PostgresOID.oid: return Int(try readBigEndian(bytes, as: UInt32.self))
        default: throw decodingError(Int.self, oid: oid)
        }
    }
}

extension Int64: PostgresDecodable {
    public static func decode(postgres bytes: UnsafeRawBufferPointer, oid: UInt32) throws -> Int64 {
        Int64(try Int.decode(postgres: bytes, oid: oid))
    }
}

extension Int32: PostgresDecodable {
    public static func decode(postgres bytes: UnsafeRawBufferPointer, oid: UInt32) throws -> Int32 {
        let value = try Int.decode(postgres: bytes, oid: oid)
        guard let narrowed = Int32(exactly: value) else {
            throw PostgresError(code: .decoding, message: "\(value) does not fit in Int32")
        }
        return narrowed
    }
}

extension Bool: PostgresDecodable {
    public static func decode(postgres bytes: UnsafeRawBufferPointer, oid: UInt32) throws -> Bool {
        guard oid == PostgresOID.bool, bytes.count == 1 else { throw decodingError(Bool.self, oid: oid) }
        return bytes[0] != 0
    }
}

extension Double: PostgresDecodable {
    public static func decode(postgres bytes: UnsafeRawBufferPointer, oid: UInt32) throws -> Double {
        switch oid {
        case PostgresOID.float8: return Double(bitPattern: try readBigEndian(bytes, as: UInt64.self))
        case PostgresOID.float4: return Double(Float(bitPattern: try readBigEndian(bytes, as: UInt32.self)))
        case PostgresOID.int8, PostgresOID.int4, PostgresOID.int2:
            return Double(try Int.decode(postgres: bytes, oid: oid))
        default: throw decodingError(Double.self, oid: oid)
        }
    }
}

extension String: PostgresDecodable {
    public static func decode(postgres bytes: UnsafeRawBufferPointer, oid: UInt32) throws -> String {
        switch oid {
        case PostgresOID.text, PostgresOID.varchar, PostgresOID.bpchar, PostgresOID.name, PostgresOID.char,
            PostgresOID.json, PostgresOID.unknown:
            return String(decoding: bytes, as: UTF8.self)
        case PostgresOID.jsonb:
            guard bytes.count >= 1, bytes[0] == 1 else {
                throw PostgresError(code: .decoding, message: "unknown jsonb version")
            }
            return String(decoding: UnsafeRawBufferPointer(rebasing: bytes.dropFirst()), as: UTF8.self)
        case PostgresOID.uuid:
            return try UUID.decode(postgres: bytes, oid: oid).uuidString.lowercased()
        default:
            throw decodingError(String.self, oid: oid)
        }
    }
}

extension UUID: PostgresDecodable {
    public static func decode(postgres bytes: UnsafeRawBufferPointer, oid: UInt32) throws -> UUID {
        guard oid == PostgresOID.uuid, bytes.count == 16 else { throw decodingError(UUID.self, oid: oid) }
        var uuid: uuid_t = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &uuid) { $0.copyMemory(from: bytes) }
        return UUID(uuid: uuid)
    }
}

extension Date: PostgresDecodable {
    public static func decode(postgres bytes: UnsafeRawBufferPointer, oid: UInt32) throws -> Date {
        guard oid == PostgresOID.timestamptz || oid == PostgresOID.timestamp else {
            throw decodingError(Date.self, oid: oid)
        }
        let micros = try readBigEndian(bytes, as: Int64.self)
        // 946684800 s separate the Unix epoch from PostgreSQL's (2000-01-01).
        return Date(timeIntervalSince1970: Double(micros) / 1_000_000 + 946_684_800)
    }
}

extension Data: PostgresDecodable {
    /// bytea as its bytes; json and jsonb as their UTF-8 text.
    public static func decode(postgres bytes: UnsafeRawBufferPointer, oid: UInt32) throws -> Data {
        if oid == PostgresOID.jsonb {
            guard bytes.count >= 1, bytes[0] == 1 else {
                throw PostgresError(code: .decoding, message: "unknown jsonb version")
            }
            return Data(bytes.dropFirst())
        }
        return Data(bytes)
    }
}

extension Array: PostgresDecodable where Element == UInt8 {
    public static func decode(postgres bytes: UnsafeRawBufferPointer, oid: UInt32) throws -> [UInt8] {
        Array(try Data.decode(postgres: bytes, oid: oid))
    }
}

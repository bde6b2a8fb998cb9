import Foundation

/// A one-dimensional array parameter in PostgreSQL's binary format, so that a batch of rows
/// can be sent as a few arrays to one prepared statement (`INSERT … SELECT FROM unnest(…)`)
/// instead of a statement whose text, and so whose plan, changes with the number of rows.
public struct PostgresBinaryArray: PostgresEncodable {
    private let bind: PostgresBind

    public var postgresBind: PostgresBind { bind }

    private init(arrayOID: UInt32, elementOID: UInt32, elements: [[UInt8]?]) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(20 + elements.reduce(0) { $0 + 4 + ($1?.count ?? 0) })
        func append(_ value: Int32) { withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) } }
        append(1)  // dimensions
        append(elements.contains { $0 == nil } ? 1 : 0)  // has nulls
        append(Int32(bitPattern: elementOID))
        append(Int32(clamping: elements.count))  // length of the dimension (the server refuses a clamped one)
        append(1)  // lower bound
        for element in elements {
            guard let element else {
                append(-1)
                continue
            }
            append(Int32(clamping: element.count))
            bytes.append(contentsOf: element)
        }
        bind = PostgresBind(oid: arrayOID, format: 1, bytes: bytes)
    }

    private static func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.bigEndian) { Array($0) }
    }

    /// `bigint[]`.
    public init(int8 values: [Int]) {
        self.init(arrayOID: 1016, elementOID: PostgresOID.int8, elements: values.map { Self.bigEndian(Int64($0)) })
    }

    /// `smallint[]`.
    public init(int2 values: [Int16]) {
        self.init(arrayOID: 1005, elementOID: PostgresOID.int2, elements: values.map { Self.bigEndian($0) })
    }

    /// `text[]`.
    public init(text values: [String]) {
        self.init(arrayOID: PostgresOID.textArray, elementOID: PostgresOID.text, elements: values.map { Array($0.utf8) })
    }

    /// `text[]` with NULL elements.
    public init(optionalText values: [String?]) {
        self.init(arrayOID: PostgresOID.textArray, elementOID: PostgresOID.text, elements: values.map { $0.map { Array($0.utf8) } })
    }

    /// `uuid[]`.
    public init(uuid values: [UUID]) {
        self.init(arrayOID: PostgresOID.uuidArray, elementOID: PostgresOID.uuid, elements: values.map { value in
            withUnsafeBytes(of: value.uuid) { Array($0) }
        })
    }

    /// `bytea[]`.
    public init(bytea values: [Data]) {
        self.init(arrayOID: 1001, elementOID: PostgresOID.bytea, elements: values.map { Array($0) })
    }

    /// `jsonb[]` from UTF-8 JSON documents.
    public init(jsonb values: [Data]) {
        self.init(arrayOID: 3807, elementOID: PostgresOID.jsonb, elements: values.map { [1] + Array($0) })
    }
}

/// A one-dimensional `text[]` column decoded from the binary format (NULL elements are refused;
/// a NULL array decodes as nil through `Optional`).
public struct PostgresTextArray: PostgresDecodable, Sendable {
    public var values: [String]

    public static func decode(postgres bytes: UnsafeRawBufferPointer, oid: UInt32) throws -> PostgresTextArray {
        guard oid == PostgresOID.textArray || oid == 1015 else { throw decodingError(PostgresTextArray.self, oid: oid) }
        var offset = 0
        func int32() throws -> Int32 {
            guard offset + 4 <= bytes.count else { throw PostgresError(code: .decoding, message: "a truncated text[]") }
            var value: Int32 = 0
            withUnsafeMutableBytes(of: &value) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + 4])) }
            offset += 4
            return Int32(bigEndian: value)
        }
        let dimensions = try int32()
        _ = try int32()  // has nulls
        _ = try int32()  // element type
        guard dimensions <= 1 else { throw PostgresError(code: .decoding, message: "a text[] of \(dimensions) dimensions") }
        guard dimensions == 1 else { return PostgresTextArray(values: []) }
        let count = try int32()
        _ = try int32()  // lower bound
        var values: [String] = []
        values.reserveCapacity(Int(max(0, count)))
        for _ in 0..<max(0, count) {
            let length = try int32()
            guard length >= 0 else { throw PostgresError(code: .decoding, message: "a NULL element in a text[]") }
            guard offset + Int(length) <= bytes.count else { throw PostgresError(code: .decoding, message: "a truncated text[]") }
            values.append(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + Int(length)]), as: UTF8.self))
            offset += Int(length)
        }
        return PostgresTextArray(values: values)
    }
}

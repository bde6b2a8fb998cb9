import Foundation

/// A value found at a dotted path in an event's JSON, as it is bound to a handler's parameter.
/// Numbers keep their JSON text, so a 64-bit amount reaches PostgreSQL exactly.
package enum JSONScalar: Equatable {
    case string(String)
    /// The number's JSON text, unchanged.
    case number(String)
    case bool(Bool)
    case null
    /// An object or array: its JSON text, unchanged (binds as json/jsonb).
    case json(String)

    /// The text PostgreSQL receives for this value; nil is SQL NULL.
    package var bindText: String? {
        switch self {
        case .string(let value): value
        case .number(let text): text
        case .bool(let value): value ? "true" : "false"
        case .null: nil
        case .json(let text): text
        }
    }
}

/// Finds the value at a path (`["owner"]`, `["items", "0", "sku"]`) in JSON text without
/// building the whole document: a scanner that skips what it does not need.
package struct JSONPathScanner {
    private let bytes: [UInt8]
    private var index = 0
    private var depth = 0
    private static let maxDepth = 512

    /// The value at `path` in `json`, or nil when the path is absent or the text is not JSON.
    package static func value(at path: [String], in json: Data) -> JSONScalar? {
        var scanner = JSONPathScanner(bytes: Array(json))
        guard let span = try? scanner.locate(path[...]) else { return nil }
        scanner.index = span.lowerBound
        return try? scanner.scalar()
    }

    /// Where the value at `path` is in `bytes` (its first to its last byte), or nil when the
    /// path is absent or the text is not JSON: for changing one value without re-encoding the
    /// rest of the document.
    package static func span(at path: [String], in bytes: [UInt8]) -> Range<Int>? {
        var scanner = JSONPathScanner(bytes: bytes)
        return try? scanner.locate(path[...])
    }

    private init(bytes: [UInt8]) { self.bytes = bytes }

    private struct Malformed: Error {}

    /// Walks to the value at `path` and returns its bytes' range.
    private mutating func locate(_ path: ArraySlice<String>) throws -> Range<Int>? {
        skipSpace()
        guard let segment = path.first else {
            let start = index
            try skipValue()
            return start..<index
        }
        guard index < bytes.count else { throw Malformed() }
        switch bytes[index] {
        case UInt8(ascii: "{"):
            index += 1
            skipSpace()
            if peek(UInt8(ascii: "}")) { return nil }
            while true {
                skipSpace()
                let key = try string()
                skipSpace()
                try expect(UInt8(ascii: ":"))
                if key == segment { return try locate(path.dropFirst()) }
                try skipValue()
                skipSpace()
                if peek(UInt8(ascii: "}")) { return nil }
                try expect(UInt8(ascii: ","))
            }
        case UInt8(ascii: "["):
            guard let wanted = Int(segment), wanted >= 0 else { return nil }
            index += 1
            skipSpace()
            if peek(UInt8(ascii: "]")) { return nil }
            var position = 0
            while true {
                if position == wanted { return try locate(path.dropFirst()) }
                try skipValue()
                skipSpace()
                if peek(UInt8(ascii: "]")) { return nil }
                try expect(UInt8(ascii: ","))
                position += 1
            }
        default:
            return nil  // a scalar has no members
        }
    }

    /// The value at the cursor as a bindable scalar.
    private mutating func scalar() throws -> JSONScalar {
        guard index < bytes.count else { throw Malformed() }
        let start = index
        switch bytes[index] {
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            try skipValue()
            return .json(String(decoding: bytes[start..<index], as: UTF8.self))
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        default:
            try skipNumber()
            return .number(String(decoding: bytes[start..<index], as: UTF8.self))
        }
    }

    private mutating func skipValue() throws {
        skipSpace()
        guard index < bytes.count else { throw Malformed() }
        switch bytes[index] {
        case UInt8(ascii: "\""): _ = try string()
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            let close = bytes[index] == UInt8(ascii: "{") ? UInt8(ascii: "}") : UInt8(ascii: "]")
            let keyed = close == UInt8(ascii: "}")
            depth += 1
            guard depth <= Self.maxDepth else { throw Malformed() }
            defer { depth -= 1 }
            index += 1
            skipSpace()
            if peek(close) { return }
            while true {
                skipSpace()
                if keyed {
                    _ = try string()
                    skipSpace()
                    try expect(UInt8(ascii: ":"))
                }
                try skipValue()
                skipSpace()
                if peek(close) { return }
                try expect(UInt8(ascii: ","))
            }
        case UInt8(ascii: "t"): try literal("true")
        case UInt8(ascii: "f"): try literal("false")
        case UInt8(ascii: "n"): try literal("null")
        default: try skipNumber()
        }
    }

    private mutating func skipNumber() throws {
        let start = index
        while index < bytes.count, Self.isNumberByte(bytes[index]) { index += 1 }
        guard index > start else { throw Malformed() }
    }

    private static func isNumberByte(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "+")
            || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "e") || byte == UInt8(ascii: "E")
    }

    private mutating func literal(_ word: StaticString) throws {
        let count = word.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw Malformed() }
        let matches = word.withUTF8Buffer { expected in
            (0..<count).allSatisfy { bytes[index + $0] == expected[$0] }
        }
        guard matches else { throw Malformed() }
        index += count
    }

    /// A JSON string at the cursor, unescaped.
    private mutating func string() throws -> String {
        try expect(UInt8(ascii: "\""))
        var out: [UInt8] = []
        while index < bytes.count {
            let byte = bytes[index]
            index += 1
            if byte == UInt8(ascii: "\"") { return String(decoding: out, as: UTF8.self) }
            guard byte == UInt8(ascii: "\\") else {
                out.append(byte)
                continue
            }
            guard index < bytes.count else { throw Malformed() }
            let escape = bytes[index]
            index += 1
            switch escape {
            case UInt8(ascii: "\""): out.append(UInt8(ascii: "\""))
            case UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\"))
            case UInt8(ascii: "/"): out.append(UInt8(ascii: "/"))
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800..<0xDC00).contains(scalar), index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"),
                    bytes[index + 1] == UInt8(ascii: "u")
                {
                    index += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else { throw Malformed() }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let unicode = Unicode.Scalar(scalar) else { throw Malformed() }
                out.append(contentsOf: Array(String(Character(unicode)).utf8))
            default: throw Malformed()
            }
        }
        throw Malformed()
    }

    private mutating func hex4() throws -> UInt32 {
        guard index + 4 <= bytes.count else { throw Malformed() }
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard let digit = Self.hexDigit(bytes[index]) else { throw Malformed() }
            value = value << 4 | digit
            index += 1
        }
        return value
    }

    private static func hexDigit(_ byte: UInt8) -> UInt32? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt32(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt32(byte - UInt8(ascii: "A") + 10)
        default: nil
        }
    }

    private mutating func skipSpace() {
        while index < bytes.count, bytes[index] == 0x20 || bytes[index] == 0x0A || bytes[index] == 0x0D || bytes[index] == 0x09 {
            index += 1
        }
    }

    private mutating func peek(_ byte: UInt8) -> Bool {
        if index < bytes.count, bytes[index] == byte {
            index += 1
            return true
        }
        return false
    }

    private mutating func expect(_ byte: UInt8) throws {
        guard peek(byte) else { throw Malformed() }
    }
}

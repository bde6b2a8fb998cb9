import Foundation

/// A strict RFC 8259 syntax check over UTF-8 bytes that allocates nothing. Event data is
/// stored as the caller's bytes, so it only has to be valid JSON, not parsed; and a bounded
/// nesting depth keeps hostile input (`[[[[…`) from exhausting the stack.
public enum JSONValidator {
    public static let maxDepth = 512

    /// Whether `data` is one JSON value (any kind, surrounded by optional whitespace).
    public static func isValid(_ data: Data) -> Bool {
        data.withUnsafeBytes { bytes in
            var parser = Parser(bytes: bytes)
            return parser.document(requireObject: false)
        }
    }

    /// Whether `json` (valid JSON) holds U+0000 in a string or a member name: whether it spells
    /// the escape `\u0000` outside another escape (a raw NUL byte is not valid JSON).
    /// PostgreSQL's text and jsonb cannot hold the character.
    public static func containsNUL(_ json: Data) -> Bool {
        json.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) -> Bool in
            var index = 0
            while index < bytes.count {
                guard bytes[index] == UInt8(ascii: "\\") else {
                    index += 1
                    continue
                }
                if index + 5 < bytes.count, bytes[index + 1] == UInt8(ascii: "u"),
                    bytes[index + 2] == UInt8(ascii: "0"), bytes[index + 3] == UInt8(ascii: "0"),
                    bytes[index + 4] == UInt8(ascii: "0"), bytes[index + 5] == UInt8(ascii: "0")
                {
                    return true
                }
                index += 2  // past the escaped character: in `\\u0000` the second backslash is text
            }
            return false
        }
    }

    /// Whether `data` is one JSON object.
    public static func isObject(_ data: Data) -> Bool {
        data.withUnsafeBytes { bytes in
            var parser = Parser(bytes: bytes)
            return parser.document(requireObject: true)
        }
    }

    /// The members of a top-level JSON object as byte ranges into `data`: each key without its
    /// quotes (as written, escapes not decoded) and its value as is. Nil when `data` is not one
    /// valid JSON object.
    public static func members(of data: Data) -> [(key: Range<Int>, value: Range<Int>)]? {
        data.withUnsafeBytes { bytes -> [(key: Range<Int>, value: Range<Int>)]? in
            var parser = Parser(bytes: bytes)
            var members: [(key: Range<Int>, value: Range<Int>)] = []
            parser.skipWhitespace()
            guard parser.current == UInt8(ascii: "{") else { return nil }
            parser.index += 1
            parser.skipWhitespace()
            if parser.current == UInt8(ascii: "}") {
                parser.index += 1
            } else {
                while true {
                    let keyStart = parser.index + 1
                    guard parser.current == UInt8(ascii: "\""), parser.string() else { return nil }
                    let keyEnd = parser.index - 1
                    parser.skipWhitespace()
                    guard parser.current == UInt8(ascii: ":") else { return nil }
                    parser.index += 1
                    parser.skipWhitespace()
                    let valueStart = parser.index
                    guard parser.value() else { return nil }
                    members.append((keyStart..<keyEnd, valueStart..<parser.index))
                    parser.skipWhitespace()
                    if parser.current == UInt8(ascii: ",") {
                        parser.index += 1
                        parser.skipWhitespace()
                    } else if parser.current == UInt8(ascii: "}") {
                        parser.index += 1
                        break
                    } else {
                        return nil
                    }
                }
            }
            parser.skipWhitespace()
            return parser.index == bytes.count ? members : nil
        }
    }

    private struct Parser {
        let bytes: UnsafeRawBufferPointer
        var index = 0
        var depth = 0

        init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

        var current: UInt8? { index < bytes.count ? bytes[index] : nil }

        mutating func document(requireObject: Bool) -> Bool {
            skipWhitespace()
            if requireObject && current != UInt8(ascii: "{") { return false }
            guard value() else { return false }
            skipWhitespace()
            return index == bytes.count
        }

        mutating func skipWhitespace() {
            while let byte = current, byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09 { index += 1 }
        }

        mutating func value() -> Bool {
            switch current {
            case UInt8(ascii: "{")?: return container(close: UInt8(ascii: "}"), keyed: true)
            case UInt8(ascii: "[")?: return container(close: UInt8(ascii: "]"), keyed: false)
            case UInt8(ascii: "\"")?: return string()
            case UInt8(ascii: "t")?: return literal("true")
            case UInt8(ascii: "f")?: return literal("false")
            case UInt8(ascii: "n")?: return literal("null")
            case let byte? where byte == UInt8(ascii: "-") || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte):
                return number()
            default: return false
            }
        }

        mutating func container(close: UInt8, keyed: Bool) -> Bool {
            depth += 1
            defer { depth -= 1 }
            guard depth <= JSONValidator.maxDepth else { return false }
            index += 1
            skipWhitespace()
            if current == close {
                index += 1
                return true
            }
            while true {
                if keyed {
                    guard current == UInt8(ascii: "\""), string() else { return false }
                    skipWhitespace()
                    guard current == UInt8(ascii: ":") else { return false }
                    index += 1
                    skipWhitespace()
                }
                guard value() else { return false }
                skipWhitespace()
                if current == UInt8(ascii: ",") {
                    index += 1
                    skipWhitespace()
                } else if current == close {
                    index += 1
                    return true
                } else {
                    return false
                }
            }
        }

        mutating func literal(_ word: StaticString) -> Bool {
            let count = word.utf8CodeUnitCount
            guard index + count <= bytes.count else { return false }
            for offset in 0..<count where bytes[index + offset] != word.utf8Start[offset] { return false }
            index += count
            return true
        }

        mutating func digits() -> Int {
            let start = index
            while let byte = current, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) { index += 1 }
            return index - start
        }

        mutating func number() -> Bool {
            if current == UInt8(ascii: "-") { index += 1 }
            if current == UInt8(ascii: "0") {
                index += 1
            } else if digits() == 0 {
                return false
            }
            if current == UInt8(ascii: ".") {
                index += 1
                guard digits() > 0 else { return false }
            }
            if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
                index += 1
                if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { index += 1 }
                guard digits() > 0 else { return false }
            }
            return true
        }

        mutating func string() -> Bool {
            index += 1  // the opening quote
            while let byte = current {
                switch byte {
                case UInt8(ascii: "\""):
                    index += 1
                    return true
                case UInt8(ascii: "\\"):
                    index += 1
                    guard let escaped = current else { return false }
                    index += 1
                    switch escaped {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                        UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                        continue
                    case UInt8(ascii: "u"):
                        for _ in 0..<4 {
                            guard let hex = current, isHexDigit(hex) else { return false }
                            index += 1
                        }
                    default:
                        return false
                    }
                case 0x00..<0x20:
                    return false  // control characters must be escaped
                case 0x00..<0x80:
                    index += 1
                default:
                    guard utf8Sequence() else { return false }
                }
            }
            return false  // unterminated
        }

        func isHexDigit(_ byte: UInt8) -> Bool {
            (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
                || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(byte)
        }

        /// One well-formed multi-byte UTF-8 sequence (no overlongs, surrogates or values past U+10FFFF).
        mutating func utf8Sequence() -> Bool {
            let lead = bytes[index]
            let length: Int
            var low: UInt8 = 0x80
            var high: UInt8 = 0xBF
            switch lead {
            case 0xC2...0xDF: length = 2
            case 0xE0: length = 3; low = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: length = 3
            case 0xED: length = 3; high = 0x9F
            case 0xF0: length = 4; low = 0x90
            case 0xF1...0xF3: length = 4
            case 0xF4: length = 4; high = 0x8F
            default: return false
            }
            guard index + length <= bytes.count else { return false }
            let second = bytes[index + 1]
            guard second >= low && second <= high else { return false }
            for offset in 2..<max(2, length) where !(0x80...0xBF).contains(bytes[index + offset]) { return false }
            index += length
            return true
        }
    }
}

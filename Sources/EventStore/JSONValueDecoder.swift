import Foundation

/// Decodes `Decodable` values from a `JSONValue` tree: the platform's decoder for commands and
/// events, so that a domain writes none.
///
/// Numbers decode exactly: an integer field takes a whole number within its type's range and
/// names the field otherwise. With `strict`, a member of an object that the type never asked
/// for is refused (`DecodingError.dataCorrupted` at that member's path), so a typo in a command
/// never passes silently; events are read leniently, since the log outlives the code.
public struct JSONValueDecoder: Sendable {
    /// Refuse members the decoded type does not read.
    public var strict: Bool

    public init(strict: Bool = false) {
        self.strict = strict
    }

    /// Decodes a `type` from `value`.
    public func decode<T: Decodable>(_ type: T.Type, from value: JSONValue) throws -> T {
        let tracker = KeyTracker(enabled: strict)
        let decoded = try T(from: TreeDecoder(value: value, codingPath: [], tracker: tracker))
        try tracker.check(root: value)
        return decoded
    }

    /// Decodes a value of the existential `type` (a metatype chosen at run time by type name).
    public func decodeValue(of type: any Decodable.Type, from value: JSONValue) throws -> any Decodable {
        let tracker = KeyTracker(enabled: strict)
        let decoded = try type.init(from: TreeDecoder(value: value, codingPath: [], tracker: tracker))
        try tracker.check(root: value)
        return decoded
    }
}

/// The objects a strict decode read, and which of their members it asked for.
private final class KeyTracker {
    final class Seen {
        let path: [any CodingKey]
        let members: [String: JSONValue]
        var asked: Set<String> = []
        init(path: [any CodingKey], members: [String: JSONValue]) {
            self.path = path
            self.members = members
        }
    }

    let enabled: Bool
    /// One entry per object, by its path: a type may read one object through several
    /// containers (a discriminator read first, a superDecoder), and what any of them asked for
    /// counts.
    var seen: [String: Seen] = [:]
    /// Paths decoded whole (as a `JSONValue`): nothing below them is unknown.
    var consumed: Set<String> = []

    init(enabled: Bool) { self.enabled = enabled }

    static func key(_ path: [any CodingKey]) -> String { path.map(\.stringValue).joined(separator: "\u{1}") }

    func track(_ path: [any CodingKey], _ members: [String: JSONValue]) -> Seen? {
        guard enabled else { return nil }
        let key = Self.key(path)
        if let entry = seen[key] { return entry }
        let entry = Seen(path: path, members: members)
        seen[key] = entry
        return entry
    }

    func consume(_ path: [any CodingKey]) {
        if enabled { consumed.insert(Self.key(path)) }
    }

    private func isConsumed(_ path: [any CodingKey]) -> Bool {
        guard !consumed.isEmpty else { return false }
        return (0...path.count).contains { consumed.contains(Self.key(Array(path.prefix($0)))) }
    }

    /// Throws for the first member no decode asked for. A strict decode reads an object (a
    /// type with no members never opens one, so its object must be empty).
    func check(root: JSONValue) throws {
        guard enabled, !consumed.contains("") else { return }
        if seen[""] == nil {
            guard case .object(let members) = root else {
                throw DecodingError.typeMismatch([String: Any].self, .init(codingPath: [], debugDescription: "must be a JSON object"))
            }
            if let unknown = members.keys.sorted().first {
                throw DecodingError.dataCorrupted(.init(codingPath: [AnyKey(unknown)], debugDescription: "is not a known field"))
            }
        }
        for entry in seen.values.sorted(by: { $0.path.count < $1.path.count }) where !isConsumed(entry.path) {
            if let unknown = entry.members.keys.filter({ !entry.asked.contains($0) }).sorted().first {
                throw DecodingError.dataCorrupted(.init(codingPath: entry.path + [AnyKey(unknown)], debugDescription: "is not a known field"))
            }
        }
    }
}

struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(_ string: String) { stringValue = string }
    init(index: Int) {
        stringValue = String(index)
        intValue = index
    }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { self.init(index: intValue) }
}

private struct TreeDecoder: Decoder {
    let value: JSONValue
    let codingPath: [any CodingKey]
    let tracker: KeyTracker
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .object(let members) = value else { throw mismatch([String: Any].self, value, codingPath, "must be a JSON object") }
        return KeyedDecodingContainer(KeyedContainer<Key>(
            members: members, codingPath: codingPath, tracker: tracker, seen: tracker.track(codingPath, members)))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let items) = value else { throw mismatch([Any].self, value, codingPath, "must be a JSON array") }
        return UnkeyedContainer(items: items, codingPath: codingPath, tracker: tracker)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        SingleContainer(value: value, codingPath: codingPath, tracker: tracker)
    }
}

private func mismatch(_ type: Any.Type, _ value: JSONValue, _ path: [any CodingKey], _ description: String) -> DecodingError {
    if case .null = value { return DecodingError.valueNotFound(type, .init(codingPath: path, debugDescription: "must not be null")) }
    return DecodingError.typeMismatch(type, .init(codingPath: path, debugDescription: description))
}

/// The primitive decodes shared by the three containers.
private enum Primitive {
    static func bool(_ value: JSONValue, _ path: [any CodingKey]) throws -> Bool {
        guard case .bool(let flag) = value else { throw mismatch(Bool.self, value, path, "must be true or false") }
        return flag
    }

    static func string(_ value: JSONValue, _ path: [any CodingKey]) throws -> String {
        guard case .string(let text) = value else { throw mismatch(String.self, value, path, "must be a string") }
        return text
    }

    static func double(_ value: JSONValue, _ path: [any CodingKey]) throws -> Double {
        switch value {
        case .integer(let number): return Double(number)
        case .number(let number): return number
        default: throw mismatch(Double.self, value, path, "must be a number")
        }
    }

    static func integer<T: FixedWidthInteger>(_ value: JSONValue, _ path: [any CodingKey], as type: T.Type) throws -> T {
        let outOfRange = DecodingError.dataCorrupted(.init(
            codingPath: path, debugDescription: "must be an integer between \(T.min) and \(T.max)"))
        switch value {
        case .integer(let number):
            guard let exact = T(exactly: number) else { throw outOfRange }
            return exact
        case .number(let number):
            guard number.rounded() == number else { throw mismatch(T.self, value, path, "must be an integer") }
            guard let exact = T(exactly: number) else { throw outOfRange }
            return exact
        default:
            throw mismatch(T.self, value, path, "must be an integer")
        }
    }

    static func decode<T: Decodable>(_ type: T.Type, _ value: JSONValue, _ path: [any CodingKey], _ tracker: KeyTracker) throws -> T {
        // The common leaf types directly, so that their errors name the field as above.
        // Metatype identity, not `is` casts: this runs for every field, unspecialised.
        if T.self == String.self { return try string(value, path) as! T }
        if T.self == Int64.self { return try integer(value, path, as: Int64.self) as! T }
        if T.self == Int.self { return try integer(value, path, as: Int.self) as! T }
        if T.self == Bool.self { return try bool(value, path) as! T }
        if T.self == Double.self { return try double(value, path) as! T }
        if T.self == Int32.self { return try integer(value, path, as: Int32.self) as! T }
        if T.self == UInt.self { return try integer(value, path, as: UInt.self) as! T }
        if T.self == UInt64.self { return try integer(value, path, as: UInt64.self) as! T }
        if T.self == JSONValue.self {
            tracker.consume(path)
            return value as! T
        }
        // As JSONEncoder writes them (the platform's event encoding), not as their own Codable
        // conformances would read a tree.
        if T.self == URL.self {
            guard let url = URL(string: try string(value, path)) else {
                throw DecodingError.dataCorrupted(.init(codingPath: path, debugDescription: "must be a URL"))
            }
            return url as! T
        }
        if T.self == Data.self {
            guard let data = Data(base64Encoded: try string(value, path)) else {
                throw DecodingError.dataCorrupted(.init(codingPath: path, debugDescription: "must be base64"))
            }
            return data as! T
        }
        if T.self == Decimal.self {
            switch value {
            case .integer(let number): return Decimal(number) as! T
            case .number(let number): return Decimal(number) as! T
            case .string(let text):
                guard let decimal = Decimal(string: text, locale: Locale(identifier: "en_US_POSIX")) else {
                    throw DecodingError.dataCorrupted(.init(codingPath: path, debugDescription: "must be a decimal number"))
                }
                return decimal as! T
            default: throw mismatch(Decimal.self, value, path, "must be a number")
            }
        }
        return try T(from: TreeDecoder(value: value, codingPath: path, tracker: tracker))
    }
}

private struct KeyedContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let members: [String: JSONValue]
    let codingPath: [any CodingKey]
    let tracker: KeyTracker
    let seen: KeyTracker.Seen?

    var allKeys: [Key] { members.keys.compactMap(Key.init(stringValue:)) }

    func contains(_ key: Key) -> Bool {
        seen?.asked.insert(key.stringValue)
        return members[key.stringValue] != nil
    }

    private func value(_ key: Key) throws -> JSONValue {
        seen?.asked.insert(key.stringValue)
        guard let value = members[key.stringValue] else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "\(key.stringValue) is required"))
        }
        return value
    }

    func decodeNil(forKey key: Key) throws -> Bool {
        seen?.asked.insert(key.stringValue)
        if case .null = members[key.stringValue] ?? .null { return true }
        return false
    }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try Primitive.decode(type, try value(key), codingPath + [key], tracker)
    }

    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        seen?.asked.insert(key.stringValue)
        guard let value = members[key.stringValue] else { return nil }
        if case .null = value { return nil }
        return try Primitive.decode(type, value, codingPath + [key], tracker)
    }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        try TreeDecoder(value: try value(key), codingPath: codingPath + [key], tracker: tracker).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try TreeDecoder(value: try value(key), codingPath: codingPath + [key], tracker: tracker).unkeyedContainer()
    }

    func superDecoder() throws -> any Decoder {
        TreeDecoder(value: .object(members), codingPath: codingPath, tracker: tracker)
    }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        TreeDecoder(value: try value(key), codingPath: codingPath + [key], tracker: tracker)
    }
}

private struct UnkeyedContainer: UnkeyedDecodingContainer {
    let items: [JSONValue]
    let codingPath: [any CodingKey]
    let tracker: KeyTracker
    var currentIndex = 0

    init(items: [JSONValue], codingPath: [any CodingKey], tracker: KeyTracker) {
        self.items = items
        self.codingPath = codingPath
        self.tracker = tracker
    }

    var count: Int? { items.count }
    var isAtEnd: Bool { currentIndex >= items.count }

    private mutating func next(_ type: Any.Type) throws -> (JSONValue, [any CodingKey]) {
        let path = codingPath + [AnyKey(index: currentIndex)]
        guard !isAtEnd else { throw DecodingError.valueNotFound(type, .init(codingPath: path, debugDescription: "the array ends here")) }
        defer { currentIndex += 1 }
        return (items[currentIndex], path)
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, case .null = items[currentIndex] else { return false }
        currentIndex += 1
        return true
    }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let (value, path) = try next(type)
        return try Primitive.decode(type, value, path, tracker)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        let (value, path) = try next([String: Any].self)
        return try TreeDecoder(value: value, codingPath: path, tracker: tracker).container(keyedBy: type)
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let (value, path) = try next([Any].self)
        return try TreeDecoder(value: value, codingPath: path, tracker: tracker).unkeyedContainer()
    }

    mutating func superDecoder() throws -> any Decoder {
        let (value, path) = try next(Any.self)
        return TreeDecoder(value: value, codingPath: path, tracker: tracker)
    }
}

private struct SingleContainer: SingleValueDecodingContainer {
    let value: JSONValue
    let codingPath: [any CodingKey]
    let tracker: KeyTracker

    func decodeNil() -> Bool {
        if case .null = value { return true }
        return false
    }

    func decode(_ type: Bool.Type) throws -> Bool { try Primitive.bool(value, codingPath) }
    func decode(_ type: String.Type) throws -> String { try Primitive.string(value, codingPath) }
    func decode(_ type: Double.Type) throws -> Double { try Primitive.double(value, codingPath) }
    func decode(_ type: Float.Type) throws -> Float { Float(try Primitive.double(value, codingPath)) }
    func decode(_ type: Int.Type) throws -> Int { try Primitive.integer(value, codingPath, as: Int.self) }
    func decode(_ type: Int8.Type) throws -> Int8 { try Primitive.integer(value, codingPath, as: Int8.self) }
    func decode(_ type: Int16.Type) throws -> Int16 { try Primitive.integer(value, codingPath, as: Int16.self) }
    func decode(_ type: Int32.Type) throws -> Int32 { try Primitive.integer(value, codingPath, as: Int32.self) }
    func decode(_ type: Int64.Type) throws -> Int64 { try Primitive.integer(value, codingPath, as: Int64.self) }
    func decode(_ type: UInt.Type) throws -> UInt { try Primitive.integer(value, codingPath, as: UInt.self) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try Primitive.integer(value, codingPath, as: UInt8.self) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try Primitive.integer(value, codingPath, as: UInt16.self) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try Primitive.integer(value, codingPath, as: UInt32.self) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try Primitive.integer(value, codingPath, as: UInt64.self) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try Primitive.decode(type, value, codingPath, tracker) }
}

import Foundation

/// A validated stream name of the form `category-id` (the category is the part before the first
/// `-`, as in message-db). Checked before any SQL runs.
public struct StreamName: Sendable, Hashable, CustomStringConvertible, ExpressibleByStringLiteral {
    /// The longest name accepted, in UTF-8 bytes.
    public static let maxLength = 255

    /// The full name.
    public let rawValue: String

    /// Validates `rawValue`: not empty, at most 255 UTF-8 bytes, no control characters, no
    /// leading `-` (the category must not be empty), no surrounding whitespace. The name is
    /// normalised to Unicode NFC: Swift compares strings by canonical equivalence and
    /// PostgreSQL compares bytes, so two spellings of one name must become one byte sequence.
    public init(_ rawValue: String) throws(EventStoreError) {
        // ASCII is already NFC; only other text pays for Foundation's normalisation.
        let normalized = rawValue.utf8.allSatisfy { $0 < 0x80 } ? rawValue : rawValue.precomposedStringWithCanonicalMapping
        if let problem = Self.problem(with: normalized) {
            throw .invalidStreamName(rawValue, reason: problem)
        }
        self.rawValue = normalized
    }

    /// A literal name; a literal that is not a valid name is a programming error.
    public init(stringLiteral value: String) {
        do {
            try self.init(value)
        } catch {
            preconditionFailure("invalid stream name literal \(value): \(error)")
        }
    }

    /// The part before the first `-` (the whole name when it has none).
    public var category: String { Self.category(of: rawValue) }

    /// The part after the first `-` (empty when there is none).
    public var id: String {
        guard let dash = rawValue.unicodeScalars.firstIndex(of: "-") else { return "" }
        return String(rawValue.unicodeScalars[rawValue.unicodeScalars.index(after: dash)...])
    }

    /// The part of `name` before the first `-`, split on Unicode scalars as PostgreSQL's
    /// `split_part` splits bytes (a `-` followed by a combining mark still splits).
    public static func category(of name: String) -> String {
        String(String.UnicodeScalarView(name.unicodeScalars.prefix { $0 != "-" }))
    }

    public var description: String { rawValue }

    /// Why `name` is not a valid stream name, or nil when it is.
    public static func problem(with name: String) -> String? {
        if name.isEmpty { return "the name is empty" }
        if name.utf8.count > maxLength { return "the name is longer than \(maxLength) bytes" }
        let ascii = name.utf8.allSatisfy { $0 < 0x80 }
        if ascii ? name.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F })
            : name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control || $0.value == 0x7F })
        {
            return "the name contains a control character"
        }
        if name.unicodeScalars.first == "-" { return "the category (the part before the first '-') is empty" }
        if name.first!.isWhitespace || name.last!.isWhitespace { return "the name starts or ends with whitespace" }
        return nil
    }
}

/// Validates event type names: not empty, at most 200 bytes, no control characters or whitespace.
public enum EventTypeName {
    public static let maxLength = 200

    /// Why `type` cannot be an event type, or nil when it can.
    public static func problem(with type: String) -> String? {
        if type.isEmpty { return "the event type is empty" }
        if type.utf8.count > maxLength { return "the event type is longer than \(maxLength) bytes" }
        // Printable ASCII without space is the common case, decided without Unicode tables.
        if type.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) { return nil }
        if type.unicodeScalars.contains(where: { $0.properties.generalCategory == .control || $0.properties.isWhitespace }) {
            return "the event type contains whitespace or a control character"
        }
        return nil
    }
}

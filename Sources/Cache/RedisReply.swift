import Foundation

/// One RESP2 reply, exactly as the server sent it.
public enum RedisReply: Sendable, Hashable {
    /// A simple string (`+OK`).
    case status(String)
    /// An error reply (`-ERR ...`). At the top level of `RedisClient.send` it is thrown as
    /// `RedisError.server` instead; it appears as a value inside pipelines and arrays.
    case error(String)
    /// An integer (`:42`).
    case integer(Int)
    /// A bulk string; nil is the null bulk string (a missing key).
    case bulk([UInt8]?)
    /// An array; nil is the null array (a timed-out BLPOP, an aborted EXEC).
    case array([RedisReply]?)

    /// The text of a status, error or bulk reply (bulk bytes decoded as UTF-8, invalid
    /// sequences repaired), or an integer in decimal; nil for null and arrays.
    public var string: String? {
        switch self {
        case .status(let text), .error(let text): text
        case .bulk(let bytes?): String(decoding: bytes, as: UTF8.self)
        case .integer(let value): String(value)
        case .bulk(nil), .array: nil
        }
    }

    /// An integer reply, or a status or bulk reply holding a decimal integer; nil otherwise.
    public var int: Int? {
        switch self {
        case .integer(let value): value
        case .status(let text): Int(text)
        case .bulk(let bytes?): Int(String(decoding: bytes, as: UTF8.self))
        case .error, .bulk(nil), .array: nil
        }
    }

    /// The bytes of a bulk reply (or a status reply's UTF-8); nil otherwise.
    public var bytes: [UInt8]? {
        switch self {
        case .bulk(let bytes): bytes
        case .status(let text): Array(text.utf8)
        case .error, .integer, .array: nil
        }
    }

    /// The elements of an array reply; nil for the null array and every other kind.
    public var array: [RedisReply]? {
        if case .array(let elements) = self { return elements }
        return nil
    }

    /// Whether this is the null bulk string or the null array.
    public var isNull: Bool {
        switch self {
        case .bulk(nil), .array(nil): true
        default: false
        }
    }

    /// The error reply as a `RedisError.server`, or nil for any other kind.
    public var serverError: RedisError? {
        if case .error(let text) = self { return .server(text) }
        return nil
    }

    /// This reply, or `RedisError.server` thrown when it is an error reply.
    func throwingServerError() throws -> RedisReply {
        if let serverError { throw serverError }
        return self
    }
}

/// One argument of a command, sent as a binary-safe bulk string. String literals and integer
/// literals convert implicitly: `client.send(["SET", .string(key), .bytes(value)])`.
public struct RedisArgument: Sendable, Hashable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
    /// The bytes sent for this argument.
    public var bytes: [UInt8]

    /// The UTF-8 of `string`.
    public init(_ string: String) { bytes = Array(string.utf8) }
    /// Exactly these bytes (an `[UInt8]`, a `Data`, a slice).
    public init(_ bytes: some Sequence<UInt8>) { self.bytes = Array(bytes) }
    /// The decimal form of `value`, as Redis expects numbers.
    public init(_ value: Int) { bytes = Array(String(value).utf8) }

    public init(stringLiteral value: String) { self.init(value) }
    public init(integerLiteral value: Int) { self.init(value) }

    /// The UTF-8 of `string`.
    public static func string(_ string: String) -> RedisArgument { RedisArgument(string) }
    /// Exactly these bytes.
    public static func bytes(_ bytes: some Sequence<UInt8>) -> RedisArgument { RedisArgument(bytes) }
    /// The decimal form of `value`.
    public static func int(_ value: Int) -> RedisArgument { RedisArgument(value) }
}

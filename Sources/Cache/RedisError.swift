#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An error from the Redis client: a public struct over a private code enum, as postgres-nio's
/// `PSQLError` does. Callers switch on `code` (or compare with the static members), never on text.
public struct RedisError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        enum Base: String, Sendable {
            case connection, protocolError, server, timeout, closed, invalidArgument
        }
        let base: Base
        public var description: String { base.rawValue }

        /// No connection could be opened (refused, unresolvable, authentication failed), or an
        /// open one broke (reset, closed by the server). The outcome of a command in flight is
        /// unknown.
        public static let connection = Code(base: .connection)
        /// The server sent bytes that are not valid RESP, broke one of the client's limits, or
        /// answered a convenience method with a reply of the wrong shape.
        public static let protocolError = Code(base: .protocolError)
        /// The server answered with an error reply (`-ERR ...`); `serverCode` says which. The
        /// connection stays usable.
        public static let server = Code(base: .server)
        /// Connecting, or waiting for the server to read a command or send a reply, took longer
        /// than the configured timeout. The outcome of a command in flight is unknown.
        public static let timeout = Code(base: .timeout)
        /// The client or subscriber was shut down.
        public static let closed = Code(base: .closed)
        /// A URL or command the client refuses before sending anything (a malformed URL, an
        /// empty command).
        public static let invalidArgument = Code(base: .invalidArgument)
    }

    /// What kind of failure this is.
    public var code: Code
    /// A human-readable explanation (the server's text for `.server`).
    public var message: String
    /// For replies from the server: the first word of the error (`ERR`, `WRONGTYPE`, `NOSCRIPT`,
    /// `WRONGPASS`...), which is what callers should branch on.
    public var serverCode: String?
    /// The errno behind a `.connection` or `.timeout` error, when there was one.
    public var errno: Int32?

    /// An error of kind `code`; the client makes these, callers normally only inspect them.
    public init(code: Code, message: String, serverCode: String? = nil, errno: Int32? = nil) {
        self.code = code
        self.message = message
        self.serverCode = serverCode
        self.errno = errno
    }

    /// The code and message, for logs.
    public var description: String { "Redis \(code): \(message)" }

    /// Whether Redis could not be reached or stopped answering: the cases where a cache user
    /// falls back to the source of truth. (The connection is then closed and the next call opens
    /// a new one; invalid RESP closes it too.)
    public var isConnectionError: Bool {
        code == .connection || code == .timeout
    }

    /// An error reply from the server, keeping its leading code word.
    static func server(_ text: String) -> RedisError {
        let word = text.prefix { $0 != " " }
        let isCode = !word.isEmpty && word.allSatisfy { $0.isUppercase || $0 == "_" }
        return RedisError(code: .server, message: text, serverCode: isCode ? String(word) : nil)
    }

    static func protocolError(_ message: String) -> RedisError {
        RedisError(code: .protocolError, message: message)
    }

    static func invalidArgument(_ message: String) -> RedisError {
        RedisError(code: .invalidArgument, message: message)
    }

    static let closed = RedisError(code: .closed, message: "the Redis client was shut down")

    /// The one place errno becomes an error: would-block and timed-out are `.timeout`, anything
    /// else is `.connection`, with the system's text and the operation that failed.
    static func posix(_ operation: String, errno code: Int32) -> RedisError {
        let text = String(cString: strerror(code))
        let isTimeout = code == EAGAIN || code == EWOULDBLOCK || code == ETIMEDOUT
        return RedisError(
            code: isTimeout ? .timeout : .connection, message: "\(operation): \(text) (errno \(code))", errno: code
        )
    }
}

/// Runs a system call, retrying on EINTR; a negative result becomes `RedisError.posix`.
@discardableResult
func syscall<T: FixedWidthInteger>(_ operation: String, _ body: () -> T) throws -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        let code = errno
        if code == EINTR { continue }
        throw RedisError.posix(operation, errno: code)
    }
}

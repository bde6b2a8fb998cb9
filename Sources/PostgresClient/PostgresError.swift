/// An error from the PostgreSQL layer: a public struct over a private code enum, as postgres-nio's
/// `PSQLError` does. Callers switch on `code` (or compare with the static members), never on text.
public struct PostgresError: Error, Sendable, CustomStringConvertible {
    /// The kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        enum Base: String, Sendable {
            case connectionFailed, connectionClosed, server, protocolViolation
            case poolTimeout, poolClosed, decoding, invalidParameter, deadline
        }
        let base: Base
        public var description: String { base.rawValue }

        /// libpq could not open a connection (bad URL, server unreachable, authentication failed).
        public static let connectionFailed = Code(base: .connectionFailed)
        /// The connection broke while in use; the outcome of an in-flight statement is unknown.
        public static let connectionClosed = Code(base: .connectionClosed)
        /// The server answered with an error; `sqlState` says which.
        public static let server = Code(base: .server)
        /// libpq returned something this layer did not expect.
        public static let protocolViolation = Code(base: .protocolViolation)
        /// No pooled connection became free within the pool's acquire timeout.
        public static let poolTimeout = Code(base: .poolTimeout)
        /// The pool was closed.
        public static let poolClosed = Code(base: .poolClosed)
        /// A column could not be decoded as the requested Swift type.
        public static let decoding = Code(base: .decoding)
        /// A bound value cannot be sent (for example a string with a NUL character).
        public static let invalidParameter = Code(base: .invalidParameter)
        /// The current task's `DatabaseDeadline` passed before the database answered; the step
        /// may still finish on its own (a statement's outcome is unknown).
        public static let deadline = Code(base: .deadline)
    }

    /// What kind of failure this is.
    public var code: Code
    /// The primary message (libpq's or the server's).
    public var message: String
    /// The five-character SQLSTATE when the server reported the error.
    public var sqlState: String?
    /// The server's DETAIL field, if any.
    public var detail: String?
    /// The server's HINT field, if any.
    public var hint: String?
    /// The constraint the error names, if any (for unique violations).
    public var constraint: String?
    /// The SQL text of the statement that failed, when known (never its bound values).
    public var query: String?
    /// The server did not answer in time (connecting, or a statement): it may be hung rather
    /// than down, and asking it again at once would only wait as long.
    public var timedOut = false

    public init(
        code: Code, message: String, sqlState: String? = nil, detail: String? = nil,
        hint: String? = nil, constraint: String? = nil, query: String? = nil
    ) {
        self.code = code
        self.message = message
        self.sqlState = sqlState
        self.detail = detail
        self.hint = hint
        self.constraint = constraint
        self.query = query
    }

    public var description: String {
        var text = message
        if let sqlState { text += " (SQLSTATE \(sqlState))" }
        if let detail { text += " DETAIL: \(detail)" }
        if let hint { text += " HINT: \(hint)" }
        return text
    }

    /// Whether the connection that raised this error can no longer be used.
    public var isConnectionError: Bool {
        code == .connectionClosed || code == .connectionFailed
            || (sqlState?.hasPrefix("08") ?? false)  // connection_exception class
            || sqlState == "57P01" || sqlState == "57P02" || sqlState == "57P03"  // admin shutdown, crash, cannot connect now
    }
}

extension PostgresError {
    /// Whether the error says that the schema this program was built for is not there: a
    /// table, column, function, type or schema that a migration creates is missing (an
    /// unmigrated database, or one whose schema was dropped). Nothing the caller sent causes it.
    public var isMissingSchema: Bool {
        switch sqlState {
        case SQLState.undefinedTable, SQLState.undefinedColumn, SQLState.undefinedFunction, SQLState.undefinedObject,
            SQLState.invalidSchemaName:
            return true
        default:
            return false
        }
    }
}

/// Well-known SQLSTATE values callers branch on.
public enum SQLState {
    public static let uniqueViolation = "23505"
    public static let serializationFailure = "40001"
    public static let deadlockDetected = "40P01"
    public static let lockNotAvailable = "55P03"
    public static let undefinedTable = "42P01"
    public static let undefinedColumn = "42703"
    public static let undefinedFunction = "42883"
    public static let undefinedObject = "42704"
    public static let invalidSchemaName = "3F000"
    public static let queryCanceled = "57014"
    public static let datatypeMismatch = "42804"
    /// The class of data exceptions (`22…`): a value that does not fit its type.
    public static let dataExceptionClass = "22"
}

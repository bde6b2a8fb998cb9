import Foundation
import PostgresClient

/// An event store error: a public struct over a private code enum, with context. Callers switch
/// on `code` (or compare with the static members), never on message text.
public struct EventStoreError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        enum Base: String, Sendable {
            case wrongExpectedVersion, duplicateEventId, invalidStreamName, invalidEvent, invalidArgument
            case streamNotFound, subjectNotFound, corruptEvent, unavailable, commitOutcomeUnknown, shutdown, database
            case migration, subjectForgotten, masterKey, streamDeleted, appendConditionFailed
        }
        let base: Base
        public var description: String { base.rawValue }

        /// The stream's version did not match the expected version; nothing was written.
        public static let wrongExpectedVersion = Code(base: .wrongExpectedVersion)
        /// An event id is already used by another stream or another position; nothing was written.
        public static let duplicateEventId = Code(base: .duplicateEventId)
        /// The stream name is not valid; no SQL ran.
        public static let invalidStreamName = Code(base: .invalidStreamName)
        /// An event is not valid (type, JSON data or metadata); no SQL ran.
        public static let invalidEvent = Code(base: .invalidEvent)
        /// An argument is out of range (limit, position, version).
        public static let invalidArgument = Code(base: .invalidArgument)
        /// The stream has no events.
        public static let streamNotFound = Code(base: .streamNotFound)
        /// A subject with no personal data was to be forgotten.
        public static let subjectNotFound = Code(base: .subjectNotFound)
        /// A stored event cannot be decoded.
        public static let corruptEvent = Code(base: .corruptEvent)
        /// The database cannot be reached; nothing was written.
        public static let unavailable = Code(base: .unavailable)
        /// The connection broke during COMMIT and the outcome could not be checked: retry with
        /// the same event ids, which is idempotent.
        public static let commitOutcomeUnknown = Code(base: .commitOutcomeUnknown)
        /// The store was shut down.
        public static let shutdown = Code(base: .shutdown)
        /// The database refused a statement.
        public static let database = Code(base: .database)
        /// A migration could not be applied or verified.
        public static let migration = Code(base: .migration)
        /// The subject's key was destroyed: its personal data is not stored again.
        public static let subjectForgotten = Code(base: .subjectForgotten)
        /// Personal data needs a master key, and none is configured or it is not the one the
        /// data keys were wrapped with.
        public static let masterKey = Code(base: .masterKey)
        /// The stream is deleted (a tombstone closes it): it is neither read nor written again.
        public static let streamDeleted = Code(base: .streamDeleted)
        /// An event matching the append's condition was written after the condition's position;
        /// nothing was written.
        public static let appendConditionFailed = Code(base: .appendConditionFailed)
    }

    /// What went wrong.
    public var code: Code
    /// A sentence for people.
    public var message: String
    /// The stream concerned, if any.
    public var stream: String?
    /// The expected version the caller gave, for version conflicts.
    public var expectedVersion: ExpectedVersion?
    /// The stream's actual version, for version conflicts.
    public var currentVersion: Int?
    /// Every stream whose expectation failed, for version conflicts (one for a single append).
    public var conflicts: [StreamConflict] = []
    /// The first position whose event matches a failed append condition.
    public var conflictingPosition: Int?
    /// The underlying database error, if any: the platform's modules look at it; a domain
    /// switches on `code`.
    package var underlying: PostgresError?
    /// The SQLSTATE of the underlying database error, if any.
    public var sqlState: String? { underlying?.sqlState }

    public init(code: Code, message: String, stream: String? = nil, expectedVersion: ExpectedVersion? = nil, currentVersion: Int? = nil) {
        self.init(code: code, message: message, stream: stream, expectedVersion: expectedVersion, currentVersion: currentVersion, underlying: nil)
    }

    package init(
        code: Code, message: String, stream: String? = nil, expectedVersion: ExpectedVersion? = nil,
        currentVersion: Int? = nil, underlying: PostgresError?
    ) {
        self.code = code
        self.message = message
        self.stream = stream
        self.expectedVersion = expectedVersion
        self.currentVersion = currentVersion
        self.underlying = underlying
    }

    public var description: String { message }

    /// `subject` never had personal data here.
    public static func subjectNotFound(_ subject: String) -> Self {
        EventStoreError(
            code: .subjectNotFound,
            message: "subject \(subject) has no personal data here: there is nothing to forget (evenIfUnknown forgets it ahead of any data)")
    }

    /// The stream is closed by its tombstone.
    public static func streamDeleted(_ stream: String) -> Self {
        EventStoreError(code: .streamDeleted, message: "stream \(stream) is deleted: it is neither read nor written again", stream: stream)
    }

    static func wrongExpectedVersion(_ stream: String, expected: ExpectedVersion, current: Int) -> Self {
        EventStoreError(
            code: .wrongExpectedVersion,
            message: "version conflict on stream \(stream): expected \(expected), current version is \(current)",
            stream: stream, expectedVersion: expected, currentVersion: current)
    }

    /// The expectations that failed in one unit: one stream reads as `wrongExpectedVersion`
    /// always did; several are all named.
    static func wrongExpectedVersion(_ conflicts: [StreamConflict]) -> Self {
        let first = conflicts[0]
        var error = wrongExpectedVersion(first.stream, expected: first.expected, current: first.current)
        if conflicts.count > 1 {
            error.message = "version conflict on streams "
                + conflicts.map { "\($0.stream) (expected \($0.expected), current version \($0.current))" }.joined(separator: ", ")
        }
        error.conflicts = conflicts
        return error
    }

    static func appendConditionFailed(at position: Int, after: Int) -> Self {
        var error = EventStoreError(
            code: .appendConditionFailed,
            message: "the append condition failed: the event at position \(position) matches its query and comes after position \(after)")
        error.conflictingPosition = position
        return error
    }

    static func duplicateEventId(_ id: UUID, stream: String, existingStream: String) -> Self {
        EventStoreError(
            code: .duplicateEventId,
            message: "event id \(id.uuidString.lowercased()) is already used"
                + (existingStream == stream ? " at another version of stream \(stream)" : " by stream \(existingStream)"),
            stream: stream)
    }

    static func invalidStreamName(_ name: String, reason: String) -> Self {
        EventStoreError(code: .invalidStreamName, message: "invalid stream name: \(reason)", stream: name)
    }

    static func invalidEvent(_ message: String, stream: String? = nil) -> Self {
        EventStoreError(code: .invalidEvent, message: message, stream: stream)
    }

    static func invalidArgument(_ message: String) -> Self {
        EventStoreError(code: .invalidArgument, message: message)
    }

    static func corruptEvent(_ message: String) -> Self {
        EventStoreError(code: .corruptEvent, message: message)
    }

    /// Wraps a database error, as `unavailable` when the database cannot be reached.
    static func database(_ error: PostgresError, stream: String? = nil) -> Self {
        if error.code == .poolClosed {
            return EventStoreError(code: .shutdown, message: "the event store is shut down", stream: stream, underlying: error)
        }
        if error.isConnectionError || error.code == .poolTimeout || error.code == .deadline {
            return EventStoreError(
                code: .unavailable, message: "the database is unavailable: \(error.message)", stream: stream,
                underlying: error)
        }
        return EventStoreError(code: .database, message: "database error: \(error)", stream: stream, underlying: error)
    }
}

/// Runs `body`, turning database errors into `EventStoreError`.
func translatingErrors<T>(stream: String? = nil, _ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as PostgresError {
        throw EventStoreError.database(error, stream: stream)
    }
}

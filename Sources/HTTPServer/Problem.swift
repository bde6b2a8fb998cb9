import Aggregates
import EventStore
import Foundation
import HTTPTypes
import Hummingbird
import NIOHTTP1
import PostgresClient

/// An RFC 9457 problem: every error the API returns is one, as `application/problem+json`.
public struct Problem: Error, Sendable {
    /// The HTTP status.
    public var status: HTTPResponse.Status
    /// A stable, machine-readable code; the problem `type` is `/problems/<code>`.
    public var code: String
    /// A short summary of the kind of problem.
    public var title: String
    /// What happened this time.
    public var detail: String
    /// Extra members (`currentVersion`, `field`, …).
    public var extensions: [String: JSONValue]
    /// Response headers to add (`Retry-After`, …).
    public var headers: HTTPFields

    public init(
        _ status: HTTPResponse.Status, _ code: String, _ title: String, detail: String,
        extensions: [String: JSONValue] = [:], headers: HTTPFields = [:]
    ) {
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.extensions = extensions
        self.headers = headers
    }

    static func badRequest(_ detail: String, field: String? = nil) -> Problem {
        Problem(.badRequest, "invalid-request", "The request is not valid", detail: detail,
                extensions: field.map { ["field": .string($0)] } ?? [:])
    }

    static func notFound(_ detail: String) -> Problem {
        Problem(.notFound, "not-found", "Not found", detail: detail)
    }

    /// The body, with the request id that the response also carries in a header.
    func body(requestID: String) -> Data {
        var members = extensions
        members["type"] = .string("/problems/\(code)")
        members["title"] = .string(title)
        members["status"] = .integer(status.code)
        members["detail"] = .string(detail)
        members["requestId"] = .string(requestID)
        return JSONValue.jsonData(members)
    }
}

extension Problem {
    /// The one place where errors become HTTP problems. An error that maps to nothing is a 500
    /// and a bug, and is logged as such by the caller.
    static func from(_ error: any Error) -> (problem: Problem, isBug: Bool) {
        switch error {
        case let problem as Problem:
            return (problem, false)
        case let contention as CommandContention:
            var extensions: [String: JSONValue] = ["stream": .string(contention.stream)]
            if let current = contention.currentVersion { extensions["currentVersion"] = .integer(current) }
            return (
                Problem(
                    .conflict, "contention", "The stream kept changing under the command", detail: contention.description,
                    extensions: extensions, headers: [.retryAfter: "1"]), false
            )
        case let behind as ReadModelService.Behind:
            return (
                Problem(
                    .gatewayTimeout, "read-model-behind", "The read model has not caught up",
                    detail: "the read model is at position \(behind.checkpoint), not yet at \(behind.atLeast); retry later",
                    extensions: ["checkpoint": .integer(behind.checkpoint), "atLeast": .integer(behind.atLeast)],
                    headers: [.retryAfter: "1"]), false
            )
        case let fixed as ConsumerGroupStartFixed:
            return (
                Problem(.conflict, "consumer-group-start-fixed", "A group's start cannot change", detail: fixed.description, extensions: ["field": "startAfter"]),
                false
            )
        case let webhook as ConsumerGroupDeliveredByWebhook:
            return (Problem(.conflict, "consumer-group-webhook", "The group delivers itself by webhook", detail: webhook.description), false)
        case let violation as RuleViolation:
            return (Problem(.unprocessableContent, violation.code, "The command was refused", detail: violation.message), false)
        case let error as EventStoreError where error.underlying?.isMissingSchema ?? false:
            return (schemaMissing(error.underlying!), false)
        case let error as EventStoreError:
            let problem = fromStore(error)
            return (problem, problem.status == .internalServerError && (error.code == .database || error.code == .corruptEvent))
        case let error as DecodingError:
            return (fromDecoding(error), false)
        case let error as PostgresError:
            if error.isMissingSchema { return (schemaMissing(error), false) }
            if error.code == .deadline { return (unavailable(databaseDeadline), false) }
            if error.isConnectionError || error.code == .poolTimeout || error.code == .poolClosed {
                return (unavailable(databaseUnavailable), false)
            }
            if error.sqlState == SQLState.queryCanceled { return (unavailable(databaseTimedOut), false) }
            if error.code == .invalidParameter {
                return (Problem(.badRequest, "invalid-request", "The request is not valid", detail: error.message), false)
            }
            return (internalError, true)
        case let error as any HTTPResponseError:
            let status = error.status
            let code = status == .contentTooLarge ? "body-too-large" : status == .notFound ? "not-found" : "http-\(status.code)"
            let detail = status == .contentTooLarge ? "the request body is larger than the server accepts"
                : status == .notFound ? "no such route" : status.reasonPhrase
            return (Problem(status, code, status.reasonPhrase, detail: detail), status.code >= 500)
        case let error as HTTPParserError:
            // A body that breaks HTTP's own framing (a bad chunk size, say) fails only when read.
            return (Problem(.badRequest, "malformed-request", "The HTTP request is malformed", detail: "the request body cannot be read: \(error)"), false)
        case is CancellationError:
            return (unavailable("the server is shutting down"), false)
        default:
            return (internalError, true)
        }
    }

    static let internalError = Problem(
        .internalServerError, "internal-error", "Internal server error", detail: "an unexpected error occurred; it has been logged")

    /// What a client is told when the database cannot be reached. libpq's message names hosts,
    /// ports and users; it goes to the server's log, never to clients.
    static let databaseUnavailable = "the database is unavailable; retry later"

    /// What a client is told when the request's database deadline passed (`DatabaseDeadline`).
    static let databaseDeadline = "the database did not answer within the request's deadline; retry later"

    /// What a client is told when a statement ran past `EVENTLINE_DB_STATEMENT_TIMEOUT`.
    static let databaseTimedOut = "the database did not answer in time; retry later"

    static func unavailable(_ detail: String) -> Problem {
        Problem(.serviceUnavailable, "unavailable", "The service is unavailable", detail: detail, headers: [.retryAfter: "1"])
    }

    /// The database lacks what the migrations create: not migrated, or its schema was dropped.
    /// Operational, not the caller's fault and not a bug: 503 until someone migrates.
    static func schemaMissing(_ error: PostgresError) -> Problem {
        Problem(
            .serviceUnavailable, "schema-missing", "The database schema is missing",
            detail: "the database is not migrated for this server (\(error.message)); run eventctl migrate",
            headers: [.retryAfter: "5"])
    }

    static func fromStore(_ error: EventStoreError) -> Problem {
        switch error.code {
        case .wrongExpectedVersion:
            var extensions: [String: JSONValue] = [:]
            if let current = error.currentVersion { extensions["currentVersion"] = .integer(current) }
            if let stream = error.stream { extensions["stream"] = .string(stream) }
            if !error.conflicts.isEmpty {
                // Every stream of the request whose expectation failed, with its version.
                extensions["conflicts"] = .array(error.conflicts.map { conflict in
                    .object([
                        "stream": .string(conflict.stream), "expectedVersion": Self.expectedVersionJSON(conflict.expected),
                        "currentVersion": .integer(conflict.current),
                    ])
                })
            }
            return Problem(.conflict, "version-conflict", "The stream's version does not match", detail: error.message, extensions: extensions)
        case .appendConditionFailed:
            var extensions: [String: JSONValue] = [:]
            if let position = error.conflictingPosition { extensions["conflictingPosition"] = .integer(position) }
            return Problem(
                .conflict, "append-condition-failed", "An event matching the append condition was written after its position",
                detail: error.message, extensions: extensions)
        case .duplicateEventId:
            return Problem(.conflict, "duplicate-event-id", "An event id is already used", detail: error.message)
        case .invalidStreamName:
            return Problem(.badRequest, "invalid-stream-name", "The stream name is not valid", detail: error.message)
        case .invalidEvent:
            return Problem(.badRequest, "invalid-event", "An event is not valid", detail: error.message)
        case .invalidArgument:
            return Problem(.badRequest, "invalid-request", "The request is not valid", detail: error.message)
        case .streamNotFound, .subjectNotFound:
            return notFound(error.message)
        case .unavailable where error.underlying?.code == .deadline:
            return unavailable(databaseDeadline)
        case .unavailable:
            return unavailable(databaseUnavailable)
        case .shutdown:
            return unavailable(error.message)
        case .commitOutcomeUnknown:
            // libpq's message stays in the log; the client gets what it can do.
            var extensions: [String: JSONValue] = [:]
            if let stream = error.stream { extensions["stream"] = .string(stream) }
            return Problem(
                .serviceUnavailable, "commit-outcome-unknown", "The outcome is unknown",
                detail: error.underlying?.code == .deadline
                    ? "the database did not say within the request's deadline whether the events were committed; retry with the same Idempotency-Key to learn the outcome (it is applied at most once), or read the stream"
                    : "the connection to the database broke while the events were being committed, and the database did not come back in time to say whether they were; retry with the same Idempotency-Key to learn the outcome (it is applied at most once), or read the stream",
                extensions: extensions, headers: [.retryAfter: "1"])
        case .streamDeleted:
            var extensions: [String: JSONValue] = [:]
            if let stream = error.stream { extensions["stream"] = .string(stream) }
            return Problem(.gone, "stream-deleted", "The stream is deleted", detail: error.message, extensions: extensions)
        case .subjectForgotten:
            return Problem(.gone, "subject-forgotten", "The subject is forgotten", detail: error.message)
        case .masterKey:
            // Configuration, not the caller's input: the operator sets the master key.
            return Problem(.serviceUnavailable, "master-key", "Personal data cannot be handled", detail: error.message)
        case .database where error.underlying?.sqlState == SQLState.queryCanceled:
            // statement_timeout: the database is slow or waiting (on a lock, on a synchronous
            // standby), which the caller can only wait out, like an outage.
            return unavailable(databaseTimedOut)
        case .database where error.underlying?.code == .invalidParameter:
            return Problem(.badRequest, "invalid-request", "The request is not valid", detail: error.underlying?.message ?? error.message)
        default:
            return internalError
        }
    }

    /// An expected version as the API takes it: a number, "noStream", "exists" or "any".
    static func expectedVersionJSON(_ expected: ExpectedVersion) -> JSONValue {
        switch expected {
        case .exact(let version): .integer(version)
        case .noStream: .string("noStream")
        case .exists: .string("exists")
        case .any: .string("any")
        }
    }

    static func fromDecoding(_ error: DecodingError) -> Problem {
        let context: DecodingError.Context?
        var path: [any CodingKey] = []
        switch error {
        case .typeMismatch(_, let c), .valueNotFound(_, let c), .dataCorrupted(let c): context = c
        case .keyNotFound(let key, let c):
            context = c
            path = [key]
        @unknown default: context = nil
        }
        path = (context?.codingPath ?? []) + path
        let field = (["data"] + path.map(\.stringValue)).joined(separator: ".")
        let reason: String
        switch error {
        case .keyNotFound: reason = "is required"
        case .typeMismatch(let type, _): reason = "must be of type \(type)"
        case .valueNotFound: reason = "must not be null"
        default: reason = context?.debugDescription ?? "is not valid"
        }
        return Problem(
            .unprocessableContent, "invalid-command-data", "The command's data is not valid", detail: "\(field) \(reason)",
            extensions: ["field": .string(field)])
    }
}

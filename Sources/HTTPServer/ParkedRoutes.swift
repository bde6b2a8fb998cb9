import EventStore
import Foundation
import HTTPTypes
import Hummingbird

/// The parked keys of projections (`/v1/read-models/{name}/parked…`) and reactors
/// (`/v1/reactors/{name}/parked…`): listed with the event each failed on and the events held
/// behind it; retried (the key's held events are applied in order by the process that holds its
/// partition) or, by an admin, skipped (the failing event is recorded in the consumer's skipped
/// events, then the rest are applied).
struct ParkedRoutes: Sendable {
    let readModels: ReadModelService

    func register(on router: Endpoints) {
        for (prefix, kind) in [("/v1/read-models", ConsumerID.Kind.projection), ("/v1/reactors", .reactor)] {
            router.get("\(prefix)/:name/parked") { request, context in try await list(kind, request, context) }
            router.post("\(prefix)/:name/parked/retry") { request, context in try await act("retry", kind, request, context) }
            router.post("\(prefix)/:name/parked/skip") { request, context in try await act("skip", kind, request, context) }
        }
    }

    func list(_ kind: ConsumerID.Kind, _ request: Request, _ context: EventlineRequestContext) async throws -> Response {
        try JSONIO.rejectUnknownQuery(JSONIO.queryParameters(request), allowed: [])
        let name = try Self.name(context)
        let found = try await readModels.withConnection { conn -> (parked: [ParkedKey], skipped: [SkippedEvent])? in
            guard try !CheckpointStore.list(kind, name: name, on: conn).isEmpty else { return nil }
            return (try CheckpointStore.parked(kind, name: name, on: conn), try CheckpointStore.skipped(kind, name: name, on: conn))
        }
        guard let found else { throw Self.notFound(kind, name) }
        let parked = found.parked.map { key -> JSONValue in
            .object([
                "key": .string(key.key), "partition": .integer(key.consumer.partition), "position": .integer(key.position),
                "type": .string(key.eventType), "error": .string(key.error), "attempts": .integer(key.attempts), "held": .integer(key.held),
                "request": key.request.map(JSONValue.string) ?? .null, "parkedAt": .string(key.parkedAt.formatted(JSONIO.timestampStyle)),
            ])
        }
        let skipped = found.skipped.map { event -> JSONValue in
            .object([
                "key": .string(event.key), "position": .integer(event.position), "type": .string(event.eventType),
                "error": .string(event.error), "skippedBy": .string(event.skippedBy),
                "skippedAt": .string(event.skippedAt.formatted(JSONIO.timestampStyle)),
            ])
        }
        return JSONIO.response(.ok, JSONValue.jsonData(["items": .array(parked), "skipped": .array(skipped)]))
    }

    /// Asks for a retry (`keys` absent: every parked key) or a skip (`keys` required) and answers
    /// 202 with the keys asked about; a key that is not parked changes nothing and is 404.
    func act(_ action: String, _ kind: ConsumerID.Kind, _ request: Request, _ context: EventlineRequestContext) async throws -> Response {
        let name = try Self.name(context)
        var keys: [String]? = nil
        if request.headers[.contentType] != nil || (request.headers[.contentLength].flatMap(Int.init) ?? 0) > 0 {
            let (_, body) = try await JSONIO.readObject(request, context: context)
            try JSONIO.rejectUnknown(body, allowed: ["keys"])
            if let given = body["keys"], !(given is NSNull) {
                guard let items = given as? [Any], (1...10_000).contains(items.count) else {
                    throw Problem.badRequest("keys must be an array of 1 to 10000 parked keys", field: "keys")
                }
                keys = try items.enumerated().map { index, item in
                    guard let key = item as? String else { throw Problem.badRequest("keys[\(index)] must be a string", field: "keys[\(index)]") }
                    return key
                }
            }
        }
        if action == "skip", keys == nil {
            throw Problem.badRequest("skip needs keys: the parked keys whose failing event to skip (it is recorded)", field: "keys")
        }
        let requested: [String]
        let asked = keys
        do {
            requested = try await readModels.withConnection { conn in try CheckpointStore.request(action, kind, name: name, keys: asked, on: conn) }
        } catch let error as ParkingError {
            switch error.code {
            case .consumerNotFound: throw Self.notFound(kind, name)
            case .keyNotParked:
                throw Problem(.notFound, "key-not-parked", "A key is not parked", detail: error.message)
            case .keysRequired: throw Problem.badRequest(error.message, field: "keys")
            }
        }
        return JSONIO.response(.accepted, JSONValue.jsonData(["requested": .array(requested.map(JSONValue.string))]))
    }

    static func name(_ context: EventlineRequestContext) throws -> String {
        let name = try JSONIO.pathParameter(context, "name")
        guard ConsumerNames.isValid(name) else {
            throw Problem.badRequest("a projection's or reactor's name is [a-z][a-z0-9_]* (at most 63 characters), not \(name)", field: "name")
        }
        return name
    }

    static func notFound(_ kind: ConsumerID.Kind, _ name: String) -> Problem {
        Problem.notFound(kind == .projection ? "no read model named \(name)" : "no reactor named \(name)")
    }
}

/// Names of projections and reactors as the API takes them.
enum ConsumerNames {
    static func isValid(_ name: String) -> Bool {
        guard let first = name.utf8.first, (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(first), name.utf8.count <= 63 else { return false }
        return name.utf8.allSatisfy {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: "_")
        }
    }
}

import EventStore
import Foundation
import HTTPTypes
import Hummingbird

/// Appends that span streams (`POST /v1/events`) and reads by a DCB query (`GET /v1/events?query=`,
/// `POST /v1/events/query`).
extension Routes {
    /// `POST /v1/events`: `{"appends": [{"stream", "expectedVersion", "events"}], "conditions":
    /// [{"stream", "expectedVersion"}], "condition": {…}}` writes every stream's events or none;
    /// `{"events": [...], "condition": {…}}` appends tagged events to the streams the platform
    /// keeps per type.
    func appendAcross(_ request: Request, _ context: EventlineRequestContext) async throws -> Response {
        let (raw, body) = try await JSONIO.readObject(request, context: context)
        let scope = "POST /v1/events"
        let derived = request.headers[.idempotencyKey].map { Self.eventIDs(scope: scope, key: $0) }
        return try await idempotent(request, context, scope: scope, body: raw) { _ in
            try JSONIO.rejectUnknown(body, allowed: ["appends", "conditions", "condition", "events"])
            let condition = try body["condition"].map { try Self.appendCondition($0) }
            // Events without an id get one derived from the key, numbered across the request.
            var index = 0
            func nextID() -> UUID? {
                defer { index += 1 }
                return derived?(index)
            }
            let result: MultiAppendResult
            switch (body["appends"], body["events"]) {
            case (let given?, nil):
                guard let list = given as? [Any], !list.isEmpty else {
                    throw Problem.badRequest("appends must be a non-empty array", field: "appends")
                }
                guard list.count <= EventStore.maxAppendsPerRequest else {
                    throw Problem.badRequest(
                        "a request appends to at most \(EventStore.maxAppendsPerRequest) streams, got \(list.count)", field: "appends")
                }
                var appends: [StreamAppend] = []
                for (offset, item) in list.enumerated() {
                    let place = "appends[\(offset)]"
                    guard let object = item as? [String: Any] else { throw Problem.badRequest("\(place) must be an object", field: place) }
                    try JSONIO.rejectUnknown(object, allowed: ["stream", "expectedVersion", "events"], in: place)
                    guard let stream = object["stream"] as? String else {
                        throw Problem.badRequest("\(place).stream is required and must be a string", field: "\(place).stream")
                    }
                    let expected = try expectedVersion(object["expectedVersion"], field: "\(place).expectedVersion")
                    guard let items = object["events"] as? [Any], !items.isEmpty else {
                        throw Problem.badRequest("\(place).events must be a non-empty array", field: "\(place).events")
                    }
                    var events: [NewEvent] = []
                    for (number, event) in items.enumerated() {
                        events.append(try newEvent(event, place: "\(place).events[\(number)]", id: nextID(), stream: stream))
                    }
                    appends.append(StreamAppend(stream: stream, expected: expected, events: events))
                }
                let conditions = try Self.streamConditions(body["conditions"]) { try expectedVersion($0, field: $1) }
                result = try await store.append(appends, conditions: conditions, condition: condition)
            case (nil, let given?):
                if body["conditions"] != nil {
                    throw Problem.badRequest("conditions check streams of appends: name the streams in appends", field: "conditions")
                }
                guard let items = given as? [Any], !items.isEmpty else {
                    throw Problem.badRequest("events must be a non-empty array", field: "events")
                }
                var events: [NewEvent] = []
                for (number, event) in items.enumerated() {
                    events.append(try newEvent(event, place: "events[\(number)]", id: nextID(), stream: nil))
                }
                result = try await store.append(events: events, condition: condition)
            case (_?, _?):
                throw Problem.badRequest("give either appends (named streams) or events (streams picked by the platform), not both", field: "events")
            case (nil, nil):
                throw Problem.badRequest("appends (or events) is required", field: "appends")
            }
            return Self.multiAppendAnswer(result)
        }
    }

    /// A multi-stream append's 201: each stream's new version and last position, in order.
    static func multiAppendAnswer(_ result: MultiAppendResult) -> (HTTPResponse.Status, Data) {
        let appends = result.appends.map { part in
            #"{"stream":\#(JSONValue.quoted(part.stream)),"version":\#(part.version),"position":\#(part.position),"events":[\#(part.events.map { #"{"id":"\#($0.id.uuidString.lowercased())","type":\#(JSONValue.quoted($0.type)),"version":\#($0.version),"position":\#($0.position)}"# }.joined(separator: ","))]}"#
        }
        let json = #"{"position":\#(result.position),"appends":[\#(appends.joined(separator: ","))]}"#
        return (.created, Data(json.utf8))
    }

    /// `conditions`: expectations about streams the request does not write.
    static func streamConditions(_ value: Any?, expectedVersion: (Any?, String) throws -> ExpectedVersion) throws -> [StreamCondition] {
        guard let value else { return [] }
        guard let list = value as? [Any] else { throw Problem.badRequest("conditions must be an array", field: "conditions") }
        guard list.count <= EventStore.maxStreamConditions else {
            throw Problem.badRequest("a request checks at most \(EventStore.maxStreamConditions) streams, got \(list.count)", field: "conditions")
        }
        return try list.enumerated().map { offset, item in
            let place = "conditions[\(offset)]"
            guard let object = item as? [String: Any] else { throw Problem.badRequest("\(place) must be an object", field: place) }
            try JSONIO.rejectUnknown(object, allowed: ["stream", "expectedVersion"], in: place)
            guard let stream = object["stream"] as? String else {
                throw Problem.badRequest("\(place).stream is required and must be a string", field: "\(place).stream")
            }
            guard object["expectedVersion"] != nil else {
                throw Problem.badRequest("\(place).expectedVersion is required", field: "\(place).expectedVersion")
            }
            return StreamCondition(stream: stream, expected: try expectedVersion(object["expectedVersion"], "\(place).expectedVersion"))
        }
    }

    /// `{"failIfEventsMatch": {"items": [...]}, "after": P}`.
    static func appendCondition(_ value: Any) throws -> AppendCondition {
        guard let object = value as? [String: Any] else { throw Problem.badRequest("condition must be an object", field: "condition") }
        try JSONIO.rejectUnknown(object, allowed: ["failIfEventsMatch", "after"], in: "condition")
        guard let query = object["failIfEventsMatch"] else {
            throw Problem.badRequest("condition.failIfEventsMatch is required", field: "condition.failIfEventsMatch")
        }
        let after = try JSONIO.integer(object, "after", range: 0...Int(Int64.max))
        return AppendCondition(failIfEventsMatch: try eventQuery(query, place: "condition.failIfEventsMatch"), after: after)
    }

    /// `{"items": [{"types": [...], "tags": [...]}]}`, checked.
    static func eventQuery(_ value: Any, place: String) throws -> EventQuery {
        guard let object = value as? [String: Any] else { throw Problem.badRequest("\(place) must be an object", field: place) }
        try JSONIO.rejectUnknown(object, allowed: ["items"], in: place)
        guard let list = object["items"] as? [Any] else {
            throw Problem.badRequest("\(place).items is required and must be an array", field: "\(place).items")
        }
        var items: [EventQuery.Item] = []
        for (offset, item) in list.enumerated() {
            let at = "\(place).items[\(offset)]"
            guard let fields = item as? [String: Any] else { throw Problem.badRequest("\(at) must be an object", field: at) }
            try JSONIO.rejectUnknown(fields, allowed: ["types", "tags"], in: at)
            func strings(_ name: String) throws -> [String] {
                guard let value = fields[name] else { return [] }
                guard let list = value as? [Any], let strings = list as? [String] else {
                    throw Problem.badRequest("\(at).\(name) must be an array of strings", field: "\(at).\(name)")
                }
                return strings
            }
            items.append(EventQuery.Item(types: try strings("types"), tags: try strings("tags")))
        }
        let query = EventQuery(items: items)
        if let problem = query.problem(place: place) { throw Problem.badRequest(problem, field: place) }
        return query
    }

    /// `POST /v1/events/query`: `{"query": {"items": [...]}, "after": 0, "limit": 100}`.
    func queryLog(_ request: Request, _ context: EventlineRequestContext) async throws -> Response {
        let (_, body) = try await JSONIO.readObject(request, context: context)
        try JSONIO.rejectUnknown(body, allowed: ["query", "after", "limit", "atLeast"])
        guard let given = body["query"] else { throw Problem.badRequest("query is required", field: "query") }
        let query = try Self.eventQuery(given, place: "query")
        let after = try JSONIO.integer(body, "after", range: 0...Int(Int64.max)) ?? 0
        let limit = try JSONIO.integer(body, "limit", range: 1...configuration.maxReadLimit) ?? 100
        let minPosition = try ReadPlacement.minPosition(request, atLeast: JSONIO.integer(body, "atLeast", range: 0...Int(Int64.max)))
        return try await ReadPlacement.serve(minPosition: minPosition) { try await queryAnswer(query, after: after, limit: limit) }
    }

    /// Events matching `query`, with the position up to which it was evaluated (an append's
    /// condition names it as `after`) and the next page's `after`.
    func queryAnswer(_ query: EventQuery, after: Int, limit: Int) async throws -> Response {
        let result = try await store.read(matching: query, after: after, limit: limit)
        let next = result.events.count == limit ? String(result.evaluatedUpTo) : "null"
        let json = #"{"events":[\#(result.events.map { JSONIO.event($0, includeStream: true) }.joined(separator: ","))],"evaluatedUpTo":\#(result.evaluatedUpTo),"next":\#(next)}"#
        return JSONIO.response(.ok, Data(json.utf8))
    }
}

import Aggregates
import EventStore
import EventlineSchemas
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import PostgresClient

/// The routes of the API, over one event store.
struct Routes: Sendable {
    let store: EventStore
    let commands: CommandRegistry
    let configuration: ServerConfiguration
    let metrics: ServerMetrics
    let live: LiveFeed
    let access: AccessControl
    let replication: ReplicationMonitor
    let readModels: ReadModelService
    let logger: Logger

    func register(on router: Endpoints) {
        router.post("/v1/commands/:category/:id") { request, context in try await command(request, context) }
        router.post("/v1/streams/:stream/events") { request, context in try await appendEvents(request, context) }
        router.get("/v1/streams/:stream") { request, context in try await readStream(request, context) }
        router.delete("/v1/streams/:stream") { request, context in try await deleteStream(request, context) }
        router.delete("/v1/subjects/:subject") { request, context in try await forgetSubject(request, context) }
        router.get("/v1/events") { request, context in try await readLog(request, context) }
        router.post("/v1/events") { request, context in try await appendAcross(request, context) }
        router.post("/v1/events/query") { request, context in try await queryLog(request, context) }
        router.get("/v1/events/live") { request, context in try liveLog(request, context) }
        router.get("/health/live") { _, _ in JSONIO.response(.ok, Data(#"{"status":"ok"}"#.utf8)) }
        router.get("/health/ready") { _, _ in try await ready() }
        router.get("/metrics") { _, _ in
            // Consumer groups are read at the scrape (their state is in the database, shared by
            // every server); a database that cannot answer leaves them out, not the scrape.
            let groups = try? await store.consumerGroups()
            let replicationState = await replication.snapshot(maxAge: .seconds(1))
            let reads = [store.replicas?.statistics, readModels.replicas?.statistics].compactMap { $0 }
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.render(
                    store: store, liveClients: live.clients, groups: groups,
                    replication: replicationState, failovers: store.writerNode.failovers, replicaReads: reads))))
        }
        router.get("/openapi.yaml") { _, _ in
            // The document this binary was built with: it describes exactly the routes above.
            Response(
                status: .ok, headers: [.contentType: "application/yaml"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: EmbeddedSchemaFiles.openAPI)))
        }
    }

    // MARK: - Commands

    func command(_ request: Request, _ context: EventlineRequestContext) async throws -> Response {
        let category = try JSONIO.pathParameter(context, "category")
        let id = try JSONIO.pathParameter(context, "id")
        guard let entry = commands.entries[category] else {
            throw Problem.notFound("no aggregate accepts commands in category \(category)")
        }
        let (raw, body) = try await JSONIO.readObject(request, context: context)
        let scope = "POST /v1/commands/\(category)/\(id)"
        let ids = request.headers[.idempotencyKey].map { Self.eventIDs(scope: scope, key: $0) }
        return try await idempotent(request, context, scope: scope, body: raw, eventIDs: ids, answer: Self.commandAnswer) { resumed in
            try JSONIO.rejectUnknown(body, allowed: ["type", "data", "expectedVersion", "metadata"])
            guard let type = try JSONIO.string(body, "type") else { throw Problem.badRequest("type is required", field: "type") }
            guard let data = body["data"] as? [String: Any] else {
                throw Problem.badRequest("data is required and must be a JSON object", field: "data")
            }
            let expectedVersion = try JSONIO.integer(body, "expectedVersion", range: 0...Int(Int64.max))
            let metadata = try metadataFields(body["metadata"], correlationID: context.correlationID ?? context.requestID)
            guard let outcome = try await entry.handle(id, type, JSONValue(foundation: data), expectedVersion, metadata, ids, resumed) else {
                throw Problem(
                    .unprocessableContent, "unknown-command-type", "Unknown command type",
                    detail: "\(category) accepts \(entry.commandTypes.joined(separator: ", ")), not \(type)",
                    extensions: ["field": "type"])
            }
            return Self.commandAnswer(outcome)
        }
    }

    /// A command's 200: the stream, its version, and the events written.
    static func commandAnswer(_ outcome: CommandOutcome) -> (HTTPResponse.Status, Data) {
        let events = outcome.events.map { #"{"type":\#(JSONValue.quoted($0.type)),"version":\#($0.version),"position":\#($0.position)}"# }
        let position = outcome.position.map(String.init) ?? "null"
        let json = #"{"stream":\#(JSONValue.quoted(outcome.stream)),"version":\#(outcome.version),"position":\#(position),"events":[\#(events.joined(separator: ","))]}"#
        return (.ok, Data(json.utf8))
    }

    static func commandAnswer(_ result: AppendResult) -> (HTTPResponse.Status, Data) {
        commandAnswer(CommandOutcome(result))
    }

    /// A stream append's 201.
    static func appendAnswer(_ result: AppendResult) -> (HTTPResponse.Status, Data) {
        let json = #"{"stream":\#(JSONValue.quoted(result.stream)),"version":\#(result.version),"position":\#(result.position)}"#
        return (.created, Data(json.utf8))
    }

    /// Metadata from the request (a JSON object), plus the request id as correlation id when none is given.
    /// A command's metadata: the body's, with `correlationId` (the body's, else the request's
    /// `X-Correlation-Id`, else its request id).
    func metadataFields(_ value: Any?, correlationID: String) throws -> [String: JSONValue] {
        var fields: [String: JSONValue] = [:]
        if let value {
            guard value is [String: Any] else { throw Problem.badRequest("metadata must be a JSON object", field: "metadata") }
            fields = try JSONDecoder().decode([String: JSONValue].self, from: JSONIO.encode(value))
        }
        if fields[MetadataKey.correlationId] == nil { fields[MetadataKey.correlationId] = .string(correlationID) }
        return fields
    }

    /// Runs `body` once per idempotency key: a retry with the same body gets the first
    /// response again, also after a restart; a different body under the key is refused.
    ///
    /// A request that writes events names them with `eventIDs` (derived from the key), so the
    /// log itself tells whether a run of it committed: a retry that finds the key's reservation
    /// still held, or left behind by an interrupted run, looks there and answers with what was
    /// written (`answer`), exactly as the first run would have. `body` is told when the run it
    /// makes resumes an interrupted one.
    func idempotent(
        _ request: Request, _ context: EventlineRequestContext, scope makeScope: @autoclosure () -> String, body raw: Data,
        eventIDs: (@Sendable (Int) -> UUID)? = nil, answer: ((AppendResult) -> (HTTPResponse.Status, Data))? = nil,
        _ body: (_ resumed: Bool) async throws -> (HTTPResponse.Status, Data)
    ) async throws -> Response {
        guard let key = request.headers[.idempotencyKey] else {
            let (status, data) = try await body(false)
            return JSONIO.response(status, data)
        }
        let scope = makeScope()
        guard (1...255).contains(key.utf8.count) else {
            throw Problem.badRequest("the Idempotency-Key header must be 1 to 255 bytes", field: "Idempotency-Key")
        }
        func replayed(_ status: HTTPResponse.Status, _ stored: Data) -> Response {
            var response = JSONIO.response(status, stored)
            if status.code >= 400 { response.headers[.contentType] = "application/problem+json" }
            response.headers[HTTPField.Name("Idempotent-Replayed")!] = "true"
            return response
        }
        switch try await store.reserveIdempotencyKey(scope: scope, key: key, body: raw, abandonAfter: configuration.idempotencyTakeover) {
        case .replay(let status, let stored):
            return replayed(HTTPResponse.Status(code: status), stored)
        case .mismatch:
            throw Problem(
                .unprocessableContent, "idempotency-key-reused", "The idempotency key was used with another request",
                detail: "Idempotency-Key \(key) was first used with a different body")
        case .inProgress:
            // Its owner is alive, but its events may be committed already: then that is the answer.
            if let eventIDs, let answer, let earlier = try await store.appendedEarlier(withIDs: eventIDs) {
                let (status, data) = answer(earlier)
                return replayed(status, data)
            }
            throw Problem(
                .conflict, "idempotency-key-in-progress", "A request with this idempotency key is in progress",
                detail: "retry once the first request with Idempotency-Key \(key) has finished", headers: [.retryAfter: "1"])
        case .reserved(let token, let resumed):
            let status: HTTPResponse.Status
            let data: Data
            do {
                (status, data) = try await body(resumed)
            } catch {
                let (problem, _) = Problem.from(error)
                if Self.nothingWritten(error) && !resumed {
                    // Worth retrying: the next attempt with this key runs the request again.
                    try? await store.releaseIdempotencyKey(scope: scope, key: key, token: token)
                } else if Self.nothingWritten(error) || Self.outcomeUnknown(error) {
                    // An earlier run, or this one, may have written: the next retry takes the key
                    // over at once and looks in the log first.
                    try? await store.abandonIdempotencyKey(scope: scope, key: key, token: token)
                } else if problem.status.code >= 500 {
                    // Unexpected: keep the reservation. A retry finds what was written in the log,
                    // or runs again once the takeover time has passed.
                } else {
                    // A final answer (a refused command, a conflict) is the answer to every retry too.
                    try? await store.completeIdempotencyKey(
                        scope: scope, key: key, token: token, status: Int(problem.status.code),
                        body: problem.body(requestID: context.requestID))
                }
                throw error
            }
            // The outcome is final now: failing to store it must not turn it into an error.
            await completeKey(scope: scope, key: key, token: token, status: status, body: data)
            return JSONIO.response(status, data)
        }
    }

    /// Stores a request's final response under its key. When the database cannot take it now,
    /// a background task keeps trying for a while; meanwhile retries find the request's events
    /// in the log (or, if its server dies, take the reservation over and look there).
    func completeKey(scope: String, key: String, token: UUID, status: HTTPResponse.Status, body: Data) async {
        let store = self.store
        let logger = self.logger
        let complete: @Sendable () async throws -> Void = {
            try await store.completeIdempotencyKey(scope: scope, key: key, token: token, status: Int(status.code), body: body)
        }
        do {
            try await complete()
        } catch {
            logger.warning(
                "the response to an idempotency key was not stored; retrying in the background",
                metadata: ["idempotency.scope": "\(scope)", "error": "\(error)"])
            Task.detached {
                for _ in 0..<120 {
                    try? await Task.sleep(for: .milliseconds(500))
                    if (try? await complete()) != nil { return }
                }
                logger.error("the response to an idempotency key was never stored", metadata: ["idempotency.scope": "\(scope)"])
            }
        }
    }

    /// Whether the request's events may or may not have been committed.
    static func outcomeUnknown(_ error: any Error) -> Bool {
        (error as? EventStoreError)?.code == .commitOutcomeUnknown
    }

    /// Whether `error` guarantees that the request wrote nothing (the database was not reached,
    /// or the store refused before writing).
    static func nothingWritten(_ error: any Error) -> Bool {
        switch error {
        case let error as EventStoreError: return error.code == .unavailable || error.code == .shutdown
        case is CancellationError: return true
        case is CommandContention: return true
        default: return false
        }
    }

    /// Event ids derived from the idempotency key, so that re-running a request whose first run
    /// did commit writes nothing again (the store recognises ids it already holds).
    static func eventIDs(scope: String, key: String) -> @Sendable (Int) -> UUID {
        { index in UUID.sha256Derived(from: "\(scope)\n\(key)\n\(index)") }
    }

    // MARK: - Streams

    func appendEvents(_ request: Request, _ context: EventlineRequestContext) async throws -> Response {
        let stream = try JSONIO.pathParameter(context, "stream")
        let (raw, body) = try await JSONIO.readObject(request, context: context)
        let scope = "POST /v1/streams/\(stream)/events"
        // Events without an id get one derived from the key, so that a retry cannot write them twice.
        let derived = request.headers[.idempotencyKey].map { Self.eventIDs(scope: scope, key: $0) }
        let given = Self.givenEventIDs(body)
        var ids: (@Sendable (Int) -> UUID)? = nil
        if let derived {
            ids = { index in given[index] ?? derived(index) }
        }
        return try await idempotent(request, context, scope: scope, body: raw, eventIDs: ids, answer: Self.appendAnswer) { _ in
            try JSONIO.rejectUnknown(body, allowed: ["expectedVersion", "events"])
            let expected = try expectedVersion(body["expectedVersion"])
            guard let items = body["events"] as? [Any], !items.isEmpty else {
                throw Problem.badRequest("events must be a non-empty array", field: "events")
            }
            var events: [NewEvent] = []
            for (index, item) in items.enumerated() {
                events.append(try newEvent(item, place: "events[\(index)]", id: ids?(index), stream: stream))
            }
            let result = try await store.append(to: stream, expected: expected, events: events)
            return Self.appendAnswer(result)
        }
    }

    /// One event of an append's body (`place` names it in errors): its id is the body's, else
    /// `id`. With `stream`, the event must be one the stream's aggregate (if any) can read.
    func newEvent(_ item: Any, place: String, id derivedID: UUID?, stream: String?) throws -> NewEvent {
        guard let object = item as? [String: Any] else { throw Problem.badRequest("\(place) must be an object", field: place) }
        try JSONIO.rejectUnknown(object, allowed: ["id", "type", "data", "metadata", "schemaVersion", "subject", "personal", "tags"], in: place)
        var id: UUID? = derivedID
        if let given = object["id"] {
            guard let text = given as? String, let uuid = UUID(uuidString: text) else {
                throw Problem.badRequest("\(place).id must be a UUID", field: "\(place).id")
            }
            id = uuid
        }
        guard let type = object["type"] as? String else { throw Problem.badRequest("\(place).type is required", field: "\(place).type") }
        guard let data = object["data"] else { throw Problem.badRequest("\(place).data is required", field: "\(place).data") }
        var metadata: Data? = nil
        if let given = object["metadata"] {
            guard given is [String: Any] else {
                throw Problem.badRequest("\(place).metadata must be a JSON object", field: "\(place).metadata")
            }
            metadata = try JSONIO.encode(given)
        }
        let schemaVersion: Int?
        do {
            schemaVersion = try JSONIO.integer(object, "schemaVersion", range: 1...Int(Int16.max))
        } catch {
            throw Problem.badRequest("\(place).schemaVersion must be an integer from 1 to \(Int16.max)", field: "\(place).schemaVersion")
        }
        let encoded = try JSONIO.encode(data)
        // A stream of a registered aggregate only takes events that aggregate can read,
        // or its commands would fail from then on.
        if let stream, let entry = commands.entries[StreamName.category(of: stream)], !entry.acceptsEvent(type, schemaVersion ?? 1, encoded) {
            throw Problem(
                .unprocessableContent, "invalid-event-for-aggregate", "The aggregate cannot read this event",
                detail: "\(place) is not a valid event of category \(StreamName.category(of: stream)) (its types: \(entry.eventTypes.joined(separator: ", ")))",
                extensions: ["field": .string(place)])
        }
        // Data the domain's upcasters cannot read would fail every read of the stream.
        if let problem = store.configuration.upcasters.problem(type: type, version: schemaVersion ?? 1, data: encoded) {
            throw Problem(
                .unprocessableContent, "invalid-event-data", "The event's data does not fit its schema version",
                detail: "\(place): \(problem)", extensions: ["field": .string("\(place).\(schemaVersion == nil ? "data" : "schemaVersion")")])
        }
        var personal: PersonalData? = nil
        switch (object["subject"], object["personal"]) {
        case (nil, nil):
            break
        case (let subject?, let fields):
            guard let subject = subject as? String else {
                throw Problem.badRequest("\(place).subject must be a string", field: "\(place).subject")
            }
            guard let fields, let paths = fields as? [Any], !paths.isEmpty else {
                throw Problem.badRequest(
                    "\(place).subject needs personal fields: \(place).personal must be a non-empty array of member paths",
                    field: "\(place).personal")
            }
            guard let strings = paths as? [String] else {
                throw Problem.badRequest("\(place).personal must be an array of strings", field: "\(place).personal")
            }
            personal = PersonalData(subject: subject, fields: strings)
        case (nil, _?):
            throw Problem.badRequest("\(place).personal needs a subject: name it in \(place).subject", field: "\(place).subject")
        }
        var tags: [String] = []
        if let given = object["tags"] {
            guard let list = given as? [Any], let strings = list as? [String] else {
                throw Problem.badRequest("\(place).tags must be an array of strings", field: "\(place).tags")
            }
            tags = strings
        }
        return NewEvent(id: id, type: type, data: encoded, metadata: metadata, schemaVersion: schemaVersion, personal: personal, tags: tags)
    }

    /// `DELETE /v1/streams/{stream}[?expectedVersion=N]`: closes the stream for good with a tombstone.
    func deleteStream(_ request: Request, _ context: EventlineRequestContext) async throws -> Response {
        let stream = try JSONIO.pathParameter(context, "stream")
        let query = JSONIO.queryParameters(request)
        try JSONIO.rejectUnknownQuery(query, allowed: ["expectedVersion"])
        var expected = ExpectedVersion.any
        if let text = query["expectedVersion"].map({ String($0) }) {
            if let version = Int(text), version >= 0 {
                expected = try expectedVersion(NSNumber(value: version))
            } else {
                expected = try expectedVersion(text)
            }
        }
        let result = try await store.deleteStream(stream, expected: expected)
        return JSONIO.response(.ok, JSONValue.jsonData([
            "stream": .string(result.stream), "deleted": true, "version": .integer(result.version),
            "position": .integer(result.position), "wasAlreadyDeleted": .bool(result.wasAlreadyAppended),
        ]))
    }

    /// `DELETE /v1/subjects/{subject}`: destroys the subject's key; its personal data reads as null from now on.
    func forgetSubject(_ request: Request, _ context: EventlineRequestContext) async throws -> Response {
        let subject = try JSONIO.pathParameter(context, "subject")
        let query = JSONIO.queryParameters(request)
        try JSONIO.rejectUnknownQuery(query, allowed: ["evenIfUnknown"])
        if let problem = PersonalData.subjectProblem(subject) { throw Problem.badRequest(problem, field: "subject") }
        let evenIfUnknown: Bool
        switch query["evenIfUnknown"].map(String.init) {
        case nil, "false"?: evenIfUnknown = false
        case "true"?: evenIfUnknown = true
        default: throw Problem.badRequest("evenIfUnknown must be true or false", field: "evenIfUnknown")
        }
        let result = try await store.forget(subject: subject, evenIfUnknown: evenIfUnknown)
        return JSONIO.response(.ok, JSONValue.jsonData([
            "subject": .string(subject), "forgotten": true, "position": .integer(result.position),
            "wasAlreadyForgotten": .bool(result.wasAlreadyAppended),
        ]))
    }

    /// The ids the body's events give, by index (unparseable ones are left to validation).
    static func givenEventIDs(_ body: [String: Any]) -> [Int: UUID] {
        guard let items = body["events"] as? [Any] else { return [:] }
        var ids: [Int: UUID] = [:]
        for (index, item) in items.enumerated() {
            if let text = (item as? [String: Any])?["id"] as? String, let id = UUID(uuidString: text) { ids[index] = id }
        }
        return ids
    }

    func expectedVersion(_ value: Any?, field: String = "expectedVersion") throws -> ExpectedVersion {
        switch value {
        case nil: return .any
        case let text as String:
            switch text {
            case "any": return .any
            case "noStream": return .noStream
            case "exists": return .exists
            default: break
            }
        case let number as NSNumber where !JSONIO.isBool(number):
            if let version = Int(exactly: number.doubleValue), version >= 0, number.doubleValue.rounded() == number.doubleValue {
                return version == 0 ? .noStream : .exact(version)
            }
        default: break
        }
        throw Problem.badRequest(
            #"\#(field) must be a number ≥ 0, "any", "noStream" or "exists""#, field: field)
    }

    func readStream(_ request: Request, _ context: EventlineRequestContext) async throws -> Response {
        let stream = try JSONIO.pathParameter(context, "stream")
        let query = JSONIO.queryParameters(request)
        try JSONIO.rejectUnknownQuery(query, allowed: ["from", "limit", "direction", "atLeast"])
        let minPosition = try ReadPlacement.minPosition(request, atLeast: JSONIO.queryInteger(query, "atLeast", range: 0...Int(Int64.max)))
        let limit = try JSONIO.queryInteger(query, "limit", range: 1...configuration.maxReadLimit) ?? 100
        let from = try JSONIO.queryInteger(query, "from", range: 0...Int(Int64.max))
        let direction: ReadDirection
        switch query["direction"].map({ String($0) }) {
        case nil, "forward"?: direction = .forward
        case "backward"?: direction = .backward
        default: throw Problem.badRequest("direction must be forward or backward", field: "direction")
        }
        return try await ReadPlacement.serve(minPosition: minPosition) {
            try await readStream(stream, from: from, direction: direction, limit: limit)
        }
    }

    private func readStream(_ stream: String, from: Int?, direction: ReadDirection, limit: Int) async throws -> Response {
        // One more than asked tells whether there is a next page.
        let events = try await store.readStream(stream, from: from, direction: direction, limit: limit + 1)
        let version = try await store.streamVersion(stream)
        guard version > 0 else { throw Problem.notFound("stream \(stream) has no events") }
        let page = events.prefix(limit)
        var next = "null"
        if events.count > limit, let last = page.last {
            next = String(direction == .forward ? last.version + 1 : last.version - 1)
        }
        let name = (try? StreamName(stream).rawValue) ?? stream
        let json = #"{"stream":\#(JSONValue.quoted(name)),"version":\#(version),"events":[\#(page.map { JSONIO.event($0, includeStream: false) }.joined(separator: ","))],"next":\#(next)}"#
        return JSONIO.response(.ok, Data(json.utf8))
    }

    func readLog(_ request: Request, _ context: EventlineRequestContext) async throws -> Response {
        let query = JSONIO.queryParameters(request)
        try JSONIO.rejectUnknownQuery(query, allowed: ["after", "limit", "category", "type", "query", "atLeast"])
        let after = try JSONIO.queryInteger(query, "after", range: 0...Int(Int64.max)) ?? 0
        let limit = try JSONIO.queryInteger(query, "limit", range: 1...configuration.maxReadLimit) ?? 100
        let minPosition = try ReadPlacement.minPosition(request, atLeast: JSONIO.queryInteger(query, "atLeast", range: 0...Int(Int64.max)))
        if let text = query["query"] {
            // A DCB query (types and tags) instead of categories and types.
            if query["category"] != nil || query["type"] != nil {
                throw Problem.badRequest("query replaces category and type: give one or the other", field: "query")
            }
            guard let object = try? JSONSerialization.jsonObject(with: Data(String(text).utf8)) else {
                throw Problem.badRequest(#"query must be a JSON query, {"items": [{"types": [...], "tags": [...]}]}"#, field: "query")
            }
            if let path = JSONIO.firstNULPath(object, at: "query") {
                throw Problem.badRequest("\(path) contains a NUL character (U+0000), which cannot be stored", field: "query")
            }
            let eventQuery = try Self.eventQuery(object, place: "query")
            return try await ReadPlacement.serve(minPosition: minPosition) { try await queryAnswer(eventQuery, after: after, limit: limit) }
        }
        let filter = try Self.logFilter(query)
        return try await ReadPlacement.serve(minPosition: minPosition) {
            let events = try await store.readAll(after: after, limit: limit, filter: filter)
            let next = events.count == limit ? String(events.last!.position) : "null"
            let json = #"{"events":[\#(events.map { JSONIO.event($0, includeStream: true) }.joined(separator: ","))],"next":\#(next)}"#
            return JSONIO.response(.ok, Data(json.utf8))
        }
    }

    /// `category=a,b` and `type=X,Y` (each also repeatable): events of any of the categories
    /// and any of the types.
    static func logFilter(_ query: Hummingbird.Parameters) throws -> EventFilter {
        func list(_ name: String) throws -> [String]? {
            let values = query.getAll(name).flatMap { $0.split(separator: ",", omittingEmptySubsequences: false) }.map(String.init)
            if values.contains(where: \.isEmpty) { throw Problem.badRequest("\(name) must be a comma-separated list of names", field: name) }
            return values.isEmpty ? nil : values
        }
        return EventFilter(categories: try list("category"), types: try list("type"))
    }

    /// `GET /v1/events/live`: the log from `after` (or the client's `Last-Event-ID`, which a
    /// reconnecting EventSource sends), then live, as server-sent events or NDJSON.
    func liveLog(_ request: Request, _ context: EventlineRequestContext) throws -> Response {
        let query = JSONIO.queryParameters(request)
        try JSONIO.rejectUnknownQuery(query, allowed: ["after", "category", "type"])
        var after = try JSONIO.queryInteger(query, "after", range: 0...Int(Int64.max)) ?? 0
        if let last = request.headers[HTTPField.Name("Last-Event-ID")!] {
            guard let position = Int(last), position >= 0 else {
                throw Problem.badRequest("Last-Event-ID must be a log position (an integer of 0 or more)", field: "Last-Event-ID")
            }
            after = position
        }
        var filter = try Self.logFilter(query)
        // Events are shown under their current names: so are the types asked for.
        let upcasters = store.configuration.upcasters
        filter.types = filter.types.map { types in types.map(upcasters.currentName(of:)).reduce(into: []) { if !$0.contains($1) { $0.append($1) } } }
        let accept = request.headers[.accept] ?? ""
        let format: LiveFeed.Format = accept.contains("application/x-ndjson") && !accept.contains("text/event-stream")
            ? .ndjson : .serverSentEvents
        return try live.response(
            after: after, filter: filter, format: format, client: context.clientIdentity ?? "address \(context.clientAddress)",
            connectionClosed: context.connectionClosed, logger: logger)
    }

    // MARK: - Health

    /// Ready, unless synchronous replication is required and no synchronous standby is connected.
    static func readiness(_ fields: [String: JSONValue], _ state: ReplicationMonitor.Snapshot, required: Bool) throws -> Response {
        if required && state.synchronousConnected == 0 {
            var problem = Problem.unavailable(
                state.synchronousConfigured
                    ? "no synchronous standby is connected, and EVENTLINE_REQUIRE_SYNC_REPLICATION is set"
                    : "synchronous replication is not configured on the primary, and EVENTLINE_REQUIRE_SYNC_REPLICATION is set")
            problem.extensions.merge(fields.filter { $0.key != "status" }) { _, new in new }
            throw problem
        }
        return JSONIO.response(.ok, JSONValue.jsonData(fields))
    }

    /// The node written to, synchronous replication, and each read node's lag.
    static func replicationFields(_ state: ReplicationMonitor.Snapshot, required: Bool) -> [String: JSONValue] {
        var fields: [String: JSONValue] = [
            "writeNode": state.writeNode.map(JSONValue.string) ?? .null,
            "synchronousReplication": .object([
                "configured": .bool(state.synchronousConfigured), "connected": .integer(state.synchronousConnected),
                "required": .bool(required), "standbyNames": .string(state.synchronousStandbyNames),
                "synchronousCommit": .string(state.synchronousCommit),
            ]),
            "standbys": .array(state.standbys.map { standby in
                .object([
                    "name": .string(standby.name), "state": .string(standby.state), "syncState": .string(standby.syncState),
                    "replayLagSeconds": standby.replayLagSeconds.map(JSONValue.number) ?? .null,
                ])
            }),
        ]
        if !state.readNodes.isEmpty {
            fields["readNodes"] = .array(state.readNodes.map { node in
                var entry: [String: JSONValue] = ["node": .string(node.node), "reachable": .bool(node.reachable)]
                if let standby = node.standby { entry["role"] = .string(standby ? "standby" : "primary") }
                if let head = node.head { entry["head"] = .integer(head) }
                if let lag = node.lagPositions { entry["lagPositions"] = .integer(lag) }
                if let lag = node.lagSeconds { entry["lagSeconds"] = .number(lag) }
                if let paused = node.replayPaused { entry["replayPaused"] = .bool(paused) }
                if let error = node.error { entry["error"] = .string(error) }
                return .object(entry)
            })
        }
        return fields
    }

    func ready() async throws -> Response {
        do {
            let head = try await store.headPosition()
            var fields: [String: JSONValue] = ["status": .string("ready"), "head": .integer(head)]
            // Whether requests need a key: an open server says so where monitoring looks.
            if let access = try? await access.access().0 {
                fields["auth"] = .string(access.name)
                if access != .keys { fields["authNote"] = .string(access.explanation) }
            }
            let state = await replication.snapshot(maxAge: .seconds(1))
            fields.merge(Self.replicationFields(state, required: configuration.requireSynchronousReplication)) { _, new in new }
            return try Self.readiness(fields, state, required: configuration.requireSynchronousReplication)
        } catch let error as EventStoreError where error.underlying?.isMissingSchema ?? false {
            throw Problem.schemaMissing(error.underlying!)
        } catch let problem as Problem {
            throw problem
        } catch {
            throw Problem.unavailable("the database is not reachable")
        }
    }
}


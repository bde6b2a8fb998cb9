import EventStore
import Foundation
import PostgresClient
import HTTPTypes
import Hummingbird
import Logging
import ServiceLifecycle
import Synchronization

/// `/v1/consumer-groups`: durable, server-side groups of competing consumers (state in
/// PostgreSQL, see `EventStore.fetch(group:…)`), served by any server process.
struct ConsumerGroupRoutes: Sendable {
    let store: EventStore
    /// Signalled at every commit (and poll tick) and at every settlement in this process:
    /// what a waiting fetch waits for.
    let changes: ChangeSignal
    /// The longest a fetch may wait, in seconds.
    static let maxWait = 60
    /// A waiting fetch also looks again this often (for settlements in other processes and
    /// redeliveries coming due).
    static let recheck: Duration = .milliseconds(500)

    func register(on router: Endpoints) {
        router.get("/v1/consumer-groups") { _, _ in try await list() }
        router.put("/v1/consumer-groups/:name") { request, context in try await put(request, context) }
        router.get("/v1/consumer-groups/:name") { _, context in try await show(context) }
        router.delete("/v1/consumer-groups/:name") { _, context in try await delete(context) }
        router.post("/v1/consumer-groups/:name/fetch") { request, context in try await fetch(request, context) }
        router.post("/v1/consumer-groups/:name/ack") { request, context in try await settle(request, context, acknowledge: true) }
        router.post("/v1/consumer-groups/:name/nack") { request, context in try await settle(request, context, acknowledge: false) }
        router.get("/v1/consumer-groups/:name/parked") { request, context in try await parked(request, context) }
        router.post("/v1/consumer-groups/:name/parked/retry") { request, context in try await retry(request, context) }
    }

    // MARK: - Groups

    func list() async throws -> Response {
        let groups = try await store.consumerGroups()
        return JSONIO.response(.ok, Data(#"{"groups":[\#(groups.map(Self.view).joined(separator: ","))]}"#.utf8))
    }

    func put(_ request: Request, _ context: EventlineRequestContext) async throws -> Response {
        let name = try groupName(context)
        let (_, body) = try await JSONIO.readObject(request, context: context)
        try JSONIO.rejectUnknown(body, allowed: ["categories", "types", "startAfter", "maxDeliveries", "ackTimeout", "maxInFlightPerConsumer", "maxPerStream", "webhook"])
        var settings = ConsumerGroupSettings(
            filter: EventFilter(categories: try Self.names(body, "categories"), types: try Self.names(body, "types")))
        // Absent, startAfter is the group's own (or 0 for a new group); the store refuses a change.
        if let startAfter = try JSONIO.integer(body, "startAfter", range: 0...Int(Int64.max)) {
            settings.startAfter = startAfter
        } else {
            settings.startAfter = try await store.consumerGroup(name)?.settings.startAfter ?? 0
        }
        settings.maxDeliveries = try JSONIO.integer(body, "maxDeliveries", range: ConsumerGroupSettings.maxDeliveriesRange) ?? 5
        settings.ackTimeout = .seconds(try JSONIO.integer(body, "ackTimeout", range: ConsumerGroupSettings.ackTimeoutRange) ?? 30)
        settings.maxPerStream = try JSONIO.integer(body, "maxPerStream", range: ConsumerGroupSettings.maxPerStreamRange) ?? 1
        if !(body["maxInFlightPerConsumer"] is NSNull) {
            settings.maxInFlightPerConsumer = try JSONIO.integer(body, "maxInFlightPerConsumer", range: ConsumerGroupSettings.maxInFlightRange)
        }
        if let webhook = body["webhook"], !(webhook is NSNull) {
            guard let object = webhook as? [String: Any] else { throw Problem.badRequest("webhook must be an object", field: "webhook") }
            try JSONIO.rejectUnknown(object, allowed: ["url", "secret", "batchSize"], in: "webhook")
            guard let url = object["url"] as? String else { throw Problem.badRequest("webhook.url is required", field: "webhook.url") }
            guard let secret = object["secret"] as? String else {
                throw Problem.badRequest("webhook.secret is required", field: "webhook.secret")
            }
            let batchSize: Int?
            do {
                batchSize = try JSONIO.integer(object, "batchSize", range: ConsumerGroupSettings.batchSizeRange)
            } catch {
                throw Problem.badRequest("webhook.batchSize must be an integer from 1 to 1000", field: "webhook.batchSize")
            }
            settings.webhook = ConsumerGroupWebhook(url: url, secret: secret, batchSize: batchSize ?? 100)
        }
        if let problem = settings.problem() { throw Problem.badRequest(problem.message, field: problem.field) }
        let created = try await store.putConsumerGroup(name, settings)
        changes.signal()
        guard let group = try await store.consumerGroup(name) else { throw Self.notFound(name) }
        var response = JSONIO.response(created ? .created : .ok, Data(Self.view(group).utf8))
        if created { response.headers[.location] = "/v1/consumer-groups/\(name)" }
        return response
    }

    func show(_ context: EventlineRequestContext) async throws -> Response {
        let name = try groupName(context)
        guard let group = try await store.consumerGroup(name) else { throw Self.notFound(name) }
        return JSONIO.response(.ok, Data(Self.view(group).utf8))
    }

    func delete(_ context: EventlineRequestContext) async throws -> Response {
        let name = try groupName(context)
        guard try await store.deleteConsumerGroup(name) else { throw Self.notFound(name) }
        return Response(status: .noContent)
    }

    // MARK: - Consuming

    func fetch(_ request: Request, _ context: EventlineRequestContext) async throws -> Response {
        let name = try groupName(context)
        let (_, body) = try await JSONIO.readObject(request, context: context)
        try JSONIO.rejectUnknown(body, allowed: ["consumer", "max", "wait"])
        guard let consumer = try JSONIO.string(body, "consumer"), !consumer.isEmpty, consumer.utf8.count <= 200 else {
            throw Problem.badRequest("consumer is required: a name of 1 to 200 bytes", field: "consumer")
        }
        try JSONIO.rejectControlCharacters(consumer, field: "consumer")
        let max = try JSONIO.integer(body, "max", range: 1...1000) ?? 100
        let wait = try JSONIO.integer(body, "wait", range: 0...Self.maxWait) ?? 0
        let deadline = ContinuousClock.now + .seconds(wait)
        let stopping = Stopping()
        let messages = try await withGracefulShutdownHandler { () async throws -> [ConsumerGroupMessage] in
            while true {
                let generation = changes.generation
                guard let messages = try await store.fetch(group: name, consumer: consumer, max: max) else { throw Self.notFound(name) }
                let left = deadline - .now
                if !messages.isEmpty || left <= .zero || stopping.flag.load(ordering: .relaxed) || Task.isCancelled { return messages }
                // A long poll waits on purpose: the database deadline does not run meanwhile.
                await DatabaseDeadline.excludingWait { await changes.wait(after: generation, timeout: Swift.min(left, Self.recheck)) }
            }
        } onGracefulShutdown: {
            stopping.flag.store(true, ordering: .relaxed)
            changes.signal()
        }
        let items = messages.map(\.json)
        return JSONIO.response(.ok, Data(#"{"messages":[\#(items.joined(separator: ","))]}"#.utf8))
    }

    func settle(_ request: Request, _ context: EventlineRequestContext, acknowledge: Bool) async throws -> Response {
        let name = try groupName(context)
        let (_, body) = try await JSONIO.readObject(request, context: context)
        try JSONIO.rejectUnknown(body, allowed: acknowledge ? ["deliveryIds"] : ["deliveryIds", "retryAfter"])
        guard let items = body["deliveryIds"] as? [Any], (1...1000).contains(items.count) else {
            throw Problem.badRequest("deliveryIds must be an array of 1 to 1000 delivery ids", field: "deliveryIds")
        }
        var ids: [UUID] = []
        for (index, item) in items.enumerated() {
            guard let text = item as? String, let id = UUID(uuidString: text) else {
                throw Problem.badRequest("deliveryIds[\(index)] must be a delivery id (a UUID)", field: "deliveryIds[\(index)]")
            }
            ids.append(id)
        }
        let settlement: DeliverySettlement?
        if acknowledge {
            settlement = try await store.acknowledge(group: name, deliveryIds: ids)
        } else {
            let retryAfter = try JSONIO.integer(body, "retryAfter", range: 0...86_400) ?? 0
            settlement = try await store.refuse(group: name, deliveryIds: ids, retryAfter: .seconds(retryAfter))
        }
        guard let settlement else { throw Self.notFound(name) }
        // A settled delivery may free its stream's next event for a waiting fetch.
        if !settlement.settled.isEmpty { changes.signal() }
        func list(_ ids: [UUID]) -> String { "[" + ids.map { "\"\($0.uuidString.lowercased())\"" }.joined(separator: ",") + "]" }
        let json = #"{"\#(acknowledge ? "acknowledged" : "nacked")":\#(list(settlement.settled)),"stale":\#(list(settlement.stale))}"#
        return JSONIO.response(.ok, Data(json.utf8))
    }

    // MARK: - Parked

    func parked(_ request: Request, _ context: EventlineRequestContext) async throws -> Response {
        let name = try groupName(context)
        let query = JSONIO.queryParameters(request)
        try JSONIO.rejectUnknownQuery(query, allowed: ["after", "limit"])
        let after = try JSONIO.queryInteger(query, "after", range: 0...Int(Int64.max)) ?? 0
        let limit = try JSONIO.queryInteger(query, "limit", range: 1...1000) ?? 100
        guard let parked = try await store.parkedMessages(group: name, after: after, limit: limit) else { throw Self.notFound(name) }
        let items = parked.map { message in
            let error = message.lastError.map(JSONValue.quoted) ?? "null"
            return #"{"attempt":\#(message.attempt),"parkedAt":"\#(message.parkedAt.formatted(JSONIO.timestampStyle))","lastError":\#(error),"#
                + JSONIO.event(message.event, includeStream: true).dropFirst()
        }
        let next = parked.count == limit ? String(parked.last!.event.position) : "null"
        return JSONIO.response(.ok, Data(#"{"parked":[\#(items.joined(separator: ","))],"next":\#(next)}"#.utf8))
    }

    func retry(_ request: Request, _ context: EventlineRequestContext) async throws -> Response {
        let name = try groupName(context)
        var positions: [Int]? = nil
        // The body is optional: none (or {}) retries every parked event.
        if request.headers[.contentType] != nil || (request.headers[.contentLength].flatMap(Int.init) ?? 0) > 0 {
            let (_, body) = try await JSONIO.readObject(request, context: context)
            try JSONIO.rejectUnknown(body, allowed: ["positions"])
            if let given = body["positions"] {
                guard let items = given as? [Any], (1...10_000).contains(items.count) else {
                    throw Problem.badRequest("positions must be an array of 1 to 10000 log positions", field: "positions")
                }
                positions = try items.enumerated().map { index, item in
                    guard let number = item as? NSNumber, !JSONIO.isBool(number), let position = Int(exactly: number.doubleValue), position > 0 else {
                        throw Problem.badRequest("positions[\(index)] must be a log position", field: "positions[\(index)]")
                    }
                    return position
                }
            }
        }
        guard let retried = try await store.retryParked(group: name, positions: positions) else { throw Self.notFound(name) }
        if retried > 0 { changes.signal() }
        return JSONIO.response(.ok, Data(#"{"retried":\#(retried)}"#.utf8))
    }

    // MARK: - Helpers

    func groupName(_ context: EventlineRequestContext) throws -> String {
        let name = try JSONIO.pathParameter(context, "name")
        guard EventStore.isValidConsumerGroupName(name) else {
            throw Problem.badRequest(
                "a consumer group's name is lowercase letters, digits, _, . and - (starting with a letter or digit, at most 100), not \(name)",
                field: "name")
        }
        return name
    }

    static func notFound(_ name: String) -> Problem {
        Problem(.notFound, "consumer-group-not-found", "No such consumer group", detail: "there is no consumer group \(name)")
    }

    /// A list of names (`categories`, `types`), or nil when absent or null (all).
    static func names(_ body: [String: Any], _ field: String) throws -> [String]? {
        guard let value = body[field], !(value is NSNull) else { return nil }
        guard let items = value as? [Any], let names = items as? [String] else {
            throw Problem.badRequest("\(field) must be an array of names", field: field)
        }
        for name in names { try JSONIO.rejectControlCharacters(name, field: field) }
        return names
    }

    /// A group as the API shows it (never its webhook's secret).
    static func view(_ group: ConsumerGroupStatus) -> String {
        func list(_ names: [String]?) -> String { names.map { "[" + $0.map(JSONValue.quoted).joined(separator: ",") + "]" } ?? "null" }
        let webhook = group.settings.webhook.map { #"{"url":\#(JSONValue.quoted($0.url)),"batchSize":\#($0.batchSize)}"# } ?? "null"
        let consumers = group.consumers.map {
            #"{"name":\#(JSONValue.quoted($0.name)),"lastSeen":"\#($0.lastSeen.formatted(JSONIO.timestampStyle))"}"#
        }
        return #"{"name":\#(JSONValue.quoted(group.name)),"categories":\#(list(group.settings.filter.categories)),"types":\#(list(group.settings.filter.types)),"#
            + #""startAfter":\#(group.settings.startAfter),"maxDeliveries":\#(group.settings.maxDeliveries),"ackTimeout":\#(group.settings.ackTimeout.components.seconds),"#
            + #""maxInFlightPerConsumer":\#(group.settings.maxInFlightPerConsumer.map(String.init) ?? "null"),"maxPerStream":\#(group.settings.maxPerStream),"webhook":\#(webhook),"#
            + #""checkpoint":\#(group.checkpoint),"head":\#(group.head),"lag":\#(group.lag),"inFlight":\#(group.inFlight),"waiting":\#(group.waiting),"parked":\#(group.parked),"#
            + #""redeliveries":\#(group.redeliveries),"consumers":[\#(consumers.joined(separator: ","))],"createdAt":"\#(group.createdAt.formatted(JSONIO.timestampStyle))"}"#
    }
}

/// Set when the server begins to shut down during a waiting fetch.
private final class Stopping: Sendable {
    let flag = Atomic<Bool>(false)
}

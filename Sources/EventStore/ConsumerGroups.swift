import Foundation
import PostgresClient

/// Where a group delivers itself: batches POSTed by `deliver`, signed with `secret`.
public struct ConsumerGroupWebhook: Sendable, Hashable {
    public var url: String
    public var secret: String
    public var batchSize: Int

    public init(url: String, secret: String, batchSize: Int = 100) {
        self.url = url
        self.secret = secret
        self.batchSize = batchSize
    }
}

/// What a consumer group follows and how it delivers.
public struct ConsumerGroupSettings: Sendable, Hashable {
    /// Only events of these categories and types (nil: all).
    public var filter: EventFilter
    /// The group starts with the events after this position (fixed once the group exists).
    public var startAfter: Int
    /// Deliveries of one event before it is parked.
    public var maxDeliveries: Int
    /// How long a consumer has to acknowledge a delivery before it is delivered again.
    public var ackTimeout: Duration
    public var webhook: ConsumerGroupWebhook?
    /// The most deliveries one consumer may hold unacknowledged (nil: no bound): its fetches
    /// get only what fits, so a consumer that never acks cannot hold every stream's head.
    public var maxInFlightPerConsumer: Int?
    /// How many consecutive events of one stream a fetch hands to one consumer together (1:
    /// one at a time). A hot stream then moves a run per round trip; its order holds, because a
    /// run is acknowledged in order, or (refused, overdue) returned whole.
    public var maxPerStream: Int

    public init(
        filter: EventFilter = .all, startAfter: Int = 0, maxDeliveries: Int = 5, ackTimeout: Duration = .seconds(30),
        webhook: ConsumerGroupWebhook? = nil, maxInFlightPerConsumer: Int? = nil, maxPerStream: Int = 1
    ) {
        self.maxPerStream = maxPerStream
        self.filter = filter
        self.startAfter = startAfter
        self.maxDeliveries = maxDeliveries
        self.ackTimeout = ackTimeout
        self.webhook = webhook
        self.maxInFlightPerConsumer = maxInFlightPerConsumer
    }

    public static let maxDeliveriesRange = 1...100
    /// In seconds.
    public static let ackTimeoutRange = 1...3600
    public static let batchSizeRange = 1...1000
    public static let maxInFlightRange = 1...10_000
    public static let maxPerStreamRange = 1...1000

    /// Why these settings cannot be stored, or nil.
    public func problem() -> (field: String, message: String)? {
        for (field, names) in [("categories", filter.categories), ("types", filter.types)] {
            if let names, names.isEmpty || names.contains(where: { $0.isEmpty || $0.utf8.count > 200 }) {
                return (field, "\(field) must be a non-empty list of names (1 to 200 bytes each), or absent for all")
            }
        }
        if startAfter < 0 { return ("startAfter", "startAfter must be a position of 0 or more") }
        if let limit = maxInFlightPerConsumer, !Self.maxInFlightRange.contains(limit) {
            return ("maxInFlightPerConsumer", "maxInFlightPerConsumer must be an integer from 1 to 10000, or absent for no bound")
        }
        if !Self.maxPerStreamRange.contains(maxPerStream) {
            return ("maxPerStream", "maxPerStream must be an integer from 1 to 1000")
        }
        if !Self.maxDeliveriesRange.contains(maxDeliveries) {
            return ("maxDeliveries", "maxDeliveries must be an integer from 1 to 100")
        }
        let seconds = ackTimeout.components.seconds
        if ackTimeout.components.attoseconds != 0 || !Self.ackTimeoutRange.contains(Int(seconds)) {
            return ("ackTimeout", "ackTimeout must be a whole number of seconds from 1 to 3600")
        }
        if let webhook {
            // A space, CR or LF has no place in a URL (Foundation may take some of them), and a
            // stored one would reach the request line of every delivery.
            if webhook.url.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value == 0x7F || $0.properties.generalCategory == .control }) {
                return ("webhook.url", "webhook.url must not contain spaces or control characters (CR, LF, tab); percent-encode them")
            }
            guard let url = URL(string: webhook.url), let scheme = url.scheme?.lowercased(), ["http", "https"].contains(scheme),
                let host = url.host, !host.isEmpty, webhook.url.utf8.count <= 2000
            else {
                return ("webhook.url", "webhook.url must be an absolute http or https URL (at most 2000 bytes)")
            }
            if webhook.secret.isEmpty || webhook.secret.utf8.count > 1000 {
                return ("webhook.secret", "webhook.secret must be 1 to 1000 bytes")
            }
            if !Self.batchSizeRange.contains(webhook.batchSize) {
                return ("webhook.batchSize", "webhook.batchSize must be an integer from 1 to 1000")
            }
        }
        return nil
    }
}

/// A consumer group as stored, with its progress.
public struct ConsumerGroupStatus: Sendable {
    public var name: String
    public var settings: ConsumerGroupSettings
    /// The position up to which every event of the group is acknowledged or parked.
    public var checkpoint: Int
    /// The log's head when the status was read.
    public var head: Int
    /// Positions of the log after the checkpoint.
    public var lag: Int { max(0, head - checkpoint) }
    /// Events handed to a consumer, not acknowledged yet and within their ack deadline.
    public var inFlight: Int
    /// Events waiting for delivery: scanned and not handed out yet, or handed out and past
    /// their deadline (a status read returns or parks those first). Events the group has not
    /// scanned yet are not counted.
    public var waiting: Int
    public var parked: Int
    /// Deliveries after the first, ever.
    public var redeliveries: Int
    /// The consumers that fetched in the last `recentConsumers`, newest first.
    public var consumers: [(name: String, lastSeen: Date)]
    public var createdAt: Date

    public static let recentConsumers: Duration = .seconds(300)
}

/// An event handed to a consumer: acknowledge it with `deliveryId` within the ack timeout.
public struct ConsumerGroupMessage: Sendable {
    public var deliveryId: UUID
    /// 1 for the first delivery.
    public var attempt: Int
    public var event: RecordedEvent

    /// The message as the API (and a webhook's batch) shows it: the event, with its delivery.
    public var json: String {
        #"{"deliveryId":"\#(deliveryId.uuidString.lowercased())","attempt":\#(attempt),"# + event.json(includeStream: true).dropFirst()
    }

    /// The API's timestamps: ISO 8601 with milliseconds.
    public static let timestampStyle = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
}

extension RecordedEvent {
    /// The event as the API shows it: its data in the current shape (the stored JSON byte for
    /// byte unless an upcaster changed it), its metadata as stored.
    public func json(includeStream: Bool) -> String {
        var out = "{\"id\":\"\(id.uuidString.lowercased())\""
        if includeStream { out += ",\"stream\":\(JSONValue.quoted(stream))" }
        out += ",\"type\":\(JSONValue.quoted(type)),\"version\":\(version),\"position\":\(position)"
        out += ",\"schemaVersion\":\(schemaVersion)"
        if !tags.isEmpty { out += ",\"tags\":[\(tags.map(JSONValue.quoted).joined(separator: ","))]" }
        out += ",\"data\":\(String(decoding: data, as: UTF8.self))"
        out += ",\"metadata\":\(String(decoding: metadata, as: UTF8.self))"
        out += ",\"recordedAt\":\"\(recordedAt.formatted(ConsumerGroupMessage.timestampStyle))\"}"
        return out
    }
}

/// An event the group gave up on after `maxDeliveries` attempts.
public struct ParkedMessage: Sendable {
    public var attempt: Int
    public var parkedAt: Date
    /// What the last attempt's consumer said, if anything (a webhook's status, say).
    public var lastError: String?
    public var event: RecordedEvent
}

/// The outcome of acknowledging (or refusing) deliveries: those that were in flight, and those
/// that were not (acknowledged already, timed out and handed out again, or unknown).
public struct DeliverySettlement: Sendable, Equatable {
    public var settled: [UUID]
    public var stale: [UUID]
}

/// A fetch of a group with a webhook from a consumer (or the other way round).
public struct ConsumerGroupDeliveredByWebhook: Error, Sendable, CustomStringConvertible {
    public var group: String
    /// Whether the group has a webhook (and the fetch came from a consumer).
    public var hasWebhook: Bool
    public var description: String {
        hasWebhook
            ? "consumer group \(group) delivers itself by webhook; consumers cannot fetch from it"
            : "consumer group \(group) has no webhook"
    }
}

/// A change of a group's `startAfter`, which is fixed once the group exists.
public struct ConsumerGroupStartFixed: Error, Sendable, CustomStringConvertible {
    public var group: String
    /// Where the group starts.
    public var startAfter: Int
    public var description: String {
        "consumer group \(group) starts after position \(startAfter); delete it and create it again to start elsewhere"
    }
}

/// Consumer groups: state in PostgreSQL (migration 0009), served by any process.
///
/// A fetch runs in one transaction under a lock on the group's row: it returns timed-out
/// deliveries to the queue (or parks them; servers also sweep every group each second, and
/// status reads do it first), scans the log past the group's `scanned` position
/// into queued rows (a bounded window), then hands out the earliest queued events whose
/// stream has nothing earlier outstanding, so a stream's events are delivered one at a time and
/// in order. An acknowledgement deletes the delivery's row; the checkpoint is the position
/// before the earliest row still outstanding.
extension EventStore {
    /// Whether `name` can name a group: `[a-z0-9][a-z0-9_.-]*`, at most 100 characters.
    public static func isValidConsumerGroupName(_ name: String) -> Bool {
        guard let first = name.utf8.first, name.utf8.count <= 100 else { return false }
        func allowed(_ byte: UInt8, first: Bool) -> Bool {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                || (!first && (byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "-")))
        }
        return allowed(first, first: true) && name.utf8.dropFirst().allSatisfy { allowed($0, first: false) }
    }

    /// Queued rows a fetch keeps at most (it scans the log only below this).
    static let consumerGroupWindow = 5000

    private func checkGroupName(_ name: String) throws {
        guard Self.isValidConsumerGroupName(name) else {
            throw EventStoreError.invalidArgument("a consumer group's name is [a-z0-9][a-z0-9_.-]* (at most 100 characters), not \(name)")
        }
    }

    /// Creates the group or changes its settings; true when it was created. A group's
    /// `startAfter` is fixed once it exists (`ConsumerGroupStartFixed`).
    public func putConsumerGroup(_ name: String, _ settings: ConsumerGroupSettings) async throws -> Bool {
        try checkGroupName(name)
        if let problem = settings.problem() { throw EventStoreError.invalidArgument(problem.message) }
        let types = settings.filter.types.map(configuration.upcasters.storedNames(of:))
        let timeout = Int(settings.ackTimeout.components.seconds) * 1000
        let webhook = settings.webhook
        return try await translatingErrors {
            try await pool.withConnection { conn in
                try conn.transaction { conn in
                    if let row = try conn.query("SELECT start_after FROM eventline.consumer_groups WHERE name = \(name) FOR UPDATE").first {
                        let startAfter = try row.decode(0, as: Int.self)
                        guard startAfter == settings.startAfter else { throw ConsumerGroupStartFixed(group: name, startAfter: startAfter) }
                        try conn.execute("""
                            UPDATE eventline.consumer_groups SET categories = \(settings.filter.categories), types = \(types),
                                max_deliveries = \(settings.maxDeliveries), ack_timeout_ms = \(timeout),
                                max_in_flight_per_consumer = \(settings.maxInFlightPerConsumer), max_per_stream = \(settings.maxPerStream),
                                webhook_url = \(webhook?.url), webhook_secret = \(webhook?.secret), webhook_batch_size = \(webhook?.batchSize),
                                updated_at = now()
                            WHERE name = \(name)
                            """)
                        return false
                    }
                    try conn.execute("""
                        INSERT INTO eventline.consumer_groups
                            (name, categories, types, start_after, max_deliveries, ack_timeout_ms, webhook_url, webhook_secret, webhook_batch_size,
                             scanned, max_in_flight_per_consumer, max_per_stream)
                        VALUES (\(name), \(settings.filter.categories), \(types), \(settings.startAfter), \(settings.maxDeliveries), \(timeout),
                                \(webhook?.url), \(webhook?.secret), \(webhook?.batchSize), \(settings.startAfter), \(settings.maxInFlightPerConsumer), \(settings.maxPerStream))
                        """)
                    return true
                }
            }
        }
    }

    /// Deletes the group and everything it has not delivered; false when there was none.
    public func deleteConsumerGroup(_ name: String) async throws -> Bool {
        try checkGroupName(name)
        return try await translatingErrors {
            try await pool.withConnection { conn in
                // Its webhook lease's row goes with it.
                try conn.query("""
                    WITH gone AS (DELETE FROM eventline.consumer_groups WHERE name = \(name) RETURNING name),
                         lease AS (DELETE FROM eventline.checkpoints c USING gone WHERE c.kind = 'webhook' AND c.name = gone.name)
                    SELECT count(*) FROM gone
                    """).first!.decode(0, as: Int.self) == 1
            }
        }
    }

    /// The group `name` with its progress, or nil.
    public func consumerGroup(_ name: String) async throws -> ConsumerGroupStatus? {
        try checkGroupName(name)
        return try await consumerGroups(only: name).first
    }

    /// The webhook of group `name`: nil when the group does not exist, `.some(nil)` when it has
    /// none (a cheap look-up for `deliver`, which asks before every batch).
    public func consumerGroupWebhook(_ name: String) async throws -> ConsumerGroupWebhook?? {
        try checkGroupName(name)
        return try await translatingErrors {
            try await pool.withConnection { conn -> ConsumerGroupWebhook?? in
                guard let row = try conn.query("""
                    SELECT webhook_url, webhook_secret, webhook_batch_size FROM eventline.consumer_groups WHERE name = \(name)
                    """).first
                else { return nil }
                guard let url = try row.decode(0, as: String?.self) else { return .some(nil) }
                return .some(ConsumerGroupWebhook(url: url, secret: try row.decode(1), batchSize: try row.decode(2)))
            }
        }
    }

    /// The names of the groups that have a webhook, by name (what `deliver` looks for).
    public func consumerGroupsWithWebhooks() async throws -> [String] {
        try await translatingErrors {
            try await pool.withConnection { conn in
                try conn.query("SELECT name FROM eventline.consumer_groups WHERE webhook_url IS NOT NULL ORDER BY name").rows.map { try $0.decode(0) }
            }
        }
    }

    /// Every group (or only `only`), by name.
    public func consumerGroups(only: String? = nil) async throws -> [ConsumerGroupStatus] {
        let upcasters = configuration.upcasters
        return try await translatingErrors {
            try await pool.withConnection { conn in
                // Overdue deliveries are returned or parked first: the figures are true without a fetch.
                _ = try conn.query("SELECT eventline.consumer_groups_sweep(\(only))")
                let head = try conn.query("SELECT position FROM eventline.log_head").first?.decode(0, as: Int.self) ?? 0
                let groups = try conn.query("""
                    SELECT g.name, to_json(g.categories)::text, to_json(g.types)::text, g.start_after, g.max_deliveries, g.ack_timeout_ms,
                           g.webhook_url, g.webhook_secret, g.webhook_batch_size, g.scanned, g.redeliveries, g.created_at,
                           m.earliest, m.delivered, m.ready, m.parked, g.max_in_flight_per_consumer, g.max_per_stream
                    FROM eventline.consumer_groups g
                    -- One pass over each group's rows for all four figures.
                    CROSS JOIN LATERAL (
                        SELECT min(position) FILTER (WHERE state <> 'parked') AS earliest,
                               -- A delivery past its deadline waits for its next fetch: it is waiting.
                               count(*) FILTER (WHERE state = 'delivered' AND due_at > now()) AS delivered,
                               count(*) FILTER (WHERE state IN ('ready', 'blocked') OR (state = 'delivered' AND due_at <= now())) AS ready,
                               count(*) FILTER (WHERE state = 'parked') AS parked
                        FROM eventline.consumer_group_messages WHERE group_name = g.name
                    ) m
                    WHERE \(only)::text IS NULL OR g.name = \(only)::text
                    ORDER BY g.name
                    """)
                let consumers = try conn.query("""
                    SELECT group_name, consumer, last_seen FROM eventline.consumer_group_consumers
                    WHERE (\(only)::text IS NULL OR group_name = \(only)::text)
                      AND last_seen > now() - make_interval(secs => \(Double(ConsumerGroupStatus.recentConsumers.components.seconds)))
                    ORDER BY last_seen DESC
                    """)
                var seen: [String: [(name: String, lastSeen: Date)]] = [:]
                for row in consumers.rows {
                    seen[try row.decode(0), default: []].append((try row.decode(1), try row.decode(2)))
                }
                return try groups.rows.map { row in
                    func names(_ index: Int) throws -> [String]? {
                        guard let json = try row.decode(index, as: String?.self) else { return nil }
                        return try JSONDecoder().decode([String]?.self, from: Data(json.utf8))
                    }
                    let name: String = try row.decode(0)
                    var webhook: ConsumerGroupWebhook? = nil
                    if let url = try row.decode(6, as: String?.self) {
                        webhook = ConsumerGroupWebhook(url: url, secret: try row.decode(7), batchSize: try row.decode(8))
                    }
                    // Types are shown under their current names.
                    let types = try names(2).map { $0.map(upcasters.currentName(of:)).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } } }
                    let settings = ConsumerGroupSettings(
                        filter: EventFilter(categories: try names(1), types: types), startAfter: try row.decode(3),
                        maxDeliveries: try row.decode(4), ackTimeout: .milliseconds(try row.decode(5, as: Int.self)), webhook: webhook,
                        maxInFlightPerConsumer: try row.decode(16, as: Int?.self), maxPerStream: try row.decode(17))
                    let scanned: Int = try row.decode(9)
                    let earliest = try row.decode(12, as: Int?.self)
                    return ConsumerGroupStatus(
                        name: name, settings: settings, checkpoint: earliest.map { $0 - 1 } ?? scanned, head: head,
                        inFlight: try row.decode(13), waiting: try row.decode(14), parked: try row.decode(15),
                        redeliveries: try row.decode(10), consumers: seen[name] ?? [], createdAt: try row.decode(11))
                }
            }
        }
    }

    /// Hands `consumer` up to `max` events of the group (none when nothing can be delivered
    /// now), or nil when the group does not exist.
    /// A group with a webhook is delivered by `deliver` only (`byWebhook`): a fetch from
    /// anywhere else throws `ConsumerGroupDeliveredByWebhook`.
    public func fetch(group name: String, consumer: String, max: Int, byWebhook: Bool = false) async throws -> [ConsumerGroupMessage]? {
        try checkGroupName(name)
        guard !consumer.isEmpty, consumer.utf8.count <= 200, !consumer.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw EventStoreError.invalidArgument("a consumer's name is 1 to 200 bytes with no control characters")
        }
        guard (1...1000).contains(max) else { throw EventStoreError.invalidArgument("max must be from 1 to 1000, got \(max)") }
        let reading = self.reading
        let window = Self.consumerGroupWindow
        return try await translatingErrors {
            try await pool.withConnection { conn -> [ConsumerGroupMessage]? in
                let handed = try conn.transaction { conn -> [(position: Int, attempt: Int, id: UUID)]? in
                    guard let group = try conn.query("""
                        SELECT scanned, max_deliveries, ack_timeout_ms, webhook_url IS NOT NULL, max_in_flight_per_consumer, max_per_stream
                        FROM eventline.consumer_groups WHERE name = \(name) FOR UPDATE
                        """).first
                    else { return nil }
                    guard try group.decode(3, as: Bool.self) == byWebhook else {
                        throw ConsumerGroupDeliveredByWebhook(group: name, hasWebhook: !byWebhook)
                    }
                    let scanned: Int = try group.decode(0)
                    let timeout: Int = try group.decode(2)
                    let inFlightLimit = try group.decode(4, as: Int?.self)
                    let perStream: Int = try group.decode(5)
                    // Deliveries whose ack deadline passed wait again, or are parked (and the
                    // next event of their stream is readied).
                    _ = try conn.query("SELECT eventline.consumer_group_expire(\(name))")
                    // The log past `scanned`, into the queue, while the queue is short.
                    let queued = try conn.query("""
                        SELECT count(*) FROM (SELECT 1 FROM eventline.consumer_group_messages
                                              WHERE group_name = \(name) AND state = 'ready' LIMIT \(window)) q
                        """).first!.decode(0, as: Int.self)
                    if queued < window {
                        let head = try conn.query("SELECT position FROM eventline.log_head").first?.decode(0, as: Int.self) ?? 0
                        if head > scanned {
                            let limit = Swift.min(window - queued, Swift.max(1000, max * 4))
                            let last = try conn.query("""
                                WITH picked AS (
                                    SELECT e.position, e.stream FROM eventline.events e, eventline.consumer_groups g
                                    WHERE g.name = \(name) AND e.position > \(scanned) AND e.position <= \(head)
                                      AND (g.categories IS NULL OR e.category = ANY(g.categories))
                                      AND (g.types IS NULL OR e.type = ANY(g.types))
                                    ORDER BY e.position LIMIT \(limit)
                                ), queued AS (
                                    -- A stream's first event waits as blocked when an earlier
                                    -- one of the stream is outstanding, or is in this page.
                                    INSERT INTO eventline.consumer_group_messages (group_name, position, stream, state)
                                    SELECT \(name), p.position, p.stream,
                                           CASE WHEN row_number() OVER (PARTITION BY p.stream ORDER BY p.position) = 1
                                                 AND NOT EXISTS (
                                                     SELECT 1 FROM eventline.consumer_group_messages o
                                                     WHERE o.group_name = \(name) AND o.stream = p.stream AND o.state <> 'parked')
                                                THEN 'ready' ELSE 'blocked' END
                                    FROM picked p
                                    RETURNING position
                                )
                                SELECT count(*), max(position) FROM queued
                                """).first!
                            let count = try last.decode(0, as: Int.self)
                            let upTo = count == limit ? try last.decode(1, as: Int.self) : head
                            try conn.execute("UPDATE eventline.consumer_groups SET scanned = \(upTo) WHERE name = \(name)")
                        }
                    }
                    // A consumer bounded in flight gets what fits under its bound.
                    var room = max
                    if let inFlightLimit {
                        let held = try conn.query("""
                            SELECT count(*) FROM eventline.consumer_group_messages
                            WHERE group_name = \(name) AND state = 'delivered' AND consumer = \(consumer)
                            """).first?.decode(0, as: Int.self) ?? 0
                        room = Swift.min(max, inFlightLimit - held)
                    }
                    // The earliest ready events: each the first outstanding one of its stream
                    // (its later ones are blocked), so this reads about what it hands out.
                    var ready = room <= 0 ? [] : try conn.query(Self.readyPositions(group: name, max: room)).rows.map { try $0.decode(0, as: Int.self) }
                    // With runs, each ready event brings the next waiting ones of its stream along.
                    if perStream > 1 && !ready.isEmpty && ready.count < room {
                        ready = try conn.query(Self.runs(group: name, heads: ready, perStream: perStream, max: room)).rows.map { try $0.decode(0, as: Int.self) }
                    }
                    var handed: [(position: Int, attempt: Int, id: UUID)] = []
                    if !ready.isEmpty {
                        let rows = try conn.query(Self.handOut(
                            group: name, positions: ready, consumer: consumer, ackTimeoutMilliseconds: timeout, runs: perStream > 1))
                        handed = try rows.rows.map { row in
                            (position: try row.decode(0, as: Int.self), attempt: try row.decode(1, as: Int.self), id: try row.decode(2, as: UUID.self))
                        }
                    }
                    let again = handed.filter { $0.attempt > 1 }.count
                    if again > 0 {
                        try conn.execute("UPDATE eventline.consumer_groups SET redeliveries = redeliveries + \(again) WHERE name = \(name)")
                    }
                    try conn.execute("""
                        INSERT INTO eventline.consumer_group_consumers (group_name, consumer) VALUES (\(name), \(consumer))
                        ON CONFLICT (group_name, consumer) DO UPDATE SET last_seen = now()
                        """)
                    return handed.sorted { $0.position < $1.position }
                }
                guard let handed else { return nil }
                guard !handed.isEmpty else { return [] }
                // Events never change: read after the commit, outside the lock.
                let events = try reading.decode(conn.query("""
                    SELECT \(unsafeSQL: Self.eventColumns) FROM eventline.events WHERE position = ANY(\(handed.map(\.position))) ORDER BY position
                    """), on: conn)
                return zip(handed, events).map { ConsumerGroupMessage(deliveryId: $0.id, attempt: $0.attempt, event: $1) }
            }
        }
    }

    /// The statements that hand `consumer` up to `max` ready events of group `name` (under the
    /// group's row lock): the earliest ready positions, read from the index of ready events,
    /// then those rows by the primary key, returning each one's position, attempt and delivery
    /// id. Two statements, so that the second is planned for the positions it is given: a
    /// queue the planner has no statistics of yet cannot turn it into a scan of the group.
    static func readyPositions(group name: String, max: Int) -> SQLQuery {
        """
            SELECT position FROM eventline.consumer_group_messages
            WHERE group_name = \(name) AND state = 'ready' AND due_at <= now()
            ORDER BY position LIMIT \(max)
            """
    }

    /// `runs`: the positions include waiting (blocked) events behind ready ones (`runs(…)`).
    static func handOut(group name: String, positions: [Int], consumer: String, ackTimeoutMilliseconds timeout: Int, runs: Bool = false) -> SQLQuery {
        let states = runs ? "m.state IN ('ready', 'blocked')" : "m.state = 'ready'"
        return """
            UPDATE eventline.consumer_group_messages m
            SET state = 'delivered', attempt = m.attempt + 1, delivery_id = gen_random_uuid(), consumer = \(consumer),
                due_at = now() + make_interval(secs => \(Double(timeout) / 1000))
            WHERE m.group_name = \(name) AND m.position = ANY(\(positions)) AND \(unsafeSQL: states)
            RETURNING m.position, m.attempt, m.delivery_id
            """
    }

    /// The ready `heads` with, behind each, up to `perStream` - 1 of the next waiting events of
    /// its stream (in order, none parked between them counts), `max` positions in all, earliest
    /// heads first: a run of one stream goes to one consumer.
    static func runs(group name: String, heads: [Int], perStream: Int, max: Int) -> SQLQuery {
        """
            SELECT r.position FROM (
                SELECT h.position AS head, n.position
                FROM eventline.consumer_group_messages h
                CROSS JOIN LATERAL (
                    SELECT h.position UNION ALL
                    (SELECT b.position FROM eventline.consumer_group_messages b
                     WHERE b.group_name = \(name) AND b.stream = h.stream AND b.position > h.position AND b.state = 'blocked'
                     ORDER BY b.position LIMIT \(perStream - 1))
                ) n (position)
                WHERE h.group_name = \(name) AND h.position = ANY(\(heads))
            ) r
            ORDER BY r.head, r.position LIMIT \(max)
            """
    }

    /// Acknowledges deliveries: their events are done for the group.
    public func acknowledge(group name: String, deliveryIds: [UUID]) async throws -> DeliverySettlement? {
        try checkGroupName(name)
        return try await settle(name, deliveryIds) { conn in
            // Deletes them and readies the next event of each of their streams (migration 0012).
            try conn.query("SELECT eventline.consumer_group_ack(\(name), \(deliveryIds))")
        }
    }

    /// Refuses deliveries: each is delivered again after `retryAfter` (or parked, if that was
    /// its last attempt). `reason` is kept with it (shown when parked).
    public func refuse(group name: String, deliveryIds: [UUID], retryAfter: Duration = .zero, reason: String? = nil) async throws -> DeliverySettlement? {
        try checkGroupName(name)
        let seconds = Double(retryAfter.components.seconds) + Double(retryAfter.components.attoseconds) / 1e18
        guard seconds >= 0 && seconds <= 86_400 else { throw EventStoreError.invalidArgument("retryAfter must be from 0 to 86400 seconds") }
        return try await settle(name, deliveryIds) { conn in
            try conn.query("SELECT eventline.consumer_group_refuse(\(name), \(deliveryIds), \(seconds), \(reason ?? "refused by the consumer"))")
        }
    }

    /// Runs `statement` (which returns the delivery ids it settled) for a group that exists.
    private func settle(
        _ name: String, _ deliveryIds: [UUID], _ statement: @escaping @Sendable (PostgresConnection) throws -> PostgresResult
    ) async throws -> DeliverySettlement? {
        guard (1...1000).contains(deliveryIds.count) else { throw EventStoreError.invalidArgument("give 1 to 1000 delivery ids") }
        return try await translatingErrors {
            try await pool.withConnection { conn -> DeliverySettlement? in
                var settled: Set<UUID> = []
                for row in try statement(conn).rows { settled.insert(try row.decode(0, as: UUID.self)) }
                // Only when nothing was settled does it matter whether the group exists (an ack
                // is the hot path: one statement).
                if settled.isEmpty, try conn.query("SELECT 1 FROM eventline.consumer_groups WHERE name = \(name)").first == nil {
                    return nil
                }
                return DeliverySettlement(
                    settled: deliveryIds.filter { settled.contains($0) }, stale: deliveryIds.filter { !settled.contains($0) })
            }
        }
    }

    /// The group's parked events after position `after`, oldest first, or nil when the group
    /// does not exist.
    public func parkedMessages(group name: String, after: Int = 0, limit: Int = 100) async throws -> [ParkedMessage]? {
        try checkGroupName(name)
        guard (1...1000).contains(limit) else { throw EventStoreError.invalidArgument("limit must be from 1 to 1000, got \(limit)") }
        let reading = self.reading
        return try await translatingErrors {
            try await pool.withConnection { conn -> [ParkedMessage]? in
                guard try conn.query("SELECT 1 FROM eventline.consumer_groups WHERE name = \(name)").first != nil else { return nil }
                // An event past its last attempt whose deadline passed is parked now, not at the next fetch.
                _ = try conn.query("SELECT eventline.consumer_groups_sweep(\(name))")
                let parked = try conn.query("""
                    SELECT position, attempt, parked_at, last_error FROM eventline.consumer_group_messages
                    WHERE group_name = \(name) AND state = 'parked' AND position > \(after)
                    ORDER BY position LIMIT \(limit)
                    """).rows.map { row in
                        (position: try row.decode(0, as: Int.self), attempt: try row.decode(1, as: Int.self),
                         parkedAt: try row.decode(2, as: Date.self), error: try row.decode(3, as: String?.self))
                    }
                guard !parked.isEmpty else { return [] }
                let events = try reading.decode(conn.query("""
                    SELECT \(unsafeSQL: Self.eventColumns) FROM eventline.events WHERE position = ANY(\(parked.map(\.position))) ORDER BY position
                    """), on: conn)
                return zip(parked, events).map { ParkedMessage(attempt: $0.attempt, parkedAt: $0.parkedAt, lastError: $0.error, event: $1) }
            }
        }
    }

    /// Returns every group's overdue deliveries to the queue, or parks them after their last
    /// attempt (groups a fetch holds are left to it); returns how many. Servers run it every
    /// second, so parked events and metrics are true whether or not anyone fetches.
    public func sweepConsumerGroups() async throws -> Int {
        try await translatingErrors {
            try await pool.withConnection { conn in
                try conn.query("SELECT eventline.consumer_groups_sweep()").first?.decode(0, as: Int.self) ?? 0
            }
        }
    }

    /// Puts parked events back in the queue with fresh attempts: those at `positions`, or
    /// all. Returns how many, or nil when the group does not exist.
    public func retryParked(group name: String, positions: [Int]? = nil) async throws -> Int? {
        try checkGroupName(name)
        return try await translatingErrors {
            try await pool.withConnection { conn -> Int? in
                try conn.transaction { conn -> Int? in
                    // The group's row lock keeps fetches and acks out while the order is mended.
                    guard try conn.query("SELECT 1 FROM eventline.consumer_groups WHERE name = \(name) FOR UPDATE").first != nil else {
                        return nil
                    }
                    let streams = try conn.query("""
                        UPDATE eventline.consumer_group_messages
                        SET state = 'blocked', attempt = 0, due_at = now(), parked_at = NULL, last_error = NULL
                        WHERE group_name = \(name) AND state = 'parked' AND (\(positions)::bigint[] IS NULL OR position = ANY(\(positions)))
                        RETURNING stream
                        """).rows.map { try $0.decode(0, as: String.self) }
                    if !streams.isEmpty {
                        // Each retried event is ready when nothing earlier of its stream is outstanding.
                        try conn.execute("SELECT eventline.consumer_group_reorder(\(name), \(Array(Set(streams)).sorted()))")
                    }
                    return streams.count
                }
            }
        }
    }
}

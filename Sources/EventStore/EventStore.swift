import Foundation
import Logging
import PostgresClient
import Tracing

/// Settings for an `EventStore`; every field but the database URL has a default.
public struct EventStoreConfiguration: Sendable {
    /// Any connection string libpq accepts (URL, `key=value`, several hosts).
    public var databaseURL: String
    /// Connections for reads (the log writer and each subscription have their own).
    public var poolSize: Int = 10
    /// How long a read waits for a free pooled connection.
    public var acquireTimeout: Duration = .seconds(10)
    /// How long opening any of the store's connections may take.
    public var connectTimeout: Duration = PostgresConnection.defaultConnectTimeout
    /// How long a read may run (PostgreSQL cancels it after this) and, for reads and the log
    /// writer, how long the server may stay silent before the connection is given up: a hung
    /// database then fails requests in about this long instead of holding them. Nil: no limit
    /// (tools that run long statements).
    public var statementTimeout: Duration? = nil
    /// Event data longer than this many bytes is stored LZ4-compressed.
    public var compressionThreshold: Int = 512
    /// The most events one group commit writes.
    public var maxBatchEvents: Int = 2000
    /// After a group commit, how long the log writer may wait for the appenders it just
    /// answered to come back before it writes the next group (it stops waiting as soon as they
    /// have). Zero writes whatever is queued at once.
    public var groupCommitWindow: Duration = .microseconds(500)
    /// When the connection breaks while a group commits, how long the log writer keeps asking
    /// the database (which may be restarting) whether the commit happened, before it answers
    /// the appends `.commitOutcomeUnknown`.
    public var commitResolutionTimeout: Duration = .seconds(5)
    /// The most events one append may carry.
    public var maxEventsPerAppend: Int = 1000
    /// The largest event data accepted, in bytes.
    public var maxEventDataSize: Int = 8 * 1024 * 1024
    /// The most bytes (stored data and metadata) one append may carry.
    public var maxAppendBytes: Int = 32 * 1024 * 1024
    /// The most bytes of event data a subscription page holds (at least one event).
    public var subscriptionPageBytes: Int = 16 * 1024 * 1024
    /// How often a live subscription re-reads when no NOTIFY arrives.
    public var subscriptionPollInterval: Duration = .seconds(1)
    /// Events a subscription reads per page (and so holds at most).
    public var subscriptionBatchSize: Int = 500
    /// The domain's upcasters: every read of this store returns events in their current shape
    /// (renamed, data upcast); the stored log is never rewritten.
    public var upcasters = EventUpcasters()
    /// Wraps the data keys of subjects whose personal fields are stored encrypted (nil: events
    /// with personal fields are refused, and events that hold some cannot be read).
    public var masterKey: MasterKey? = nil
    /// What the domain declares personal: sealed in every append of those types.
    public var personalData = PersonalDataDeclarations()
    /// Standbys for the reads of requests that allow them (`ReadContext`): any libpq string,
    /// usually several hosts with `target_session_attrs=prefer-standby` or `standby`. Nil: every
    /// read goes to `databaseURL`.
    public var readDatabaseURL: String? = nil
    /// How long a read that must see a position waits for a standby to replay it before the
    /// primary serves it.
    public var readWaitTimeout: Duration = .seconds(2)

    public init(databaseURL: String) {
        self.databaseURL = databaseURL
    }
}

/// The event log: appends with optimistic concurrency through a group-committing log writer,
/// reads of streams and of the whole log, and subscriptions that never skip an event.
///
/// ```swift
/// let store = EventStore(.init(databaseURL: "postgres://localhost/bank"), logger: logger)
/// let result = try await store.append(
///     to: "account-42", expected: .noStream,
///     events: [NewEvent(type: "AccountOpened", data: Data(#"{"owner":"Ada"}"#.utf8))])
/// for try await event in store.subscribe(after: 0) { print(event.position, event.type) }
/// await store.shutdown()
/// ```
public final class EventStore: Sendable {
    public let configuration: EventStoreConfiguration
    let pool: PostgresConnectionPool
    /// Reads on standbys, when `readDatabaseURL` is set.
    public let replicas: ReplicaReads?
    let writer: LogWriter
    /// This process's owner identity for idempotency reservations.
    let presence: PresenceSession
    let logger: Logger
    /// How stored events become what readers see (personal data opened, then upcast).
    public let reading: EventReading

    public init(_ configuration: EventStoreConfiguration, logger: Logger = Logger(label: "eventline.store")) {
        self.configuration = configuration
        self.logger = logger
        self.reading = EventReading(upcasters: configuration.upcasters, masterKey: configuration.masterKey)
        var poolConfiguration = PostgresConnectionPool.Configuration(
            conninfo: configuration.databaseURL, size: configuration.poolSize,
            acquireTimeout: configuration.acquireTimeout, name: "eventline-read")
        poolConfiguration.statementTimeout = configuration.statementTimeout
        poolConfiguration.connectTimeout = configuration.connectTimeout
        self.pool = PostgresConnectionPool(poolConfiguration)
        self.replicas = configuration.readDatabaseURL.map { url in
            ReplicaReads(url: url, like: poolConfiguration, name: "eventline-replica", waitTimeout: configuration.readWaitTimeout)
        }
        self.writer = LogWriter(
            conninfo: configuration.databaseURL, maxBatchEvents: configuration.maxBatchEvents,
            groupWindow: configuration.groupCommitWindow, resolutionWindow: configuration.commitResolutionTimeout,
            answerTimeout: configuration.statementTimeout, connectTimeout: configuration.connectTimeout, logger: logger)
        self.presence = PresenceSession(conninfo: configuration.databaseURL, connectTimeout: configuration.connectTimeout)
    }

    /// Lets queued appends commit, then closes every connection. Later calls fail with `.shutdown`.
    public func shutdown() async {
        await writer.shutdown()
        pool.close()
        replicas?.pool.close()
        presence.shutdown()
    }

    /// Group-commit counters: groups written, the appends and events in them, and the time the
    /// log writer spent writing them.
    public var writerStatistics: (batches: Int, appends: Int, events: Int, writing: Duration) {
        let stats = writer.statistics
        return (stats.batches, stats.appends, stats.events, stats.writing)
    }

    /// Calls `observer` after every committed group commit with its numbers of appends and
    /// events (for metrics). It runs on the log writer's thread: keep it short.
    public func observeGroupCommits(_ observer: @escaping @Sendable (_ appends: Int, _ events: Int) -> Void) {
        writer.observeGroups(observer)
    }

    /// The node the log writer writes to (`host:port`, nil before its first session) and the
    /// failovers it has followed (reconnects that reached another node).
    public var writerNode: (node: String?, failovers: Int) { writer.nodes.current }

    /// Read-pool use, for metrics.
    package var poolStatistics: PostgresConnectionPool.Statistics { pool.statistics }

    /// Runs a read on a standby when the current request allows it (`ReadContext`) and one has
    /// replayed the request's position, else on the primary; records which served it.
    func withReadConnection<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        let served = try await ReplicaReads.serve(on: replicas) { conn, minimum -> ReplicaReads.Attempt<T> in
            // A read with no position is served as the standby stands, in one statement.
            guard minimum > 0 else { return .served(try body(conn), head: nil) }
            let head = try conn.query("SELECT position FROM eventline.log_head").first?.decode(0, as: Int.self) ?? 0
            guard head >= minimum else { return .behind }
            return .served(try body(conn), head: head)
        }
        if let served { return served }
        return try await pool.withConnection(body)
    }

    // MARK: - Appending

    /// Appends `events` to `stream` if its version satisfies `expected`, atomically.
    ///
    /// Returns the new version and each event's position once the events are committed. Fails
    /// with `.wrongExpectedVersion` (carrying the current version) and writes nothing when the
    /// expectation does not hold. Re-appending the same event ids at the same versions succeeds
    /// again without writing (`wasAlreadyAppended`); an id used elsewhere fails with
    /// `.duplicateEventId`. Invalid names and events fail before any SQL runs.
    public func append(to stream: String, expected: ExpectedVersion = .any, events: [NewEvent]) async throws -> AppendResult {
        let name = try StreamName(stream)
        return try await append(to: name, expected: expected, events: events)
    }

    /// Appends to a validated stream name; see `append(to:expected:events:)`.
    public func append(to stream: StreamName, expected: ExpectedVersion = .any, events: [NewEvent]) async throws -> AppendResult {
        try await write(try prepare(stream, expected: expected, events: events))[0]
    }

    /// Seals the unit's personal data and hands it to the log writer: one result per stream part.
    func write(_ unit: PreparedAppend) async throws -> [AppendResult] {
        var prepared = unit
        if prepared.personal { try await sealPersonalData(&prepared) }
        if EventTrace.isEnabled { prepared.trace = ServiceContext.current }
        do {
            return try await writer.append(prepared)
        } catch let error as EventStoreError where error.code == .subjectForgotten {
            // Forgotten by another process: its key goes from this one's memory too.
            for subject in prepared.subjects { reading.keyring?.forget(subject) }
            throw error
        }
    }

    /// Validates and encodes one stream's append. `platform` allows the platform's own streams
    /// and types; `taggedStream` allows the stream the platform picked for streamless events;
    /// `place` names the append in messages (`appends[2]`).
    func prepare(
        _ stream: StreamName, expected: ExpectedVersion, events: [NewEvent], platform: Bool = false, taggedStream: Bool = false,
        place: String? = nil
    ) throws(EventStoreError) -> PreparedAppend {
        let prefix = place.map { "\($0): " } ?? ""
        if case .exact(let version) = expected, version < 0 {
            throw .invalidArgument("\(prefix)the expected version must be 0 or more, got \(version)")
        }
        guard !events.isEmpty else { throw .invalidEvent("\(prefix)an append needs at least one event", stream: stream.rawValue) }
        if !platform, !taggedStream, stream.rawValue.hasPrefix("$") {
            throw .invalidStreamName(stream.rawValue, reason: "streams whose names start with $ are the platform's")
        }
        guard events.count <= configuration.maxEventsPerAppend else {
            throw .invalidEvent(
                "\(prefix)an append may carry at most \(configuration.maxEventsPerAppend) events, got \(events.count)",
                stream: stream.rawValue)
        }
        var seen = Set<UUID>()
        var prepared: [PreparedEvent] = []
        prepared.reserveCapacity(events.count)
        var byteCount = 0
        for index in events.indices {
            let event = events[index]
            func invalid(_ problem: String) -> EventStoreError {
                .invalidEvent(place.map { "\($0).events[\(index)]: \(problem)" } ?? "event \(index + 1): \(problem)", stream: stream.rawValue)
            }
            if let problem = EventTypeName.problem(with: event.type) { throw invalid(problem) }
            if !platform, event.type.hasPrefix("$") {
                throw invalid("event types starting with $ are the platform's (\(event.type)); a stream is deleted with DELETE /v1/streams/{stream}")
            }
            if !platform, event.type == Self.subjectForgottenType {
                throw invalid("\(event.type) is the platform's: a subject is forgotten with DELETE /v1/subjects/{subject}")
            }
            if events.count > 1 {
                guard seen.insert(event.id).inserted else {
                    throw invalid("event id \(event.id.uuidString.lowercased()) appears twice in the append")
                }
            }
            guard event.data.count <= configuration.maxEventDataSize else {
                throw invalid("data is \(event.data.count) bytes, more than the limit of \(configuration.maxEventDataSize)")
            }
            guard JSONValidator.isValid(event.data) else { throw invalid("data is not valid JSON") }
            guard JSONValidator.isObject(event.metadata) else { throw invalid("metadata is not a JSON object") }
            // jsonb cannot hold the NUL character; refuse it here rather than fail the group's
            // statement. Nor can text: a projection binding a field of the data as text would
            // stop at the event, so data is refused the character too.
            if JSONValidator.containsNUL(event.metadata) {
                throw invalid("metadata contains \\u0000, which PostgreSQL's jsonb cannot store")
            }
            if JSONValidator.containsNUL(event.data) {
                throw invalid("data contains \\u0000 (NUL), which PostgreSQL's text cannot store")
            }
            if !event.tags.isEmpty, let problem = EventTag.problem(withTags: event.tags) { throw invalid(problem) }
            let tags = event.tags.map(EventTag.normalized)
            if let version = event.schemaVersion, !(1...Int(Int16.max)).contains(version) {
                throw invalid("the schema version must be between 1 and \(Int16.max), got \(version)")
            }
            // Data the domain's upcasters cannot read would stop every reader of the log at it.
            if !configuration.upcasters.isEmpty,
                let problem = configuration.upcasters.problem(type: event.type, version: event.schemaVersion ?? 1, data: event.data)
            {
                throw invalid(problem)
            }
            // The store records personal data there; an append may not.
            if PersonalData.mayName(event.metadata), JSONPathScanner.span(at: [PersonalData.metadataKey], in: Array(event.metadata)) != nil {
                throw invalid("metadata.\(PersonalData.metadataKey) is reserved: name personal data with \"subject\" and \"personal\"")
            }
            var declared = event.personal
            if !platform, configuration.personalData.byType[event.type] != nil {
                // What the domain declares is sealed whatever the append says.
                let domain = configuration.personalData.personalData(type: event.type, stream: stream.rawValue, data: Array(event.data))
                if let given = event.personal, given != domain {
                    let expected = domain.map { "subject \($0.subject), fields \($0.fields.joined(separator: ", "))" } ?? "none in this data"
                    throw invalid("the domain declares the personal data of \(event.type) (\(expected)): an append may not name other")
                }
                declared = domain
            }
            if let personal = declared {
                // Checked before any key is looked up or made: bad input writes nothing.
                let data = Array(event.data)
                if let problem = personal.problem(in: data) { throw invalid(problem) }
                // Sealed once the subjects' keys are at hand (`sealPersonalData`).
                prepared.append(PreparedEvent(
                    id: event.id, type: event.type, storedData: Data(), codec: 0, metadata: event.metadata,
                    schemaVersion: Int16(event.schemaVersion ?? 0),
                    personal: PendingPersonalData(declaration: personal, data: data, metadata: Array(event.metadata)), tags: tags))
                continue
            }
            let (stored, codec) = PayloadCodec.encode(event.data, threshold: configuration.compressionThreshold)
            prepared.append(PreparedEvent(
                id: event.id, type: event.type, storedData: stored, codec: codec.rawValue, metadata: event.metadata,
                schemaVersion: Int16(event.schemaVersion ?? 0), tags: tags))
            byteCount += stored.count + event.metadata.count
        }
        guard byteCount <= configuration.maxAppendBytes else {
            throw .invalidEvent(
                "\(prefix)the append's events hold \(byteCount) bytes, more than the limit of \(configuration.maxAppendBytes)",
                stream: stream.rawValue)
        }
        return PreparedAppend(stream: stream, expected: expected, events: prepared, byteCount: byteCount)
    }

    /// Seals the personal fields of a prepared append under their subjects' keys (made on first
    /// use); refused, with nothing stored, without a master key or for a forgotten subject.
    private func sealPersonalData(_ append: inout PreparedAppend) async throws {
        guard let keyring = reading.keyring else { throw EventStoreError.noMasterKeyForWriting }
        var all = Set<String>()
        for part in append.parts.indices {
            let stream = append.parts[part].stream.rawValue
            let subjects = Set(append.parts[part].events.compactMap { $0.personal?.declaration.subject })
            guard !subjects.isEmpty else { continue }
            all.formUnion(subjects)
            // Each (subject, stream) pair is recorded, so that a forget finds the stream's snapshots.
            let keys = try await translatingErrors(stream: stream) {
                try await keyring.keysForWriting(subjects, stream: stream, pool: pool)
            }
            for index in append.parts[part].events.indices {
                let event = append.parts[part].events[index]
                guard let pending = event.personal, let key = keys[pending.declaration.subject] else { continue }
                let (data, metadata) = pending.declaration.seal(data: pending.data, metadata: pending.metadata, event: event.id, key: key)
                let (stored, codec) = PayloadCodec.encode(data, threshold: configuration.compressionThreshold)
                append.parts[part].events[index].storedData = stored
                append.parts[part].events[index].codec = codec.rawValue
                append.parts[part].events[index].metadata = metadata
                append.parts[part].events[index].personal = nil
                append.byteCount += stored.count + metadata.count
            }
        }
        append.subjects = all.sorted()
        guard append.byteCount <= configuration.maxAppendBytes else {
            throw EventStoreError.invalidEvent(
                "the append's events hold \(append.byteCount) bytes, more than the limit of \(configuration.maxAppendBytes)",
                stream: append.stream.rawValue)
        }
    }

    // MARK: - Reading

    /// The channel the log writer NOTIFYs (payload: the new head position) at each commit.
    public static let notificationChannel = LogWriter.notificationChannel

    /// The columns `decodeEvents` reads, in order.
    package static let eventColumns = "position, stream, version, event_id, type, data, codec, metadata, recorded_at, schema_version, tags"

    /// Events from rows of `SELECT \(eventColumns) FROM eventline.events` as stored: payloads
    /// decompressed, personal fields still sealed, in their stored shape.
    static func storedEvents(_ result: PostgresResult) throws -> [RecordedEvent] {
        try result.rows.map { row in
            RecordedEvent(
                position: try row.decode(0), stream: try row.decode(1), version: try row.decode(2),
                id: try row.decode(3), type: try row.decode(4),
                data: try PayloadCodec.decode(try row.decode(5, as: Data.self), codec: Int16(try row.decode(6, as: Int.self))),
                metadata: try row.decode(7), recordedAt: try row.decode(8), schemaVersion: try row.decode(9, as: Int?.self) ?? 1,
                tags: try row.decode(10, as: PostgresTextArray?.self)?.values ?? [])
        }
    }

    /// `event` in its current shape; data the upcasters refuse is a corrupt event.
    static func upcast(_ event: RecordedEvent, _ upcasters: EventUpcasters) throws -> RecordedEvent {
        guard !upcasters.isEmpty else { return event }
        do {
            return try upcasters.upcast(event)
        } catch let error as UpcastError {
            throw EventStoreError(
                code: .corruptEvent, message: "event \(event.position) (\(event.type) in \(event.stream)) cannot be read: \(error)",
                stream: event.stream)
        }
    }

    /// Events as readers see them, from rows read on `conn`.
    func decodeEvents(_ result: PostgresResult, on conn: PostgresConnection) throws -> [RecordedEvent] {
        try reading.decode(result, on: conn)
    }

    /// Up to `limit` events after position `after` and up to `upTo`, of `types` (or their
    /// aliases), in their current shape: a page for a consumer that reads on a connection of its
    /// own (a projection, in the transaction that moves its checkpoint).
    package static func readEvents(
        on conn: PostgresConnection, after: Int, upTo: Int, types: [String], limit: Int, reading: EventReading
    ) throws -> [RecordedEvent] {
        let upcasters = reading.upcasters
        // Events reach the consumer under their current names: a handler of an old name would
        // never be called.
        if let old = types.first(where: upcasters.isAlias) {
            throw EventStoreError.invalidArgument("\(old) is renamed to \(upcasters.currentName(of: old)): handle it under that name")
        }
        return try reading.decode(conn.query("""
            SELECT \(unsafeSQL: eventColumns) FROM eventline.events
            WHERE position > \(after) AND position <= \(upTo) AND type = ANY(\(upcasters.storedNames(of: types)))
            ORDER BY position LIMIT \(limit)
            """), on: conn)
    }

    /// The events at `positions`, in log order, as a consumer reads them (upcast, opened):
    /// a parked key's held events, applied when the key is retried.
    package static func readEvents(on conn: PostgresConnection, positions: [Int], reading: EventReading) throws -> [RecordedEvent] {
        guard !positions.isEmpty else { return [] }
        return try reading.decode(conn.query("""
            SELECT \(unsafeSQL: eventColumns) FROM eventline.events WHERE position = ANY(\(positions)) ORDER BY position
            """), on: conn)
    }

    /// Reads up to `limit` events of `stream` starting at version `from` (default: the first
    /// event forward, the last event backward). A stream with no events gives an empty array.
    public func readStream(
        _ stream: String, from: Int? = nil, direction: ReadDirection = .forward, limit: Int = 100
    ) async throws -> [RecordedEvent] {
        let name = try StreamName(stream).rawValue
        guard limit > 0 && limit <= 10_000 else { throw EventStoreError.invalidArgument("the limit must be between 1 and 10000, got \(limit)") }
        if let from, from < 0 { throw EventStoreError.invalidArgument("from must be 0 or more, got \(from)") }
        let query: SQLQuery
        switch direction {
        case .forward:
            query = "SELECT \(unsafeSQL: Self.eventColumns) FROM eventline.events WHERE stream = \(name) AND version >= \(from ?? 1) ORDER BY version LIMIT \(limit)"
        case .backward:
            query = "SELECT \(unsafeSQL: Self.eventColumns) FROM eventline.events WHERE stream = \(name) AND version <= \(from ?? Int(Int64.max)) ORDER BY version DESC LIMIT \(limit)"
        }
        return try await translatingErrors(stream: name) {
            try await withReadConnection { conn in
                let result = try conn.query(query)
                // A deleted stream is not read. Its last event is its tombstone: a page that
                // reaches the stream's end shows whether it is one; otherwise one look-up does.
                let reachesEnd: Bool
                switch direction {
                case .forward: reachesEnd = result.count > 0 && result.count < limit
                case .backward: reachesEnd = from == nil && result.count > 0
                }
                let deleted: Bool
                if reachesEnd {
                    let lastRow = direction == .forward ? result.count - 1 : 0
                    deleted = try result[lastRow].decode(4, as: String.self) == Self.tombstoneType
                } else {
                    deleted = try Self.isDeleted(name, on: conn)
                }
                if deleted { throw EventStoreError.streamDeleted(name) }
                return try self.decodeEvents(result, on: conn)
            }
        }
    }

    /// Reads up to `limit` events of the whole log after `position`, in position order, keeping
    /// those that match `filter`. With `maxBytes`, the page stops once it holds that much event
    /// data (it always holds at least one event).
    public func readAll(
        after position: Int = 0, limit: Int = 1000, filter: EventFilter = .all, maxBytes: Int? = nil
    ) async throws -> [RecordedEvent] {
        guard limit > 0 && limit <= 10_000 else { throw EventStoreError.invalidArgument("the limit must be between 1 and 10000, got \(limit)") }
        guard position >= 0 else { throw EventStoreError.invalidArgument("the position must be 0 or more, got \(position)") }
        let types = filter.types.map(configuration.upcasters.storedNames(of:))
        let query: SQLQuery = """
            SELECT \(unsafeSQL: Self.eventColumns) FROM (
                SELECT \(unsafeSQL: Self.eventColumns),
                       sum(length(data)) OVER (ORDER BY position) - length(data) AS bytes_before
                FROM eventline.events
                WHERE position > \(position)
                  AND (\(filter.categories)::text[] IS NULL OR category = ANY(\(filter.categories)))
                  AND (\(types)::text[] IS NULL OR type = ANY(\(types)))
                ORDER BY position LIMIT \(limit)
            ) page
            WHERE \(maxBytes)::bigint IS NULL OR bytes_before < \(maxBytes)
            ORDER BY position
            """
        return try await translatingErrors {
            try await withReadConnection { conn in try self.decodeEvents(conn.query(query), on: conn) }
        }
    }

    /// The events at `positions`, in log order (a parked key's held events).
    public func events(at positions: [Int]) async throws -> [RecordedEvent] {
        let reading = self.reading
        return try await translatingErrors {
            try await withReadConnection { conn in try Self.readEvents(on: conn, positions: positions, reading: reading) }
        }
    }

    /// The committed event with this id, wherever it is, or nil when the log holds none. A
    /// process that appends with deterministic ids asks this to learn whether a step it may
    /// have taken before a crash is already in the log.
    public func event(id: UUID) async throws -> RecordedEvent? {
        let query: SQLQuery = "SELECT \(unsafeSQL: Self.eventColumns) FROM eventline.events WHERE event_id = \(id)"
        return try await translatingErrors {
            try await withReadConnection { conn in try self.decodeEvents(conn.query(query), on: conn).first }
        }
    }

    /// The stream's version: its number of events, 0 when it has none.
    public func streamVersion(_ stream: String) async throws -> Int {
        let name = try StreamName(stream).rawValue
        return try await translatingErrors(stream: name) {
            try await withReadConnection { conn in
                try conn.query("SELECT max(version) FROM eventline.events WHERE stream = \(name)").first?.decode(0, as: Int?.self) ?? 0
            }
        }
    }

    /// The position of the last committed event, 0 for an empty log.
    public func headPosition() async throws -> Int {
        try await translatingErrors {
            try await pool.withConnection { conn in
                try conn.query("SELECT position FROM eventline.log_head").first?.decode(0, as: Int.self) ?? 0
            }
        }
    }

    /// A count of streams and the log head, for `eventctl status`.
    public func summary() async throws -> (head: Int, streams: Int) {
        try await translatingErrors {
            try await pool.withConnection { conn in
                let row = try conn.query("""
                    SELECT (SELECT position FROM eventline.log_head), (SELECT count(*) FROM eventline.events WHERE version = 1)
                    """).first
                return (try row?.decode(0, as: Int?.self) ?? 0, try row?.decode(1, as: Int.self) ?? 0)
            }
        }
    }

    // MARK: - Subscribing

    /// Every event after `position` (matching `filter`), in position order, exactly once:
    /// first from the table, then live as events are committed. See `EventSubscription`.
    public func subscribe(after position: Int = 0, filter: EventFilter = .all) -> EventSubscription {
        EventSubscription(store: self, after: position, filter: filter)
    }
}

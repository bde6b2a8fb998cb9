import Foundation
import PostgresClient

/// Tags: short strings an event carries (`student:s1`, `username:alice`) so that queries can
/// find every event about something whatever its stream (Dynamic Consistency Boundaries).
public enum EventTag {
    /// The longest tag accepted, in UTF-8 bytes.
    public static let maxLength = 200
    /// The most tags one event may carry.
    public static let maxPerEvent = 32

    /// Why `tag` cannot be a tag, or nil when it can.
    public static func problem(with tag: String) -> String? {
        if tag.isEmpty { return "a tag is empty" }
        if tag.utf8.count > maxLength { return "a tag is longer than \(maxLength) bytes" }
        if tag.utf8.contains(UInt8(ascii: ",")) { return "tag \(tag) contains a comma" }
        if tag.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
            return "a tag contains a control character"
        }
        return nil
    }

    /// `tag` as stored and compared: Unicode NFC, since PostgreSQL compares bytes and Swift
    /// compares canonical equivalents (two spellings of `José` must be one tag).
    public static func normalized(_ tag: String) -> String {
        tag.utf8.allSatisfy { $0 < 0x80 } ? tag : tag.precomposedStringWithCanonicalMapping
    }

    /// Why `tags` cannot be one event's tags, or nil when they can.
    static func problem(withTags tags: [String]) -> String? {
        guard tags.count <= maxPerEvent else { return "an event carries at most \(maxPerEvent) tags, got \(tags.count)" }
        for tag in tags {
            if let problem = problem(with: tag) { return problem }
        }
        if Set(tags.map(normalized)).count != tags.count { return "a tag appears twice" }
        return nil
    }
}

/// A query over the log as the DCB specification defines one: an event matches when it
/// matches any item; it matches an item when its type is one of the item's types (if the item
/// names any) and it carries every one of the item's tags (if the item names any).
public struct EventQuery: Sendable, Hashable {
    public struct Item: Sendable, Hashable {
        /// Any of these types (none: any type).
        public var types: [String]
        /// All of these tags (none: any tags).
        public var tags: [String]

        public init(types: [String] = [], tags: [String] = []) {
            self.types = types
            self.tags = tags
        }

        /// Whether an event of `type` carrying `tags` matches the item.
        public func matches(type: String, tags eventTags: [String]) -> Bool {
            (types.isEmpty || types.contains(type)) && tags.allSatisfy(eventTags.contains)
        }
    }

    public static let maxItems = 32
    public static let maxTypesPerItem = 32
    /// The most types all items together name: an item without tags probes each type's index.
    public static let maxTypes = 64
    public static let maxTagsPerItem = EventTag.maxPerEvent

    public var items: [Item]

    public init(items: [Item]) {
        self.items = items
    }

    public init(_ items: Item...) {
        self.items = items
    }

    /// Whether `event` matches the query.
    public func matches(_ event: RecordedEvent) -> Bool {
        matches(type: event.type, tags: event.tags)
    }

    public func matches(type: String, tags: [String]) -> Bool {
        items.contains { $0.matches(type: type, tags: tags) }
    }

    /// Why the query cannot be run, or nil when it can. `place` names it in the message.
    public func problem(place: String = "the query") -> String? {
        guard !items.isEmpty else { return "\(place) needs at least one item" }
        guard items.count <= Self.maxItems else { return "\(place) has \(items.count) items, more than \(Self.maxItems)" }
        let types = items.reduce(0) { $0 + $1.types.count }
        guard types <= Self.maxTypes else { return "\(place) names \(types) types across its items, more than \(Self.maxTypes)" }
        for (index, item) in items.enumerated() {
            let at = "\(place).items[\(index)]"
            if item.types.isEmpty && item.tags.isEmpty { return "\(at) names no types and no tags: it would match every event" }
            if item.types.count > Self.maxTypesPerItem { return "\(at) names more than \(Self.maxTypesPerItem) types" }
            if item.tags.count > Self.maxTagsPerItem { return "\(at) names more than \(Self.maxTagsPerItem) tags" }
            for type in item.types {
                if let problem = EventTypeName.problem(with: type) { return "\(at).types: \(problem)" }
            }
            for tag in item.tags {
                if let problem = EventTag.problem(with: tag) { return "\(at).tags: \(problem)" }
            }
        }
        return nil
    }
}

/// The DCB append condition: the append fails if any event matching `failIfEventsMatch` has a
/// position after `after` (nil: anywhere in the log). A decision read the events matching the
/// query up to a position; naming that position here makes the append fail exactly when
/// something the decision did not see has happened since.
public struct AppendCondition: Sendable, Hashable {
    public var failIfEventsMatch: EventQuery
    public var after: Int?

    public init(failIfEventsMatch: EventQuery, after: Int?) {
        self.failIfEventsMatch = failIfEventsMatch
        self.after = after
    }
}

/// One stream's part of a multi-stream append.
public struct StreamAppend: Sendable, Hashable {
    public var stream: String
    public var expected: ExpectedVersion
    public var events: [NewEvent]

    public init(stream: String, expected: ExpectedVersion = .any, events: [NewEvent]) {
        self.stream = stream
        self.expected = expected
        self.events = events
    }
}

/// An expectation about a stream a multi-stream append checks but does not write.
public struct StreamCondition: Sendable, Hashable {
    public var stream: String
    public var expected: ExpectedVersion

    public init(stream: String, expected: ExpectedVersion) {
        self.stream = stream
        self.expected = expected
    }
}

/// One stream whose expectation failed, and its version when the writer decided.
public struct StreamConflict: Sendable, Hashable {
    public var stream: String
    public var expected: ExpectedVersion
    public var current: Int

    public init(stream: String, expected: ExpectedVersion, current: Int) {
        self.stream = stream
        self.expected = expected
        self.current = current
    }
}

/// The outcome of a multi-stream (or streamless) append.
public struct MultiAppendResult: Sendable, Hashable {
    /// Each stream's part in the order given: its new version and the positions of its events.
    public var appends: [AppendResult]
    /// The log position of the last event written.
    public var position: Int { appends.last?.position ?? 0 }
    public var recordedAt: Date { appends.last?.recordedAt ?? Date(timeIntervalSince1970: 0) }
    /// True when every event was already in the log from an earlier, identical append.
    public var wasAlreadyAppended: Bool { appends.allSatisfy(\.wasAlreadyAppended) }
}

/// Events matching a query, and the position up to which the query was evaluated: an append
/// whose decision rests on these events names it as its condition's `after`.
public struct QueryResult: Sendable {
    public var events: [RecordedEvent]
    /// The log head when the page was read, or the page's last position when it is full (the
    /// events after it were not looked at).
    public var evaluatedUpTo: Int
}

/// A condition ready for the log writer: types as stored (aliases included).
struct PreparedCondition: Sendable {
    var items: [EventQuery.Item]
    var after: Int

    /// As PostgreSQL matches: types and tags compared byte for byte (tags are NFC already).
    func matches(type: String, tags: [String]) -> Bool {
        items.contains { item in
            (item.types.isEmpty || item.types.contains { $0.utf8.elementsEqual(type.utf8) })
                && item.tags.allSatisfy { wanted in tags.contains { $0.utf8.elementsEqual(wanted.utf8) } }
        }
    }
}

extension EventStore {
    /// The most streams one multi-stream append may write, and check.
    public static let maxAppendsPerRequest = 100
    public static let maxStreamConditions = 100

    /// The stream the platform puts an event appended without one in: one per event type.
    public static func taggedStream(forType type: String) -> String { "$tagged-\(type)" }

    /// Appends to several streams at once: every part is written, or none. The events take
    /// consecutive positions in the order given. `conditions` are expectations about streams
    /// the append does not write; `condition` makes it fail when an event matching its query
    /// was written after its position. A failed expectation fails with `.wrongExpectedVersion`
    /// naming every stream at fault (`conflicts`); a failed condition with
    /// `.appendConditionFailed` naming the first matching position. Re-appending the same
    /// event ids succeeds again without writing.
    public func append(
        _ appends: [StreamAppend], conditions: [StreamCondition] = [], condition: AppendCondition? = nil
    ) async throws -> MultiAppendResult {
        guard !appends.isEmpty else { throw EventStoreError.invalidArgument("an append needs at least one stream's events") }
        guard appends.count <= Self.maxAppendsPerRequest else {
            throw EventStoreError.invalidArgument("a multi-stream append writes at most \(Self.maxAppendsPerRequest) streams, got \(appends.count)")
        }
        guard conditions.count <= Self.maxStreamConditions else {
            throw EventStoreError.invalidArgument("a multi-stream append checks at most \(Self.maxStreamConditions) streams, got \(conditions.count)")
        }
        var parts: [PreparedAppend.Part] = []
        var byteCount = 0
        var streams = Set<String>()
        for (index, append) in appends.enumerated() {
            let name: StreamName
            do {
                name = try StreamName(append.stream)
            } catch {
                throw EventStoreError.invalidStreamName(append.stream, reason: "appends[\(index)]: \(error.message)")
            }
            guard streams.insert(name.rawValue).inserted else {
                throw EventStoreError.invalidArgument("stream \(name) appears twice in the append: give its events in one part")
            }
            let prepared = try prepare(name, expected: append.expected, events: append.events, place: "appends[\(index)]")
            parts += prepared.parts
            byteCount += prepared.byteCount
        }
        var checks: [StreamCondition] = []
        for (index, check) in conditions.enumerated() {
            let name = try StreamName(check.stream).rawValue
            if case .exact(let version) = check.expected, version < 0 {
                throw EventStoreError.invalidArgument("conditions[\(index)]: the expected version must be 0 or more")
            }
            if case .any = check.expected {
                throw EventStoreError.invalidArgument("conditions[\(index)]: an expectation of any version checks nothing")
            }
            guard streams.insert(name).inserted else {
                throw EventStoreError.invalidArgument(
                    "conditions[\(index)]: stream \(name) is written or checked already; a written stream's expectation goes in its append")
            }
            checks.append(StreamCondition(stream: name, expected: check.expected))
        }
        try checkUnit(parts, byteCount: byteCount)
        var unit = PreparedAppend(parts: parts, byteCount: byteCount)
        unit.checks = checks
        unit.condition = try prepareCondition(condition)
        return MultiAppendResult(appends: try await write(unit))
    }

    /// The limits of one append hold for the whole unit, and an event id appears once in it.
    private func checkUnit(_ parts: [PreparedAppend.Part], byteCount: Int) throws(EventStoreError) {
        let count = parts.reduce(0) { $0 + $1.events.count }
        guard count <= configuration.maxEventsPerAppend else {
            throw .invalidEvent("an append may carry at most \(configuration.maxEventsPerAppend) events in all its streams, got \(count)")
        }
        guard byteCount <= configuration.maxAppendBytes else {
            throw .invalidEvent("the append's events hold \(byteCount) bytes, more than the limit of \(configuration.maxAppendBytes)")
        }
        guard parts.count > 1 else { return }
        var seen = Set<UUID>()
        for part in parts {
            for event in part.events where !seen.insert(event.id).inserted {
                throw .invalidEvent("event id \(event.id.uuidString.lowercased()) appears twice in the append", stream: part.stream.rawValue)
            }
        }
    }

    /// Appends tagged events without naming streams: each event goes to the stream the platform
    /// keeps for its type (`$tagged-<type>`), in the order given. With `condition`, the append
    /// fails when an event matching its query was written after its position: the DCB append.
    public func append(events: [NewEvent], condition: AppendCondition? = nil) async throws -> MultiAppendResult {
        guard !events.isEmpty else { throw EventStoreError.invalidEvent("an append needs at least one event") }
        // Runs of one type share a part, so that the positions follow the order given.
        var runs: [(type: String, events: [NewEvent])] = []
        for event in events {
            if runs.last?.type == event.type {
                runs[runs.count - 1].events.append(event)
            } else {
                runs.append((event.type, [event]))
            }
        }
        guard runs.count <= Self.maxAppendsPerRequest else {
            throw EventStoreError.invalidArgument("the events change type more than \(Self.maxAppendsPerRequest) times; group them by type")
        }
        var parts: [PreparedAppend.Part] = []
        var byteCount = 0
        for run in runs {
            if let problem = EventTypeName.problem(with: run.type) { throw EventStoreError.invalidEvent(problem) }
            if run.type.hasPrefix("$") { throw EventStoreError.invalidEvent("event types starting with $ are the platform's (\(run.type))") }
            let prepared = try prepare(
                try StreamName(Self.taggedStream(forType: run.type)), expected: .any, events: run.events, taggedStream: true)
            parts += prepared.parts
            byteCount += prepared.byteCount
        }
        try checkUnit(parts, byteCount: byteCount)
        var unit = PreparedAppend(parts: parts, byteCount: byteCount)
        unit.condition = try prepareCondition(condition)
        return MultiAppendResult(appends: try await write(unit))
    }

    func prepareCondition(_ condition: AppendCondition?) throws(EventStoreError) -> PreparedCondition? {
        guard let condition else { return nil }
        if let problem = condition.failIfEventsMatch.problem(place: "condition.failIfEventsMatch") { throw .invalidArgument(problem) }
        if let after = condition.after, after < 0 { throw .invalidArgument("condition.after must be 0 or more, got \(after)") }
        let upcasters = configuration.upcasters
        // Events stored under an old name of a type match too.
        let items = condition.failIfEventsMatch.items.map { item in
            EventQuery.Item(types: item.types.isEmpty ? [] : upcasters.storedNames(of: item.types), tags: item.tags.map(EventTag.normalized))
        }
        return PreparedCondition(items: items, after: condition.after ?? 0)
    }

    // MARK: - Reading by query

    /// Up to `limit` events after position `after` that match `query`, in position order, and
    /// the position up to which the query was evaluated (see `QueryResult`). An item with tags
    /// is served by the tags' index, an item of types alone by the types' index.
    public func read(matching query: EventQuery, after: Int = 0, limit: Int = 1000) async throws -> QueryResult {
        if let problem = query.problem() { throw EventStoreError.invalidArgument(problem) }
        guard limit > 0 && limit <= 10_000 else { throw EventStoreError.invalidArgument("the limit must be between 1 and 10000, got \(limit)") }
        guard after >= 0 else { throw EventStoreError.invalidArgument("after must be 0 or more, got \(after)") }
        let upcasters = configuration.upcasters
        let items = query.items.map { item in
            EventQuery.Item(types: item.types.isEmpty ? [] : upcasters.storedNames(of: item.types), tags: item.tags.map(EventTag.normalized))
        }
        let arrays = Self.conditionArrays(items.map { (0, after, $0) })
        return try await translatingErrors {
            try await withReadConnection { conn in
                // The head first: positions are dense and commit-ordered, so the statement
                // after sees every event up to it. (Read in one statement with the events, an
                // empty page would leave the head to a later snapshot, which may hold a match
                // the page did not.)
                let head = try conn.query("SELECT position FROM eventline.log_head").first?.decode(0, as: Int.self) ?? 0
                let result = try conn.query("""
                    SELECT \(unsafeSQL: Self.eventColumns) FROM eventline.events
                    WHERE position IN (
                        SELECT hit.position FROM unnest(\(arrays.afters), \(arrays.tags), \(arrays.types)) AS q (after, tags, types)
                        CROSS JOIN LATERAL (\(unsafeSQL: Self.matchingPositions(limit: "\(limit)"))) hit
                    ) AND position <= \(head)
                    ORDER BY position LIMIT \(limit)
                    """)
                let events = try self.decodeEvents(result, on: conn)
                let evaluated = events.count == limit ? events[events.count - 1].position : head
                return QueryResult(events: events, evaluatedUpTo: evaluated)
            }
        }
    }

    /// Per query item: `after`, its tags and its types, each list joined by newlines (neither
    /// a tag nor a type can hold one), as arrays a prepared statement unnests.
    static func conditionArrays(_ items: [(unit: Int, after: Int, item: EventQuery.Item)])
        -> (units: PostgresBinaryArray, afters: PostgresBinaryArray, tags: PostgresBinaryArray, types: PostgresBinaryArray)
    {
        (
            PostgresBinaryArray(int8: items.map(\.unit)), PostgresBinaryArray(int8: items.map(\.after)),
            PostgresBinaryArray(text: items.map { $0.item.tags.joined(separator: "\n") }),
            PostgresBinaryArray(text: items.map { $0.item.types.joined(separator: "\n") })
        )
    }

    /// A subquery over one query item `q (after, tags, types)`: the first `limit` positions
    /// after `q.after` that match it. With tags, the first tag's `(tag, position)` index walks
    /// the positions after `after` in order and each is checked against the rest; with types
    /// alone, each type's `(type, position)` index does. Either way the cost does not grow with
    /// the history before `after`.
    static func matchingPositions(limit: String) -> String {
        """
        (SELECT t.position FROM eventline.event_tags t JOIN eventline.events e ON e.position = t.position
         WHERE q.tags <> '' AND t.tag = split_part(q.tags, E'\\n', 1) AND t.position > q.after
           AND e.tags @> string_to_array(q.tags, E'\\n')
           AND (q.types = '' OR e.type = ANY(string_to_array(q.types, E'\\n')))
         ORDER BY t.position LIMIT \(limit))
        UNION ALL
        (SELECT f.position FROM unnest(string_to_array(NULLIF(q.types, ''), E'\\n')) AS ty (name)
         CROSS JOIN LATERAL (
             SELECT position FROM eventline.events WHERE type = ty.name AND position > q.after ORDER BY position LIMIT \(limit)
         ) f
         WHERE q.tags = '')
        """
    }
}

import Foundation

/// An event to append: id (generated when not given), type, JSON data and JSON-object metadata.
public struct NewEvent: Sendable, Hashable {
    /// The event's id; a retried append with the same ids is recognised and not written twice.
    public var id: UUID
    /// The event type, for example `MoneyDeposited`.
    public var type: String
    /// The event's JSON document (UTF-8).
    public var data: Data
    /// A JSON object: correlation and causation ids, command id, user, and anything else.
    public var metadata: Data
    /// The version of the type's schema `data` follows (nil: none recorded, which reads as 1).
    public var schemaVersion: Int?
    /// Whose personal data the event holds, and where: those fields are stored encrypted under
    /// the subject's key (the store needs a master key for that).
    public var personal: PersonalData?
    /// Tags (`student:s1`): queries and append conditions find the event by them, whatever
    /// its stream. See `EventTag` for what a tag may hold.
    public var tags: [String]

    /// An event from raw JSON. `metadata`, when given, must be a JSON object.
    public init(
        id: UUID? = nil, type: String, data: Data, metadata: Data? = nil, schemaVersion: Int? = nil, personal: PersonalData? = nil,
        tags: [String] = []
    ) {
        self.id = id ?? UUID.random()
        self.type = type
        self.data = data
        self.metadata = metadata ?? Data("{}".utf8)
        self.schemaVersion = schemaVersion
        self.personal = personal
        self.tags = tags
    }

    /// An event whose data is `payload` encoded as JSON, with metadata fields.
    public init(
        id: UUID? = nil, type: String, payload: some Encodable, correlationId: String? = nil,
        causationId: String? = nil, metadata extra: [String: JSONValue] = [:]
    ) throws {
        var fields = extra
        if let correlationId { fields[MetadataKey.correlationId] = .string(correlationId) }
        if let causationId { fields[MetadataKey.causationId] = .string(causationId) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        self.init(id: id, type: type, data: try encoder.encode(payload), metadata: try encoder.encode(fields))
    }
}

/// Well-known metadata keys.
public enum MetadataKey {
    public static let correlationId = "correlationId"
    public static let causationId = "causationId"
    public static let commandId = "commandId"
    public static let user = "user"
}

/// An event as stored in the log.
public struct RecordedEvent: Sendable, Hashable {
    /// Its place in the log: 1, 2, 3 … with no holes; position order is commit order.
    public var position: Int
    /// The stream it belongs to.
    public var stream: String
    /// Its version within the stream (the first event has version 1).
    public var version: Int
    public var id: UUID
    public var type: String
    /// The JSON document, decompressed.
    public var data: Data
    /// The metadata JSON object.
    public var metadata: Data
    /// When the log writer committed it (the database's clock).
    public var recordedAt: Date
    /// The version of its type's schema `data` follows: as stored (1 when none was recorded),
    /// or the current one once a domain's upcasters have been applied.
    public var schemaVersion: Int
    /// The tags it was appended with, in the order given.
    public var tags: [String]

    public init(
        position: Int, stream: String, version: Int, id: UUID, type: String, data: Data, metadata: Data, recordedAt: Date,
        schemaVersion: Int = 1, tags: [String] = []
    ) {
        self.tags = tags
        self.position = position
        self.stream = stream
        self.version = version
        self.id = id
        self.type = type
        self.data = data
        self.metadata = metadata
        self.recordedAt = recordedAt
        self.schemaVersion = schemaVersion
    }

    /// The stream's category (the part before the first `-`).
    public var category: String { StreamName.category(of: stream) }

    /// Decodes the data as `T`.
    public func decode<T: Decodable>(_ type: T.Type, decoder: JSONDecoder = JSONDecoder()) throws -> T {
        try decoder.decode(type, from: data)
    }

    /// The metadata as a dictionary.
    public func metadataFields() throws -> [String: JSONValue] {
        try JSONDecoder().decode([String: JSONValue].self, from: metadata)
    }
}

/// One appended event's place.
public struct AppendedEvent: Sendable, Hashable {
    public var id: UUID
    public var type: String
    public var version: Int
    public var position: Int
}

/// The outcome of a successful append.
public struct AppendResult: Sendable, Hashable {
    /// The stream appended to.
    public var stream: String
    /// The stream's version after the append (its last event's version).
    public var version: Int
    /// The log position of the append's last event.
    public var position: Int
    /// Each event's version and position, in order.
    public var events: [AppendedEvent]
    /// When the events were committed.
    public var recordedAt: Date
    /// True when every event was already in the stream from an earlier, identical append and
    /// nothing was written this time.
    public var wasAlreadyAppended: Bool
}

/// Which events a log read returns.
public struct EventFilter: Sendable, Hashable {
    /// Only events whose stream is in one of these categories (nil: all categories).
    public var categories: [String]?
    /// Only events of these types (nil: all types).
    public var types: [String]?

    public init(category: String? = nil, types: [String]? = nil) {
        self.categories = category.map { [$0] }
        self.types = types
    }

    public init(categories: [String]?, types: [String]? = nil) {
        self.categories = categories
        self.types = types
    }

    /// Every event.
    public static let all = EventFilter()

    /// Whether `event` (as read, in its current shape) passes the filter.
    public func matches(_ event: RecordedEvent) -> Bool {
        if let categories, !categories.contains(event.category) { return false }
        if let types, !types.contains(event.type) { return false }
        return true
    }
}

/// The order of a stream read.
public enum ReadDirection: String, Sendable, Hashable {
    case forward, backward
}

extension UUID {
    /// A random (version 4) UUID from the stdlib's system generator (the kernel's CSPRNG via
    /// `getrandom`). Foundation's `UUID()` opens, reads and closes /dev/urandom on every call
    /// on Linux, which was a visible share of a command's CPU time.
    public static func random() -> UUID {
        var generator = SystemRandomNumberGenerator()
        var words = (generator.next() as UInt64, generator.next() as UInt64)
        return withUnsafeMutableBytes(of: &words) { buffer in
            buffer[6] = (buffer[6] & 0x0F) | 0x40
            buffer[8] = (buffer[8] & 0x3F) | 0x80
            return UUID(uuid: buffer.load(as: uuid_t.self))
        }
    }
}

extension Duration {
    /// The duration in seconds, as a floating-point number.
    public var inSeconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}

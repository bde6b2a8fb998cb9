import Foundation
import PostgresClient
import Synchronization

/// The key that wraps every subject's data key (`EVENTLINE_MASTER_KEY`: 32 random bytes in
/// base64). Data keys are stored only wrapped by it, so a database dump alone reveals no
/// personal data. Its `id` (a fingerprint, not the key) is stored with each wrapped key, so a
/// process started with another master key says so instead of failing obscurely.
public struct MasterKey: Sendable {
    let bytes: [UInt8]
    /// The first 16 hex digits of SHA-256 over a fixed label and the key.
    public let id: String

    public init(bytes: [UInt8]) throws(EventStoreError) {
        guard bytes.count == AESGCM.keySize else {
            throw .invalidArgument("a master key is \(AESGCM.keySize) bytes, got \(bytes.count)")
        }
        self.bytes = bytes
        self.id = String(SHA256.hex(Array("eventline master key id\0".utf8) + bytes).prefix(16))
    }

    /// A key written as base64 (surrounding white space ignored).
    public init(base64 text: String) throws(EventStoreError) {
        guard let decoded = Data(base64Encoded: text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw .invalidArgument("the master key is not base64 (make one with: openssl rand -base64 32)")
        }
        try self.init(bytes: Array(decoded))
    }

    /// A new random key.
    public static func generate() -> MasterKey {
        // 32 random bytes are always a valid key.
        try! MasterKey(bytes: AESGCM.randomBytes(AESGCM.keySize))
    }

    public var base64: String { Data(bytes).base64EncodedString() }

    func wrap(_ dataKey: [UInt8], subject: String) -> [UInt8] {
        AESGCM.seal(dataKey, key: bytes, authenticating: Self.label(subject))
    }

    func unwrap(_ wrapped: [UInt8], subject: String) throws(AESGCM.AuthenticationFailure) -> [UInt8] {
        try AESGCM.open(wrapped, key: bytes, authenticating: Self.label(subject))
    }

    /// The wrapped key is bound to its subject: a row copied to another subject does not open.
    private static func label(_ subject: String) -> [UInt8] { Array("eventline subject key\0\(subject)".utf8) }
}

/// The personal data an event carries: whose it is (the subject, any string: a customer id,
/// an account stream) and where it is in the event's data (member paths such as `email` or
/// `address.street`). Those fields are stored encrypted under the subject's own key, and read
/// as `null` once the subject is forgotten.
public struct PersonalData: Sendable, Hashable {
    public var subject: String
    public var fields: [String]

    public init(subject: String, fields: [String]) {
        self.subject = subject
        self.fields = fields
    }

    /// The metadata member that records an event's personal data (reserved: an append may not set it).
    public static let metadataKey = "personal"
    static let maxFields = 64
    static let maxSubjectBytes = 255
    /// How a sealed field's value starts in the stored data.
    static let sealedPrefix = "eventline:sealed:v1:"

    /// The member names of each field's path.
    var paths: [[String]] { fields.map { $0.split(separator: ".", omittingEmptySubsequences: false).map(String.init) } }

    /// Why this declaration cannot be stored with `data` (valid JSON), or nil.
    func problem(in data: [UInt8]) -> String? {
        if let problem = Self.subjectProblem(subject) { return problem }
        guard !fields.isEmpty else { return "a subject needs personal fields: name them in \"personal\"" }
        guard fields.count <= Self.maxFields else { return "at most \(Self.maxFields) personal fields, got \(fields.count)" }
        guard data.first(where: { !Self.isSpace($0) }) == UInt8(ascii: "{") else { return "personal fields need data that is a JSON object" }
        var seen = Set<String>()
        for (path, segments) in zip(fields, paths) {
            guard !path.isEmpty, segments.allSatisfy({ !$0.isEmpty }) else {
                return "personal field \(JSONValue.quoted(path)) is not a path of member names such as email or address.street"
            }
            guard seen.insert(path).inserted else { return "personal field \(path) is named twice" }
            if let other = fields.first(where: { $0 != path && $0.hasPrefix(path + ".") }) {
                return "personal fields \(path) and \(other) overlap"
            }
            guard let span = JSONPathScanner.span(at: segments, in: data) else { return "personal field \(path) is not in the event's data" }
            guard Self.isSealable(data[span.lowerBound]) else { return "personal field \(path) must be a string, a number or an object" }
        }
        return nil
    }

    /// Whether a value starting with `byte` is a string, a number or an object.
    static func isSealable(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "{") || byte == UInt8(ascii: "-") || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }

    static func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09 }

    /// Why `subject` cannot name a subject, or nil.
    public static func subjectProblem(_ subject: String) -> String? {
        if subject.isEmpty { return "the subject is empty" }
        if subject.utf8.count > maxSubjectBytes { return "the subject is longer than \(maxSubjectBytes) bytes" }
        if subject.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
            return "the subject contains a control character"
        }
        return nil
    }

    /// What authenticates a field's ciphertext: a box moved to another event, field or subject does not open.
    private static func label(event id: UUID, subject: String, path: String) -> [UInt8] {
        Array("eventline personal field\0\(id.uuidString.lowercased())\0\(subject)\0\(path)".utf8)
    }

    /// `data` and `metadata` (both valid, `problem(in:)` checked) with the personal fields sealed
    /// under `key` and the declaration recorded in the metadata. Each field's JSON text is
    /// replaced in place, so the rest of the document keeps its bytes.
    func seal(data: [UInt8], metadata: [UInt8], event id: UUID, key: [UInt8]) -> (data: Data, metadata: Data) {
        var sealed = data
        for (path, span) in spans(in: data) {
            let box = AESGCM.seal(data[span], key: key, authenticating: Self.label(event: id, subject: subject, path: path))
            sealed.replaceSubrange(span, with: Array("\"\(Self.sealedPrefix)\(Data(box).base64EncodedString())\"".utf8))
        }
        let declaration = #""\#(Self.metadataKey)":{"subject":\#(JSONValue.quoted(subject)),"fields":[\#(fields.map(JSONValue.quoted).joined(separator: ","))]}"#
        return (Data(sealed), Data(Self.adding(member: declaration, to: metadata)))
    }

    /// Where each field's value is in `data`, the last first (so that replacing one keeps the
    /// others' places).
    private func spans(in data: [UInt8]) -> [(path: String, span: Range<Int>)] {
        zip(fields, paths).compactMap { path, segments in JSONPathScanner.span(at: segments, in: data).map { (path, $0) } }
            .sorted { $0.span.lowerBound > $1.span.lowerBound }
    }

    /// A JSON object's text with one more member (`"name":value`) before its closing brace.
    static func adding(member: String, to object: [UInt8]) -> [UInt8] {
        guard let close = object.lastIndex(of: UInt8(ascii: "}")), let open = object.firstIndex(of: UInt8(ascii: "{")), open < close else {
            return Array("{\(member)}".utf8)
        }
        let empty = object[(open + 1)..<close].allSatisfy(isSpace)
        var out = Array(object[..<close])
        out += Array(((empty ? "" : ",") + member).utf8)
        out += object[close...]
        return out
    }

    /// Whether metadata may have the reserved member (its name, or an escape that could spell it).
    static func mayName(_ metadata: Data) -> Bool {
        metadata.range(of: Data(metadataKey.utf8)) != nil || metadata.contains(UInt8(ascii: "\\"))
    }

    /// The declaration recorded in stored metadata, if any.
    static func recorded(in metadata: Data) -> PersonalData? {
        // Most events carry none: look for the member's name before scanning.
        guard metadata.range(of: Data("\"\(metadataKey)\"".utf8)) != nil,
            case .string(let subject)? = JSONPathScanner.value(at: [metadataKey, "subject"], in: metadata)
        else { return nil }
        var fields: [String] = []
        while fields.count < maxFields, case .string(let path)? = JSONPathScanner.value(at: [metadataKey, "fields", String(fields.count)], in: metadata) {
            fields.append(path)
        }
        return PersonalData(subject: subject, fields: fields)
    }

    /// The event as readers see it: its personal fields opened with `key`, or, with no key (the
    /// subject is forgotten), `null`, its metadata then listing them as `erased`.
    func open(_ event: RecordedEvent, key: [UInt8]?) throws -> RecordedEvent {
        var event = event
        let stored = Array(event.data)
        var data = stored
        let prefix = Array("\"\(Self.sealedPrefix)".utf8)
        for (path, span) in spans(in: stored) {
            guard span.count > prefix.count, stored[span].starts(with: prefix) else { continue }  // not sealed
            guard let key else {
                data.replaceSubrange(span, with: Array("null".utf8))
                continue
            }
            let encoded = stored[(span.lowerBound + prefix.count)..<(span.upperBound - 1)]
            guard let box = Data(base64Encoded: Data(encoded)),
                let plain = try? AESGCM.open(box, key: key, authenticating: Self.label(event: event.id, subject: subject, path: path))
            else {
                throw EventStoreError(
                    code: .corruptEvent, message: "event \(event.position): its personal field \(path) does not open under its subject's key",
                    stream: event.stream)
            }
            data.replaceSubrange(span, with: plain)
        }
        event.data = Data(data)
        if key == nil { event.metadata = Self.markingErased(fields, in: event.metadata) }
        return event
    }

    /// Metadata whose declaration lists `fields` as erased.
    static func markingErased(_ fields: [String], in metadata: Data) -> Data {
        guard case .object(var members)? = try? JSONValue(parsing: metadata), case .object(var declaration)? = members[metadataKey] else {
            return metadata
        }
        declaration["erased"] = .array(fields.map(JSONValue.string))
        members[metadataKey] = .object(declaration)
        return JSONValue.jsonData(members)
    }
}

extension RecordedEvent {
    /// The subject a `SubjectForgotten` event forgets, or nil for any other event.
    public var forgottenSubject: String? {
        guard type == EventStore.subjectForgottenType, stream == EventStore.forgottenStream,
            case .string(let subject)? = JSONPathScanner.value(at: ["subject"], in: data)
        else { return nil }
        return subject
    }

    /// This event, already read decrypted, as it reads once its subject is forgotten (when it
    /// holds personal data of one of `subjects`): its personal fields `null`, and named as
    /// erased in its metadata. For readers that keep events in memory (the live feed's tail).
    public func erasingPersonalData(of subjects: Set<String>) -> RecordedEvent {
        guard let personal = PersonalData.recorded(in: metadata), subjects.contains(personal.subject),
            JSONPathScanner.value(at: [PersonalData.metadataKey, "erased"], in: metadata) == nil
        else { return self }
        var data = Array(self.data)
        let spans = personal.paths.compactMap { JSONPathScanner.span(at: $0, in: data) }
        for span in spans.sorted(by: { $0.lowerBound > $1.lowerBound }) { data.replaceSubrange(span, with: Array("null".utf8)) }
        var erased = self
        erased.data = Data(data)
        erased.metadata = PersonalData.markingErased(personal.fields, in: metadata)
        return erased
    }
}

/// What a domain declares personal, per event type: the member paths of the data, and whose
/// they are (by default the subject is the event's stream, as `account-42`). The store seals
/// those fields in every append of the type, commands and raw appends alike, unless the append
/// names its personal data itself. A declared field that is absent or `null` is skipped.
public struct PersonalDataDeclarations: Sendable {
    public struct Declaration: Sendable {
        public var fields: [String]
        public var subject: @Sendable (_ stream: String) -> String
    }

    public private(set) var byType: [String: Declaration] = [:]

    public init() {}

    public var isEmpty: Bool { byType.isEmpty }

    /// Declares `fields` of `type` personal data of `subject(stream)`.
    public mutating func declare(_ type: String, fields: [String], subject: @escaping @Sendable (_ stream: String) -> String = { $0 }) {
        precondition(!fields.isEmpty, "a personal-data declaration of \(type) needs fields")
        precondition(byType[type] == nil, "\(type) has two personal-data declarations")
        byType[type] = Declaration(fields: fields, subject: subject)
    }

    public mutating func merge(_ other: PersonalDataDeclarations) {
        for (type, declaration) in other.byType {
            precondition(byType[type] == nil, "\(type) has two personal-data declarations")
            byType[type] = declaration
        }
    }

    /// The personal data an event of `type` in `stream` with `data` holds, or nil.
    func personalData(type: String, stream: String, data: [UInt8]) -> PersonalData? {
        guard let declaration = byType[type] else { return nil }
        let present = declaration.fields.filter { path in
            guard let span = JSONPathScanner.span(at: path.split(separator: ".").map(String.init), in: data) else { return false }
            return PersonalData.isSealable(data[span.lowerBound])
        }
        guard !present.isEmpty else { return nil }
        return PersonalData(subject: declaration.subject(stream), fields: present)
    }
}

/// The data keys of subjects, wrapped by the master key in `eventline.subject_keys`.
///
/// Writers keep the keys they used in memory (a key never changes until it is destroyed);
/// readers look them up for every page, so a forget is seen by the next read in any process.
final class SubjectKeyring: Sendable {
    let masterKey: MasterKey
    /// Data keys this process has sealed with, and the (subject, stream) pairs it has recorded.
    private struct Cache {
        var keys: [String: [UInt8]] = [:]
        var pairs: Set<String> = []
    }
    private let cache = Mutex(Cache())
    private static let maxCached = 100_000

    /// Seals snapshots (derived from the master key; never stored).
    let snapshotKey: [UInt8]

    init(masterKey: MasterKey) {
        self.masterKey = masterKey
        self.snapshotKey = HMACSHA256.mac(key: masterKey.bytes, message: Array("eventline snapshot key".utf8))
    }

    /// The data keys of `subjects` for sealing into `stream`, each created on first use; the
    /// first time a subject's data goes into a stream, the pair is recorded too (to find the
    /// stream's snapshots when the subject is forgotten). Throws `.subjectForgotten` for a
    /// subject whose key was destroyed: it never comes back.
    func keysForWriting(_ subjects: Set<String>, stream: String, pool: PostgresConnectionPool) async throws -> [String: [UInt8]] {
        var keys: [String: [UInt8]] = [:]
        let (missing, unrecorded) = cache.withLock { cache -> ([String], [String]) in
            var missing: [String] = []
            var unrecorded: [String] = []
            for subject in subjects.sorted() {
                if let key = cache.keys[subject] { keys[subject] = key } else { missing.append(subject) }
                if !cache.pairs.contains(Self.pair(subject, stream)) { unrecorded.append(subject) }
            }
            return (missing, unrecorded)
        }
        guard !missing.isEmpty || !unrecorded.isEmpty else { return keys }
        let masterKey = self.masterKey
        let wrapped = missing.map { masterKey.wrap(AESGCM.randomBytes(AESGCM.keySize), subject: $0) }
        let rows = try await pool.withConnection { conn in
            var statements: [SQLQuery] = []
            if !unrecorded.isEmpty {
                statements.append(SQLQuery("""
                    INSERT INTO eventline.subject_streams (subject, stream)
                    SELECT subject, \(stream) FROM unnest(\(PostgresBinaryArray(text: unrecorded))) AS batch (subject)
                    ON CONFLICT DO NOTHING
                    """))
            }
            if !missing.isEmpty {
                // Two statements, each with its own snapshot: the second sees a key another
                // process created while the first waited for it.
                statements.append(SQLQuery("""
                    INSERT INTO eventline.subject_keys (subject, wrapped_key, master_key_id)
                    SELECT * FROM unnest(\(PostgresBinaryArray(text: missing)), \(PostgresBinaryArray(bytea: wrapped.map { Data($0) })),
                                         \(PostgresBinaryArray(text: missing.map { _ in masterKey.id })))
                    ON CONFLICT (subject) DO NOTHING
                    """))
                statements.append(SQLQuery("""
                    SELECT subject, wrapped_key, master_key_id FROM eventline.subject_keys
                    WHERE subject = ANY(\(PostgresBinaryArray(text: missing)))
                    """))
            }
            let results = try conn.pipeline(statements).map { try $0.get() }
            guard !missing.isEmpty, let selected = results.last else { return [(subject: String, wrapped: Data?, keyID: String?)]() }
            return try selected.rows.map { row in
                (subject: try row.decode(0, as: String.self), wrapped: try row.decode(1, as: Data?.self), keyID: try row.decode(2, as: String?.self))
            }
        }
        var opened: [String: [UInt8]] = [:]
        for row in rows {
            guard let wrapped = row.wrapped else { throw EventStoreError.subjectForgotten(row.subject) }
            opened[row.subject] = try unwrap(Array(wrapped), subject: row.subject, keyID: row.keyID)
        }
        cache.withLock { cache in
            if cache.keys.count + opened.count > Self.maxCached { cache.keys = [:] }
            cache.keys.merge(opened) { _, new in new }
            if cache.pairs.count + unrecorded.count > Self.maxCached { cache.pairs = [] }
            for subject in unrecorded { cache.pairs.insert(Self.pair(subject, stream)) }
        }
        return keys.merging(opened) { _, new in new }
    }

    private static func pair(_ subject: String, _ stream: String) -> String { "\(subject)\0\(stream)" }

    /// Drops a subject's key from this process's memory.
    func forget(_ subject: String) {
        _ = cache.withLock { $0.keys.removeValue(forKey: subject) }
    }

    /// The data keys of `subjects` for reading, looked up now; a forgotten or unknown subject
    /// has none.
    func keysForReading(_ subjects: Set<String>, on conn: PostgresConnection) throws -> [String: [UInt8]] {
        let rows = try conn.query("""
            SELECT subject, wrapped_key, master_key_id FROM eventline.subject_keys
            WHERE subject = ANY(\(PostgresBinaryArray(text: Array(subjects)))) AND wrapped_key IS NOT NULL
            """).rows
        var keys: [String: [UInt8]] = [:]
        for row in rows {
            let subject = try row.decode(0, as: String.self)
            keys[subject] = try unwrap(Array(try row.decode(1, as: Data.self)), subject: subject, keyID: try row.decode(2, as: String?.self))
        }
        return keys
    }

    private func unwrap(_ wrapped: [UInt8], subject: String, keyID: String?) throws(EventStoreError) -> [UInt8] {
        do {
            return try masterKey.unwrap(wrapped, subject: subject)
        } catch {
            throw EventStoreError.masterKeyMismatch(subject: subject, storedID: keyID, configuredID: masterKey.id)
        }
    }
}

/// How stored events become what readers see: personal fields opened with their subject's key
/// (or `null` once it is forgotten), then upcast to the domain's current shapes.
public struct EventReading: Sendable {
    public var upcasters: EventUpcasters
    let keyring: SubjectKeyring?

    public init(upcasters: EventUpcasters = EventUpcasters(), masterKey: MasterKey? = nil) {
        self.upcasters = upcasters
        self.keyring = masterKey.map(SubjectKeyring.init(masterKey:))
    }

    init(upcasters: EventUpcasters, keyring: SubjectKeyring?) {
        self.upcasters = upcasters
        self.keyring = keyring
    }

    /// Events from rows of `SELECT \(EventStore.eventColumns) FROM eventline.events`: payloads
    /// decompressed, personal data opened (its keys looked up on `conn`), then upcast.
    package func decode(_ result: PostgresResult, on conn: PostgresConnection) throws -> [RecordedEvent] {
        try readable(EventStore.storedEvents(result), on: conn)
    }

    /// Stored events as readers see them.
    func readable(_ stored: [RecordedEvent], on conn: PostgresConnection) throws -> [RecordedEvent] {
        var events = stored
        var declared: [Int: PersonalData] = [:]
        for (index, event) in events.enumerated() {
            if let personal = PersonalData.recorded(in: event.metadata) { declared[index] = personal }
        }
        if !declared.isEmpty {
            guard let keyring else { throw EventStoreError.noMasterKey(reading: events[declared.keys.min()!]) }
            let keys = try keyring.keysForReading(Set(declared.values.map(\.subject)), on: conn)
            for (index, personal) in declared {
                events[index] = try personal.open(events[index], key: keys[personal.subject])
            }
        }
        return try events.map { try EventStore.upcast($0, upcasters) }
    }
}

extension EventStoreError {
    static func subjectForgotten(_ subject: String) -> Self {
        EventStoreError(
            code: .subjectForgotten,
            message: "subject \(JSONValue.quoted(subject)) is forgotten: its key was destroyed, and no personal data of it is stored again")
    }

    static func masterKeyMismatch(subject: String, storedID: String?, configuredID: String) -> Self {
        EventStoreError(
            code: .masterKey,
            message: "the master key (id \(configuredID)) does not open the key of subject \(JSONValue.quoted(subject)), wrapped under master key id \(storedID ?? "unknown"): start the process with the master key the data keys were wrapped with")
    }

    static func noMasterKey(reading event: RecordedEvent) -> Self {
        EventStoreError(
            code: .masterKey,
            message: "event \(event.position) holds personal data and no master key is configured: set EVENTLINE_MASTER_KEY or EVENTLINE_MASTER_KEY_FILE",
            stream: event.stream)
    }

    static let noMasterKeyForWriting = EventStoreError(
        code: .masterKey,
        message: "events with personal fields need a master key, and none is configured: set EVENTLINE_MASTER_KEY or EVENTLINE_MASTER_KEY_FILE (nothing was stored)")
}

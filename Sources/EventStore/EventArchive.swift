import Foundation
import LZ4
import PostgresClient

/// An archive that cannot be written or loaded; `line` is the NDJSON line at fault, if any.
public struct ArchiveError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var line: Int?

    public init(_ message: String, line: Int? = nil) {
        self.message = message
        self.line = line
    }

    public var description: String { line.map { "line \($0): \(message)" } ?? message }
}

/// How far an export or import has got.
public struct ArchiveProgress: Sendable {
    public var events: Int
    /// The last position written or loaded.
    public var position: Int
    /// The position the run ends at (an export knows it; an import does not).
    public var target: Int?
}

/// Moves the log in and out of a store as an LZ4 frame file of NDJSON, one event per line:
/// `{"position","stream","version","id","type","data","metadata","recordedAt"}` (and
/// `"schemaVersion"` when one was recorded, `"tags"` when the event has some), as stored (never upcast), readable with
/// `lz4 -dc FILE`. Both directions stream with constant memory.
public enum EventArchive {
    /// How many events an export reads, and an import inserts, per statement.
    static let batchSize = 2000

    /// Writes the events from position `from` to `to` (default: the head when the export
    /// starts) to `path`. The file appears only when complete (it is written beside, then
    /// renamed). Data whose JSON holds line breaks between tokens gets spaces instead, so that
    /// every event is one line. Returns the number of events written.
    @discardableResult
    public static func export(
        databaseURL: String, to path: String, from: Int = 1, to: Int? = nil,
        progress: (@Sendable (ArchiveProgress) -> Void)? = nil
    ) async throws -> Int {
        let connection = DedicatedConnection(conninfo: databaseURL, name: "eventline-export")
        defer { connection.shutdown() }
        return try await connection.run { conn in
            let head = try conn.query("SELECT position FROM eventline.log_head").first?.decode(0, as: Int.self) ?? 0
            let last = min(to ?? head, head)
            let partial = path + ".partial"
            guard FileManager.default.createFile(atPath: partial, contents: nil), let file = FileHandle(forWritingAtPath: partial) else {
                throw ArchiveError("cannot create \(partial)")
            }
            var done = false
            defer {
                try? file.close()
                if !done { try? FileManager.default.removeItem(atPath: partial) }
            }
            let encoder = try LZ4FrameEncoder(blockSize: .max4MB)
            var buffer: [UInt8] = []
            buffer.reserveCapacity(2 << 20)
            var after = max(0, from - 1)
            var count = 0
            while after < last {
                let rows = try conn.query(SQLQuery("""
                    SELECT position, stream, version, event_id::text, type, data, codec, metadata::text,
                           to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), schema_version, tags
                    FROM eventline.events WHERE position > \(after) AND position <= \(last) ORDER BY position LIMIT \(batchSize)
                    """).prepared())
                guard rows.count > 0 else { break }
                for row in rows.rows {
                    let position: Int = try row.decode(0)
                    let data = try PayloadCodec.decode(try row.decode(5, as: Data.self), codec: Int16(try row.decode(6, as: Int.self)))
                    append(#"{"position":\#(position),"stream":\#(JSONValue.quoted(try row.decode(1))),"version":\#(try row.decode(2, as: Int.self)),"id":"\#(try row.decode(3, as: String.self))","type":\#(JSONValue.quoted(try row.decode(4))),"data":"#, to: &buffer)
                    for byte in data { buffer.append(byte == 0x0A || byte == 0x0D ? 0x20 : byte) }
                    let schemaVersion = try row.decode(9, as: Int?.self).map { #","schemaVersion":\#($0)"# } ?? ""
                    let tags = try row.decode(10, as: PostgresTextArray?.self).map { #","tags":[\#($0.values.map(JSONValue.quoted).joined(separator: ","))]"# } ?? ""
                    append(#","metadata":\#(try row.decode(7, as: String.self)),"recordedAt":"\#(try row.decode(8, as: String.self))"\#(schemaVersion)\#(tags)}"#, to: &buffer)
                    buffer.append(0x0A)
                    after = position
                    count += 1
                }
                if buffer.count >= 1 << 20 {
                    try file.write(contentsOf: try encoder.update(buffer))
                    buffer.removeAll(keepingCapacity: true)
                }
                progress?(ArchiveProgress(events: count, position: after, target: last))
            }
            try file.write(contentsOf: try encoder.update(buffer))
            try file.write(contentsOf: try encoder.finish())
            try file.synchronize()
            try file.close()
            try? FileManager.default.removeItem(atPath: path)
            try FileManager.default.moveItem(atPath: partial, toPath: path)
            done = true
            return count
        }
    }

    private static func append(_ text: String, to buffer: inout [UInt8]) {
        var text = text
        text.withUTF8 { buffer.append(contentsOf: $0) }
    }

    /// Loads an archive into the store in one transaction, keeping positions. The first event
    /// must follow the store's head and each next one the one before; a gap, a duplicate, an
    /// invalid line, a stream version that does not follow its stream, or a corrupt or
    /// truncated frame refuses the whole file: nothing is loaded. Appends wait while it runs.
    /// Returns the number of events loaded.
    @discardableResult
    public static func `import`(
        databaseURL: String, from path: String, progress: (@Sendable (ArchiveProgress) -> Void)? = nil
    ) async throws -> Int {
        let connection = DedicatedConnection(conninfo: databaseURL, name: "eventline-import")
        defer { connection.shutdown() }
        return try await connection.run { conn in
            guard let file = FileHandle(forReadingAtPath: path) else { throw ArchiveError("cannot open \(path)") }
            defer { try? file.close() }
            try conn.execute(unsafeSQL: "BEGIN")
            do {
                let count = try load(file, into: conn, progress: progress)
                try conn.execute(unsafeSQL: "COMMIT")
                return count
            } catch {
                conn.rollbackQuietly()
                throw error
            }
        }
    }

    private static func load(
        _ file: FileHandle, into conn: PostgresConnection, progress: (@Sendable (ArchiveProgress) -> Void)?
    ) throws -> Int {
        // The head's row lock keeps every writer out until the import commits or rolls back.
        let head = try conn.query("SELECT position FROM eventline.log_head FOR UPDATE").first?.decode(0, as: Int.self) ?? 0
        let decoder = try LZ4FrameDecoder()
        var pending: [UInt8] = []
        var batch: [ArchivedEvent] = []
        batch.reserveCapacity(batchSize)
        var expected = head + 1
        var line = 0
        var count = 0

        func take(_ bytes: ArraySlice<UInt8>) throws {
            line += 1
            if bytes.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { return }  // blank line
            let event = try ArchivedEvent(Data(bytes), line: line)
            guard event.position == expected else {
                let reason = event.position < expected
                    ? (event.position <= head ? "position \(event.position) is already in the store (its head is \(head))" : "position \(event.position) is a duplicate or out of order")
                    : "position \(event.position) leaves a gap: \(expected) was expected"
                throw ArchiveError(reason, line: line)
            }
            expected += 1
            batch.append(event)
            if batch.count == batchSize {
                try insert(batch, into: conn, firstLine: line - batch.count + 1)
                count += batch.count
                batch.removeAll(keepingCapacity: true)
                progress?(ArchiveProgress(events: count, position: expected - 1, target: nil))
            }
        }

        func split() throws {
            var start = pending.startIndex
            while let newline = pending[start...].firstIndex(of: 0x0A) {
                try take(pending[start..<newline])
                start = newline + 1
            }
            pending.removeSubrange(..<start)
        }

        while true {
            let chunk: Data
            do {
                chunk = try file.read(upToCount: 1 << 20) ?? Data()
            } catch {
                throw ArchiveError("cannot read the archive: \(error)")
            }
            if chunk.isEmpty { break }
            do {
                pending += try decoder.decode(chunk)
            } catch {
                throw ArchiveError("the archive is not a valid LZ4 frame file: \(error)")
            }
            if pending.count > 64 << 20 {
                throw ArchiveError("a line longer than 64 MiB: not an Eventline archive", line: line + 1)
            }
            try split()
        }
        do {
            try decoder.finish()
        } catch {
            throw ArchiveError("the archive is truncated or corrupt: \(error)")
        }
        if !pending.isEmpty { try take(pending[...]) }
        if !batch.isEmpty {
            try insert(batch, into: conn, firstLine: line - batch.count + 1)
            count += batch.count
        }
        guard count > 0 else { return 0 }
        // Every imported event must follow its stream's previous version, in the store or the file.
        if let row = try conn.query("""
            SELECT e.position, e.stream, e.version FROM eventline.events e
            WHERE e.position > \(head) AND e.version > 1
              AND NOT EXISTS (SELECT 1 FROM eventline.events p WHERE p.stream = e.stream AND p.version = e.version - 1)
            ORDER BY e.position LIMIT 1
            """).first {
            throw ArchiveError(
                "event at position \(try row.decode(0, as: Int.self)) is version \(try row.decode(2, as: Int.self)) of \(try row.decode(1, as: String.self)), whose previous version is neither in the store nor before it in the archive")
        }
        // Subscribers and projectors hear of the new head at COMMIT.
        _ = try conn.query("""
            UPDATE eventline.log_head SET position = \(expected - 1) RETURNING pg_notify(\(LogWriter.notificationChannel), position::text)
            """)
        progress?(ArchiveProgress(events: count, position: expected - 1, target: expected - 1))
        return count
    }

    private static func insert(_ events: [ArchivedEvent], into conn: PostgresConnection, firstLine: Int) throws {
        let encoded = events.map { PayloadCodec.encode($0.data, threshold: 512) }
        do {
            try conn.execute("""
                INSERT INTO eventline.events (position, stream, version, event_id, type, data, codec, metadata, recorded_at, schema_version, tags)
                SELECT position, stream, version, event_id, type, data, codec, metadata, recorded_at::timestamptz, NULLIF(schema_version, 0),
                       string_to_array(tags, E'\\n')
                FROM unnest(\(PostgresBinaryArray(int8: events.map(\.position))), \(PostgresBinaryArray(text: events.map(\.stream))),
                            \(PostgresBinaryArray(int8: events.map(\.version))), \(PostgresBinaryArray(uuid: events.map(\.id))),
                            \(PostgresBinaryArray(text: events.map(\.type))), \(PostgresBinaryArray(bytea: encoded.map(\.0))),
                            \(PostgresBinaryArray(int2: encoded.map(\.1.rawValue))), \(PostgresBinaryArray(jsonb: events.map(\.metadata))),
                            \(PostgresBinaryArray(text: events.map(\.recordedAt))), \(PostgresBinaryArray(int2: events.map(\.schemaVersion))),
                            \(PostgresBinaryArray(optionalText: events.map { $0.tags.isEmpty ? nil : $0.tags.joined(separator: "\n") })))
                     AS batch (position, stream, version, event_id, type, data, codec, metadata, recorded_at, schema_version, tags)
                """)
            let tagged = events.flatMap { event in event.tags.map { (event.position, $0) } }
            if !tagged.isEmpty {
                try conn.execute("""
                    INSERT INTO eventline.event_tags (tag, position)
                    SELECT tag, position FROM unnest(\(PostgresBinaryArray(text: tagged.map(\.1))), \(PostgresBinaryArray(int8: tagged.map(\.0)))) AS t (tag, position)
                    """)
            }
        } catch let error as PostgresError where !error.isConnectionError {
            let what: String
            switch error.constraint {
            case "events_event_id_key"?: what = "an event id is already in the store or repeated in the archive"
            case "events_stream_version_key"?: what = "a stream version is already in the store or repeated in the archive"
            default: what = error.message
            }
            throw ArchiveError("lines \(firstLine)–\(firstLine + events.count - 1): \(what)\(error.detail.map { " (\($0))" } ?? "")")
        }
    }
}

/// One line of an archive, checked.
struct ArchivedEvent {
    var position: Int
    var stream: String
    var version: Int
    var id: UUID
    var type: String
    var data: Data
    var metadata: Data
    var recordedAt: String
    /// 0: none recorded.
    var schemaVersion: Int16 = 0
    var tags: [String] = []

    init(_ line: Data, line number: Int) throws {
        func fail(_ message: String) -> ArchiveError { ArchiveError(message, line: number) }
        guard let members = JSONValidator.members(of: line) else { throw fail("not a JSON object") }
        var fields: [String: Data] = [:]
        for member in members {
            let key = String(decoding: line[member.key], as: UTF8.self)
            guard ["position", "stream", "version", "id", "type", "data", "metadata", "recordedAt", "schemaVersion", "tags"].contains(key) else {
                throw fail("unknown field \(key)")
            }
            guard fields[key] == nil else { throw fail("\(key) appears twice") }
            fields[key] = line[member.value]
        }
        func integer(_ name: String) throws -> Int {
            guard let raw = fields[name] else { throw fail("\(name) is missing") }
            guard let value = Int(String(decoding: raw, as: UTF8.self)), value > 0 else { throw fail("\(name) must be an integer > 0") }
            return value
        }
        func string(_ name: String) throws -> String {
            guard let raw = fields[name] else { throw fail("\(name) is missing") }
            // Most strings hold no escapes: their bytes are the value.
            if raw.count >= 2, raw.first == UInt8(ascii: "\""), !raw.contains(UInt8(ascii: "\\")) {
                return String(decoding: raw.dropFirst().dropLast(), as: UTF8.self)
            }
            guard let value = (try? JSONSerialization.jsonObject(with: raw, options: [.fragmentsAllowed])) as? String else {
                throw fail("\(name) must be a string")
            }
            return value
        }
        position = try integer("position")
        version = try integer("version")
        let streamName = try string("stream")
        guard let valid = try? StreamName(streamName) else { throw fail("stream \(streamName) is not a valid stream name") }
        stream = valid.rawValue
        let idText = try string("id")
        guard let uuid = UUID(uuidString: idText) else { throw fail("id \(idText) is not a UUID") }
        id = uuid
        type = try string("type")
        guard !type.isEmpty, type.utf8.count <= 255 else { throw fail("type must be 1 to 255 bytes") }
        guard let data = fields["data"] else { throw fail("data is missing") }
        self.data = data
        guard let metadata = fields["metadata"], metadata.first == UInt8(ascii: "{") else { throw fail("metadata must be a JSON object") }
        self.metadata = metadata
        recordedAt = try string("recordedAt")
        guard Self.isTimestamp(recordedAt) else { throw fail("recordedAt must be an RFC 3339 time, not \(recordedAt)") }
        if fields["schemaVersion"] != nil {
            let version = try integer("schemaVersion")
            guard version <= Int(Int16.max) else { throw fail("schemaVersion must be at most \(Int16.max)") }
            schemaVersion = Int16(version)
        }
        if let raw = fields["tags"] {
            guard let list = (try? JSONSerialization.jsonObject(with: raw)) as? [Any], let tags = list as? [String] else {
                throw fail("tags must be an array of strings")
            }
            if let problem = EventTag.problem(withTags: tags) { throw fail(problem) }
            self.tags = tags
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS…` with a zone (`Z` or `±HH:MM`), so that PostgreSQL, which parses
    /// it, never falls back to its session's zone.
    static func isTimestamp(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count >= 20, bytes.count <= 40, bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-"),
            bytes[10] == UInt8(ascii: "T"), bytes[13] == UInt8(ascii: ":")
        else { return false }
        if bytes.last == UInt8(ascii: "Z") { return true }
        let sign = bytes[bytes.count - 6]
        return (sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-")) && bytes[bytes.count - 3] == UInt8(ascii: ":")
    }
}

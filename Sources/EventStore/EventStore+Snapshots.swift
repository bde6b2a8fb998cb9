import Foundation
import LZ4
import PostgresClient

/// A stored snapshot of a stream's state.
public struct Snapshot: Sendable, Hashable {
    /// The stream version the state includes.
    public var version: Int
    /// The shape of the state, as the aggregate numbered it.
    public var stateVersion: Int
    /// The state's JSON, decompressed.
    public var data: Data

    public init(version: Int, stateVersion: Int, data: Data) {
        self.version = version
        self.stateVersion = stateVersion
        self.data = data
    }
}

extension EventStore {
    /// The latest snapshot of `stream`, or nil. A snapshot that cannot be decompressed is
    /// treated as absent: snapshots are a cache of the log.
    public func loadSnapshot(_ stream: String) async throws -> Snapshot? {
        let name = try StreamName(stream).rawValue
        let row = try await translatingErrors(stream: name) {
            try await pool.withConnection { conn -> (Int, Int, Data)? in
                guard let row = try conn.query("SELECT version, state_version, data FROM eventline.snapshots WHERE stream = \(name)").first
                else { return nil }
                return (try row.decode(0), try row.decode(1), try row.decode(2))
            }
        }
        guard let (version, stateVersion, stored) = row, let data = openSnapshot(stored, stream: name) else { return nil }
        return Snapshot(version: version, stateVersion: stateVersion, data: data)
    }

    /// How a snapshot is stored: LZ4-compressed and, with a master key, sealed under a key
    /// derived from it, because a state folded from personal data holds it in plain form (a
    /// database dump alone reveals nothing; forgetting a subject drops its streams' snapshots).
    func sealSnapshot(_ data: Data, stream: String) throws -> Data {
        let compressed = try LZ4Block.compress(data)
        guard let keyring = reading.keyring else { return compressed }
        return Self.sealedSnapshotPrefix + Data(AESGCM.seal(compressed, key: keyring.snapshotKey, authenticating: Self.snapshotLabel(stream)))
    }

    /// What authenticates a sealed snapshot: it opens only as the snapshot of its own stream.
    static func snapshotLabel(_ stream: String) -> [UInt8] { Array(sealedSnapshotPrefix) + Array(stream.utf8) }

    /// The state a stored snapshot holds; nil when it cannot be opened (sealed under another
    /// master key, or with none here) or decompressed: snapshots are a cache of the log.
    func openSnapshot(_ stored: Data, stream: String) -> Data? {
        var compressed = stored
        if stored.starts(with: Self.sealedSnapshotPrefix) {
            guard let keyring = reading.keyring,
                let opened = try? AESGCM.open(
                    stored.dropFirst(Self.sealedSnapshotPrefix.count), key: keyring.snapshotKey, authenticating: Self.snapshotLabel(stream))
            else { return nil }
            compressed = Data(opened)
        }
        return try? LZ4Block.decompress(compressed)
    }

    static let sealedSnapshotPrefix = Data("eventline:sealed-snapshot:v1:".utf8)

    /// Stores a snapshot (LZ4-compressed) unless a newer one of the same shape is already there,
    /// or the stream holds personal data of a subject that is forgotten (a state folded before
    /// the forget may hold it). That check takes a share lock on the subjects' keys, so a
    /// forget either finds the snapshot and drops it, or is seen and none is written.
    public func saveSnapshot(_ stream: String, _ snapshot: Snapshot) async throws {
        let name = try StreamName(stream).rawValue
        let compressed = try sealSnapshot(snapshot.data, stream: name)
        try await translatingErrors(stream: name) {
            try await pool.withConnection { conn in
                try conn.transaction { conn in
                    let keys = try conn.query("""
                        SELECT k.wrapped_key IS NULL FROM eventline.subject_keys k
                        JOIN eventline.subject_streams s ON s.subject = k.subject
                        WHERE s.stream = \(name) FOR SHARE OF k
                        """)
                    if try keys.rows.contains(where: { try $0.decode(0, as: Bool.self) }) { return }
                    try conn.execute("""
                        INSERT INTO eventline.snapshots AS s (stream, version, state_version, data)
                        VALUES (\(name), \(snapshot.version), \(snapshot.stateVersion), \(compressed))
                        ON CONFLICT (stream) DO UPDATE
                        SET version = EXCLUDED.version, state_version = EXCLUDED.state_version, data = EXCLUDED.data,
                            created_at = now()
                        WHERE s.version < EXCLUDED.version OR s.state_version <> EXCLUDED.state_version
                        """)
                }
            }
        }
    }
}

extension EventStore {
    /// What loading an aggregate needs, in one statement (one round trip, one consistent view):
    /// the latest snapshot of shape `stateVersion`, if any, and up to `limit` events after it.
    /// A snapshot whose bytes cannot be decompressed is returned as nil with `snapshotUnusable`
    /// set: the events then start after it, so the caller must read the stream from the start.
    public func readForLoad(
        _ stream: String, stateVersion: Int, limit: Int
    ) async throws -> (snapshot: Snapshot?, snapshotUnusable: Bool, events: [RecordedEvent]) {
        let name = try StreamName(stream).rawValue
        let query: SQLQuery = """
            WITH s AS (SELECT version, data FROM eventline.snapshots WHERE stream = \(name) AND state_version = \(stateVersion))
            SELECT 0 AS part, NULL::bigint AS position, s.version, NULL::uuid AS event_id, NULL::text AS type, s.data,
                   NULL::smallint AS codec, NULL::jsonb AS metadata, NULL::timestamptz AS recorded_at, NULL::smallint AS schema_version,
                   NULL::text[] AS tags
            FROM s
            UNION ALL
            SELECT 1, position, version, event_id, type, data, codec, metadata, recorded_at, schema_version, tags FROM (
                SELECT position, version, event_id, type, data, codec, metadata, recorded_at, schema_version, tags FROM eventline.events
                WHERE stream = \(name) AND version > coalesce((SELECT version FROM s), 0)
                ORDER BY version LIMIT \(limit)
            ) e
            ORDER BY part, version
            """
        let reading = self.reading
        return try await translatingErrors(stream: name) {
            try await pool.withConnection { conn in
                var snapshot: Snapshot? = nil
                var unusable = false
                var events: [RecordedEvent] = []
                for row in try conn.query(query).rows {
                    if try row.decode(0, as: Int.self) == 0 {
                        if let data = self.openSnapshot(try row.decode(5, as: Data.self), stream: name) {
                            snapshot = Snapshot(version: try row.decode(2), stateVersion: stateVersion, data: data)
                        } else {
                            unusable = true
                        }
                        continue
                    }
                    events.append(RecordedEvent(
                        position: try row.decode(1), stream: name, version: try row.decode(2), id: try row.decode(3), type: try row.decode(4),
                        data: try PayloadCodec.decode(try row.decode(5, as: Data.self), codec: Int16(try row.decode(6, as: Int.self))),
                        metadata: try row.decode(7), recordedAt: try row.decode(8), schemaVersion: try row.decode(9, as: Int?.self) ?? 1,
                        tags: try row.decode(10, as: PostgresTextArray?.self)?.values ?? []))
                }
                return (snapshot, unusable, try reading.readable(events, on: conn))
            }
        }
    }
}

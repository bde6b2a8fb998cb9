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
        guard let (version, stateVersion, stored) = row, let data = try? LZ4Block.decompress(stored) else { return nil }
        return Snapshot(version: version, stateVersion: stateVersion, data: data)
    }

    /// Stores a snapshot (LZ4-compressed) unless a newer one of the same shape is already there.
    public func saveSnapshot(_ stream: String, _ snapshot: Snapshot) async throws {
        let name = try StreamName(stream).rawValue
        let compressed = try LZ4Block.compress(snapshot.data)
        try await translatingErrors(stream: name) {
            try await pool.withConnection { conn in
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

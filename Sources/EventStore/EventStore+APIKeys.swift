import Foundation
import PostgresClient

/// An API key's scope: what it may do.
public enum APIKeyScope: String, Sendable, CaseIterable, Comparable {
    /// Read streams, the log and read models.
    case read
    /// Everything `read` may, and issue commands and append events.
    case commands
    /// Everything, including metrics.
    case admin

    public static func < (lhs: Self, rhs: Self) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// A stored API key (without the secret).
public struct APIKeyRecord: Sendable, Hashable {
    public var id: String
    public var scope: APIKeyScope
    public var name: String
    public var createdAt: Date
    public var revokedAt: Date?
}

extension EventStore {
    /// Creates a key and returns it; only its SHA-256 is stored, so this is the one time it is seen.
    public func createAPIKey(scope: APIKeyScope, name: String = "") async throws -> (key: String, record: APIKeyRecord) {
        var generator = SystemRandomNumberGenerator()
        let id = (0..<4).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
        let secret = (0..<24).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
        let key = "el_\(id)_\(secret)"
        let hash = SHA256.hex(Array(key.utf8))
        let createdAt = try await translatingErrors {
            try await pool.withConnection { conn in
                try conn.query("""
                    INSERT INTO eventline.api_keys (id, key_hash, scope, name) VALUES (\(id), \(hash), \(scope.rawValue), \(name))
                    RETURNING created_at
                    """).first!.decode(0, as: Date.self)
            }
        }
        return (key, APIKeyRecord(id: id, scope: scope, name: name, createdAt: createdAt, revokedAt: nil))
    }

    /// Every key, revoked ones too, oldest first.
    public func listAPIKeys() async throws -> [APIKeyRecord] {
        try await translatingErrors {
            try await pool.withConnection { conn in
                try conn.query("SELECT id, scope, name, created_at, revoked_at FROM eventline.api_keys ORDER BY created_at, id").rows.map { row in
                    APIKeyRecord(
                        id: try row.decode(0), scope: APIKeyScope(rawValue: try row.decode(1)) ?? .read, name: try row.decode(2),
                        createdAt: try row.decode(3), revokedAt: try row.decode(4))
                }
            }
        }
    }

    /// Revokes the key `id`; returns false when no such key exists or it was revoked already.
    public func revokeAPIKey(id: String) async throws -> Bool {
        try await translatingErrors {
            try await pool.withConnection { conn in
                try conn.execute("UPDATE eventline.api_keys SET revoked_at = now() WHERE id = \(id) AND revoked_at IS NULL") == 1
            }
        }
    }

    /// The hashes and scopes of the keys in force, for the server's in-memory check.
    public func activeAPIKeyHashes() async throws -> [String: APIKeyScope] {
        try await apiKeyState().keys
    }

    /// The keys in force, and whether any key was ever created: a server whose every key is
    /// revoked stays closed (revoking the last key must not open it).
    public func apiKeyState() async throws -> APIKeyState {
        try await translatingErrors {
            try await pool.withConnection { conn in
                var state = APIKeyState(keys: [:], everCreated: false)
                for row in try conn.query("SELECT key_hash, scope, revoked_at IS NULL FROM eventline.api_keys").rows {
                    state.everCreated = true
                    if try row.decode(2, as: Bool.self) {
                        state.keys[try row.decode(0)] = APIKeyScope(rawValue: try row.decode(1))
                    }
                }
                return state
            }
        }
    }
}

/// The API keys as the server checks them.
public struct APIKeyState: Sendable, Equatable {
    /// The SHA-256 (hex) of each key in force, with its scope.
    public var keys: [String: APIKeyScope]
    /// Whether any key was ever created (revoked ones count).
    public var everCreated: Bool

    public init(keys: [String: APIKeyScope], everCreated: Bool) {
        self.keys = keys
        self.everCreated = everCreated
    }
}

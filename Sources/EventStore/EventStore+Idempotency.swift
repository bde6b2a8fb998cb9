import Foundation
import PostgresClient

/// What the store knows of an idempotency key.
public enum IdempotencyReservation: Sendable, Hashable {
    /// The key is new (or its first request was abandoned): handle the request, then
    /// `completeIdempotencyKey` or `releaseIdempotencyKey` with this token.
    case reserved(token: UUID)
    /// The key was used with this body before: answer with the stored response.
    case replay(status: Int, body: Data)
    /// The key was used with a different body.
    case mismatch
    /// The first request with this key is still being handled.
    case inProgress
}

extension EventStore {
    /// Reserves `key` in `scope` for a request with `body`. A reservation older than
    /// `abandonAfter` whose request never completed (its server died) is taken over.
    public func reserveIdempotencyKey(
        scope: String, key: String, body: Data, abandonAfter: Duration = .seconds(60)
    ) async throws -> IdempotencyReservation {
        let seconds = Double(abandonAfter.components.seconds)
        let token = UUID.random()
        return try await translatingErrors {
            try await pool.withConnection { conn in
                let inserted = try conn.query("""
                    INSERT INTO eventline.idempotency_keys (scope, key, request_hash, token)
                    VALUES (\(scope), \(key), encode(sha256(\(body)), 'hex'), \(token))
                    ON CONFLICT (scope, key) DO NOTHING
                    RETURNING true
                    """)
                if inserted.count == 1 { return .reserved(token: token) }
                guard let row = try conn.query("""
                    SELECT request_hash = encode(sha256(\(body)), 'hex'), status, response,
                           created_at < now() - make_interval(secs => \(seconds))
                    FROM eventline.idempotency_keys WHERE scope = \(scope) AND key = \(key)
                    """).first
                else { return .inProgress }  // deleted between the two statements: let the client retry
                guard try row.decode(0, as: Bool.self) else { return .mismatch }
                if let status = try row.decode(1, as: Int?.self) {
                    return .replay(status: status, body: try row.decode(2, as: Data?.self) ?? Data())
                }
                guard try row.decode(3, as: Bool.self) else { return .inProgress }
                let taken = try conn.execute("""
                    UPDATE eventline.idempotency_keys SET created_at = now(), token = \(token)
                    WHERE scope = \(scope) AND key = \(key) AND status IS NULL
                      AND created_at < now() - make_interval(secs => \(seconds))
                    """)
                return taken == 1 ? .reserved(token: token) : .inProgress
            }
        }
    }

    /// Stores the response to the request that reserved `key` with `token`; does nothing when
    /// the reservation was taken over by a later request.
    public func completeIdempotencyKey(scope: String, key: String, token: UUID, status: Int, body: Data) async throws {
        try await translatingErrors {
            try await pool.withConnection { conn in
                try conn.execute("""
                    UPDATE eventline.idempotency_keys SET status = \(status), response = \(body), completed_at = now()
                    WHERE scope = \(scope) AND key = \(key) AND token = \(token) AND status IS NULL
                    """)
            }
        }
    }

    /// Gives up a reservation whose request failed in a way worth retrying (the database was
    /// unavailable), so that a retry runs the request.
    public func releaseIdempotencyKey(scope: String, key: String, token: UUID) async throws {
        try await translatingErrors {
            try await pool.withConnection { conn in
                try conn.execute("""
                    DELETE FROM eventline.idempotency_keys
                    WHERE scope = \(scope) AND key = \(key) AND token = \(token) AND status IS NULL
                    """)
            }
        }
    }
}

import Foundation
import PostgresClient
import Synchronization

/// What the store knows of an idempotency key.
public enum IdempotencyReservation: Sendable, Hashable {
    /// The key is new, or its first request was interrupted: handle the request, then
    /// `completeIdempotencyKey`, `releaseIdempotencyKey` or `abandonIdempotencyKey` with this
    /// token. `resumed` says an earlier request held the key and never finished (its server
    /// died, or its commit's outcome was unknown): it may have written, so the request first
    /// looks in the log for what it wrote.
    case reserved(token: UUID, resumed: Bool)
    /// The key was used with this body before: answer with the stored response.
    case replay(status: Int, body: Data)
    /// The key was used with a different body.
    case mismatch
    /// The first request with this key is still being handled by a live server.
    case inProgress
}

/// The session that stands for this process as the owner of idempotency reservations. Its
/// backend pid and start time are stored with each reservation; a retry finds the owner gone
/// once the process dies (PostgreSQL ends the session) or the database restarts, and takes the
/// reservation over at once.
final class PresenceSession: Sendable {
    struct Identity: Sendable, Hashable {
        var pid: Int32
        /// `backend_start` as PostgreSQL renders it (microseconds), so that it compares exactly.
        var started: String
    }

    private final class Box: Sendable {
        let identity = Mutex<Identity?>(nil)
    }

    private let connection: DedicatedConnection
    private let box = Box()

    init(conninfo: String, connectTimeout: Duration) {
        let box = self.box
        connection = DedicatedConnection(conninfo: conninfo, name: "eventline-presence", connectTimeout: connectTimeout) { conn in
            try conn.execute(unsafeSQL: "SET application_name = 'eventline-presence'")
            guard let row = try conn.query("""
                SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()
                """).first
            else { throw PostgresError(code: .server, message: "pg_stat_activity does not show this session") }
            let identity = Identity(pid: try row.decode(0, as: Int32.self), started: try row.decode(1, as: String.self))
            box.identity.withLock { $0 = identity }
        }
    }

    /// The live session's identity, reconnecting (as a new identity) when the old one is gone.
    func identity() async throws -> Identity {
        let box = self.box
        return try await connection.run { _ in
            guard let identity = box.identity.withLock({ $0 }) else {
                throw PostgresError(code: .connectionFailed, message: "the presence session is not established")
            }
            return identity
        }
    }

    func shutdown() {
        connection.shutdown()
    }
}

extension EventStore {
    /// Reserves `key` in `scope` for a request with `body`. A reservation whose request never
    /// completed is taken over when its owner (a server's presence session) is gone, or when it
    /// is older than `abandonAfter` whatever its owner (a request stuck in a live server).
    public func reserveIdempotencyKey(
        scope: String, key: String, body: Data, abandonAfter: Duration = .seconds(60)
    ) async throws -> IdempotencyReservation {
        let seconds = Double(abandonAfter.components.seconds)
        let token = UUID.random()
        let owner = try await translatingErrors { try await presence.identity() }
        // An unfinished reservation is abandoned when it is too old or its owner is gone.
        // A number formatted here, never client input.
        let abandoned = """
            (k.created_at < now() - make_interval(secs => \(seconds))
             OR (k.owner_pid IS NOT NULL AND NOT EXISTS (
                 SELECT 1 FROM pg_stat_activity a WHERE a.pid = k.owner_pid AND a.backend_start = k.owner_started)))
            """
        let hash = requestHash(body)
        // Rows written before request hashes were keyed hold the plain SHA-256.
        let legacyHash = SHA256.hex(Array(body))
        return try await translatingErrors {
            try await pool.withConnection { conn in
                let inserted = try conn.query("""
                    INSERT INTO eventline.idempotency_keys (scope, key, request_hash, token, owner_pid, owner_started)
                    VALUES (\(scope), \(key), \(hash), \(token), \(owner.pid), \(owner.started)::timestamptz)
                    ON CONFLICT (scope, key) DO NOTHING
                    RETURNING true
                    """)
                if inserted.count == 1 { return .reserved(token: token, resumed: false) }
                guard let row = try conn.query("""
                    SELECT request_hash IN (\(hash), \(legacyHash)), status, response, \(unsafeSQL: abandoned)
                    FROM eventline.idempotency_keys k WHERE scope = \(scope) AND key = \(key)
                    """).first
                else { return .inProgress }  // deleted between the two statements: let the client retry
                guard try row.decode(0, as: Bool.self) else { return .mismatch }
                if let status = try row.decode(1, as: Int?.self) {
                    return .replay(status: status, body: try row.decode(2, as: Data?.self) ?? Data())
                }
                guard try row.decode(3, as: Bool.self) else { return .inProgress }
                let taken = try conn.execute("""
                    UPDATE eventline.idempotency_keys k
                    SET created_at = now(), token = \(token), owner_pid = \(owner.pid), owner_started = \(owner.started)::timestamptz
                    WHERE scope = \(scope) AND key = \(key) AND status IS NULL AND \(unsafeSQL: abandoned)
                    """)
                return taken == 1 ? .reserved(token: token, resumed: true) : .inProgress
            }
        }
    }

    /// What is stored to tell a retry's body from another: an HMAC-SHA256 of the body under a
    /// key derived from the master key (`hmac-<master key id>:<hex>`), so that someone with the
    /// database alone cannot confirm a guessed body (a person's name, say), before or after
    /// the person is forgotten. Without a master key no personal data is accepted, and the
    /// plain SHA-256 is stored. A key rotation changes the hash: a retry of a request made
    /// before it is refused as a different body (`.mismatch`), never answered wrongly.
    func requestHash(_ body: Data) -> String {
        guard let masterKey = configuration.masterKey else { return SHA256.hex(Array(body)) }
        let key = HMACSHA256.mac(key: masterKey.bytes, message: Array("eventline idempotency request hash".utf8))
        return "hmac-\(masterKey.id):" + HMACSHA256.hex(key: key, message: body)
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

    /// Gives up a reservation whose request wrote nothing and failed in a way worth retrying
    /// (the database was unavailable), so that a retry runs the request as new.
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

    /// Marks a reservation whose request may or may not have written (its commit's outcome is
    /// unknown) as abandoned: the next retry takes it over at once, as `resumed`, and looks in
    /// the log for what the first request wrote.
    public func abandonIdempotencyKey(scope: String, key: String, token: UUID) async throws {
        try await translatingErrors {
            try await pool.withConnection { conn in
                try conn.execute("""
                    UPDATE eventline.idempotency_keys SET created_at = '-infinity'
                    WHERE scope = \(scope) AND key = \(key) AND token = \(token) AND status IS NULL
                    """)
            }
        }
    }

    /// What an earlier append with the event ids `ids(0)`, `ids(1)`, … wrote: the event with
    /// `ids(0)` and those after it in its stream whose ids continue the sequence, as an
    /// `AppendResult` with `wasAlreadyAppended`. Nil when the log holds no event with `ids(0)`.
    /// A request that derives its event ids from an idempotency key asks this to learn whether
    /// an interrupted run of it committed.
    public func appendedEarlier(withIDs ids: @escaping @Sendable (Int) -> UUID) async throws -> AppendResult? {
        let first = ids(0)
        let limit = configuration.maxEventsPerAppend
        return try await translatingErrors {
            try await pool.withConnection { conn -> AppendResult? in
                let rows = try conn.query("""
                    SELECT e.event_id, e.stream, e.version, e.position, e.type, e.recorded_at
                    FROM eventline.events f
                    JOIN eventline.events e ON e.stream = f.stream AND e.version >= f.version AND e.version < f.version + \(limit)
                    WHERE f.event_id = \(first)
                    ORDER BY e.version
                    """).rows
                var events: [AppendedEvent] = []
                var stream = ""
                var recordedAt = Date()
                for (index, row) in rows.enumerated() {
                    let id = try row.decode(0, as: UUID.self)
                    guard id == ids(index) else { break }
                    stream = try row.decode(1, as: String.self)
                    recordedAt = try row.decode(5, as: Date.self)
                    events.append(AppendedEvent(
                        id: id, type: try row.decode(4, as: String.self), version: try row.decode(2, as: Int.self),
                        position: try row.decode(3, as: Int.self)))
                }
                guard let last = events.last else { return nil }
                return AppendResult(
                    stream: stream, version: last.version, position: last.position, events: events, recordedAt: recordedAt,
                    wasAlreadyAppended: true)
            }
        }
    }
}

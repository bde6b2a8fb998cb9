import Foundation
import PostgresClient

/// Forgetting a subject (crypto-shredding) and closing a stream for good (a tombstone). Both
/// are appends of the log writer, so they take their place in the log's order: consumers see
/// them, and what they change commits in the same transaction as their event.
extension EventStore {
    /// The type of a tombstone: the last event of a deleted stream.
    public static let tombstoneType = "$StreamDeleted"
    /// The type of the audit event a forget appends (its data names the subject, nothing else).
    public static let subjectForgottenType = "SubjectForgotten"
    /// Where forgets are recorded.
    public static let forgottenStream = "$subjects-forgotten"

    /// Forgets `subject`: destroys its data key, so that its personal fields read as `null`
    /// everywhere from now on, and appends a `SubjectForgotten` event (`{"subject": …}`) in the
    /// same transaction. Snapshots of the streams that hold its personal data are dropped with
    /// it. The key never comes back: later appends with personal data of the subject are
    /// refused. Forgetting again succeeds; the result then says it was already appended. A
    /// subject that never had personal data is not known to the store: forgetting it throws
    /// `.subjectNotFound` (nothing is appended) unless `evenIfUnknown`, which forgets it ahead
    /// of any data (its personal data will be refused). Needs no master key.
    @discardableResult
    public func forget(subject: String, evenIfUnknown: Bool = false) async throws -> AppendResult {
        if let problem = PersonalData.subjectProblem(subject) { throw EventStoreError.invalidArgument(problem) }
        if !evenIfUnknown {
            // A subject is known once a writer made its key (or it was forgotten): a row of
            // subject_keys, which is never deleted.
            let known = try await translatingErrors {
                try await pool.withConnection { conn in
                    try conn.query("SELECT 1 FROM eventline.subject_keys WHERE subject = \(subject)").first != nil
                }
            }
            guard known else { throw EventStoreError.subjectNotFound(subject) }
        }
        let event = NewEvent(
            id: UUID.sha256Derived(from: "eventline subject forgotten\0\(subject)"), type: Self.subjectForgottenType,
            data: JSONValue.jsonData(["subject": .string(subject)]))
        var prepared = try prepare(try StreamName(Self.forgottenStream), expected: .any, events: [event], platform: true)
        prepared.effects = [
            """
            INSERT INTO eventline.subject_keys (subject, wrapped_key, master_key_id, forgotten_at) VALUES (\(subject), NULL, NULL, now())
            ON CONFLICT (subject) DO UPDATE
            SET wrapped_key = NULL, master_key_id = NULL, forgotten_at = coalesce(eventline.subject_keys.forgotten_at, now())
            """,
            """
            DELETE FROM eventline.snapshots WHERE stream IN (SELECT stream FROM eventline.subject_streams WHERE subject = \(subject))
            """,
        ]
        let result = try await writer.append(prepared)[0]
        reading.keyring?.forget(subject)
        return result
    }

    /// Whether `subject` is forgotten.
    public func isForgotten(subject: String) async throws -> Bool {
        try await translatingErrors {
            try await pool.withConnection { conn in
                try conn.query("SELECT forgotten_at IS NOT NULL FROM eventline.subject_keys WHERE subject = \(subject)").first?
                    .decode(0, as: Bool.self) ?? false
            }
        }
    }

    /// Deletes `stream` for good: appends a tombstone (`$StreamDeleted`) if the stream's
    /// version satisfies `expected`. From then on its reads fail with `.streamDeleted`, and so
    /// does every append to it, however many writers race it; its events keep their positions
    /// in the log. Deleting again is idempotent (the result says it was already appended).
    /// A stream with no events is not deleted (`.streamNotFound`) unless `expected` is
    /// `.noStream`, which closes its name before it is ever written.
    @discardableResult
    public func deleteStream(_ stream: String, expected: ExpectedVersion = .any, metadata: Data? = nil) async throws -> AppendResult {
        let name = try StreamName(stream)
        guard !name.rawValue.hasPrefix("$") else { throw EventStoreError.invalidArgument("stream \(name.rawValue) is the platform's: it cannot be deleted") }
        let tombstone = NewEvent(
            id: UUID.sha256Derived(from: "eventline tombstone\0\(name.rawValue)"), type: Self.tombstoneType, data: Data("{}".utf8),
            metadata: metadata)
        // `.any` deletes a stream that exists: the check is the writer's, under the head lock,
        // so it holds however many writers race it.
        let prepared = try prepare(name, expected: expected == .any ? .exists : expected, events: [tombstone], platform: true)
        do {
            return try await writer.append(prepared)[0]
        } catch let error as EventStoreError where expected == .any && error.code == .wrongExpectedVersion && error.currentVersion == 0 {
            throw EventStoreError(code: .streamNotFound, message: "stream \(name.rawValue) has no events: there is nothing to delete (expectedVersion noStream closes its name anyway)", stream: name.rawValue)
        }
    }

    /// Whether the stream's last event is its tombstone, read on `conn`.
    static func isDeleted(_ stream: String, on conn: PostgresConnection) throws -> Bool {
        try conn.query("""
            SELECT type = \(tombstoneType) FROM eventline.events WHERE stream = \(stream) ORDER BY version DESC LIMIT 1
            """).first?.decode(0, as: Bool.self) ?? false
    }

    /// How many streams are deleted (an index of tombstones answers).
    public func deletedStreamCount() async throws -> Int {
        try await translatingErrors {
            try await pool.withConnection { conn in
                try conn.query("SELECT count(*) FROM eventline.events WHERE type = \(Self.tombstoneType)").first?.decode(0, as: Int.self) ?? 0
            }
        }
    }
}

extension EventStore {
    /// Re-wraps every subject's data key under `newKey`, a thousand per transaction: the data keys
    /// (and so every encrypted field) stay as they are. Keys already wrapped under `newKey` are
    /// left alone, so running it again after every process has moved to the new key picks up
    /// keys that processes still on the old one created meanwhile. Needs the store's current
    /// master key; returns how many keys were re-wrapped.
    public func rotateMasterKey(to newKey: MasterKey) async throws -> Int {
        guard let keyring = reading.keyring else { throw EventStoreError.noMasterKeyForWriting }
        let oldKey = keyring.masterKey
        var total = 0
        // In transactions of a thousand keys: a forget waits on a key's row lock while it holds
        // the log head, so a long one would hold up every append.
        while true {
            let count = try await translatingErrors {
                try await pool.withConnection { conn in
                    try conn.transaction { conn -> Int in
                        let rows = try conn.query("""
                            SELECT subject, wrapped_key, master_key_id FROM eventline.subject_keys
                            WHERE wrapped_key IS NOT NULL AND master_key_id IS DISTINCT FROM \(newKey.id)
                            ORDER BY subject LIMIT 1000 FOR UPDATE SKIP LOCKED
                            """).rows
                        var subjects: [String] = []
                        var wrapped: [Data] = []
                        for row in rows {
                            let subject = try row.decode(0, as: String.self)
                            let dataKey: [UInt8]
                            do {
                                dataKey = try oldKey.unwrap(Array(try row.decode(1, as: Data.self)), subject: subject)
                            } catch {
                                throw EventStoreError.masterKeyMismatch(
                                    subject: subject, storedID: try row.decode(2, as: String?.self), configuredID: oldKey.id)
                            }
                            subjects.append(subject)
                            wrapped.append(Data(newKey.wrap(dataKey, subject: subject)))
                        }
                        guard !subjects.isEmpty else { return 0 }
                        try conn.execute("""
                            UPDATE eventline.subject_keys k SET wrapped_key = batch.wrapped, master_key_id = \(newKey.id)
                            FROM unnest(\(PostgresBinaryArray(text: subjects)), \(PostgresBinaryArray(bytea: wrapped))) AS batch (subject, wrapped)
                            WHERE k.subject = batch.subject AND k.wrapped_key IS NOT NULL
                            """)
                        return subjects.count
                    }
                }
            }
            guard count > 0 else { return total }
            total += count
        }
    }

    /// Subjects with a key, subjects forgotten, and keys wrapped under another master key
    /// than this store's (for `eventctl status`).
    public func subjectKeyCounts() async throws -> (keys: Int, forgotten: Int, otherMasterKey: Int) {
        let id = reading.keyring?.masterKey.id
        return try await translatingErrors {
            try await pool.withConnection { conn in
                let row = try conn.query("""
                    SELECT count(*) FILTER (WHERE wrapped_key IS NOT NULL), count(*) FILTER (WHERE wrapped_key IS NULL),
                           count(*) FILTER (WHERE wrapped_key IS NOT NULL AND master_key_id IS DISTINCT FROM \(id))
                    FROM eventline.subject_keys
                    """).first
                return (try row?.decode(0, as: Int.self) ?? 0, try row?.decode(1, as: Int.self) ?? 0, try row?.decode(2, as: Int.self) ?? 0)
            }
        }
    }
}

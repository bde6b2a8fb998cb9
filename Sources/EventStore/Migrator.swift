import EventlineSchemas
import Foundation
import PostgresClient

/// One numbered SQL file from `Schemas/migrations` (`0001_event_log.sql`).
public struct Migration: Sendable, Hashable {
    public var version: Int
    public var name: String
    public var sql: String

    public init(version: Int, name: String, sql: String) {
        self.version = version
        self.name = name
        self.sql = sql
    }

    /// The migrations compiled into this binary from `Schemas/migrations` (the default: a
    /// binary migrates a database with nothing beside it on disk).
    public static func embedded() throws(EventStoreError) -> [Migration] {
        try parse(EmbeddedSchemaFiles.migrations, source: "the migrations compiled into this binary")
    }

    /// Reads every `NNNN_name.sql` file in `directory`, ordered by number (a development
    /// override of the embedded migrations). Duplicate numbers and files that do not follow
    /// the pattern are errors.
    public static func load(from directory: String) throws(EventStoreError) -> [Migration] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw EventStoreError(code: .migration, message: "cannot read the migrations directory \(directory)")
        }
        var files: [(name: String, contents: Data)] = []
        for name in names.sorted() where name.hasSuffix(".sql") {
            guard let data = FileManager.default.contents(atPath: directory + "/" + name) else {
                throw EventStoreError(code: .migration, message: "cannot read migration file \(name)")
            }
            files.append((name, data))
        }
        return try parse(files, source: directory)
    }

    /// Numbers and orders migration files; names must be `NNNN_description.sql`, numbers unique.
    static func parse(_ files: [(name: String, contents: Data)], source: String) throws(EventStoreError) -> [Migration] {
        var migrations: [Migration] = []
        for (file, data) in files {
            let digits = file.prefix { $0.isNumber }
            guard let version = Int(digits), version > 0, file.dropFirst(digits.count).hasPrefix("_") else {
                throw EventStoreError(
                    code: .migration, message: "migration file \(file) is not named NNNN_description.sql")
            }
            guard let sql = String(data: data, encoding: .utf8) else {
                throw EventStoreError(code: .migration, message: "cannot read migration file \(file) as UTF-8")
            }
            if let other = migrations.first(where: { $0.version == version }) {
                throw EventStoreError(code: .migration, message: "migrations \(other.name) and \(file) share the number \(version)")
            }
            migrations.append(Migration(version: version, name: file, sql: sql))
        }
        guard !migrations.isEmpty else {
            throw EventStoreError(code: .migration, message: "no migrations (NNNN_name.sql) in \(source)")
        }
        return migrations.sorted { $0.version < $1.version }
    }
}

/// A migration's state in a database.
public struct MigrationStatus: Sendable, Hashable {
    public enum State: String, Sendable {
        /// Applied with the same checksum as the file.
        case applied
        /// Not applied yet.
        case pending
        /// Applied, but the file has changed since.
        case changed
        /// Applied, but no file has it (a newer release applied it).
        case unknown
    }
    public var version: Int
    public var name: String
    public var state: State
    public var appliedAt: Date?
}

/// Applies numbered SQL migrations, each in its own transaction, recorded with a SHA-256
/// checksum in `eventline.schema_migrations`. A session advisory lock lets several migrators
/// start at once: one applies, the others wait and then find nothing to do. A migration whose
/// file changed after it was applied is refused.
public struct Migrator: Sendable {
    /// The advisory lock key ("eventmig" as 8 bytes).
    static let lockKey: Int64 = 0x6576_656E_746D_6967
    public let databaseURL: String
    public let migrations: [Migration]
    /// How long opening the connection may take.
    public var connectTimeout: Duration = PostgresConnection.defaultConnectTimeout

    public init(databaseURL: String, migrations: [Migration]) {
        self.databaseURL = databaseURL
        self.migrations = migrations
    }

    /// Applies pending migrations and returns those applied now (empty when up to date).
    @discardableResult
    public func migrate() async throws -> [Migration] {
        let migrations = self.migrations
        return try await withConnection { conn in
            try conn.execute("SELECT pg_advisory_lock(\(Self.lockKey))")
            defer { _ = try? conn.execute("SELECT pg_advisory_unlock(\(Self.lockKey))") }
            try conn.execute(unsafeSQL: """
                CREATE SCHEMA IF NOT EXISTS eventline;
                CREATE TABLE IF NOT EXISTS eventline.schema_migrations (
                    version    integer     PRIMARY KEY,
                    name       text        NOT NULL,
                    checksum   text        NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                );
                """)
            let applied = try Self.appliedChecksums(conn)
            var done: [Migration] = []
            for migration in migrations {
                let checksum = try Self.checksum(migration.sql, conn)
                if let recorded = applied[migration.version] {
                    guard recorded.checksum == checksum else { throw Self.changedError(migration, recorded: recorded.name) }
                    continue
                }
                do {
                    try conn.transaction { conn in
                        try conn.execute(unsafeSQL: migration.sql)
                        try conn.execute("""
                            INSERT INTO eventline.schema_migrations (version, name, checksum)
                            VALUES (\(migration.version), \(migration.name), \(checksum))
                            """)
                    }
                } catch let error as PostgresError {
                    throw EventStoreError(
                        code: .migration, message: "migration \(migration.name) failed and was rolled back: \(error)",
                        underlying: error)
                }
                done.append(migration)
            }
            return done
        }
    }

    /// Each known migration's state, and those the database has that no file names.
    public func status() async throws -> [MigrationStatus] {
        let migrations = self.migrations
        // A few reads: a database that does not answer them in seconds is not going to.
        return try await withConnection(answerTimeout: .seconds(3)) { conn in
            let exists = try conn.query("SELECT to_regclass('eventline.schema_migrations') IS NOT NULL").first?.decode(0, as: Bool.self) ?? false
            var applied: [Int: (name: String, checksum: String, appliedAt: Date)] = [:]
            if exists {
                for row in try conn.query("SELECT version, name, checksum, applied_at FROM eventline.schema_migrations").rows {
                    applied[try row.decode(0)] = (try row.decode(1), try row.decode(2), try row.decode(3))
                }
            }
            var statuses: [MigrationStatus] = []
            for migration in migrations {
                if let recorded = applied.removeValue(forKey: migration.version) {
                    let same = try Self.checksum(migration.sql, conn) == recorded.checksum
                    statuses.append(MigrationStatus(
                        version: migration.version, name: migration.name, state: same ? .applied : .changed,
                        appliedAt: recorded.appliedAt))
                } else {
                    statuses.append(MigrationStatus(version: migration.version, name: migration.name, state: .pending, appliedAt: nil))
                }
            }
            for (version, recorded) in applied.sorted(by: { $0.key < $1.key }) {
                statuses.append(MigrationStatus(version: version, name: recorded.name, state: .unknown, appliedAt: recorded.appliedAt))
            }
            return statuses
        }
    }

    /// Why a process must not run against this database yet, as one line naming the fix, or
    /// nil when every known migration is applied unchanged. Migrations the database has and
    /// this binary does not know (a newer release's) are no reason: they only add.
    public func unreadiness() async throws -> String? {
        let statuses = try await status()
        let changed = statuses.filter { $0.state == .changed }
        if let first = changed.first {
            return "migration \(first.name) was applied with other contents than this binary's; "
                + "run the eventctl that applied it, or restore its file"
        }
        let pending = statuses.filter { $0.state == .pending }
        guard !pending.isEmpty else { return nil }
        let names = pending.count <= 3 ? pending.map(\.name).joined(separator: ", ")
            : "\(pending.first!.name) … \(pending.last!.name)"
        let what = pending.count == migrations.count ? "the database is not migrated" : "the database schema is out of date"
        return "\(what): \(pending.count) pending migration\(pending.count == 1 ? "" : "s") (\(names)); "
            + "run eventctl migrate, or pass --migrate to apply them first"
    }

    private func withConnection<T: Sendable>(
        answerTimeout: Duration? = nil, _ body: @escaping @Sendable (PostgresConnection) throws -> T
    ) async throws -> T {
        let connection = DedicatedConnection(
            conninfo: databaseURL, name: "eventline-migrate", answerTimeout: answerTimeout, connectTimeout: connectTimeout)
        defer { connection.shutdown() }
        do {
            return try await connection.run(body)
        } catch let error as PostgresError {
            throw EventStoreError.database(error)
        }
    }

    private static func appliedChecksums(_ conn: PostgresConnection) throws -> [Int: (name: String, checksum: String)] {
        var applied: [Int: (name: String, checksum: String)] = [:]
        for row in try conn.query("SELECT version, name, checksum FROM eventline.schema_migrations").rows {
            applied[try row.decode(0)] = (try row.decode(1), try row.decode(2))
        }
        return applied
    }

    /// SHA-256 of the file, computed by the server so that no hashing code lives here.
    private static func checksum(_ sql: String, _ conn: PostgresConnection) throws -> String {
        try conn.query("SELECT encode(sha256(convert_to(\(sql), 'UTF8')), 'hex')").first!.decode(0, as: String.self)
    }

    private static func changedError(_ migration: Migration, recorded: String) -> EventStoreError {
        EventStoreError(
            code: .migration,
            message: "migration \(migration.name) was already applied (as \(recorded)) but its file has changed since; "
                + "restore the original file and put the change in a new migration")
    }
}

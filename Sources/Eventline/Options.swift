import ArgumentParser
import EventStore
import Foundation
import Logging
import PostgresClient

/// The database to work on.
struct DatabaseOptions: ParsableArguments {
    @Option(name: .customLong("database-url"), help: "libpq connection string (default: $EVENTLINE_DATABASE_URL).")
    var databaseURLOption: String?

    var databaseURL: String {
        get throws {
            if let url = databaseURLOption ?? ProcessInfo.processInfo.environment["EVENTLINE_DATABASE_URL"], !url.isEmpty {
                // libpq's own parser: a malformed string, or an unknown target_session_attrs,
                // is one clear line before anything connects.
                do {
                    _ = try ConnectionInfo(url)
                } catch let error as PostgresError {
                    throw CLIError("\(databaseURLOption == nil ? "EVENTLINE_DATABASE_URL" : "--database-url"): \(error.message)")
                }
                return url
            }
            throw CLIError("no database: pass --database-url or set EVENTLINE_DATABASE_URL")
        }
    }

    func validate() throws {
        if let url = databaseURLOption, url.trimmingCharacters(in: .whitespaces).isEmpty {
            throw ValidationError("--database-url is empty")
        }
    }

    /// Runs `body` on one connection of its own (on its thread), then closes it.
    func withConnection<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        try await CLI.withConnection(try databaseURL, body)
    }

    /// Opens an event store with a small pool, enough for one command.
    func openStore() throws -> EventStore {
        var configuration = Domain.current.storeConfiguration(databaseURL: try databaseURL, masterKey: try EnvironmentVariables.masterKey())
        configuration.poolSize = 2
        configuration.acquireTimeout = .seconds(15)
        return EventStore(configuration, logger: CLI.logger)
    }
}

/// Which SQL migrations: those compiled into the binary, or a directory's (for development).
struct MigrationOptions: ParsableArguments {
    @Option(
        name: .customLong("migrations-dir"),
        help: "Directory of NNNN_name.sql files, instead of those compiled into \(CLI.name) (default: $EVENTLINE_MIGRATIONS_DIR).")
    var directory: String?

    func load() throws -> [Migration] {
        if let path = directory ?? ProcessInfo.processInfo.environment["EVENTLINE_MIGRATIONS_DIR"], !path.isEmpty {
            return try Migration.load(from: path)
        }
        return try Migration.embedded()
    }
}

/// The schema check every long-running command makes before it starts: with migrations
/// pending it stops with one line naming the fix, unless `--migrate` applies them first.
struct SchemaOptions: ParsableArguments {
    @Flag(help: "Apply pending migrations before starting (default: refuse to start with migrations pending).")
    var migrate = false
    @OptionGroup var migrations: MigrationOptions

    /// Migrates when asked to, then refuses a database this binary's schema is not applied to.
    /// Returns false when the database could not be reached (the process starts anyway).
    @discardableResult
    func prepare(databaseURL: String, logger: Logger, connectTimeout: Duration? = nil) async throws -> Bool {
        var migrator = Migrator(databaseURL: databaseURL, migrations: try migrations.load())
        if let connectTimeout { migrator.connectTimeout = connectTimeout }
        if migrate {
            for migration in try await migrator.migrate() {
                logger.info("applied migration", metadata: ["migration.name": "\(migration.name)"])
            }
        }
        let reason: String?
        do {
            reason = try await migrator.unreadiness()
        } catch let error as EventStoreError where error.underlying?.isConnectionError ?? false {
            // Unreachable now is no reason not to start: readiness says so until it is back.
            logger.warning("cannot check the database schema now; starting anyway", metadata: ["error": "\(error.message)"])
            return false
        }
        if let reason { throw CLIError(reason) }
        return true
    }
}

/// An error for people: printed as one line.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    var exitCode: Int32 = 1
    init(_ description: String, exitCode: Int32 = 1) {
        self.description = description
        self.exitCode = exitCode
    }
}

enum CLI {
    /// The executable's name, for messages.
    static var name: String { Domain.current.name }

    static let logger: Logger = {
        var logger = Logger(label: "eventctl")
        let level = ProcessInfo.processInfo.environment["EVENTLINE_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:))
        logger.logLevel = level ?? .warning
        return logger
    }()

    /// Runs `body` on a connection to `url` of its own (on its thread), then closes it.
    static func withConnection<T: Sendable>(_ url: String, _ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        let connection = DedicatedConnection(conninfo: url, name: "eventctl")
        defer { connection.shutdown() }
        return try await connection.run(body)
    }

    /// Runs a command body: any error becomes one line on stderr and a non-zero exit, never a trace.
    static func run(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let error as CLIError {
            fail(error.description, code: error.exitCode)
        } catch let error as EventStoreError where error.underlying?.isMissingSchema ?? false {
            fail("the database has no (or an older) Eventline schema: run \(CLI.name) migrate", code: 1)
        } catch let error as EventStoreError {
            fail(error.message, code: error.code == .wrongExpectedVersion ? 3 : 1)
        } catch let error as ValidationError {
            throw error
        } catch let error as ExitCode {
            throw error
        } catch is CancellationError {
            throw ExitCode(130)
        } catch {
            fail("\(error)", code: 1)
        }
    }

    static func fail(_ message: String, code: Int32) -> Never {
        let line = message.replacingOccurrences(of: "\n", with: " ")
        FileHandle.standardError.write(Data("\(CLI.name): error: \(line)\n".utf8))
        exit(code)
    }
}

import Aggregates
import ArgumentParser
import EventStore
import Foundation
import HTTPServer
import Hummingbird
import Logging
import PostgresClient
import Projector
import ServiceLifecycle
import UnixSignals
import ReadModels

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the HTTP API (the domain's commands; streams, the log, read models, health, metrics).")

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var cacheOptions: CacheOptions
    @OptionGroup var projections: ProjectionOptions
    @OptionGroup var schema: SchemaOptions
    @Option(help: "Address to listen on (default: $EVENTLINE_HTTP_HOST or 127.0.0.1).") var host: String?
    @Option(help: "Port to listen on (default: $EVENTLINE_HTTP_PORT or 8080).") var port: Int?
    @Option(name: .customLong("max-body-size"), help: "Largest request body in bytes (default: $EVENTLINE_MAX_BODY_SIZE or 1 MiB).")
    var maxBodySize: Int?

    func validate() throws {
        if let port, !(0...65535).contains(port) { throw ValidationError("--port must be between 0 and 65535") }
        if let maxBodySize, maxBodySize < 1024 { throw ValidationError("--max-body-size must be at least 1024") }
    }

    func run() async throws {
        try await CLI.run {
            // A configuration error says so before anything else starts.
            _ = try EnvironmentVariables.requiredMasterKey()
            let environment = ProcessInfo.processInfo.environment
            var configuration = ServerConfiguration()
            configuration.host = host ?? environment["EVENTLINE_HTTP_HOST"] ?? configuration.host
            if let port = try port ?? environment["EVENTLINE_HTTP_PORT"].map(Self.parsePort) { configuration.port = port }
            if let size = maxBodySize ?? environment["EVENTLINE_MAX_BODY_SIZE"].flatMap(Int.init) { configuration.maxBodySize = size }
            configuration.rateLimit = try Self.rateLimit(environment)
            if let timeout = try EnvironmentVariables.seconds("EVENTLINE_HTTP_IDLE_TIMEOUT", in: 0.001...3600, environment) {
                configuration.idleTimeout = timeout
            }
            if let heartbeat = try EnvironmentVariables.seconds("EVENTLINE_LIVE_HEARTBEAT", in: 0.01...3600, environment) {
                configuration.liveHeartbeat = heartbeat
            }
            if let text = environment["EVENTLINE_HTTP_MAX_CONNECTIONS"] {
                guard let count = Int(text), (1...1_000_000).contains(count) else {
                    throw CLIError("EVENTLINE_HTTP_MAX_CONNECTIONS must be a number from 1 to 1000000, not '\(text)'")
                }
                configuration.maxConnections = count
            }
            for (name, field) in [("EVENTLINE_LIVE_MAX_CLIENTS", \ServerConfiguration.liveMaxClients), ("EVENTLINE_LIVE_MAX_CLIENTS_PER_KEY", \.liveMaxClientsPerKey)] {
                guard let text = environment[name] else { continue }
                guard let count = Int(text), (1...1_000_000).contains(count) else {
                    throw CLIError("\(name) must be a number from 1 to 1000000, not '\(text)'")
                }
                configuration[keyPath: field] = count
            }
            // Streams stay open: they must leave connections for health checks and commands.
            let room = max(1, configuration.maxConnections / 4)
            if configuration.liveMaxClients > configuration.maxConnections - room {
                if environment["EVENTLINE_LIVE_MAX_CLIENTS"] != nil {
                    throw CLIError(
                        "EVENTLINE_LIVE_MAX_CLIENTS (\(configuration.liveMaxClients)) must leave a quarter of EVENTLINE_HTTP_MAX_CONNECTIONS (\(configuration.maxConnections)) to other requests: at most \(configuration.maxConnections - room)")
                }
                configuration.liveMaxClients = max(1, configuration.maxConnections - room)
            }
            var readModels = ReadModels()
            readModels.cache = try cacheOptions.cache(logger: Logger(label: "eventline.cache"))
            if let timeout = try EnvironmentVariables.seconds("EVENTLINE_READ_WAIT_TIMEOUT", in: 0...3600, environment) {
                readModels.waitTimeout = timeout
            }
            readModels.readDatabaseURL = try EnvironmentVariables.readDatabaseURL(environment)
            configuration.requireSynchronousReplication = try EnvironmentVariables.requireSynchronousReplication(environment)
            let timeouts = try DatabaseTimeouts.from(environment)
            let url = try database.databaseURL
            let reachable = try await schema.prepare(databaseURL: url, logger: Logs.logger("eventline"), connectTimeout: timeouts.connect)
            readModels.declared = await Self.checkProjections(projections, url: url, reachable: reachable)
            if configuration.requireSynchronousReplication && reachable { try await Self.checkSynchronousReplication(url) }
            try await Server.run(databaseURL: url, configuration: configuration, readModels: readModels, timeouts: timeouts)
        }
    }

    /// Read models are served from the database's registry (new ones are picked up while
    /// running); the directory's definitions only say which are not built yet, or out of date.
    /// Returns the names the directory declares.
    static func checkProjections(_ options: ProjectionOptions, url: String, reachable: Bool = true) async -> Set<String> {
        guard FileManager.default.fileExists(atPath: options.path) else { return [] }
        let declared: [YAMLProjection]
        do {
            declared = try options.load()
        } catch {
            CLI.logger.warning("cannot read the projections of \(options.path)", metadata: ["error": "\(error)"])
            return []
        }
        // An unreachable database is not asked again: the server listens without waiting for it.
        if !reachable { return Set(declared.map(\.name)) }
        do {
            for (projection, built) in ProjectionReport.drift(try await ProjectionReport.fetch(url), declared: declared) {
                if let built {
                    CLI.logger.warning("read model built at another version: \(CLI.name) replay \(projection.name)", metadata: [
                        "projection.name": "\(projection.name)", "projection.version.built": "\(built)",
                        "projection.version.declared": "\(projection.version)",
                    ])
                } else {
                    CLI.logger.warning("read model not built yet: \(CLI.name) project or \(CLI.name) replay \(projection.name)", metadata: ["projection.name": "\(projection.name)"])
                }
            }
        } catch {
            CLI.logger.warning("cannot check the projections of \(options.path)", metadata: ["error": "\(error)"])
        }
        return Set(declared.map(\.name))
    }

    /// With `EVENTLINE_REQUIRE_SYNC_REPLICATION`, a primary that acknowledges commits without
    /// waiting for a standby is refused at start, in one line.
    static func checkSynchronousReplication(_ url: String) async throws {
        let (node, names, commit) = try await CLI.withConnection(url) { conn in
            let row = try conn.query("SELECT current_setting('synchronous_standby_names'), current_setting('synchronous_commit')").first
            return (conn.node ?? "the primary", try row?.decode(0, as: String.self) ?? "", try row?.decode(1, as: String.self) ?? "")
        }
        if names.trimmingCharacters(in: .whitespaces).isEmpty {
            throw CLIError(
                "EVENTLINE_REQUIRE_SYNC_REPLICATION is set, but the primary \(node) has no synchronous standby configured (synchronous_standby_names is empty; with Patroni, set synchronous_mode: true)")
        }
        if ["off", "local"].contains(commit) {
            throw CLIError(
                "EVENTLINE_REQUIRE_SYNC_REPLICATION is set, but the primary \(node) has synchronous_commit=\(commit), which does not wait for a standby (use on or remote_apply)")
        }
    }

    /// `EVENTLINE_RATE_LIMIT=200/s` (or /m, /h) and `EVENTLINE_RATE_BURST=N`; unset: no limit.
    static func rateLimit(_ environment: [String: String]) throws -> RateLimit? {
        guard let text = environment["EVENTLINE_RATE_LIMIT"], !text.isEmpty else { return nil }
        var burst: Int? = nil
        if let given = environment["EVENTLINE_RATE_BURST"] {
            guard let value = Int(given), value > 0 else { throw CLIError("EVENTLINE_RATE_BURST must be a positive number, not '\(given)'") }
            burst = value
        }
        guard let limit = RateLimit(parsing: text, burst: burst) else {
            throw CLIError("EVENTLINE_RATE_LIMIT must look like 200/s, 12000/m or 100000/h, not '\(text)'")
        }
        return limit
    }

    static func parsePort(_ text: String) throws -> Int {
        guard let port = Int(text), (0...65535).contains(port) else {
            throw CLIError("EVENTLINE_HTTP_PORT must be a port number, not '\(text)'")
        }
        return port
    }
}

/// How long the server's database work may wait: `EVENTLINE_DB_CONNECT_TIMEOUT`,
/// `EVENTLINE_DB_STATEMENT_TIMEOUT` and `EVENTLINE_DB_POOL_TIMEOUT`, in seconds. A database that
/// hangs fails requests with 503 in about these times, never holds them.
struct DatabaseTimeouts {
    var connect: Duration = .milliseconds(1500)
    var statement: Duration = .milliseconds(1500)
    var pool: Duration = .seconds(1)

    static func from(_ environment: [String: String]) throws -> DatabaseTimeouts {
        var timeouts = DatabaseTimeouts()
        if let value = try EnvironmentVariables.seconds("EVENTLINE_DB_CONNECT_TIMEOUT", in: 0.1...600, environment) { timeouts.connect = value }
        if let value = try EnvironmentVariables.seconds("EVENTLINE_DB_STATEMENT_TIMEOUT", in: 0.1...86400, environment) { timeouts.statement = value }
        if let value = try EnvironmentVariables.seconds("EVENTLINE_DB_POOL_TIMEOUT", in: 0.01...600, environment) { timeouts.pool = value }
        return timeouts
    }
}

/// How the server reads read models.
struct ReadModels {
    var cache: ReadModelCache?
    var waitTimeout: Duration = .seconds(5)
    /// Standbys for reads (`EVENTLINE_READ_DATABASE_URL`).
    var readDatabaseURL: String?
    /// The projections the server's projections directory declares.
    var declared: Set<String> = []
}

/// Runs the server until SIGTERM or SIGINT; shared by `serve` and `dev`.
enum Server {
    static func run(
        databaseURL: String, configuration: ServerConfiguration, readModels: ReadModels = ReadModels(),
        alongside services: [any Service] = [], banner: [String] = [], timeouts: DatabaseTimeouts = DatabaseTimeouts(),
        domain: Domain = .current
    ) async throws {
        let logger = Logs.logger("eventline")
        var configuration = configuration
        configuration.authentication = try EnvironmentVariables.authentication()
        // One deadline per request for all its database steps: no request answers later than
        // the statement timeout and half a second, whatever its steps' own timeouts add up to.
        if configuration.databaseDeadline == nil { configuration.databaseDeadline = timeouts.statement + .milliseconds(400) }
        // Before the application is built: it adds a tracing middleware when a tracer is installed.
        let tracing = try Telemetry.bootstrapTracing(serviceName: "eventline-server", logger: logger)
        var storeConfiguration = domain.storeConfiguration(databaseURL: databaseURL, masterKey: try EnvironmentVariables.requiredMasterKey(domain: domain))
        storeConfiguration.poolSize = 16
        storeConfiguration.connectTimeout = timeouts.connect
        storeConfiguration.statementTimeout = timeouts.statement
        storeConfiguration.acquireTimeout = timeouts.pool
        storeConfiguration.readDatabaseURL = readModels.readDatabaseURL
        storeConfiguration.readWaitTimeout = readModels.waitTimeout
        let store = EventStore(storeConfiguration, logger: logger)
        var readConfiguration = ReadModelService.Configuration(databaseURL: databaseURL)
        readConfiguration.waitTimeout = readModels.waitTimeout
        readConfiguration.readDatabaseURL = readModels.readDatabaseURL
        readConfiguration.declared = readModels.declared
        readConfiguration.connectTimeout = timeouts.connect
        readConfiguration.statementTimeout = timeouts.statement
        readConfiguration.acquireTimeout = timeouts.pool
        let readService = ReadModelService(readConfiguration, cache: readModels.cache, logger: logger)
        let app = Eventline.application(domain, store: store, configuration: configuration, readModels: readService, logger: logger)
        logger.info("serving", metadata: ["http.address": "\(configuration.host):\(configuration.port)"])
        for line in banner { print(line) }
        fflush(nil)
        // The server first: on SIGTERM the services stop in reverse order, the server last (and
        // the span exporter after it, so that every span is sent).
        let group = ServiceGroup(
            services: (tracing.map { [$0] } ?? []) + [app] + services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
    }
}

extension Eventline {
    /// The HTTP application `serve` runs for `domain`: its commands at `/v1/commands/…`, the
    /// log, streams, read models, health and metrics, over `store` (build it with
    /// `domain.storeConfiguration(databaseURL:)` so that reads see current shapes). A test runs
    /// it on port 0.
    public static func application(
        _ domain: Domain, store: EventStore, configuration: ServerConfiguration = ServerConfiguration(),
        readModels: ReadModelService? = nil, logger: Logger = Logger(label: "eventline")
    ) -> some ApplicationProtocol {
        buildApplication(
            configuration, store: store, commands: domain.commandRegistry(store: store, logger: logger), readModels: readModels,
            logger: logger)
    }
}

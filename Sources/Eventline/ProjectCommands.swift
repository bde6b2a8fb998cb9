import ArgumentParser
import Cache
import EventStore
import Foundation
import Logging
import PostgresClient
import Projector
import ServiceLifecycle
import Synchronization
import UnixSignals
import ReadModels

/// Where the projection definitions are.
struct ProjectionOptions: ParsableArguments {
    @Option(name: .customLong("projections-dir"), help: "Directory of NAME.yaml projections (default: $EVENTLINE_PROJECTIONS_DIR or ./\(Domain.current.projectionsDirectory)).")
    var directory: String?

    var path: String {
        directory ?? ProcessInfo.processInfo.environment["EVENTLINE_PROJECTIONS_DIR"] ?? Domain.current.projectionsDirectory
    }

    func load() throws -> [YAMLProjection] {
        do {
            return try ProjectionDirectory.load(path)
        } catch let error as ProjectionError {
            throw CLIError(error.description)
        }
    }
}

/// The Redis cache of read-model rows.
struct CacheOptions: ParsableArguments {
    @Option(name: .customLong("redis-url"), help: "Redis for the read-model cache, redis://[user:password@]host[:port][/db] (default: $EVENTLINE_REDIS_URL; none: no cache).")
    var redisURL: String?
    @Option(name: .customLong("cache-ttl"), help: "Seconds a cached row lives (default: $EVENTLINE_CACHE_TTL or 300).")
    var ttl: Int?
    @Option(name: .customLong("cache-prefix"), help: "Prefix of cache keys and of the invalidation channel (default: $EVENTLINE_CACHE_PREFIX or eventline).")
    var prefix: String?

    /// The cache, or nil when no Redis is configured.
    func cache(logger: Logger) throws -> ReadModelCache? {
        let environment = ProcessInfo.processInfo.environment
        guard let url = redisURL ?? environment["EVENTLINE_REDIS_URL"], !url.isEmpty else { return nil }
        var seconds = 300
        if let given = ttl ?? environment["EVENTLINE_CACHE_TTL"].map({ Int($0) ?? 0 }) {
            guard given > 0 else { throw CLIError("the cache TTL (--cache-ttl, EVENTLINE_CACHE_TTL) must be a positive number of seconds") }
            seconds = given
        }
        // Redis is a cache: a read waits this long for it before going to PostgreSQL, and a
        // projector's invalidation as long before starting a new cache generation instead.
        let timeout = try EnvironmentVariables.seconds("EVENTLINE_REDIS_TIMEOUT", in: 0.01...60, environment) ?? .milliseconds(250)
        let configuration: RedisConfiguration
        do {
            configuration = try RedisConfiguration(url: url, connectTimeout: timeout, commandTimeout: timeout)
        } catch {
            throw CLIError("EVENTLINE_REDIS_URL (--redis-url) is not a Redis URL: \(error)")
        }
        let prefix = self.prefix ?? environment["EVENTLINE_CACHE_PREFIX"] ?? "eventline"
        return ReadModelCache(
            client: RedisClient(configuration: configuration, logger: logger), ttlSeconds: seconds, prefix: prefix,
            readTimeout: timeout, logger: logger)
    }
}

struct Project: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run projections: catch up from each checkpoint, then follow the log (until SIGTERM or SIGINT).",
        discussion: """
            One process owns each projection at a time; start several for failover: the others \
            stand by and take over within seconds when the owner dies.
            """)

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var projections: ProjectionOptions
    @OptionGroup var cacheOptions: CacheOptions
    @OptionGroup var schema: SchemaOptions
    @OptionGroup var metrics: MetricsOptions
    @Option(name: .customLong("projection"), help: "Run only this projection (repeatable; default: all in the directory).")
    var only: [String] = []
    @Flag(name: .customLong("no-rebuild"), help: "Do not rebuild a projection whose version changed; wait for \(CLI.name) replay (default: $EVENTLINE_REBUILD_ON_VERSION_CHANGE, on).")
    var noRebuild = false

    func run() async throws {
        try await CLI.run {
            let url = try database.databaseURL
            let logger = Logs.logger("eventline.projector")
            let metricsAddress = try metrics.address()
            try await schema.prepare(databaseURL: url, logger: logger)
            var selected = try projections.load()
            if !only.isEmpty {
                let names = Set(selected.map(\.name))
                if let unknown = only.first(where: { !names.contains($0) }) {
                    throw CLIError("no projection named \(unknown) in \(projections.path) (there are: \(names.sorted().joined(separator: ", ")))")
                }
                selected = selected.filter { only.contains($0.name) }
            }
            guard !selected.isEmpty else { throw CLIError("no projections in \(projections.path)") }
            let checker = DedicatedConnection(conninfo: url)
            defer { checker.shutdown() }
            for projection in selected {
                do {
                    try await checker.run { conn in try ProjectionCatalog.validate(projection, on: conn) }
                } catch let error as ProjectionError {
                    throw CLIError(error.description)
                } catch let error as PostgresError {
                    throw CLIError("cannot check \(projection.source): \(error.message)")
                }
            }
            let cache = try cacheOptions.cache(logger: logger)
            defer { cache?.client.shutdown() }
            var configuration = Domain.current.projectorConfiguration(databaseURL: url, masterKey: try EnvironmentVariables.requiredMasterKey())
            let rebuildSetting = ProcessInfo.processInfo.environment["EVENTLINE_REBUILD_ON_VERSION_CHANGE"]?.lowercased()
            configuration.rebuildOnVersionChange = !noRebuild && !["0", "false", "off", "no"].contains(rebuildSetting ?? "")
            // Without --projection, files added to (or changed in) the directory are picked up
            // while running; a file that does not check out is logged and left out.
            let reload = only.isEmpty ? Self.reloader(projections, url: url, checked: selected, logger: logger) : nil
            let projector = Projector(
                projections: selected, configuration: configuration, invalidations: cache.map(RedisInvalidationSink.init),
                reload: reload, logger: logger)
            logger.info("projecting", metadata: ["projection.names": "\(selected.map(\.name).joined(separator: ","))"])
            try await Telemetry.runObserved(
                ProjectorService(projector: projector), serviceName: "eventline-projector", metrics: metricsAddress, logger: logger
            ) { ProjectionReport.gauges((try? await ProjectionReport.fetch(url)) ?? []) }
        }
    }
}

extension Project {
    /// Re-reads the directory; definitions not seen before are checked against PostgreSQL first.
    static func reloader(
        _ options: ProjectionOptions, url: String, checked: [YAMLProjection], logger: Logger
    ) -> @Sendable () async throws -> [any Projection] {
        let known = CheckedDefinitions(checked.map { Projector.fingerprint($0) })
        return {
            var valid: [any Projection] = []
            for projection in try options.load() {
                let fingerprint = Projector.fingerprint(projection)
                if !known.contains(fingerprint) {
                    do {
                        try await CLI.withConnection(url) { conn in try ProjectionCatalog.validate(projection, on: conn) }
                        known.insert(fingerprint)
                    } catch {
                        logger.error("projection does not check out; not running it", metadata: ["error": "\(error)"])
                        continue
                    }
                }
                valid.append(projection)
            }
            return valid
        }
    }
}

/// Definitions already checked against PostgreSQL (by fingerprint), so a reload checks only new ones.
final class CheckedDefinitions: Sendable {
    private let fingerprints: Mutex<Set<String>>
    init(_ fingerprints: [String]) { self.fingerprints = Mutex(Set(fingerprints)) }
    func contains(_ fingerprint: String) -> Bool { fingerprints.withLock { $0.contains(fingerprint) } }
    func insert(_ fingerprint: String) { fingerprints.withLock { _ = $0.insert(fingerprint) } }
}

/// The projector as a service: runs until graceful shutdown.
struct ProjectorService: Service {
    let projector: Projector

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            try await projector.run()
        }
    }
}

struct Projections: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List projections, resume a paused one, or list, retry or skip their parked keys.",
        subcommands: [List.self, Resume.self, ParkedList<ProjectionKind>.self, ParkedRetry<ProjectionKind>.self, ParkedSkip<ProjectionKind>.self],
        defaultSubcommand: List.self)

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Each projection's checkpoint, lag, owner and state.")
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var projections: ProjectionOptions

        func run() async throws {
            try await CLI.run {
                let url = try database.databaseURL
                let statuses = try await ProjectionReport.fetch(url)
                ProjectionReport.print(statuses, declared: try? projections.load())
            }
        }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Resume a paused projection (onError: then: pause): it retries the event it stopped at.")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The projection's name.") var name: String

        func run() async throws {
            try await CLI.run {
                let name = self.name
                let found = try await database.withConnection { conn in try ProjectionCatalog.resume(name, on: conn) }
                guard found else { throw CLIError("no projection named \(name)") }
                print("resumed \(name)")
            }
        }
    }
}

/// The projections part of `status`.
enum ProjectionReport {
    static func fetch(_ url: String) async throws -> [ProjectionStatus] {
        try await CLI.withConnection(url) { conn in
            let installed = try conn.query("SELECT to_regclass('eventline.parked_keys') IS NOT NULL").first!.decode(0, as: Bool.self)
            guard installed else { throw CLIError("projections are not installed: run \(CLI.name) migrate") }
            return try ProjectionCatalog.status(on: conn)
        }
    }

    /// Each projection's lag, checkpoint and state, as Prometheus gauges read at a scrape.
    static func gauges(_ statuses: [ProjectionStatus]) -> [(name: String, labels: [(String, String)], value: Double)] {
        statuses.flatMap { status -> [(name: String, labels: [(String, String)], value: Double)] in
            let labels = [("projection", status.name)]
            return [
                ("eventline_projection_lag_events", labels, Double(status.lag)),
                ("eventline_projection_checkpoint", labels, Double(status.checkpoint)),
                ("eventline_projection_parked", labels, status.state == "parked" ? 1 : 0),
                ("eventline_projection_failed_attempts", labels, Double(status.failedAttempts)),
                ("eventline_projection_parked_keys", labels, Double(status.parkedKeys)),
                ("eventline_projection_stalled", labels, status.stalled ? 1 : 0),
            ] + status.partitions.map { partition in
                ("eventline_projection_partition_lag_events", labels + [("partition", String(partition.consumer.partition))], Double(partition.lag))
            }
        }
    }

    /// Declared projections that are not built (nil) or built at another version.
    static func drift(_ statuses: [ProjectionStatus], declared: [YAMLProjection]) -> [(projection: YAMLProjection, built: Int?)] {
        let built = Dictionary(statuses.map { ($0.name, $0.version) }, uniquingKeysWith: { first, _ in first })
        return declared.compactMap { projection in
            let version = built[projection.name]
            return version == projection.version ? nil : (projection, version)
        }
    }

    /// Prints the registered projections; with the directory's definitions, also those not
    /// built yet and those whose declared version differs from the built one.
    static func print(_ statuses: [ProjectionStatus], declared: [YAMLProjection]? = nil) {
        let notes = drift(statuses, declared: declared ?? []).map { projection, built in
            if let built {
                return "  \(projection.name)  declared v\(projection.version) in \(projection.source), built v\(built): \(CLI.name) replay \(projection.name) (a running projector rebuilds it itself)"
            }
            return "  \(projection.name)  declared in \(projection.source), not built: \(CLI.name) replay \(projection.name) (or \(CLI.name) project)"
        }
        guard !statuses.isEmpty || !notes.isEmpty else {
            Swift.print("projections  none yet (\(CLI.name) project starts them)")
            return
        }
        Swift.print("projections")
        defer { for note in notes { Swift.print(note) } }
        for status in statuses {
            var line = "  \(status.name)  v\(status.version)  \(status.state)  checkpoint \(status.checkpoint)  lag \(status.lag)"
            line += "  owner \(status.owner ?? "none")"
            if status.failedAttempts > 0 { line += "  failed attempts \(status.failedAttempts)" }
            if status.parkedKeys > 0 { line += "  parked keys \(status.parkedKeys) (\(CLI.name) projections parked \(status.name))" }
            if status.stalled { line += "  stalled" }
            Swift.print(line)
            if let error = status.error {
                Swift.print("    error at position \(status.errorPosition ?? 0) in handler \(status.errorHandler ?? "?"): \(error)")
            }
            guard status.partitions.count > 1 else { continue }
            Swift.print("    \(status.partitions.count) partitions by \(status.partitionBy)")
            for partition in status.partitions {
                Swift.print(
                    "    #\(partition.consumer.partition)  \(partition.state)  checkpoint \(partition.checkpoint)  lag \(partition.lag)  owner \(partition.owner ?? "none")")
            }
        }
    }
}

struct AnalystRole: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "analyst-role",
        abstract: "Let the read-only eventline_analyst role log in with a password (it may read read_models and nothing else).")

    @OptionGroup var database: DatabaseOptions
    @Option(help: "The role's new password (or $EVENTLINE_ANALYST_PASSWORD).") var password: String?
    @Flag(help: "Stop the role from logging in.") var disable = false

    func run() async throws {
        try await CLI.run {
            let url = try database.databaseURL
            if disable {
                try await database.withConnection { conn in try conn.execute(unsafeSQL: "ALTER ROLE eventline_analyst NOLOGIN") }
                print("eventline_analyst can no longer log in")
                return
            }
            guard let password = password ?? ProcessInfo.processInfo.environment["EVENTLINE_ANALYST_PASSWORD"], !password.isEmpty else {
                throw CLIError("pass --password (or set EVENTLINE_ANALYST_PASSWORD)")
            }
            guard password.count >= 8 else { throw CLIError("the password must have at least 8 characters") }
            try await database.withConnection { conn in
                let exists = try conn.query("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eventline_analyst')").first!.decode(0, as: Bool.self)
                guard exists else { throw CLIError("the role eventline_analyst does not exist: run \(CLI.name) migrate") }
                // ALTER ROLE takes no bind parameters: the password goes in as a quoted literal.
                let literal = try conn.quoteLiteral(password)
                try conn.execute(unsafeSQL: "ALTER ROLE eventline_analyst LOGIN PASSWORD \(literal)")
            }
            print("eventline_analyst can log in: psql \"\(Self.exampleURL(url))\"")
        }
    }

    static func exampleURL(_ url: String) -> String {
        if url.hasPrefix("postgres://") || url.hasPrefix("postgresql://"), var components = URLComponents(string: url) {
            components.user = "eventline_analyst"
            components.password = nil
            return components.string ?? url
        }
        return url + " user=eventline_analyst"
    }
}

extension Replay {
    /// `replay NAME --stream S --step`: the projection over the stream's events, in a
    /// transaction rolled back at the end, printing each event's changed rows.
    static func step(_ projection: YAMLProjection, stream: String, database: DatabaseOptions) async throws {
        let store = try database.openStore()
        var events: [RecordedEvent] = []
        do {
            while true {
                let page = try await store.readStream(stream, from: (events.last?.version ?? 0) + 1, limit: 1000)
                events += page
                if page.count < 1000 { break }
            }
        } catch {
            await store.shutdown()
            throw error
        }
        await store.shutdown()
        guard !events.isEmpty else { throw CLIError("stream \(stream) has no events") }
        let read = events
        let steps: [ProjectionStepper.Step]
        do {
            steps = try await database.withConnection { conn in try ProjectionStepper.run(projection, events: read, on: conn) }
        } catch let error as ProjectionError {
            throw CLIError(error.description)
        }
        print("\(projection.name) over \(stream): \(events.count) events, \(steps.count) handled (dry run: nothing is written)")
        for step in steps {
            print("position \(step.event.position) · \(step.event.type) (version \(step.event.version))")
            if let error = step.error { throw CLIError("\(projection.name) fails on position \(step.event.position) (\(step.event.type)): \(error)") }
            if step.changes.isEmpty { print("  no row changed") }
            for change in step.changes {
                print("  row \(change.key)")
                print("    before: \(change.before ?? "(none)")")
                print("    after:  \(change.after ?? "(deleted)")")
            }
        }
    }
}

struct Replay: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Rebuild projections from the whole log beside the live tables, then swap them in (no downtime).",
        discussion: """
            The new table fills from the first event to the head, catches up, and replaces the live \
            one in one transaction; queries answer from the old table until then. A killed replay \
            leaves the live read model untouched and is simply run again. --dry-run builds the new \
            table and compares it with the live one (rows and checksum, at the same checkpoint) \
            without swapping; it exits 2 when they differ.
            """)

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var projections: ProjectionOptions
    @OptionGroup var cacheOptions: CacheOptions
    @Argument(help: "The projections to rebuild.") var names: [String] = []
    @Flag(help: "Rebuild every projection of the directory.") var all = false
    @Flag(name: .customLong("dry-run"), help: "Build and compare with the live table; do not swap.") var dryRun = false
    @Option(name: .customLong("batch-size"), help: "Events per transaction while building (default 1000).") var batchSize = 1000
    @Option(help: "With --step: the stream whose events to replay.") var stream: String?
    @Flag(help: "Replay one projection over one stream (--stream) and print, after each event, the rows it changed, before and after. Nothing is written.")
    var step = false

    func validate() throws {
        if step || stream != nil {
            guard step, let stream, !stream.isEmpty else { throw ValidationError("--step and --stream go together: --step --stream STREAM") }
            guard names.count == 1, !all, !dryRun else { throw ValidationError("--step replays one projection: name exactly one, without --all or --dry-run") }
            return
        }
        if all && !names.isEmpty { throw ValidationError("give projection names or --all, not both") }
        if !all && names.isEmpty { throw ValidationError("name a projection to rebuild (or --all)") }
        if !(1...100_000).contains(batchSize) { throw ValidationError("--batch-size must be from 1 to 100000") }
    }

    func run() async throws {
        try await CLI.run {
            let url = try database.databaseURL
            let masterKey = try EnvironmentVariables.requiredMasterKey()
            let loaded = try projections.load()
            let known = Dictionary(loaded.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
            var selected: [YAMLProjection] = loaded
            if !all {
                selected = try names.map { name in
                    guard let projection = known[name] else {
                        throw CLIError("no projection named \(name) in \(projections.path) (there are: \(known.keys.sorted().joined(separator: ", ")))")
                    }
                    return projection
                }
            }
            guard !selected.isEmpty else { throw CLIError("no projections in \(projections.path)") }
            if step, let stream, let projection = selected.first { return try await Self.step(projection, stream: stream, database: database) }
            for projection in selected {
                do {
                    try await database.withConnection { conn in try ProjectionCatalog.validate(projection, on: conn) }
                } catch let error as ProjectionError {
                    throw CLIError(error.description)
                }
            }
            let cache = try cacheOptions.cache(logger: CLI.logger)
            defer { cache?.client.shutdown() }
            var differs = false
            for projection in selected {
                let line = ProgressLine(verb: "\(projection.name):")
                let started = ContinuousClock.now
                let result: ReplayResult
                do {
                    result = try await ProjectionReplay.run(
                        projection, databaseURL: url, dryRun: dryRun, batchSize: batchSize,
                        progress: { progress in
                            line.update(events: progress.events, position: progress.position, target: progress.target, note: progress.phase)
                        }, reading: EventReading(upcasters: Domain.current.upcasters, masterKey: masterKey))
                } catch let error as ReplayError {
                    line.finish()
                    throw CLIError("\(projection.name): \(error.description); the live read model is untouched")
                }
                line.finish()
                let took = ProgressLine.took(ContinuousClock.now - started)
                if dryRun {
                    let same = result.matches == true
                    differs = differs || !same
                    print("\(projection.name): rebuilt \(result.events) events in \(took) up to position \(result.position): "
                        + "\(result.rebuiltRows ?? 0) rows, checksum \(result.rebuiltChecksum ?? "-"); live \(result.liveRows ?? 0) rows, "
                        + "checksum \(result.liveChecksum ?? "-"): \(same ? "identical" : "DIFFERENT") (dry run: nothing swapped)")
                } else {
                    print("\(projection.name): rebuilt from \(result.events) events in \(took); swapped in at position \(result.position), cache generation \(result.generation ?? 0)")
                    if let cache, let generation = result.generation {
                        do {
                            try await cache.invalidateAll(projection: projection.name, generation: generation, position: result.position)
                        } catch {
                            CLI.logger.warning("could not announce the rebuild on Redis", metadata: ["error": "\(error)"])
                        }
                    }
                }
            }
            if differs { throw ExitCode(2) }
        }
    }
}

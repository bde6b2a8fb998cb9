import Cache
import EventStore
import Foundation
import Logging
import PostgresClient
import Projector
import ServiceLifecycle
import Synchronization
import ReadModels

/// The read side as the server sees it: the projections registered in the database (picked up
/// while running, so a new projection is served without a restart), row and page reads with
/// Redis cache-aside when a cache is configured, and waits for read-your-writes.
///
/// Runs as a service: it listens on `eventline_projections` for checkpoints and cache
/// generations, and closes its connections on shutdown.
public final class ReadModelService: Service, Sendable {
    /// How the server reads read models; every field has a default.
    public struct Configuration: Sendable {
        public var databaseURL: String
        /// Standbys for reads (`EVENTLINE_READ_DATABASE_URL`); nil reads the primary.
        public var readDatabaseURL: String? = nil
        /// Connections for read-model queries (apart from the event store's).
        public var poolSize = 8
        /// The longest a read with `atLeast` waits for the projection to pass that position.
        public var waitTimeout: Duration = .seconds(5)
        /// The catalog of projections is re-read at least this often.
        public var catalogRefresh: Duration = .seconds(5)
        /// Projections this server's projections directory declares. A read of one with
        /// `atLeast` waits for it to be registered and built, as it does for one that is
        /// registered but behind; a name neither declared nor registered is 404 at once.
        public var declared: Set<String> = []
        /// The read-model pool's limits: how long a query waits for a connection, may run (and
        /// the server stay silent), and a connection may take to open.
        public var acquireTimeout: Duration = .seconds(10)
        public var statementTimeout: Duration? = nil
        public var connectTimeout: Duration = PostgresConnection.defaultConnectTimeout

        public init(databaseURL: String) {
            self.databaseURL = databaseURL
        }
    }

    /// The outcome of a row read.
    public struct Row: Sendable {
        public var json: [UInt8]?
        /// Whether the row came from the cache.
        public var cached: Bool
    }

    public let configuration: Configuration
    let pool: PostgresConnectionPool
    /// Read-model reads on standbys, when `readDatabaseURL` is set.
    public let replicas: ReplicaReads?
    let cache: ReadModelCache?
    let changes = ChangeSignal()
    private let catalog = Mutex<(models: [String: ReadModelInfo], loadedAt: ContinuousClock.Instant?)>(([:], nil))
    let logger: Logger

    public init(_ configuration: Configuration, cache: ReadModelCache? = nil, logger: Logger = Logger(label: "eventline.read-models")) {
        self.configuration = configuration
        var poolConfiguration = PostgresConnectionPool.Configuration(
            conninfo: configuration.databaseURL, size: configuration.poolSize, acquireTimeout: configuration.acquireTimeout,
            name: "eventline-read-models")
        poolConfiguration.statementTimeout = configuration.statementTimeout
        poolConfiguration.connectTimeout = configuration.connectTimeout
        // to_json renders timestamptz in the session's zone: RFC 3339 in UTC.
        // JIT compiling costs more than these short queries take.
        poolConfiguration.sessionSettings = ["TimeZone": "UTC", "jit": "off"]
        self.pool = PostgresConnectionPool(poolConfiguration)
        self.replicas = configuration.readDatabaseURL.map { url in
            ReplicaReads(url: url, like: poolConfiguration, name: "eventline-replica-read-models", waitTimeout: configuration.waitTimeout)
        }
        self.cache = cache
        self.logger = logger
    }

    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                let events = PostgresListener.events(
                    conninfo: self.configuration.databaseURL, channels: ["eventline_projections"], pollInterval: .seconds(1))
                for await event in events {
                    switch event {
                    case .notification(let notification):
                        // `name:position` after a batch; `name:generation:G` when the cache generation moved.
                        if notification.payload.contains(":generation:") { self.invalidateCatalog() }
                    case .connected:
                        self.invalidateCatalog()  // notifications may have been missed
                    case .tick:
                        break
                    }
                    self.changes.signal()
                }
            }
            try? await gracefulShutdown()
            group.cancelAll()
        }
        pool.close()  // the cache's client belongs to the caller
        replicas?.pool.close()
    }

    private func invalidateCatalog() {
        catalog.withLock { $0.loadedAt = nil }
    }

    /// Runs `body` on a pooled connection, as the store's reads do.
    func withConnection<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        try await pool.withConnection(body)
    }

    /// The projection `name`, from the catalog (re-read when stale, or when `refresh`).
    func info(_ name: String, refresh: Bool = false) async throws -> ReadModelInfo? {
        let now = ContinuousClock.now
        let cached = catalog.withLock { state -> [String: ReadModelInfo]? in
            guard !refresh, let loadedAt = state.loadedAt, now - loadedAt < configuration.catalogRefresh else { return nil }
            return state.models
        }
        if let cached { return cached[name] }
        let models = try await withConnection { conn in try ReadModelReader.catalog(on: conn) }
        catalog.withLock { $0 = (models, now) }
        return models[name]
    }

    /// Whether `value` (text) is a value of the SQL type `type` (a column's `format_type`,
    /// from the catalog).
    func fits(_ value: String, type: String) async throws -> Bool {
        try await withConnection { conn in
            do {
                _ = try conn.query("SELECT \(value)::text::\(unsafeSQL: type)")
                return true
            } catch let error as PostgresError where error.sqlState?.hasPrefix(SQLState.dataExceptionClass) == true {
                return false
            }
        }
    }

    /// Every projection's status with the log head.
    func status() async throws -> [ProjectionStatus] {
        try await withConnection { conn in try ProjectionCatalog.status(on: conn) }
    }

    /// Whether a projection named `name` is declared to this server or registered in the
    /// database, so that a read waiting for a position may wait for it to appear.
    func mayAppear(_ name: String) async throws -> Bool {
        if configuration.declared.contains(name) { return true }
        return try await info(name) != nil
    }

    /// Waits until `read` returns a result whose checkpoint is at least `atLeast` (no wait when
    /// nil), re-reading whenever a projection moves; past the timeout, throws `Behind`. A read
    /// route's read (`ReadContext`) goes to a standby first when there are some, and to the
    /// primary when no standby has the checkpoint within the timeout.
    func read<T: Sendable>(
        atLeast: Int?, checkpoint: @escaping @Sendable (T) -> Int, _ read: @escaping @Sendable (PostgresConnection) throws -> T
    ) async throws -> T {
        let deadline = ContinuousClock.now + configuration.waitTimeout
        let served = try await ReplicaReads.serve(on: replicas) { conn, _ -> ReplicaReads.Attempt<T> in
            let value = try read(conn)
            if let atLeast, checkpoint(value) < atLeast { return .behind }
            return .served(value, head: nil)
        }
        if let served { return served }
        while true {
            let seen = changes.generation
            let value = try await withConnection(read)
            guard let atLeast, checkpoint(value) < atLeast else { return value }
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { throw Behind(checkpoint: checkpoint(value), atLeast: atLeast) }
            // Waiting for a projection is on purpose: the database deadline does not run meanwhile.
            await DatabaseDeadline.excludingWait { await changes.wait(after: seen, timeout: min(remaining, .milliseconds(500))) }
        }
    }

    /// A read that waited for `atLeast` in vain.
    struct Behind: Error {
        var checkpoint: Int
        var atLeast: Int
    }

    /// The row of `info` with key `key`: from the cache when it holds it (and no position is
    /// awaited), else from PostgreSQL, then cached unless an invalidation came after the read.
    func row(_ info: ReadModelInfo, key: String, atLeast: Int?) async throws -> Row? {
        // A cache that just failed is not asked to store either: the read waits on Redis once.
        var cacheFailed = false
        if let cache, atLeast == nil {
            cacheFailed = true
            do {
                if let hit = try await cache.get(projection: info.name, generation: info.generation, key: key) {
                    return Row(json: hit, cached: true)
                }
                cacheFailed = false
            } catch is ReadModelCache.CircuitOpen {
                // Redis keeps failing: not asked for now (the cache said so once, when it opened).
            } catch {
                logger.warning("cache read failed; reading PostgreSQL", metadata: ["error": "\(error)"])
            }
        }
        guard let read = try await self.read(atLeast: atLeast, checkpoint: { $0?.checkpoint ?? Int.max }, { conn in
            try ReadModelReader.row(info, key: key, on: conn)
        }) else { return nil }
        let json = read.json.map { Array($0.utf8) }
        if let cache, let json, !cacheFailed {
            do {
                try await cache.store(projection: info.name, generation: read.generation, key: key, row: json, checkpoint: read.checkpoint)
            } catch is ReadModelCache.CircuitOpen {
            } catch {
                logger.warning("cache write failed", metadata: ["error": "\(error)"])
            }
        }
        return Row(json: json, cached: false)
    }

    /// A page of rows of `info` in key order.
    func page(
        _ info: ReadModelInfo, filters: [(column: String, value: String)], after: String?, limit: Int, atLeast: Int?
    ) async throws -> ReadModelPage? {
        let filters = filters.map { ($0.column, $0.value) }
        return try await read(atLeast: atLeast, checkpoint: { $0?.checkpoint ?? Int.max }) { conn in
            try ReadModelReader.page(info, filters: filters, after: after, limit: limit, on: conn)
        }
    }
}

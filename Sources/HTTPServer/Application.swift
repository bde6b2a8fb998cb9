import Aggregates
import EventStore
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import ServiceLifecycle

/// Builds the Eventline HTTP application over `store`, serving the aggregates in `commands`.
///
/// ```swift
/// let store = EventStore(.init(databaseURL: url))
/// var commands = CommandRegistry()
/// commands.register(CommandHandler<BankAccount>(store: store))
/// let app = buildApplication(ServerConfiguration(), store: store, commands: commands)
/// try await app.runService()   // SIGTERM/SIGINT: in-flight requests finish, then the store flushes
/// ```
/// Read models are served from `readModels` (by default without a cache, from the store's database).
public func buildApplication(
    _ configuration: ServerConfiguration, store: EventStore, commands: CommandRegistry,
    readModels: ReadModelService? = nil, logger: Logger = Logger(label: "eventline.http")
) -> some ApplicationProtocol {
    let readModels = readModels ?? {
        var configuration = ReadModelService.Configuration(databaseURL: store.configuration.databaseURL)
        configuration.readDatabaseURL = store.configuration.readDatabaseURL
        return ReadModelService(configuration, logger: logger)
    }()
    let metrics = ServerMetrics()
    let replication = ReplicationMonitor(
        databaseURL: store.configuration.databaseURL, readDatabaseURL: store.configuration.readDatabaseURL,
        connectTimeout: store.configuration.connectTimeout, logger: logger)
    store.observeGroupCommits { appends, events in metrics.recordGroup(appends: appends, events: events) }
    let router = Router(context: EventlineRequestContext.self, options: .autoGenerateHeadEndpoints)
    if EventTrace.isEnabled {
        // A server span per request, the child of the caller's `traceparent`; the handlers'
        // spans and the events' stored trace context hang below it.
        router.middlewares.add(TracingMiddleware(recordingHeaders: [.requestID, .correlationID]))
    }
    let access = AccessControl(
        store: store, refreshInterval: configuration.apiKeyRefresh, mode: configuration.authentication, logger: logger)
    router.middlewares.add(RequestMiddleware(
        configuration: configuration, metrics: metrics, access: access, limiter: configuration.rateLimit.map(RateLimiter.init),
        logger: logger))
    let endpoints = Endpoints(router)
    let groupChanges = ChangeSignal()
    let live = LiveFeed(
        store: store, heartbeat: configuration.liveHeartbeat, commits: groupChanges, maxClients: configuration.liveMaxClients,
        maxClientsPerClient: configuration.liveMaxClientsPerKey)
    Routes(
        store: store, commands: commands, configuration: configuration, metrics: metrics, live: live, access: access,
        replication: replication, readModels: readModels, logger: logger)
        .register(on: endpoints)
    ConsumerGroupRoutes(store: store, changes: groupChanges).register(on: endpoints)
    ReadModelRoutes(readModels: readModels, configuration: configuration).register(on: endpoints)
    ParkedRoutes(readModels: readModels).register(on: endpoints)
    endpoints.finish()
    return Application(
        responder: UnknownMethodResponder(base: router.buildResponder()),
        server: .http1(configuration: .init(
            additionalChannelHandlers: [RequestDeadlineHandler(timeout: TimeAmount(configuration.idleTimeout))],
            idleTimeout: TimeAmount(configuration.idleTimeout))),
        configuration: .init(
            address: .hostname(configuration.host, port: configuration.port), serverName: "eventline",
            availableConnectionsDelegate: MaximumAvailableConnections(configuration.maxConnections)),
        services: [
            StoreService(store: store), readModels, live, access, replication,
            ConsumerGroupSweep(store: store, interval: configuration.consumerGroupSweepInterval, changes: groupChanges, logger: logger),
        ],
        logger: logger)
}

/// Keeps the store open while the server runs; on shutdown (after the HTTP server, which is
/// started after this service and so stopped before it) lets queued appends commit and closes
/// every connection.
struct StoreService: Service {
    let store: EventStore

    func run() async throws {
        try? await gracefulShutdown()
        await store.shutdown()
    }
}

import EventStore
import Foundation
import Logging
import PostgresClient

/// Runs projections in this process: each one catches up from its checkpoint in batches, then
/// follows the log, woken by the log writer's NOTIFY. One process owns each projection at a
/// time (a PostgreSQL advisory lock); the others stand by and take over within
/// `standbyInterval` when the owner dies.
///
/// ```swift
/// let projections = try ProjectionDirectory.load("Projections")
/// let projector = Projector(projections: projections, configuration: .init(databaseURL: url))
/// try await projector.run()   // until the task is cancelled
/// ```
public final class Projector: Sendable {
    public let projections: [any Projection]
    public let configuration: ProjectorConfiguration
    private let sink: (any InvalidationSink)?
    private let logger: Logger

    public init(
        projections: [any Projection], configuration: ProjectorConfiguration, invalidations: (any InvalidationSink)? = nil,
        logger: Logger = Logger(label: "eventline.projector")
    ) {
        self.projections = projections
        self.configuration = configuration
        self.sink = invalidations
        self.logger = logger
    }

    /// Runs every projection until the calling task is cancelled.
    public func run() async throws {
        let head = ChangeSignal()
        let runners = projections.map {
            ProjectionRunner(projection: $0, configuration: configuration, sink: sink, head: head, logger: logger)
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                let events = PostgresListener.events(
                    conninfo: self.configuration.databaseURL, channels: [EventStore.notificationChannel],
                    pollInterval: self.configuration.pollInterval)
                for await event in events {
                    if case .notification = event { head.signal() }
                    if case .connected = event { head.signal() }
                }
            }
            for runner in runners {
                group.addTask { await runner.run() }
            }
            // The listener ends only when cancelled; so does every runner.
            await group.next()
            group.cancelAll()
        }
    }
}

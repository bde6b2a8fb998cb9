import EventStore
import Foundation
import Logging

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
    private let reload: (@Sendable () async throws -> [any Projection])?
    private let reloadInterval: Duration

    /// With `reload`, the projector asks it for the definitions every `reloadInterval` (for
    /// example, re-reading the projections directory): a new projection starts running, and one
    /// whose definition changed restarts with the new one (a new version is rebuilt first).
    public init(
        projections: [any Projection], configuration: ProjectorConfiguration, invalidations: (any InvalidationSink)? = nil,
        reload: (@Sendable () async throws -> [any Projection])? = nil, reloadInterval: Duration = .seconds(5),
        logger: Logger = Logger(label: "eventline.projector")
    ) {
        self.projections = projections
        self.configuration = configuration
        self.sink = invalidations
        self.reload = reload
        self.reloadInterval = reloadInterval
        self.logger = logger
    }

    /// Runs every projection until the calling task is cancelled.
    public func run() async throws {
        let head = ChangeSignal()
        // One LISTEN session wakes every projection of the process.
        let listener = Task {
            await head.signalCommits(conninfo: self.configuration.databaseURL, pollInterval: self.configuration.pollInterval)
        }
        /// The running projections: their definition's fingerprint and their task (one runner
        /// per partition, sharing the process's count of partitions held).
        var running: [String: (fingerprint: String, task: Task<Void, Never>)] = [:]
        func start(_ projection: any Projection) {
            let share = PartitionShare(partitions: projection.partitions)
            let runners: [ProjectionRunner]
            do {
                runners = try (0..<projection.partitions).map { partition in
                    try ProjectionRunner(
                        projection: projection, partition: partition, share: share, configuration: configuration, sink: sink, head: head,
                        logger: logger)
                }
            } catch {
                logger.error("projection cannot run", metadata: ["projection.name": "\(projection.name)", "error": "\(error)"])
                running[projection.name] = (Self.fingerprint(projection), Task {})
                return
            }
            running[projection.name] = (
                Self.fingerprint(projection),
                Task {
                    await withTaskGroup(of: Void.self) { group in
                        for runner in runners { group.addTask { await runner.run() } }
                    }
                }
            )
        }
        for projection in projections { start(projection) }
        await withTaskCancellationHandler {
            while !Task.isCancelled {
                guard let reload else {
                    try? await Task.sleep(for: .seconds(3600))
                    continue
                }
                try? await Task.sleep(for: reloadInterval)
                if Task.isCancelled { break }
                let definitions: [any Projection]
                do {
                    definitions = try await reload()
                } catch {
                    logger.warning("cannot reload the projections; keeping the running ones", metadata: ["error": "\(error)"])
                    continue
                }
                for projection in definitions {
                    let fingerprint = Self.fingerprint(projection)
                    if let current = running[projection.name] {
                        guard current.fingerprint != fingerprint else { continue }
                        logger.notice("projection definition changed: restarting it", metadata: ["projection.name": "\(projection.name)"])
                        current.task.cancel()
                        await current.task.value
                    } else {
                        logger.notice("new projection: starting it", metadata: ["projection.name": "\(projection.name)"])
                    }
                    start(projection)
                }
            }
        } onCancel: {
            listener.cancel()
        }
        listener.cancel()
        for (_, entry) in running { entry.task.cancel() }
        for (_, entry) in running { await entry.task.value }
        await listener.value
    }

    /// What identifies a definition: a change means the running projection must restart.
    public static func fingerprint(_ projection: any Projection) -> String {
        let types = projection.eventTypes.sorted()
        var text = "\(projection.version)|\(projection.keyColumn)|\(types.joined(separator: ","))|\(projection.source)"
        text += "|\(projection.partitions)|\(projection.partitionBy)|\(projection.onError.map(String.init(describing:)) ?? "default")"
        text += "|" + ((try? projection.createStatements(table: "t")) ?? "")
        if let yaml = projection as? YAMLProjection {
            for type in types { text += "|\(type)=\(yaml.handlers[type] ?? "")" }
            text += "|forget=\(yaml.forget ?? "")"
        }
        return text
    }
}

import ArgumentParser
import EventStore
import Foundation
import Logging
import PostgresClient
import Reactors
import ServiceLifecycle
import UnixSignals

struct React: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run reactors (process managers): follow the log from each checkpoint and issue commands (until SIGTERM or SIGINT).",
        discussion: """
            The domain's reactors run here. One process owns each reactor at a time; start several \
            for failover: the others stand by and take over within seconds when the owner dies. \
            Delivery is at-least-once; reactors are idempotent.
            """)

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var schema: SchemaOptions
    @OptionGroup var metrics: MetricsOptions
    @Option(name: .customLong("reactor"), help: "Run only this reactor (repeatable; default: all).")
    var only: [String] = []

    /// The reactors this executable's domain declares, by name.
    static var names: [String] { Domain.current.reactorNames }

    func validate() throws {
        guard !Self.names.isEmpty else { throw ValidationError("the \(CLI.name) domain declares no reactors") }
        if let unknown = only.first(where: { !Self.names.contains($0) }) {
            throw ValidationError("no reactor named \(unknown) (there are: \(Self.names.joined(separator: ", ")))")
        }
    }

    func run() async throws {
        try await CLI.run {
            let url = try database.databaseURL
            let logger = Logs.logger("eventline.reactor")
            let metricsAddress = try metrics.address()
            try await schema.prepare(databaseURL: url, logger: logger)
            let (store, runner) = try Self.runner(url: url, only: only, logger: logger)
            logger.info("reacting", metadata: ["reactor.names": "\(runner.reactors.map(\.name).joined(separator: ","))"])
            do {
                try await Telemetry.runObserved(
                    ReactorService(runner: runner), serviceName: "eventline-reactor", metrics: metricsAddress, logger: logger
                ) { ReactorReport.gauges((try? await ReactorReport.fetch(url)) ?? []) }
            } catch {
                await store.shutdown()
                throw error
            }
            // The runner has stopped: let what it appended commit, then close.
            await store.shutdown()
        }
    }
}

extension React {
    /// The shipped reactors (or only those named) over a store of their own; the caller shuts
    /// the store down once the runner has stopped.
    static func runner(url: String, only: [String] = [], logger: Logger) throws -> (EventStore, ReactorRunner) {
        var storeConfiguration = Domain.current.storeConfiguration(databaseURL: url, masterKey: try EnvironmentVariables.requiredMasterKey())
        storeConfiguration.poolSize = 4
        let store = EventStore(storeConfiguration, logger: logger)
        let selected = Domain.current.reactors(store: store, logger: logger, only: only)
        return (store, ReactorRunner(reactors: selected, store: store, logger: logger))
    }
}

/// The reactor runner as a service: runs until graceful shutdown.
struct ReactorService: Service {
    let runner: ReactorRunner

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            try await runner.run()
        }
    }
}

/// The reactors part of `status`.
enum ReactorReport {
    static func fetch(_ url: String) async throws -> [ReactorStatus] {
        try await CLI.withConnection(url) { conn in
            let installed = try conn.query("SELECT to_regclass('eventline.parked_keys') IS NOT NULL").first!.decode(0, as: Bool.self)
            guard installed else { throw CLIError("reactors are not installed: run \(CLI.name) migrate") }
            let rows = try CheckpointStore.list(.reactor, on: conn)
            return ReactorCatalog.status(rows, parked: try CheckpointStore.parkedCounts(.reactor, on: conn))
        }
    }

    /// Each reactor's lag, checkpoint and retries, as Prometheus gauges read at a scrape.
    static func gauges(_ statuses: [ReactorStatus]) -> [(name: String, labels: [(String, String)], value: Double)] {
        statuses.flatMap { status -> [(name: String, labels: [(String, String)], value: Double)] in
            let labels = [("reactor", status.name)]
            return [
                ("eventline_reactor_lag_events", labels, Double(status.lag)),
                ("eventline_reactor_checkpoint", labels, Double(status.checkpoint)),
                ("eventline_reactor_failed_attempts", labels, Double(status.failedAttempts)),
                ("eventline_reactor_parked_keys", labels, Double(status.parkedKeys)),
                ("eventline_reactor_stalled", labels, status.stalled ? 1 : 0),
            ]
        }
    }

    static func print(_ statuses: [ReactorStatus]) {
        guard !statuses.isEmpty else {
            Swift.print("reactors     none yet (\(CLI.name) react starts them)")
            return
        }
        Swift.print("reactors")
        for status in statuses {
            var line = "  \(status.name)  checkpoint \(status.checkpoint)  lag \(status.lag)  owner \(status.owner ?? "none")"
            if status.state != "running" { line += "  \(status.state)" }
            if status.failedAttempts > 0 { line += "  failed attempts \(status.failedAttempts)" }
            if status.parkedKeys > 0 { line += "  parked streams \(status.parkedKeys) (\(CLI.name) reactors parked \(status.name))" }
            if status.stalled { line += "  stalled" }
            Swift.print(line)
            if let error = status.error {
                Swift.print("    \(status.state == "running" ? "retrying" : "paused at") the event at position \(status.errorPosition ?? 0): \(error)")
            }
        }
    }
}

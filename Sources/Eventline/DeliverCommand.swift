import ArgumentParser
import EventStore
import Foundation
import Logging
import Reactors
import ServiceLifecycle

struct Deliver: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Deliver consumer groups that have a webhook: POST their batches, signed (until SIGTERM or SIGINT).",
        discussion: """
            Each batch is POSTed as JSON with Eventline-Signature: sha256=<hex HMAC-SHA256 of the \
            body, keyed with the group's secret>. A 2xx acknowledges it; anything else, or no answer \
            within --timeout seconds, is retried with backoff, and after the group's maxDeliveries \
            an event is parked. One process delivers a group at a time; start several for failover. \
            A webhook URL is reached from this process, with its host's network access.
            """)

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var schema: SchemaOptions
    @OptionGroup var metrics: MetricsOptions
    @Option(name: .customLong("group"), help: "Deliver only this group (repeatable; default: every group with a webhook).")
    var only: [String] = []
    @Option(help: "Seconds a receiver has to answer a batch (1 to 300).") var timeout: Int = 10

    func validate() throws {
        guard (1...300).contains(timeout) else { throw ValidationError("--timeout must be from 1 to 300 seconds") }
        if let bad = only.first(where: { !EventStore.isValidConsumerGroupName($0) }) {
            throw ValidationError("--group \(bad) is not a consumer group's name")
        }
    }

    func run() async throws {
        try await CLI.run {
            let url = try database.databaseURL
            let logger = Logs.logger("eventline.deliver")
            let metricsAddress = try metrics.address()
            try await schema.prepare(databaseURL: url, logger: logger)
            var storeConfiguration = Domain.current.storeConfiguration(databaseURL: url, masterKey: try EnvironmentVariables.requiredMasterKey())
            storeConfiguration.poolSize = 4
            let store = EventStore(storeConfiguration, logger: logger)
            var configuration = WebhookConfiguration()
            configuration.requestTimeout = .seconds(timeout)
            configuration.only = only.isEmpty ? nil : Set(only)
            let deliverer = WebhookDeliverer(store: store, configuration: configuration, logger: logger)
            logger.info("delivering webhooks", metadata: ["groups": "\(only.isEmpty ? "all" : only.joined(separator: ","))"])
            do {
                try await Telemetry.runObserved(
                    DeliverService(deliverer: deliverer), serviceName: "eventline-deliver", metrics: metricsAddress, logger: logger
                ) { ConsumerGroupReport.gauges((try? await store.consumerGroups()) ?? []) }
            } catch {
                await store.shutdown()
                throw error
            }
            await store.shutdown()
        }
    }
}

/// The deliverer as a service: runs until graceful shutdown.
struct DeliverService: Service {
    let deliverer: WebhookDeliverer

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            try await deliverer.run()
        }
    }
}

/// Consumer groups as Prometheus gauges read at a scrape.
enum ConsumerGroupReport {
    static func gauges(_ groups: [ConsumerGroupStatus]) -> [(name: String, labels: [(String, String)], value: Double)] {
        groups.flatMap { group -> [(name: String, labels: [(String, String)], value: Double)] in
            let labels = [("group", group.name)]
            return [
                ("eventline_consumer_group_lag_events", labels, Double(group.lag)),
                ("eventline_consumer_group_in_flight", labels, Double(group.inFlight)),
                ("eventline_consumer_group_waiting", labels, Double(group.waiting)),
                ("eventline_consumer_group_parked", labels, Double(group.parked)),
                ("eventline_consumer_group_redeliveries", labels, Double(group.redeliveries)),
            ]
        }
    }
}

import EventStore
import Foundation
import PostgresClient
import Prometheus
import Synchronization

/// Prometheus metrics of one server, in a registry of its own (no process-wide state, so
/// several servers can run in one test process).
public final class ServerMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let buckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5),
    ]

    public init() {
        groupAppends = registry.makeValueHistogram(
            name: "eventline_group_commit_appends", buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
        groupEvents = registry.makeValueHistogram(name: "eventline_group_commit_events", buckets: [1, 4, 16, 64, 256, 1024, 4096])
    }

    private struct RequestSeries: Hashable {
        var method: String
        var route: String
        var status: Int
    }

    /// The counter and histogram of each series, made once (the registry's own look-up builds
    /// label strings on every call).
    private let series = Mutex<[RequestSeries: (Counter, DurationHistogram)]>([:])

    func recordRequest(method: String, route: String, status: Int, duration: Duration) {
        let key = RequestSeries(method: method, route: route, status: status)
        let metrics = series.withLock { series in
            if let existing = series[key] { return existing }
            let labels = [("method", method), ("route", route), ("status", String(status))]
            let made = (
                registry.makeCounter(name: "eventline_http_requests_total", labels: labels),
                registry.makeDurationHistogram(name: "eventline_http_request_duration_seconds", labels: labels, buckets: buckets)
            )
            series[key] = made
            return made
        }
        metrics.0.increment()
        metrics.1.recordNanoseconds(duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }

    /// Per consumer group: positions behind the head, deliveries in flight, events waiting,
    /// parked, and redeliveries ever.
    static let groupGauges = [
        "eventline_consumer_group_lag_events", "eventline_consumer_group_in_flight", "eventline_consumer_group_waiting",
        "eventline_consumer_group_parked", "eventline_consumer_group_redeliveries",
    ]
    private let reportedGroups = Mutex<Set<String>>([])

    private let groupAppends: ValueHistogram
    private let groupEvents: ValueHistogram

    /// Records a group commit's size (the store calls this for every group).
    func recordGroup(appends: Int, events: Int) {
        groupAppends.record(Double(appends))
        groupEvents.record(Double(events))
    }

    /// Replication: the synchronous standbys in force, each read node's lag, where reads were
    /// served, their waits for a standby and their fall-backs to the primary, failovers seen.
    private func renderReplication(_ state: ReplicationMonitor.Snapshot, failovers: Int, reads: [ReplicaReads.Statistics]) {
        registry.makeGauge(name: "eventline_db_synchronous_standbys").set(Double(state.synchronousConnected))
        registry.makeGauge(name: "eventline_db_failovers").set(Double(failovers))
        for node in state.readNodes {
            let labels = [("node", node.node)]
            registry.makeGauge(name: "eventline_replica_reachable", labels: labels).set(node.reachable ? 1.0 : 0.0)
            if let lag = node.lagPositions { registry.makeGauge(name: "eventline_replica_lag_positions", labels: labels).set(Double(lag)) }
            if let lag = node.lagSeconds { registry.makeGauge(name: "eventline_replica_lag_seconds", labels: labels).set(lag) }
        }
        guard !reads.isEmpty else { return }
        let sum = { (value: (ReplicaReads.Statistics) -> Double) in reads.map(value).reduce(0, +) }
        registry.makeGauge(name: "eventline_reads_served", labels: [("by", "replica")]).set(sum { Double($0.servedByReplica) })
        registry.makeGauge(name: "eventline_reads_served", labels: [("by", "primary")]).set(sum { Double($0.servedByPrimary) })
        registry.makeGauge(name: "eventline_replica_read_waits").set(sum { Double($0.waits) })
        registry.makeGauge(name: "eventline_replica_read_wait_seconds").set(sum { $0.waitSeconds })
        registry.makeGauge(name: "eventline_replica_read_fallbacks", labels: [("reason", "behind")]).set(sum { Double($0.fallbacksBehind) })
        registry.makeGauge(name: "eventline_replica_read_fallbacks", labels: [("reason", "unavailable")]).set(sum { Double($0.fallbacksUnavailable) })
    }

    /// The Prometheus text exposition, with the store's counters read now.
    func render(
        store: EventStore, liveClients: Int, groups: [ConsumerGroupStatus]? = nil, replication: ReplicationMonitor.Snapshot? = nil,
        failovers: Int = 0, replicaReads: [ReplicaReads.Statistics] = []
    ) -> [UInt8] {
        registry.makeGauge(name: "eventline_live_clients").set(Double(liveClients))
        if let replication { renderReplication(replication, failovers: failovers, reads: replicaReads) }
        if let groups {
            let names = Set(groups.map(\.name))
            reportedGroups.withLock { reported in
                // A deleted group's series go with it.
                for gone in reported.subtracting(names) {
                    for name in Self.groupGauges { registry.unregisterGauge(registry.makeGauge(name: name, labels: [("group", gone)])) }
                }
                reported = names
            }
            for group in groups {
                let labels = [("group", group.name)]
                let values = [group.lag, group.inFlight, group.waiting, group.parked, group.redeliveries]
                for (name, value) in zip(Self.groupGauges, values) { registry.makeGauge(name: name, labels: labels).set(Double(value)) }
            }
        }
        let writer = store.writerStatistics
        registry.makeGauge(name: "eventline_log_writer_groups").set(Double(writer.batches))
        registry.makeGauge(name: "eventline_log_writer_appends").set(Double(writer.appends))
        registry.makeGauge(name: "eventline_log_writer_events").set(Double(writer.events))
        registry.makeGauge(name: "eventline_log_writer_busy_seconds")
            .set(writer.writing.inSeconds)
        let pool = store.poolStatistics
        registry.makeGauge(name: "eventline_db_pool_size").set(Double(pool.size))
        registry.makeGauge(name: "eventline_db_pool_open").set(Double(pool.open))
        registry.makeGauge(name: "eventline_db_pool_idle").set(Double(pool.idle))
        registry.makeGauge(name: "eventline_db_pool_waiting").set(Double(pool.waiting))
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }
}

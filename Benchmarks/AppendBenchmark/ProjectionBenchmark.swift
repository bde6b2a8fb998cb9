import EventStore
import Foundation
import Logging
import PostgresClient
import Projector
import Synchronization

/// (p) A projection applied live while 16 appenders write to 1,000 streams, in 1 and in 4
/// partitions (one projector process, so 4 partitions apply on 4 sessions in parallel): the
/// events applied per second, and the lag from an append's acknowledgement to the projection's
/// checkpoint passing it (what a read with `atLeast` waits).
enum ProjectionBenchmark {
    struct Result {
        var partitions: Int
        var appendedPerSecond: Double
        var appliedPerSecond: Double
        var lagP50: Double?
        var lagP99: Double?
    }

    static func definition(_ partitions: Int) throws -> YAMLProjection {
        try ProjectionDirectory.parse("""
            name: bench_tallies_\(partitions)
            version: 1
            key: id
            partitions: \(partitions)
            create: |
              CREATE TABLE $table (id text PRIMARY KEY, n bigint NOT NULL, updated_at timestamptz NOT NULL)
            handlers:
              Counted: |
                INSERT INTO $table AS t (id, n, updated_at) VALUES (:id, :data.n::bigint, :recorded_at::timestamptz)
                ON CONFLICT (id) DO UPDATE SET n = t.n + excluded.n, updated_at = excluded.updated_at RETURNING id
            """, source: "bench")
    }

    static func run(url: String, partitions: Int, appenders: Int, seconds: Int) async throws -> Result {
        var settings = EventStoreConfiguration(databaseURL: url)
        settings.poolSize = appenders
        let store = EventStore(settings)
        defer { Task { await store.shutdown() } }
        let projection = try definition(partitions)
        var configuration = ProjectorConfiguration(databaseURL: url)
        configuration.batchSize = 500
        let projector = Projector(projections: [projection], configuration: configuration, logger: Logger(label: "bench.projector"))
        // Caught up before the window: the projection starts at the current head.
        let projecting = Task { try? await projector.run() }
        defer { projecting.cancel() }
        let probe = DedicatedConnection(conninfo: url)
        defer { probe.shutdown() }
        let name = projection.name
        @Sendable func checkpoint() async throws -> Int {
            try await probe.run { conn in try conn.query("SELECT eventline.projection_checkpoint(\(name))").first!.decode(0, as: Int.self) }
        }
        let startHead = try await store.headPosition()
        while try await checkpoint() < startHead { try await Task.sleep(for: .milliseconds(50)) }

        // Appends and when each was acknowledged; the sampler matches them to the checkpoint.
        let acknowledged = Acknowledged()
        let deadline = ContinuousClock.now + .seconds(seconds)
        let writers = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<appenders {
                    group.addTask {
                        var round = 0
                        while ContinuousClock.now < deadline {
                            let stream = "tally-\(writer + appenders * (round % (1000 / appenders)))"
                            let result = try await store.append(to: stream, events: [NewEvent(type: "Counted", data: Data(#"{"n":1}"#.utf8))])
                            acknowledged.list.withLock { $0.append((result.position, ContinuousClock.now)) }
                            round += 1
                        }
                    }
                }
                try await group.waitForAll()
            }
            acknowledged.finished.withLock { $0 = true }
        }
        var lags: [Double] = []
        while true {
            let reached = try await checkpoint()
            let now = ContinuousClock.now
            let passed = acknowledged.list.withLock { list -> [ContinuousClock.Instant] in
                let done = list.filter { $0.position <= reached }.map(\.at)
                list.removeAll { $0.position <= reached }
                return done
            }
            lags += passed.map { AppendBenchmark.milliseconds(now - $0) }
            // Done once the appenders are and the checkpoint has passed their last append.
            if acknowledged.finished.withLock({ $0 }), acknowledged.list.withLock({ $0.isEmpty }) { break }
            if now >= deadline + .seconds(60) { throw AppendBenchmark.BenchError("the projection did not catch up within 60 s") }
            try await Task.sleep(for: .milliseconds(10))
        }
        try await writers.value
        let endHead = try await store.headPosition()
        while try await checkpoint() < endHead { try await Task.sleep(for: .milliseconds(20)) }
        let appliedAt = ContinuousClock.now
        let appended = endHead - startHead
        let elapsed = AppendBenchmark.milliseconds(appliedAt - (deadline - .seconds(seconds))) / 1000
        let sorted = lags.sorted()
        return Result(
            partitions: partitions, appendedPerSecond: Double(appended) / Double(seconds), appliedPerSecond: Double(appended) / elapsed,
            lagP50: AppendBenchmark.percentile(sorted, 0.5), lagP99: AppendBenchmark.percentile(sorted, 0.99))
    }

    /// Appends and when each was acknowledged.
    final class Acknowledged: Sendable {
        let list = Mutex<[(position: Int, at: ContinuousClock.Instant)]>([])
        /// Set once every appender has had its last append acknowledged.
        let finished = Mutex(false)
    }

    static func print(_ results: [Int: [Result]]) {
        Swift.print("")
        Swift.print("(p) a projection applied live while 16 appenders write to 1,000 streams (one projector process; medians over the rounds):")
        Swift.print("")
        Swift.print("| partitions | appended events/s | applied events/s | applied / appended | lag p50 ms | lag p99 ms |")
        Swift.print("|---:|---:|---:|---:|---:|---:|")
        for partitions in results.keys.sorted() {
            let runs = results[partitions]!
            let appended = AppendBenchmark.median(runs.map(\.appendedPerSecond)) ?? 0
            let applied = AppendBenchmark.median(runs.map(\.appliedPerSecond)) ?? 0
            Swift.print(
                "| \(partitions) | \(AppendBenchmark.format(appended, "%.0f")) | \(AppendBenchmark.format(applied, "%.0f")) | \(AppendBenchmark.format(applied / max(appended, 1), "%.2f")) | \(AppendBenchmark.format(AppendBenchmark.median(runs.compactMap(\.lagP50)), "%.1f")) | \(AppendBenchmark.format(AppendBenchmark.median(runs.compactMap(\.lagP99)), "%.1f")) |")
        }
        Swift.print("Lag: from an append's acknowledgement to the projection's checkpoint (every partition) passing it, sampled every 10 ms.")
    }
}

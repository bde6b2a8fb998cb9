import EmbeddedServers
import EventStore
import Foundation
import PostgresClient

/// `make bench`: group commit against one-transaction-per-row PostgreSQL, on one private server
/// with durable commits (fsync and synchronous_commit on), in one run, so that the ratio means
/// something on a shared, noisy machine.
@main
struct AppendBenchmark {
    struct Options {
        var seconds = 20
        var clients = 16

        init(_ arguments: [String]) throws {
            var rest = arguments.dropFirst()
            while let flag = rest.popFirst() {
                guard let value = rest.popFirst().flatMap(Int.init), value > 0 else {
                    throw BenchError("\(flag) needs a positive number")
                }
                switch flag {
                case "--seconds": seconds = value
                case "--clients": clients = value
                default: throw BenchError("unknown option \(flag) (use --seconds N, --clients N)")
                }
            }
        }
    }

    struct BenchError: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    struct Row {
        var name: String
        var eventsPerSecond: Double
        var p50: Double?
        var p99: Double?
        var note: String
    }

    static func main() async {
        do {
            try await run(Options(CommandLine.arguments))
        } catch {
            FileHandle.standardError.write(Data("eventline-bench: error: \(error)\n".utf8))
            exit(1)
        }
    }

    static func run(_ options: Options) async throws {
        log("starting a private PostgreSQL (fsync=on, synchronous_commit=on)…")
        let server = try await EmbeddedPostgres.start(.init(settings: ["synchronous_commit": "on", "fsync": "on", "max_connections": "100"]))
        defer { server.stop() }
        let admin = DedicatedConnection(conninfo: server.url())
        try await admin.run { conn in try conn.execute(unsafeSQL: "CREATE DATABASE bench") }
        admin.shutdown()
        let url = server.url(database: "bench")
        guard let migrations = Migration.defaultDirectory() else { throw BenchError("cannot find Schemas/migrations") }
        try await Migrator(databaseURL: url, migrations: Migration.load(from: migrations)).migrate()

        let pgbench = try await runPgbench(server: server, url: url, options: options)
        let single = try await runAppends(url: url, options: options, eventsPerAppend: 1)
        let ten = try await runAppends(url: url, options: options, eventsPerAppend: 10)

        let rows = [
            Row(name: "(a) pgbench: 1 INSERT per transaction", eventsPerSecond: pgbench.tps, p50: nil, p99: pgbench.latency, note: "p99 column: pgbench average latency"),
            single, ten,
        ]
        print("")
        print("Eventline append benchmark — \(options.clients) clients, \(options.seconds) s each, fsync=on, synchronous_commit=on, \(ProcessInfo.processInfo.activeProcessorCount) cores")
        print("")
        print("| run | events/s | p50 ms | p99 ms | vs (a) | notes |")
        print("|---|---:|---:|---:|---:|---|")
        for row in rows {
            let p50 = row.p50.map { String(format: "%.2f", $0) } ?? "–"
            let p99 = row.p99.map { String(format: "%.2f", $0) } ?? "–"
            let ratio = String(format: "%.2f", row.eventsPerSecond / pgbench.tps)
            print("| \(row.name) | \(String(format: "%.0f", row.eventsPerSecond)) | \(p50) | \(p99) | \(ratio) | \(row.note) |")
        }
        print("")
        let ratio = single.eventsPerSecond / pgbench.tps
        print(String(format: "(d) b/a = %.2f (target ≥ 1.5); (b) p99 = %.2f ms (target < 20 ms)", ratio, single.p99 ?? 0))
    }

    // MARK: - (a) pgbench

    static func runPgbench(server: EmbeddedPostgres, url: String, options: Options) async throws -> (tps: Double, latency: Double) {
        let conn = DedicatedConnection(conninfo: url)
        defer { conn.shutdown() }
        // A table shaped like eventline.events, with the same keys and indexes, fed one row per transaction.
        try await conn.run { conn in
            try conn.execute(unsafeSQL: """
                CREATE TABLE bench_events (
                    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    stream text NOT NULL, version bigint NOT NULL, event_id uuid NOT NULL UNIQUE,
                    type text NOT NULL, data bytea NOT NULL, codec smallint NOT NULL DEFAULT 0,
                    metadata jsonb NOT NULL DEFAULT '{}', recorded_at timestamptz NOT NULL,
                    category text GENERATED ALWAYS AS (split_part(stream, '-', 1)) STORED,
                    UNIQUE (stream, version));
                CREATE INDEX ON bench_events (category, position);
                CREATE INDEX ON bench_events (type, position);
                """)
        }
        let script = FileManager.default.temporaryDirectory.appendingPathComponent("eventline-pgbench-\(getpid()).sql").path
        try """
            INSERT INTO bench_events (stream, version, event_id, type, data, codec, metadata, recorded_at) VALUES ('bench-' || gen_random_uuid(), 1, gen_random_uuid(), 'MoneyDeposited', '\\x7b22616d6f756e74223a3130307d'::bytea, 0, '{}'::jsonb, clock_timestamp());

            """.write(toFile: script, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: script) }
        log("(a) pgbench: \(options.clients) clients, \(options.seconds) s…")
        let result = try await ServerTool.run(server.binDirectory + "/pgbench", [
            "-n", "-M", "prepared", "-c", String(options.clients), "-j", "2", "-T", String(options.seconds),
            "-f", script, "-h", server.host, "-p", String(server.port), "-U", server.superuser, "bench",
        ])
        let output = result.output
        guard result.status == 0 else { throw BenchError("pgbench failed:\n\(output)") }
        guard let tps = number(after: "tps = ", in: output), let latency = number(after: "latency average = ", in: output) else {
            throw BenchError("cannot read pgbench's output:\n\(output)")
        }
        return (tps, latency)
    }

    // MARK: - (b), (c) Eventline

    static func runAppends(url: String, options: Options, eventsPerAppend: Int) async throws -> Row {
        var configuration = EventStoreConfiguration(databaseURL: url)
        configuration.poolSize = 4
        let store = EventStore(configuration)
        let label = eventsPerAppend == 1 ? "(b)" : "(c)"
        log("\(label) Eventline: \(options.clients) appenders, \(eventsPerAppend) event(s) per append, \(options.seconds) s…")
        let payload = Data(#"{"amount":100}"#.utf8)
        let run = UUID().uuidString.prefix(8).lowercased()

        // A short warm-up opens the connections and fills the caches.
        let warmUp = ContinuousClock.now + .seconds(2)
        let measureFrom = warmUp
        let end = warmUp + .seconds(options.seconds)
        let before = store.writerStatistics
        let results = try await withThrowingTaskGroup(of: (events: Int, latencies: [Double]).self) { group in
            for client in 0..<options.clients {
                group.addTask {
                    var version = 0
                    var events = 0
                    var latencies: [Double] = []
                    latencies.reserveCapacity(100_000)
                    let stream = "bench\(eventsPerAppend)-\(run)c\(client)"
                    while true {
                        let started = ContinuousClock.now
                        if started >= end { break }
                        let batch = (0..<eventsPerAppend).map { _ in NewEvent(type: "MoneyDeposited", data: payload) }
                        let result = try await store.append(
                            to: stream, expected: version == 0 ? .noStream : .exact(version), events: batch)
                        version = result.version
                        let finished = ContinuousClock.now
                        if started >= measureFrom {
                            events += eventsPerAppend
                            latencies.append(milliseconds(finished - started))
                        }
                    }
                    return (events, latencies)
                }
            }
            var all: (events: Int, latencies: [Double]) = (0, [])
            for try await result in group {
                all.events += result.events
                all.latencies += result.latencies
            }
            return all
        }
        let after = store.writerStatistics
        await store.shutdown()
        let sorted = results.latencies.sorted()
        let batches = max(1, after.batches - before.batches)
        let perBatch = Double(after.appends - before.appends) / Double(batches)
        return Row(
            name: "\(label) Eventline: \(eventsPerAppend) event\(eventsPerAppend == 1 ? "" : "s") per append, exact versions",
            eventsPerSecond: Double(results.events) / Double(options.seconds),
            p50: percentile(sorted, 0.50), p99: percentile(sorted, 0.99),
            note: String(format: "%.1f appends per group commit", perBatch))
    }

    // MARK: - Helpers

    static func percentile(_ sorted: [Double], _ fraction: Double) -> Double? {
        guard !sorted.isEmpty else { return nil }
        return sorted[min(sorted.count - 1, Int(Double(sorted.count) * fraction))]
    }

    static func milliseconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
    }

    static func number(after marker: String, in text: String) -> Double? {
        guard let range = text.range(of: marker) else { return nil }
        return Double(text[range.upperBound...].prefix { $0.isNumber || $0 == "." })
    }

    static func log(_ message: String) {
        FileHandle.standardError.write(Data("\(message)\n".utf8))
    }
}

import AsyncHTTPClient
import EmbeddedServers
import EventStore
import Foundation
import NIOCore
import NIOHTTP1
import PostgresClient
import Projector
import Synchronization

/// Past one machine, on this machine: a primary with two streaming standbys (pg_basebackup).
/// (r) appends with a synchronous standby against none, each against pgbench with the same
/// replication; (s) stream and read-model reads over HTTP served by the primary alone against
/// the primary and two standbys; (t) read-your-writes on the standbys: a deposit, then a read
/// of its stream at its position, and how long that read took.
enum ReplicationBenchmark {
    typealias Sample = AppendBenchmark.Sample

    static func run(_ options: AppendBenchmark.Options) async throws {
        AppendBenchmark.log("replication: a primary and two streaming standbys…")
        let primary = try await EmbeddedPostgres.start(.init(settings: ["synchronous_commit": "on", "fsync": "on", "max_connections": "300"]))
        defer { primary.stop() }
        let admin = DedicatedConnection(conninfo: primary.url())
        defer { admin.shutdown() }
        try await admin.run { conn in try conn.execute(unsafeSQL: "CREATE DATABASE bench") }
        let url = primary.url(database: "bench")
        try await Migrator(databaseURL: url, migrations: Migration.embedded()).migrate()
        try await AppendBenchmark.createPgbenchTable(url: url)
        let standbys = [
            try await EmbeddedPostgres.startStandby(of: primary, name: "s1", .init(settings: ["max_connections": "300"])),
            try await EmbeddedPostgres.startStandby(of: primary, name: "s2", .init(settings: ["max_connections": "300"])),
        ]
        defer { for standby in standbys { standby.stop() } }
        /// Makes s1 synchronous (`ANY 1 (s1)`), or no standby; returns once the primary says so.
        func synchronous(_ on: Bool) async throws {
            try await admin.run { conn in
                try conn.execute(unsafeSQL: "ALTER SYSTEM SET synchronous_standby_names = '\(on ? "ANY 1 (s1)" : "")'")
                try conn.execute(unsafeSQL: "SELECT pg_reload_conf()")
            }
            for _ in 0..<100 {
                let count = try await admin.run { conn in
                    try conn.query("SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')").first?.decode(0, as: Int.self) ?? 0
                }
                if (count > 0) == on { return }
                try await Task.sleep(for: .milliseconds(50))
            }
            throw AppendBenchmark.BenchError("the primary did not \(on ? "take" : "drop") its synchronous standby")
        }

        // (r) appends.
        var asyncPg: [Sample] = [], asyncEl: [Sample] = [], syncPg: [Sample] = [], syncEl: [Sample] = []
        for round in 1...options.rounds {
            AppendBenchmark.log("replication round \(round) of \(options.rounds): appends without, then with, a synchronous standby")
            try await synchronous(false)
            asyncPg.append(try await AppendBenchmark.runPgbench(server: primary, clients: options.clients, seconds: options.seconds))
            asyncEl.append(try await AppendBenchmark.runAppends(url: url, clients: options.clients, seconds: options.seconds, eventsPerAppend: 1))
            try await synchronous(true)
            syncPg.append(try await AppendBenchmark.runPgbench(server: primary, clients: options.clients, seconds: options.seconds))
            syncEl.append(try await AppendBenchmark.runAppends(url: url, clients: options.clients, seconds: options.seconds, eventsPerAppend: 1))
        }

        // (s) reads: 10,000 accounts, their read model built, one server on the primary alone and one on both standbys.
        try await synchronous(false)
        AppendBenchmark.log("replication: 10,000 accounts and their read model…")
        try await HTTPBenchmark.prepare(url: url)
        try await buildReadModel(url: url)
        let readURL = "postgresql://\(primary.superuser)@" + standbys.map { "\($0.host):\($0.port)" }.joined(separator: ",")
            + "/bench?target_session_attrs=standby"
        let (primaryPort, replicaPort) = (try AppendBenchmark.freePort(), try AppendBenchmark.freePort())
        let (primaryTask, primaryStore, _) = try await HTTPBenchmark.start(url: url, port: primaryPort)
        let (replicaTask, replicaStore, _) = try await HTTPBenchmark.start(url: url, port: replicaPort, readDatabaseURL: readURL)
        defer {
            primaryTask.cancel()
            replicaTask.cancel()
        }
        var reads: [String: [HTTPBenchmark.WrkResult]] = [:]
        for round in 1...options.rounds {
            AppendBenchmark.log("replication round \(round) of \(options.rounds): reads on the primary alone, then on two standbys")
            for (name, script) in [("stream", streamScript), ("read model", readModelScript)] {
                for (where_, port) in [("primary", primaryPort), ("standbys", replicaPort)] {
                    reads["\(name) \(where_)", default: []].append(
                        try await HTTPBenchmark.wrk(port: port, connections: options.clients, seconds: options.seconds, script: script))
                }
            }
        }
        // (t) read-your-writes on the standbys.
        AppendBenchmark.log("replication: read-your-writes on the standbys, \(options.clients) clients, \(options.seconds) s…")
        let before = replicaStore.replicas?.statistics
        let (latencies, servedBy) = try await readYourWrites(port: replicaPort, clients: options.clients, seconds: options.seconds)
        let after = replicaStore.replicas?.statistics
        AppendBenchmark.log("replication: the same on the primary alone…")
        let (primaryLatencies, _) = try await readYourWrites(port: primaryPort, clients: options.clients, seconds: options.seconds)
        primaryTask.cancel()
        replicaTask.cancel()
        _ = try? await primaryTask.value
        _ = try? await replicaTask.value
        await primaryStore.shutdown()
        await replicaStore.shutdown()

        let median = AppendBenchmark.median
        let f = AppendBenchmark.format
        print("")
        print("Replication on this machine (\(ProcessInfo.processInfo.activeProcessorCount) cores, the primary and both standbys on them): \(options.clients) clients, \(options.seconds) s runs, \(options.rounds) rounds, medians.")
        print("")
        print("| run | per s | vs pgbench of the same mode | p50 ms | p99 ms | events/s per round |")
        print("|---|---:|---:|---:|---:|---|")
        for (name, samples, baseline) in [
            ("(r1) pgbench, 1 INSERT per transaction, no synchronous standby", asyncPg, asyncPg),
            ("(r2) Eventline, 1 event per append, no synchronous standby", asyncEl, asyncPg),
            ("(r3) pgbench, a synchronous standby (ANY 1 (s1), synchronous_commit=on)", syncPg, syncPg),
            ("(r4) Eventline, 1 event per append, a synchronous standby", syncEl, syncPg),
        ] {
            let rate = median(samples.map(\.eventsPerSecond))
            let rounds = samples.map { String(format: "%.0f", $0.eventsPerSecond) }.joined(separator: ", ")
            print("| \(name) | \(f(rate, "%.0f")) | \(f(rate.flatMap { r in median(baseline.map(\.eventsPerSecond)).map { r / $0 } }, "%.2f")) | \(f(median(samples.compactMap(\.p50)), "%.2f")) | \(f(median(samples.compactMap(\.p99)), "%.2f")) | \(rounds) |")
        }
        if let sync = median(syncEl.map(\.eventsPerSecond)), let plain = median(asyncEl.map(\.eventsPerSecond)) {
            print("")
            print(String(format: "(r) a synchronous standby costs Eventline %.0f%% of its appends/s (r4/r2 = %.2f); pgbench keeps %.2f (r3/r1).", (1 - sync / plain) * 100, sync / plain, (median(syncPg.map(\.eventsPerSecond)) ?? 0) / (median(asyncPg.map(\.eventsPerSecond)) ?? 1)))
        }
        print("")
        print("| reads over HTTP, 16 connections | requests/s | vs the primary alone | p50 ms | p99 ms | CPU µs per request (this process) |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in ["stream", "read model"] {
            let alone = median((reads["\(name) primary"] ?? []).map(\.rate))
            for where_ in ["primary", "standbys"] {
                let runs = reads["\(name) \(where_)"] ?? []
                let rate = median(runs.map(\.rate))
                print("| (s) \(name) reads, \(where_ == "primary" ? "the primary alone" : "the primary and 2 standbys") | \(f(rate, "%.0f")) | \(f(rate.flatMap { r in alone.map { r / $0 } }, "%.2f")) | \(f(median(runs.map(\.p50)), "%.2f")) | \(f(median(runs.map(\.p99)), "%.2f")) | \(f(median(runs.map(\.cpuMicroseconds)), "%.0f")) |")
            }
        }
        let sorted = latencies.sorted()
        let waited = (after?.waits ?? 0) - (before?.waits ?? 0)
        let waitSeconds = (after?.waitSeconds ?? 0) - (before?.waitSeconds ?? 0)
        print("")
        print(String(
            format: "(t) read-your-writes on 2 standbys: %d deposits each read back at its position; the read took p50 %.2f ms, p99 %.2f ms; served by a standby %d, by the primary %d; %d reads waited for replay (%.2f ms on average).",
            sorted.count, AppendBenchmark.percentile(sorted, 0.5) ?? 0, AppendBenchmark.percentile(sorted, 0.99) ?? 0,
            servedBy["replica"] ?? 0, servedBy["primary"] ?? 0, waited, waited > 0 ? waitSeconds / Double(waited) * 1000 : 0))
        let onPrimary = primaryLatencies.sorted()
        print(String(
            format: "(t') the same loop against the server on the primary alone: %d deposits, the read took p50 %.2f ms, p99 %.2f ms.",
            onPrimary.count, AppendBenchmark.percentile(onPrimary, 0.5) ?? 0, AppendBenchmark.percentile(onPrimary, 0.99) ?? 0))
        print("Two cores serve the primary, both standbys, the server and wrk at once here: standbys add replay work to the same CPUs, so they show what routing costs and what read-your-writes waits, not the capacity more machines would add.")
    }

    static let streamScript = """
        request = function()
          return wrk.format("GET", "/v1/streams/account-" .. math.random(1, \(HTTPBenchmark.accounts)) .. "?limit=10")
        end
        """

    static let readModelScript = """
        request = function()
          return wrk.format("GET", "/v1/read-models/account_balances/" .. math.random(1, \(HTTPBenchmark.accounts)))
        end
        """

    /// Runs the account_balances projection in this process until it has the log's head.
    static func buildReadModel(url: String) async throws {
        var configuration = ProjectorConfiguration(databaseURL: url)
        configuration.pollInterval = .milliseconds(200)
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let projections = try ProjectionDirectory.load(root + "/Projections").filter { $0.name == "account_balances" }
        let projector = Projector(projections: projections, configuration: configuration, invalidations: nil)
        let task = Task { try? await projector.run() }
        defer { task.cancel() }
        let connection = DedicatedConnection(conninfo: url)
        defer { connection.shutdown() }
        for _ in 0..<1200 {
            let caughtUp = try await connection.run { conn in
                try conn.query("""
                    SELECT coalesce((SELECT min(checkpoint) FROM eventline.checkpoints WHERE kind = 'projection' AND name = 'account_balances'), -1) >= position
                    FROM eventline.log_head
                    """).first?.decode(0, as: Bool.self) ?? false
            }
            if caughtUp { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw AppendBenchmark.BenchError("account_balances did not catch up within 2 minutes")
    }

    /// `clients` loops of: a deposit, then a read of its stream at its position. Returns each
    /// read's milliseconds and how many each node served.
    static func readYourWrites(port: Int, clients: Int, seconds: Int) async throws -> ([Double], [String: Int]) {
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        defer { _ = client.shutdown() }
        final class Shared: Sendable {
            let latencies = Mutex<[Double]>([])
            let servedBy = Mutex<[String: Int]>([:])
        }
        let shared = Shared()
        let end = ContinuousClock.now + .seconds(seconds)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<clients {
                group.addTask {
                    var index = worker
                    while ContinuousClock.now < end {
                        index += clients
                        let account = index % HTTPBenchmark.accounts + 1
                        var deposit = HTTPClientRequest(url: "http://127.0.0.1:\(port)/v1/commands/account/\(account)")
                        deposit.method = .POST
                        deposit.headers.add(name: "Content-Type", value: "application/json")
                        deposit.body = .bytes(ByteBuffer(string: #"{"type":"DepositMoney","data":{"amount":1}}"#))
                        let answer = try await client.execute(deposit, timeout: .seconds(30))
                        let body = try await answer.body.collect(upTo: 1 << 20)
                        guard answer.status.code == 200,
                            let position = ((try? JSONSerialization.jsonObject(with: Data(body.readableBytesView))) as? [String: Any])?["position"] as? Int
                        else { throw AppendBenchmark.BenchError("a deposit answered \(answer.status.code)") }
                        let started = ContinuousClock.now
                        let read = try await client.execute(
                            HTTPClientRequest(url: "http://127.0.0.1:\(port)/v1/streams/account-\(account)?limit=1&direction=backward&atLeast=\(position)"),
                            timeout: .seconds(30))
                        _ = try await read.body.collect(upTo: 1 << 20)
                        let took = AppendBenchmark.milliseconds(ContinuousClock.now - started)
                        guard read.status.code == 200 else { throw AppendBenchmark.BenchError("a read answered \(read.status.code)") }
                        let by = read.headers.first(name: "Eventline-Served-By") ?? "none"
                        shared.latencies.withLock { $0.append(took) }
                        shared.servedBy.withLock { $0[by, default: 0] += 1 }
                    }
                }
            }
            try await group.waitForAll()
        }
        return (shared.latencies.withLock { $0 }, shared.servedBy.withLock { $0 })
    }
}

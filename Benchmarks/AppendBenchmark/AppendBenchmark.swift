import EmbeddedServers
import EventStore
import Foundation
import HTTPServer
import Logging
import PostgresClient

/// `make bench`: group commit against one-transaction-per-row PostgreSQL, on one private server
/// with durable commits (fsync and synchronous_commit on), in one run, so that the ratio means
/// something on a shared, noisy machine.
@main
struct AppendBenchmark {
    struct Options {
        var seconds = 20
        var clients = 16
        var rounds = 3
        /// Events of the replay/export/import history (0: skip it).
        var history = 1_000_000
        /// Whether to run the append and HTTP rounds (1), only the appends with and without
        /// personal data against pgbench (2), only multi-stream and conditional appends
        /// against plain ones and pgbench (3), only live projections in 1 and 4 partitions
        /// against pgbench (4), or none (0).
        var append = 1
        /// Whether to run the replication rounds (a primary and two standbys) after the rest.
        var replication = 1

        init(_ arguments: [String]) throws {
            var rest = arguments.dropFirst()
            while let flag = rest.popFirst() {
                guard let value = rest.popFirst().flatMap(Int.init), value >= 0 else {
                    throw BenchError("\(flag) needs a number")
                }
                switch flag {
                case "--seconds": seconds = value
                case "--clients": clients = value
                case "--rounds": rounds = max(1, value)
                case "--history": history = value
                case "--append": append = value
                case "--replication": replication = value
                default: throw BenchError("unknown option \(flag) (use --seconds N, --clients N, --rounds N, --history EVENTS, --append 0|1|2|3|4, --replication 0|1)")
                }
            }
        }
    }

    struct BenchError: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    /// One measurement of one run.
    struct Sample {
        var eventsPerSecond: Double
        var p50: Double?
        var p99: Double?
        /// Appends per group commit, for Eventline runs.
        var groupSize: Double?
        /// Mean time the log writer took per group, in ms.
        var groupMilliseconds: Double?
        /// The share of wall time the log writer spent writing.
        var writerBusy: Double?
        /// This process's CPU time per append or request, in µs (store and server run in it).
        var cpuMicroseconds: Double?
        /// This process's context switches per append or request.
        var switches: Double?
        /// Appends (units) per second, where an append holds more than one event.
        var appendsPerSecond: Double? = nil
    }

    static func main() async {
        // The server's own log handler, as `eventctl serve` installs it.
        ServerLogHandler.bootstrap(format: .text, level: .error)
        do {
            try await run(Options(CommandLine.arguments))
        } catch {
            FileHandle.standardError.write(Data("eventline-bench: error: \(error)\n".utf8))
            exit(1)
        }
    }

    static func run(_ options: Options) async throws {
        log("starting a private PostgreSQL (fsync=on, synchronous_commit=on)…")
        let server = try await EmbeddedPostgres.start(.init(settings: ["synchronous_commit": "on", "fsync": "on", "max_connections": "300"]))
        defer { server.stop() }
        let admin = DedicatedConnection(conninfo: server.url())
        try await admin.run { conn in try conn.execute(unsafeSQL: "CREATE DATABASE bench") }
        admin.shutdown()
        if options.history > 0 {
            let rows = try await HistoryBenchmark.run(server: server, events: options.history)
            HistoryBenchmark.print(rows, events: options.history)
            fflush(nil)
        }
        guard options.append > 0 else {
            if options.replication > 0 { try await ReplicationBenchmark.run(options) }
            return
        }
        let url = server.url(database: "bench")
        try await Migrator(databaseURL: url, migrations: Migration.embedded()).migrate()

        try await createPgbenchTable(url: url)
        if options.append == 2 {
            var a: [Sample] = [], plain: [Sample] = [], personal: [Sample] = []
            for round in 1...options.rounds {
                log("round \(round) of \(options.rounds)")
                a.append(try await runPgbench(server: server, clients: options.clients, seconds: options.seconds))
                plain.append(try await runAppends(url: url, clients: options.clients, seconds: options.seconds, eventsPerAppend: 1, payload: .withNames))
                personal.append(try await runAppends(url: url, clients: options.clients, seconds: options.seconds, eventsPerAppend: 1, payload: .personal))
            }
            printPersonal(pgbench: a, plain: plain, personal: personal, options: options)
            return
        }
        if options.append == 3 {
            var a: [Sample] = [], plain: [Sample] = []
            var boundaries = BoundaryRows()
            for round in 1...options.rounds {
                log("round \(round) of \(options.rounds)")
                a.append(try await runPgbench(server: server, clients: options.clients, seconds: options.seconds))
                plain.append(try await runAppends(url: url, clients: options.clients, seconds: options.seconds, eventsPerAppend: 1))
                try await boundaries.measure(url: url, options: options)
            }
            BoundaryBenchmark.print(pgbench: a, plain: plain, rows: boundaries.rows, options: options)
            return
        }
        if options.append == 4 {
            // Projections only: pgbench (the raw reference of the same run) and (p).
            var a: [Sample] = []
            var projections: [Int: [ProjectionBenchmark.Result]] = [:]
            for round in 1...options.rounds {
                log("round \(round) of \(options.rounds)")
                a.append(try await runPgbench(server: server, clients: options.clients, seconds: options.seconds))
                for partitions in [1, 4] {
                    log("(p) a projection in \(partitions) partition(s) applied live while 16 appenders write, \(options.seconds) s…")
                    projections[partitions, default: []].append(
                        try await ProjectionBenchmark.run(url: url, partitions: partitions, appenders: 16, seconds: options.seconds))
                }
            }
            print("")
            print("(a) pgbench, 1 INSERT per transaction, \(options.clients) clients: \(format(median(a.map(\.eventsPerSecond)), "%.0f")) tps (median of \(options.rounds) rounds).")
            ProjectionBenchmark.print(projections)
            return
        }
        log("preparing 10,000 accounts, one of 10,000 events and one of 10…")
        try await HTTPBenchmark.prepare(url: url)
        let port = try freePort()
        let (serverTask, serverStore, serverAccounts) = try await HTTPBenchmark.start(url: url, port: port)
        log("warming the server's state cache: one deposit per account…")
        try await HTTPBenchmark.warmUp(serverAccounts)
        var e: [Sample] = [], f: [Sample] = [], g: [Sample] = [], h: [Sample] = [], i: [Sample] = [], j: [Sample] = []
        // The machine is shared and noisy: the runs are interleaved, round after round, and
        // each figure is the median over the rounds; ratios compare medians of one run.
        var a: [Sample] = [], b: [Sample] = [], c: [Sample] = []
        var l: [Sample] = [], lAppends: [Sample] = []
        var mPlain: [Sample] = [], mPersonal: [Sample] = []
        var boundaries = BoundaryRows()
        var scaling: [Int: (pgbench: [Sample], eventline: [Sample])] = [:]
        var projections: [Int: [ProjectionBenchmark.Result]] = [:]
        for round in 1...options.rounds {
            log("round \(round) of \(options.rounds)")
            a.append(try await runPgbench(server: server, clients: options.clients, seconds: options.seconds))
            b.append(try await runAppends(url: url, clients: options.clients, seconds: options.seconds, eventsPerAppend: 1))
            c.append(try await runAppends(url: url, clients: options.clients, seconds: options.seconds, eventsPerAppend: 10))
            mPlain.append(try await runAppends(url: url, clients: options.clients, seconds: options.seconds, eventsPerAppend: 1, payload: .withNames))
            mPersonal.append(try await runAppends(url: url, clients: options.clients, seconds: options.seconds, eventsPerAppend: 1, payload: .personal))
            try await boundaries.measure(url: url, options: options)
            log("(k) group commit against pgbench, \(Self.scalingClients.map(String.init).joined(separator: ", ")) clients, \(Self.scalingSeconds) s each…")
            for clients in Self.scalingClients {
                scaling[clients, default: ([], [])].pgbench.append(try await runPgbench(server: server, clients: clients, seconds: Self.scalingSeconds))
                scaling[clients, default: ([], [])].eventline.append(
                    try await runAppends(url: url, clients: clients, seconds: Self.scalingSeconds, eventsPerAppend: 1))
            }
            log("(i) DepositMoney through the command handler in this process, 16 tasks, \(options.seconds) s…")
            i.append(try await HTTPBenchmark.runCommands(serverAccounts, options: options))
            log("(e) HTTP DepositMoney: 16 wrk connections on 10,000 accounts, \(options.seconds) s…")
            let writerBefore = serverStore.writerStatistics
            let http = try await HTTPBenchmark.wrk(port: port, connections: options.clients, seconds: options.seconds, script: HTTPBenchmark.depositScript)
            let writerAfter = serverStore.writerStatistics
            if http.errors > 0 { throw BenchError("wrk saw \(http.errors) non-2xx responses") }
            let batches = Double(max(1, writerAfter.batches - writerBefore.batches))
            let writing = milliseconds(writerAfter.writing - writerBefore.writing)
            e.append(Sample(
                eventsPerSecond: http.rate, p50: http.p50, p99: http.p99,
                groupSize: Double(writerAfter.appends - writerBefore.appends) / batches, groupMilliseconds: writing / batches,
                writerBusy: writing / (Double(options.seconds) * 1000),
                cpuMicroseconds: http.cpuMicroseconds, switches: http.switches))
            let live = try await HTTPBenchmark.wrk(port: port, connections: options.clients, seconds: 5, script: "wrk.path = \"/health/live\"")
            h.append(Sample(eventsPerSecond: live.rate, p50: live.p50, p99: live.p99, cpuMicroseconds: live.cpuMicroseconds, switches: live.switches))
            log("(f, g) one client on the 10-event and the 10,000-event account…")
            for (id, into) in [("short", 0), ("long", 1)] {
                let single = try await HTTPBenchmark.wrk(port: port, connections: 1, seconds: 5, script: HTTPBenchmark.singleAccountScript(id))
                let sample = Sample(
                    eventsPerSecond: single.rate, p50: single.p50, p99: single.p99,
                    cpuMicroseconds: single.cpuMicroseconds, switches: single.switches)
                if into == 0 { f.append(sample) } else { g.append(sample) }
            }
            // Last in the round: its 100 streams cost the server CPU until each notices its client has gone.
            log("(j) live feed: 100 clients following while 16 appenders write, \(options.seconds) s…")
            j.append(try await LiveFeedBenchmark.run(url: url, port: port, clients: 100, appenders: 16, seconds: options.seconds))
            log("(l) consumer group: 4 consumers over HTTP while 16 appenders write, \(options.seconds) s…")
            let consumed = try await ConsumerGroupBenchmark.run(url: url, port: port, consumers: 4, appenders: 16, seconds: options.seconds)
            l.append(Sample(eventsPerSecond: consumed.acknowledgedPerSecond, p50: consumed.p50, p99: consumed.p99))
            lAppends.append(Sample(eventsPerSecond: consumed.appendedPerSecond))
            for partitions in [1, 4] {
                log("(p) a projection in \(partitions) partition(s) applied live while 16 appenders write, \(options.seconds) s…")
                projections[partitions, default: []].append(
                    try await ProjectionBenchmark.run(url: url, partitions: partitions, appenders: 16, seconds: options.seconds))
            }
        }
        serverTask.cancel()
        _ = try? await serverTask.value
        await serverStore.shutdown()
        let rows: [(String, [Sample])] = [
            ("(a) pgbench, 1 INSERT per transaction", a),
            ("(b) Eventline, 1 event per append", b),
            ("(c) Eventline, 10 events per append", c),
            ("(m) Eventline, 1 event per append, with an email and a name, plain", mPlain),
            ("(m') the same, the email and the name personal data (AES-256-GCM, a key per stream's subject)", mPersonal),
            ("(i) DepositMoney via the command handler in process, 16 tasks, 10,000 accounts (commands/s)", i),
            ("(e) HTTP DepositMoney, 16 connections, 10,000 accounts (commands/s)", e),
            ("(f) HTTP DepositMoney, 1 connection, a 10-event account", f),
            ("(g) HTTP DepositMoney, 1 connection, a 10,000-event account", g),
            ("(h) HTTP GET /health/live, 16 connections (the HTTP stack alone)", h),
            ("(j) live feed: 100 clients following 16 appenders (events delivered/s, summed; ms from ack to receipt)", j),
            ("(l) consumer group: 4 HTTP consumers, fetch 100 + ack (events acknowledged/s; ms from append to ack)", l),
            ("(l') the appends during (l): 16 appenders, 1,000 streams", lAppends),
        ]
        let baseline = median(a.map(\.eventsPerSecond))!
        print("")
        print("Eventline append benchmark: \(options.clients) clients, \(options.seconds) s per run, \(options.rounds) interleaved rounds, medians;")
        print("one private PostgreSQL with fsync=on and synchronous_commit=on; \(ProcessInfo.processInfo.activeProcessorCount) cores.")
        print("")
        print("| run | events/s | vs (a) | p50 ms | p99 ms | appends per group | ms per group | writer busy | CPU µs per op | switches per op | events/s per round |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for (name, samples) in rows {
            let rate = median(samples.map(\.eventsPerSecond))!
            let rounds = samples.map { String(format: "%.0f", $0.eventsPerSecond) }.joined(separator: ", ")
            print("| \(name) | \(format(rate, "%.0f")) | \(format(rate / baseline, "%.2f")) | \(format(median(samples.compactMap(\.p50)), "%.2f")) | \(format(median(samples.compactMap(\.p99)), "%.2f")) | \(format(median(samples.compactMap(\.groupSize)), "%.1f")) | \(format(median(samples.compactMap(\.groupMilliseconds)), "%.2f")) | \(format(median(samples.compactMap(\.writerBusy)).map { $0 * 100 }, "%.0f%%")) | \(format(median(samples.compactMap(\.cpuMicroseconds)), "%.0f")) | \(format(median(samples.compactMap(\.switches)), "%.1f")) | \(rounds) |")
        }
        print("")
        let ratios = zip(b, a).map { $0.eventsPerSecond / $1.eventsPerSecond }
        print(String(
            format: "(d) b/a = %.2f (median of medians; per round: %@); target ≥ 1.5. (b) p99 = %.2f ms; target < 20 ms.",
            median(b.map(\.eventsPerSecond))! / baseline, ratios.map { String(format: "%.2f", $0) }.joined(separator: ", "),
            median(b.compactMap(\.p99)) ?? 0))
        print("pgbench latency column: average, not p50/p99 (pgbench -T prints no percentiles).")
        let httpRatio = median(e.map(\.eventsPerSecond))! / median(b.map(\.eventsPerSecond))!
        print(String(
            format: "HTTP: e/b = %.2f (target ≥ 0.60); (e) p99 = %.2f ms (target < 25 ms); g/f p50 = %.2f (target ≤ 1.5).",
            httpRatio, median(e.compactMap(\.p99)) ?? 0, (median(g.compactMap(\.p50)) ?? 0) / (median(f.compactMap(\.p50)) ?? 1)))
        print("wrk runs on the same two cores as the server and PostgreSQL. CPU and switches: of this process (store and server), per append or request.")
        print("")
        print("(k) Group commit against pgbench with the same number of clients (\(Self.scalingSeconds) s runs, medians over the rounds):")
        print("")
        print("| clients | pgbench tps | Eventline events/s | Eventline / pgbench | Eventline p50 ms | Eventline p99 ms | appends per group |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for clients in Self.scalingClients {
            guard let runs = scaling[clients] else { continue }
            let pg = median(runs.pgbench.map(\.eventsPerSecond))!
            let el = median(runs.eventline.map(\.eventsPerSecond))!
            print("| \(clients) | \(format(pg, "%.0f")) | \(format(el, "%.0f")) | \(format(el / pg, "%.2f")) | \(format(median(runs.eventline.compactMap(\.p50)), "%.2f")) | \(format(median(runs.eventline.compactMap(\.p99)), "%.2f")) | \(format(median(runs.eventline.compactMap(\.groupSize)), "%.1f")) |")
        }
        printPersonal(pgbench: a, plain: mPlain, personal: mPersonal, options: options)
        BoundaryBenchmark.print(pgbench: a, plain: b, rows: boundaries.rows, options: options)
        if let acked = median(l.map(\.eventsPerSecond)), let appended = median(lAppends.map(\.eventsPerSecond)) {
            print("")
            print(String(format: "(l) a consumer group of 4 acknowledges %.0f events/s while 16 appenders write %.0f/s: %.2f of the append rate.", acked, appended, acked / appended))
        }
        if let backlog = try? await ConsumerGroupBenchmark.backlog(url: url) {
            let sorted = backlog.sorted()
            print(String(
                format: "(l″) a new group drains 500 one-event streams and 500 events of one stream, 100 per fetch: %d fetches, p50 %.2f ms, max %.2f ms per fetch.",
                backlog.count, AppendBenchmark.percentile(sorted, 0.5) ?? 0, sorted.last ?? 0))
        }
        if let backlog = try? await ConsumerGroupBenchmark.backlog(url: url, maxPerStream: 100) {
            let sorted = backlog.sorted()
            print(String(
                format: "(l‴) the same with maxPerStream 100 (a run of one stream per consumer): %d fetches, p50 %.2f ms, max %.2f ms per fetch.",
                backlog.count, AppendBenchmark.percentile(sorted, 0.5) ?? 0, sorted.last ?? 0))
        }
        ProjectionBenchmark.print(projections)
        fflush(nil)
        if options.replication > 0 { try await ReplicationBenchmark.run(options) }
    }

    /// (m): appends whose events carry two personal fields against the same appends without.
    static func printPersonal(pgbench a: [Sample], plain: [Sample], personal: [Sample], options: Options) {
        guard let pg = median(a.map(\.eventsPerSecond)), let rate = median(plain.map(\.eventsPerSecond)),
            let sealed = median(personal.map(\.eventsPerSecond))
        else { return }
        let perRound = zip(personal, plain).map { String(format: "%.2f", $0.eventsPerSecond / $1.eventsPerSecond) }.joined(separator: ", ")
        print("")
        print("(m) Personal data: \(options.clients) appenders, one event per append with {amount, email, name}, \(options.rounds) interleaved rounds, medians:")
        print("")
        print("| run | events/s | vs pgbench | vs plain | p50 ms | p99 ms | CPU µs per append |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        print("| pgbench, 1 INSERT per transaction | \(format(pg, "%.0f")) | 1.00 | – | – | – | – |")
        for (name, samples) in [("plain", plain), ("email and name personal (sealed)", personal)] {
            let value = median(samples.map(\.eventsPerSecond))!
            print("| \(name) | \(format(value, "%.0f")) | \(format(value / pg, "%.2f")) | \(format(value / rate, "%.2f")) | \(format(median(samples.compactMap(\.p50)), "%.2f")) | \(format(median(samples.compactMap(\.p99)), "%.2f")) | \(format(median(samples.compactMap(\.cpuMicroseconds)), "%.0f")) |")
        }
        print("")
        print(String(format: "(m) personal / plain = %.2f (per round: %@); target ≥ 0.80.", sealed / rate, perRound))
    }

    /// (n) and (o), round by round.
    struct BoundaryRows {
        var twoStreams: [Sample] = [], small: [Sample] = [], large: [Sample] = []

        mutating func measure(url: String, options: Options) async throws {
            twoStreams.append(try await BoundaryBenchmark.run(url: url, clients: options.clients, seconds: options.seconds, kind: .twoStreams))
            small.append(try await BoundaryBenchmark.run(url: url, clients: options.clients, seconds: options.seconds, kind: .conditional(history: 10)))
            large.append(try await BoundaryBenchmark.run(url: url, clients: options.clients, seconds: options.seconds, kind: .conditional(history: 10_000)))
        }

        var rows: [(String, [Sample])] {
            [
                ("(n) two streams per append, one event each, all or nothing", twoStreams),
                ("(o) 1 event with a DCB condition, 10 matching events before after", small),
                ("(o') the same, 10,000 matching events before after", large),
            ]
        }
    }

    /// (k): how group commit scales with concurrency, against pgbench with as many clients.
    static let scalingClients = [1, 4, 16, 64, 256]
    static let scalingSeconds = 5

    /// A free TCP port on 127.0.0.1 (bound, read back, released).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw BenchError("socket failed") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw BenchError("cannot bind a port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }

    static func format(_ value: Double?, _ pattern: String) -> String {
        value.map { String(format: pattern, $0) } ?? "–"
    }

    // MARK: - (a) pgbench

    static func createPgbenchTable(url: String) async throws {
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
    }

    static func runPgbench(server: EmbeddedPostgres, clients: Int, seconds: Int) async throws -> Sample {
        let script = FileManager.default.temporaryDirectory.appendingPathComponent("eventline-pgbench-\(getpid()).sql").path
        try """
            INSERT INTO bench_events (stream, version, event_id, type, data, codec, metadata, recorded_at) VALUES ('bench-' || gen_random_uuid(), 1, gen_random_uuid(), 'MoneyDeposited', '\\x7b22616d6f756e74223a3130307d'::bytea, 0, '{}'::jsonb, clock_timestamp());

            """.write(toFile: script, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: script) }
        log("pgbench: \(clients) clients, \(seconds) s…")
        let result = try await ServerTool.run(server.binDirectory + "/pgbench", [
            "-n", "-M", "prepared", "-c", String(clients), "-j", String(min(clients, 2)), "-T", String(seconds),
            "-f", script, "-h", server.host, "-p", String(server.port), "-U", server.superuser, "bench",
        ])
        let output = result.output
        guard result.status == 0 else { throw BenchError("pgbench failed:\n\(output)") }
        guard let tps = number(after: "tps = ", in: output), let latency = number(after: "latency average = ", in: output) else {
            throw BenchError("cannot read pgbench's output:\n\(output)")
        }
        return Sample(eventsPerSecond: tps, p50: latency, p99: nil)
    }

    // MARK: - (b), (c) Eventline

    /// What (b), (c) and (m) append.
    enum Payload {
        case amount
        /// An amount, an email and a name.
        case withNames
        /// The same, the email and the name personal data of the stream.
        case personal
    }

    static let benchMasterKey = MasterKey.generate()

    static func runAppends(url: String, clients: Int, seconds: Int, eventsPerAppend: Int, payload kind: Payload = .amount) async throws -> Sample {
        var configuration = EventStoreConfiguration(databaseURL: url)
        configuration.poolSize = 4
        configuration.masterKey = benchMasterKey
        let store = EventStore(configuration)
        let label = kind == .amount ? (eventsPerAppend == 1 ? "(b)" : "(c)") : (kind == .personal ? "(m')" : "(m)")
        log("\(label) Eventline: \(clients) appenders, \(eventsPerAppend) event(s) per append, \(seconds) s…")
        let payload = kind == .amount ? Data(#"{"amount":100}"#.utf8) : Data(#"{"amount":100,"email":"ada.lovelace@example.com","name":"Ada Lovelace"}"#.utf8)
        let run = UUID().uuidString.prefix(8).lowercased()
        return try await measure(store: store, clients: clients, seconds: seconds) { client, versions in
            let stream = "bench\(eventsPerAppend)-\(run)c\(client)"
            let personal = kind == .personal ? PersonalData(subject: stream, fields: ["email", "name"]) : nil
            let batch = (0..<eventsPerAppend).map { _ in NewEvent(type: "MoneyDeposited", data: payload, personal: personal) }
            let result = try await store.append(to: stream, expected: versions[0] == 0 ? .noStream : .exact(versions[0]), events: batch)
            versions[0] = result.version
            return eventsPerAppend
        }
    }

    /// Runs `clients` appenders, each calling `appendOnce` in a loop (with versions of its own,
    /// two slots starting at 0) for a 2 s warm-up, which opens the connections and fills the
    /// caches, then for `seconds` measured; shuts `store` down. `appendOnce` returns the events
    /// it wrote.
    static func measure(
        store: EventStore, clients: Int, seconds: Int,
        appendOnce: @escaping @Sendable (_ client: Int, _ versions: inout [Int]) async throws -> Int
    ) async throws -> Sample {
        let started = ContinuousClock.now
        let measureFrom = started + .seconds(2)
        let end = measureFrom + .seconds(seconds)
        let before = store.writerStatistics
        let usageBefore = HTTPBenchmark.usage()
        let results = try await withThrowingTaskGroup(of: (events: Int, appends: Int, latencies: [Double]).self) { group in
            for client in 0..<clients {
                group.addTask {
                    var versions = [0, 0]
                    var events = 0
                    var appends = 0
                    var latencies: [Double] = []
                    latencies.reserveCapacity(100_000)
                    while true {
                        let started = ContinuousClock.now
                        if started >= end { break }
                        let written = try await appendOnce(client, &versions)
                        let finished = ContinuousClock.now
                        if started >= measureFrom {
                            events += written
                            appends += 1
                            latencies.append(milliseconds(finished - started))
                        }
                    }
                    return (events, appends, latencies)
                }
            }
            var all: (events: Int, appends: Int, latencies: [Double]) = (0, 0, [])
            for try await result in group {
                all.events += result.events
                all.appends += result.appends
                all.latencies += result.latencies
            }
            return all
        }
        let after = store.writerStatistics
        let usageAfter = HTTPBenchmark.usage()
        await store.shutdown()
        let sorted = results.latencies.sorted()
        // Counters cover the warm-up too; the shares are what matter.
        let batches = max(1, after.batches - before.batches)
        let writing = milliseconds(after.writing - before.writing)
        let appends = Double(max(1, after.appends - before.appends))
        return Sample(
            eventsPerSecond: Double(results.events) / Double(seconds),
            p50: percentile(sorted, 0.50), p99: percentile(sorted, 0.99),
            groupSize: Double(after.appends - before.appends) / Double(batches),
            groupMilliseconds: writing / Double(batches),
            writerBusy: writing / (milliseconds(end - started)),
            cpuMicroseconds: (usageAfter.cpu - usageBefore.cpu) / appends,
            switches: (usageAfter.switches - usageBefore.switches) / appends,
            appendsPerSecond: Double(results.appends) / Double(seconds))
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

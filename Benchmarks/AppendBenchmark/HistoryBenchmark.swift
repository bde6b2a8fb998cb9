import EmbeddedServers
import EventStore
import Foundation
import PostgresClient
import Projector

/// Replay, export and import over a long history: each runs as an `eventctl` process of its
/// own, so its wall time and peak memory (`wait4`'s maximum RSS) are its alone.
enum HistoryBenchmark {
    struct Row {
        var name: String
        var events: Int
        var seconds: Double
        var peakMegabytes: Double
        var target: String
    }

    static func run(server: EmbeddedPostgres, events: Int) async throws -> [Row] {
        let eventctl = try eventctlPath()
        let source = try await database(server, "history")
        AppendBenchmark.log("history: writing \(events) bank events (10,000 accounts, a year of days, two currencies)…")
        let inserting = try await fill(source, events: events)
        // The raw PostgreSQL reference of the same run: one INSERT … SELECT of the whole history.
        var rows: [Row] = [Row(
            name: "(raw) PostgreSQL: INSERT … SELECT generate_series of the history, one statement", events: events,
            seconds: inserting, peakMegabytes: 0, target: "reference")]
        for name in ["account_balances", "daily_totals"] {
            AppendBenchmark.log("history: eventctl replay \(name)…")
            let (seconds, peak) = try measure(eventctl, ["replay", name, "--projections-dir", projectionsDirectory()], url: source)
            let applied = try await handled(source, name: name)
            rows.append(Row(name: "replay \(name)", events: applied, seconds: seconds, peakMegabytes: peak, target: "≥ 50,000 events/s"))
        }
        // The same replay of account_balances in 2 and 4 partitions, built in parallel.
        for partitions in [2, 4] {
            let directory = try partitionedProjections(partitions)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            AppendBenchmark.log("history: eventctl replay account_balances in \(partitions) partitions…")
            let (seconds, peak) = try measure(eventctl, ["replay", "account_balances", "--projections-dir", directory], url: source)
            let applied = try await handled(source, name: "account_balances")
            rows.append(Row(
                name: "replay account_balances, \(partitions) partitions in parallel", events: applied, seconds: seconds, peakMegabytes: peak,
                target: "faster than 1 partition"))
        }
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("eventline-bench-\(getpid()).lz4").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        AppendBenchmark.log("history: eventctl export…")
        let (exportSeconds, exportPeak) = try measure(eventctl, ["export", file], url: source)
        let size = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int) ?? 0
        rows.append(Row(
            name: "export (\(size / 1_048_576) MiB LZ4)", events: events, seconds: exportSeconds, peakMegabytes: exportPeak,
            target: "≥ 200,000 events/s"))
        let target = try await database(server, "history_import")
        AppendBenchmark.log("history: eventctl import into an empty store…")
        let (importSeconds, importPeak) = try measure(eventctl, ["import", file], url: target)
        rows.append(Row(name: "import", events: events, seconds: importSeconds, peakMegabytes: importPeak, target: "–"))
        return rows
    }

    static func print(_ rows: [Row], events: Int) {
        Swift.print("")
        Swift.print("History: \(events) events; each run is one eventctl process (release build); peak memory is its maximum RSS.")
        Swift.print("")
        Swift.print("| run | events | seconds | events/s | vs raw | peak memory MB | target (memory < 200 MB) |")
        Swift.print("|---|---:|---:|---:|---:|---:|---|")
        let raw = rows.first.map { Double($0.events) / max($0.seconds, 0.001) } ?? 1
        for row in rows {
            let rate = Double(row.events) / max(row.seconds, 0.001)
            let memory = row.peakMegabytes > 0 ? String(format: "%.0f", row.peakMegabytes) : "–"
            Swift.print("| \(row.name) | \(row.events) | \(String(format: "%.1f", row.seconds)) | \(String(format: "%.0f", rate)) | \(String(format: "%.2f", rate / raw)) | \(memory) | \(row.target) |")
        }
    }

    /// A migrated database.
    static func database(_ server: EmbeddedPostgres, _ name: String) async throws -> String {
        let admin = DedicatedConnection(conninfo: server.url())
        defer { admin.shutdown() }
        try await admin.run { conn in try conn.execute(unsafeSQL: "CREATE DATABASE \(name)") }
        let url = server.url(database: name)
        try await Migrator(databaseURL: url, migrations: Migration.embedded()).migrate()
        return url
    }

    /// `events` bank events in one statement: 10,000 accounts opened first, then deposits and
    /// (every fifth) withdrawals, 30 s apart over about a year, half in EUR and half in USD.
    /// Returns the INSERT's seconds.
    static func fill(_ url: String, events: Int) async throws -> Double {
        let connection = DedicatedConnection(conninfo: url)
        defer { connection.shutdown() }
        return try await connection.run { conn in
            let started = ContinuousClock.now
            try conn.execute(unsafeSQL: """
                INSERT INTO eventline.events (position, stream, version, event_id, type, data, codec, metadata, recorded_at)
                SELECT g, 'account-' || ((g - 1) % 10000), (g - 1) / 10000 + 1, gen_random_uuid(),
                       CASE WHEN g <= 10000 THEN 'AccountOpened' WHEN g % 5 = 0 THEN 'MoneyWithdrawn' ELSE 'MoneyDeposited' END,
                       convert_to(CASE WHEN g <= 10000
                            THEN '{"owner":"Owner ' || g || '","currency":"' || (CASE WHEN g % 2 = 0 THEN 'EUR' ELSE 'USD' END) || '"}'
                            ELSE '{"amount":' || (g % 100 + 1) || ',"currency":"' || (CASE WHEN g % 2 = 0 THEN 'EUR' ELSE 'USD' END) || '"}' END, 'UTF8'),
                       0, '{}'::jsonb, timestamptz '2026-01-01 00:00:00+00' + g * interval '30 seconds'
                FROM generate_series(1, \(events)) AS g
                """)
            let seconds = AppendBenchmark.milliseconds(ContinuousClock.now - started) / 1000
            try conn.execute(unsafeSQL: "UPDATE eventline.log_head SET position = \(events)")
            try conn.execute(unsafeSQL: "VACUUM ANALYZE eventline.events")
            return seconds
        }
    }

    /// The events of the types `name` handles (what its replay applies).
    static func handled(_ url: String, name: String) async throws -> Int {
        guard let projection = try ProjectionDirectory.load(projectionsDirectory()).first(where: { $0.name == name })?.eventTypes else {
            throw AppendBenchmark.BenchError("no projection \(name)")
        }
        let connection = DedicatedConnection(conninfo: url)
        defer { connection.shutdown() }
        return try await connection.run { conn in
            try conn.query("SELECT count(*) FROM eventline.events WHERE type = ANY(\(projection))").first!.decode(0, as: Int.self)
        }
    }

    /// A projections directory holding account_balances declared in `partitions` partitions.
    static func partitionedProjections(_ partitions: Int) throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("eventline-bench-parts-\(getpid())-\(partitions)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let yaml = try String(contentsOfFile: try projectionsDirectory() + "/account_balances.yaml", encoding: .utf8)
        try (yaml + "partitions: \(partitions)\n").write(toFile: directory + "/account_balances.yaml", atomically: true, encoding: .utf8)
        return directory
    }

    static func projectionsDirectory() throws -> String {
        // `make bench` runs in the checkout.
        let directory = FileManager.default.currentDirectoryPath + "/Projections"
        guard FileManager.default.fileExists(atPath: directory) else { throw AppendBenchmark.BenchError("run from the checkout: no ./Projections") }
        return directory
    }

    /// The release eventctl beside this executable.
    static func eventctlPath() throws -> String {
        let here = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        let path = here.appendingPathComponent("eventctl").path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw AppendBenchmark.BenchError("build eventctl first: swift build -c release --product eventctl")
        }
        return path
    }

    /// Runs eventctl to completion; returns its wall time and maximum RSS in MB.
    static func measure(_ executable: String, _ arguments: [String], url: String) throws -> (Double, Double) {
        var environment = ProcessInfo.processInfo.environment
        environment["EVENTLINE_DATABASE_URL"] = url
        // The bank declares personal data: replay needs a master key, or to be told to go without.
        if environment["EVENTLINE_MASTER_KEY"] == nil && environment["EVENTLINE_MASTER_KEY_FILE"] == nil {
            environment["EVENTLINE_PERSONAL_DATA"] = "off"
        }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        var pid: pid_t = 0
        let started = ContinuousClock.now
        let status = posix_spawn(&pid, executable, &actions, nil, argv, envp)
        guard status == 0 else { throw AppendBenchmark.BenchError("cannot start \(executable): \(status)") }
        var exit: Int32 = 0
        var usage = rusage()
        guard wait4(pid, &exit, 0, &usage) == pid else { throw AppendBenchmark.BenchError("wait4 failed") }
        let seconds = AppendBenchmark.milliseconds(ContinuousClock.now - started) / 1000
        guard exit == 0 else { throw AppendBenchmark.BenchError("eventctl \(arguments.joined(separator: " ")) failed (status \(exit))") }
        return (seconds, Double(usage.ru_maxrss) / 1024)
    }
}

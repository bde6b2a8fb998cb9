import Aggregates
import BankDomain
import EmbeddedServers
import EventStore
import Foundation
import HTTPServer
import Hummingbird
import Logging

/// HTTP commands driven by wrk (from Debian) against the server running in this process.
struct HTTPBenchmark {
    let url: String
    let port: Int
    let options: AppendBenchmark.Options
    static let accounts = 10_000

    /// Starts the server; returns the task running it (cancel it to stop).
    static func start(url: String, port: Int, readDatabaseURL: String? = nil) async throws -> (Task<Void, any Error>, EventStore, CommandHandler<BankAccount>) {
        var configuration = EventStoreConfiguration(databaseURL: url)
        configuration.poolSize = 8
        configuration.readDatabaseURL = readDatabaseURL
        let store = EventStore(configuration)
        let accounts = CommandHandler<BankAccount>(store: store)
        var commands = CommandRegistry()
        commands.register(accounts)
        var server = ServerConfiguration()
        server.port = port
        // As `serve` runs: every request within one database deadline (DatabaseDeadline).
        server.databaseDeadline = .milliseconds(1900)
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let app = buildApplication(server, store: store, commands: commands, logger: logger)
        let task = Task { try await app.run() }
        // Wait until it answers.
        for _ in 0..<100 {
            if (try? await ServerTool.run("/usr/bin/curl", ["-sf", "http://127.0.0.1:\(port)/health/ready"], timeout: .seconds(2)))?.status == 0 {
                return (task, store, accounts)
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw AppendBenchmark.BenchError("the HTTP server did not start")
    }

    /// Opens the 10,000 accounts, and the long (10,000 events) and short (10 events) accounts.
    static func prepare(url: String) async throws {
        let store = EventStore(EventStoreConfiguration(databaseURL: url))
        let accounts = CommandHandler<BankAccount>(store: store)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<16 {
                group.addTask {
                    for id in stride(from: worker + 1, through: Self.accounts, by: 16) {
                        _ = try await accounts.handle(id: String(id), command: OpenAccount(owner: "Bench \(id)", currency: "EUR"))
                    }
                }
            }
            try await group.waitForAll()
        }
        let deposit = Data(#"{"amount":1}"#.utf8)
        for (name, count) in [("long", 10_000), ("short", 10)] {
            _ = try await accounts.handle(id: name, command: OpenAccount(owner: name, currency: "EUR"))
            var left = count - 1
            while left > 0 {
                let batch = min(left, 1000)
                _ = try await store.append(to: "account-\(name)", events: (0..<batch).map { _ in NewEvent(type: "MoneyDeposited", data: deposit) })
                left -= batch
            }
        }
        await store.shutdown()
    }

    /// A long-running server has its accounts' states in memory: one deposit per account, before
    /// anything is measured, loads them all (cold loads are what the first deposit costs).
    static func warmUp(_ accounts: CommandHandler<BankAccount>) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<16 {
                group.addTask {
                    for id in stride(from: worker + 1, through: Self.accounts, by: 16) {
                        _ = try await accounts.handle(id: String(id), command: DepositMoney(amount: 1))
                    }
                }
            }
            try await group.waitForAll()
        }
        for id in ["long", "short"] { _ = try await accounts.handle(id: id, command: DepositMoney(amount: 1)) }
    }

    /// DepositMoney through the server's command handler, in this process, without HTTP: 16
    /// tasks on the 10,000 accounts, so that the table separates the command path from HTTP.
    static func runCommands(_ accounts: CommandHandler<BankAccount>, options: AppendBenchmark.Options) async throws -> AppendBenchmark.Sample {
        let end = ContinuousClock.now + .seconds(options.seconds)
        let before = usage()
        let results = try await withThrowingTaskGroup(of: [Double].self) { group in
            for _ in 0..<options.clients {
                group.addTask {
                    var latencies: [Double] = []
                    while ContinuousClock.now < end {
                        let started = ContinuousClock.now
                        _ = try await accounts.handle(id: String(Int.random(in: 1...Self.accounts)), command: DepositMoney(amount: 1))
                        latencies.append(AppendBenchmark.milliseconds(ContinuousClock.now - started))
                    }
                    return latencies
                }
            }
            var all: [Double] = []
            for try await latencies in group { all += latencies }
            return all.sorted()
        }
        let after = usage()
        let count = Double(max(1, results.count))
        return AppendBenchmark.Sample(
            eventsPerSecond: count / Double(options.seconds),
            p50: AppendBenchmark.percentile(results, 0.5), p99: AppendBenchmark.percentile(results, 0.99),
            cpuMicroseconds: (after.cpu - before.cpu) / count, switches: (after.switches - before.switches) / count)
    }

    /// wrk's figures: requests/s and latency percentiles in ms, and the number of non-2xx answers.
    struct WrkResult {
        var rate: Double
        var p50: Double
        var p99: Double
        var errors: Int
        /// This process's CPU time per request in µs (the server runs in this process).
        var cpuMicroseconds: Double
        /// Context switches of this process per request.
        var switches: Double
    }

    static func usage(_ who: __rusage_who = RUSAGE_SELF) -> (cpu: Double, switches: Double) {
        var usage = rusage()
        getrusage(Int32(who.rawValue), &usage)
        let cpu = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e6 + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec)
        return (cpu, Double(usage.ru_nvcsw + usage.ru_nivcsw))
    }

    static func wrk(port: Int, connections: Int, seconds: Int, script: String) async throws -> WrkResult {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("eventline-wrk-\(UUID()).lua").path
        try script.write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let before = usage()
        let childrenBefore = usage(RUSAGE_CHILDREN)
        let result = try await ServerTool.run("/usr/bin/env", [
            "wrk", "-t", String(min(2, connections)), "-c", String(connections), "-d", "\(seconds)s", "--latency", "-s", file,
            "http://127.0.0.1:\(port)",
        ], timeout: .seconds(seconds + 60))
        let after = usage()
        let childrenAfter = usage(RUSAGE_CHILDREN)
        let text = result.output
        let rateLine = text.split(separator: "\n").first { $0.hasPrefix("Requests/sec:") }
        guard result.status == 0, let rate = rateLine.flatMap({ Double($0.dropFirst("Requests/sec:".count).trimmingCharacters(in: .whitespaces)) }),
            let p50 = latency("50%", text), let p99 = latency("99%", text)
        else { throw AppendBenchmark.BenchError("cannot read wrk's output:\n\(text)") }
        let errors = Int(AppendBenchmark.number(after: "Non-2xx or 3xx responses: ", in: text) ?? 0)
        let requests = max(1, rate * Double(seconds))
        AppendBenchmark.log("  wrk: \(Int(rate)) requests/s; CPU per request: server \(Int((after.cpu - before.cpu) / requests)) µs, wrk \(Int((childrenAfter.cpu - childrenBefore.cpu) / requests)) µs")
        return WrkResult(
            rate: rate, p50: p50, p99: p99, errors: errors,
            cpuMicroseconds: (after.cpu - before.cpu) / requests, switches: (after.switches - before.switches) / requests)
    }

    /// A latency line of wrk --latency ("    50%    1.23ms"), in ms.
    static func latency(_ label: String, _ text: String) -> Double? {
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count == 2, fields[0] == label else { continue }
            let value = fields[1]
            for (unit, factor) in [("us", 0.001), ("ms", 1.0), ("s", 1000.0)] where value.hasSuffix(unit) {
                return Double(value.dropLast(unit.count)).map { $0 * factor }
            }
        }
        return nil
    }

    static let depositScript = """
        wrk.method = "POST"
        wrk.headers["Content-Type"] = "application/json"
        wrk.body = '{"type":"DepositMoney","data":{"amount":1}}'
        request = function()
          return wrk.format(nil, "/v1/commands/account/" .. math.random(1, \(accounts)))
        end
        """

    static func singleAccountScript(_ id: String) -> String {
        """
        wrk.method = "POST"
        wrk.path = "/v1/commands/account/\(id)"
        wrk.headers["Content-Type"] = "application/json"
        wrk.body = '{"type":"DepositMoney","data":{"amount":1}}'
        """
    }
}

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
    static func start(url: String, port: Int) async throws -> (Task<Void, any Error>, EventStore) {
        var configuration = EventStoreConfiguration(databaseURL: url)
        configuration.poolSize = 8
        let store = EventStore(configuration)
        var commands = CommandRegistry()
        commands.register(CommandHandler<BankAccount>(store: store))
        var server = ServerConfiguration()
        server.port = port
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let app = buildApplication(server, store: store, commands: commands, logger: logger)
        let task = Task { try await app.run() }
        // Wait until it answers.
        for _ in 0..<100 {
            if (try? await ServerTool.run("/usr/bin/curl", ["-sf", "http://127.0.0.1:\(port)/health/ready"], timeout: .seconds(2)))?.status == 0 {
                return (task, store)
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
                        _ = try await accounts.handle(id: String(id), command: .openAccount(owner: "Bench \(id)", currency: "EUR"))
                    }
                }
            }
            try await group.waitForAll()
        }
        let deposit = Data(#"{"amount":1}"#.utf8)
        for (name, count) in [("long", 10_000), ("short", 10)] {
            _ = try await accounts.handle(id: name, command: .openAccount(owner: name, currency: "EUR"))
            var left = count - 1
            while left > 0 {
                let batch = min(left, 1000)
                _ = try await store.append(to: "account-\(name)", events: (0..<batch).map { _ in NewEvent(type: "MoneyDeposited", data: deposit) })
                left -= batch
            }
        }
        await store.shutdown()
    }

    /// wrk's figures: requests/s and latency percentiles in ms, and the number of non-2xx answers.
    struct WrkResult {
        var rate: Double
        var p50: Double
        var p99: Double
        var errors: Int
    }

    static func wrk(port: Int, connections: Int, seconds: Int, script: String) async throws -> WrkResult {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("eventline-wrk-\(UUID()).lua").path
        try script.write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let result = try await ServerTool.run("/usr/bin/env", [
            "wrk", "-t", String(min(2, connections)), "-c", String(connections), "-d", "\(seconds)s", "--latency", "-s", file,
            "http://127.0.0.1:\(port)",
        ], timeout: .seconds(seconds + 60))
        let text = result.output
        let rateLine = text.split(separator: "\n").first { $0.hasPrefix("Requests/sec:") }
        guard result.status == 0, let rate = rateLine.flatMap({ Double($0.dropFirst("Requests/sec:".count).trimmingCharacters(in: .whitespaces)) }),
            let p50 = latency("50%", text), let p99 = latency("99%", text)
        else { throw AppendBenchmark.BenchError("cannot read wrk's output:\n\(text)") }
        let errors = Int(AppendBenchmark.number(after: "Non-2xx or 3xx responses: ", in: text) ?? 0)
        return WrkResult(rate: rate, p50: p50, p99: p99, errors: errors)
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

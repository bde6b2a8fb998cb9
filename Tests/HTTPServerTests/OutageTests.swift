import Aggregates
import BankDomain
import EmbeddedServers
import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import PostgresClient
import Synchronization
import Testing

@Suite("Database outage under load", .serialized)
struct OutageTests {
    @Test("the database stopped and restarted under requests: 503 meanwhile, recovery after, no acknowledged event missing")
    func stopAndRestart() async throws {
        // A server of its own: this test stops it.
        let postgres = try await EmbeddedPostgres.start()
        defer { postgres.stop() }
        let url = postgres.url()
        try await Migrator(databaseURL: url, migrations: Migration.embedded()).migrate()
        var storeConfiguration = EventStoreConfiguration(databaseURL: url)
        storeConfiguration.acquireTimeout = .seconds(2)
        let store = EventStore(storeConfiguration)
        var commands = CommandRegistry()
        commands.register(CommandHandler<BankAccount>(store: store))
        var configuration = ServerConfiguration()
        configuration.port = 0
        let app = buildApplication(configuration, store: store, commands: commands)

        let tally = Tally()
        try await app.test(.live) { client in
            #expect(try await client.command("1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#).status == .ok)
            let load = Task {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for worker in 0..<4 {
                        group.addTask {
                            var amount = worker * 1_000_000
                            while !tally.stopped {
                                amount += 1
                                let response = try await client.commandAlone("1", "DepositMoney", #"{"amount":\#(amount)}"#)
                                switch response.status {
                                case 200: tally.acknowledge(amount)
                                case 503:
                                    tally.unavailable()
                                    try await Task.sleep(for: .milliseconds(20))
                                default: Issue.record("unexpected \(response.status): \(response.body)")
                                }
                            }
                        }
                    }
                    try await group.waitForAll()
                }
            }
            try await eventually("deposits are acknowledged before the outage") { tally.acknowledged.count >= 10 }
            await postgres.pause()
            // Requests end while the database is gone: every worker is answered 503, again and
            // again, rather than held.
            let unavailableBefore = tally.unavailableCount
            try await eventually(timeout: .seconds(120), "8 requests answered 503 during the outage") {
                tally.unavailableCount >= unavailableBefore + 8
            }
            #expect(try await client.send(.get, "/health/ready").status == .serviceUnavailable)
            #expect(try await client.send(.get, "/health/live").status == .ok)
            let before = tally.acknowledged.count
            try await postgres.resume()
            try await eventually("requests succeed again after the restart") {
                tally.acknowledged.count > before + 20
            }
            tally.stop()
            try await load.value
            #expect(try await client.send(.get, "/health/ready").status == .ok)
        }
        #expect(tally.unavailableCount > 0, "no request saw the outage")
        // Every acknowledged deposit is in the stream.
        let check = EventStore(EventStoreConfiguration(databaseURL: url))
        var stored = Set<Int>()
        var from = 1
        while true {
            let page = try await check.readStream("account-1", from: from, limit: 1000)
            for event in page where event.type == "MoneyDeposited" {
                stored.insert(((try JSONSerialization.jsonObject(with: event.data) as? [String: Any])?["amount"] as? Int) ?? -1)
            }
            if page.count < 1000 { break }
            from = page.last!.version + 1
        }
        let missing = tally.acknowledged.filter { !stored.contains($0) }
        #expect(missing.isEmpty, "acknowledged but missing: \(missing.prefix(10))")
        await check.shutdown()
    }
}

/// What the load saw, shared by its tasks.
final class Tally: Sendable {
    private let state = Mutex((acknowledged: [Int](), unavailable: 0, stopped: false))
    var acknowledged: [Int] { state.withLock { $0.acknowledged } }
    var unavailableCount: Int { state.withLock { $0.unavailable } }
    var stopped: Bool { state.withLock { $0.stopped } }
    func acknowledge(_ amount: Int) { state.withLock { $0.acknowledged.append(amount) } }
    func unavailable() { state.withLock { $0.unavailable += 1 } }
    func stop() { state.withLock { $0.stopped = true } }
}

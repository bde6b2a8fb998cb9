import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Projector
import Testing

@Suite("Projector processes: failover under load", .serialized)
struct ProjectorFailoverTests {
    /// Starts `eventctl project` on `url`; the caller kills it.
    static func projector(_ url: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Repository.eventctl)
        process.arguments = ["project", "--projections-dir", Repository.root + "/Projections"]
        var environment = ProcessInfo.processInfo.environment
        environment["EVENTLINE_DATABASE_URL"] = url
        TestMasterKey.applied(to: &environment)  // the bank declares personal data: no key, no start
        process.environment = environment
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    @Test("projector processes SIGKILLed while deposits pour in: a standby takes over, and the read models equal the log exactly")
    func killedProjectors() async throws {
        let test = try await TestStore.make("projkill")
        let store = test.store
        for account in 1...20 {
            _ = try await store.append(
                to: "account-\(account)", events: [NewEvent(type: "AccountOpened", data: Data(#"{"owner":"O\#(account)","currency":"EUR"}"#.utf8))])
        }
        var processes = [try Self.projector(test.url), try Self.projector(test.url)]
        defer { for process in processes where process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        // Writers: deposits to random accounts for the whole test.
        let writers = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        while !Task.isCancelled {
                            let account = Int.random(in: 1...20)
                            _ = try await store.append(
                                to: "account-\(account)",
                                events: [NewEvent(type: "MoneyDeposited", data: Data(#"{"amount":\#(Int.random(in: 1...1000)),"currency":"EUR"}"#.utf8))])
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        // Kill whichever process owns the projections, several times; start a fresh standby each time.
        // Each round waits for a number of deposits, not only for time, so that every kill happens
        // under load however slow the machine is.
        var kills = 0
        for _ in 0..<4 {
            let before = try await store.headPosition()
            try await Task.sleep(for: .milliseconds(1500))
            try await eventually(timeout: .seconds(60), "the writers wrote 30 deposits since the last kill") {
                try await store.headPosition() >= before + 30
            }
            let owners = try await test.sql { conn in try ProjectionCatalog.status(on: conn).compactMap(\.owner) }
            for process in processes where process.isRunning && owners.contains(where: { $0.hasSuffix(":\(process.processIdentifier)") }) {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
                kills += 1
            }
            processes.removeAll { !$0.isRunning }
            processes.append(try Self.projector(test.url))
        }
        writers.cancel()
        _ = await writers.result
        #expect(kills >= 3, "owners were found and killed")
        let head = try await store.headPosition()
        try await eventually(timeout: .seconds(60), "a standby caught up to the head") {
            let statuses = try await test.sql { conn in try ProjectionCatalog.status(on: conn) }
            return statuses.count == 3 && statuses.allSatisfy { $0.checkpoint == head && $0.owner != nil }
        }
        // Every deposit applied exactly once: balances and daily totals equal sums over the log.
        let (balances, expected, totals, deposits) = try await test.sql { conn in
            let balances = try conn.query("SELECT account_id, balance FROM read_models.account_balances").rows.map {
                (try $0.decode(0, as: String.self), try $0.decode(1, as: Int.self))
            }
            let expected = try conn.query("""
                SELECT split_part(stream, '-', 2), sum((convert_from(data, 'UTF8')::jsonb->>'amount')::bigint)::bigint
                FROM eventline.events WHERE type = 'MoneyDeposited' AND codec = 0 GROUP BY 1
                """).rows.map { (try $0.decode(0, as: String.self), try $0.decode(1, as: Int.self)) }
            let totals = try conn.query("SELECT coalesce(sum(deposited), 0)::bigint, coalesce(sum(events), 0)::bigint FROM read_models.daily_totals").first!
            let deposits = try conn.query("SELECT count(*), coalesce(sum((convert_from(data, 'UTF8')::jsonb->>'amount')::bigint), 0)::bigint FROM eventline.events WHERE type = 'MoneyDeposited'").first!
            return (
                Dictionary(uniqueKeysWithValues: balances), Dictionary(uniqueKeysWithValues: expected),
                [try totals.decode(0, as: Int.self), try totals.decode(1, as: Int.self)],
                [try deposits.decode(1, as: Int.self), try deposits.decode(0, as: Int.self)])
        }
        #expect(deposits[1] >= 120, "the writers wrote under the kills")
        for (account, sum) in expected { #expect(balances[account] == sum, "account \(account)") }
        #expect(totals == deposits)
        for process in processes where process.isRunning { kill(process.processIdentifier, SIGKILL) }
        await store.shutdown()
    }
}

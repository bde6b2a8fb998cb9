import Aggregates
import BankDomain
import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Reactors
import Testing

@Suite("Reactor processes: SIGKILLed half-way", .serialized)
struct ReactorKillTests {
    /// Starts `eventctl react` on `url`, its log in `logs`; the caller kills it.
    static func reactor(_ url: String, logs: URL) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Repository.eventctl)
        process.arguments = ["react", "--reactor", "transfers"]
        var environment = ProcessInfo.processInfo.environment
        environment["EVENTLINE_DATABASE_URL"] = url
        TestMasterKey.applied(to: &environment)  // the bank declares personal data: no key, no start
        process.environment = environment
        let log = logs.appendingPathComponent("react-\(UUID().uuidString.prefix(8).lowercased()).log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        process.standardOutput = FileHandle.nullDevice
        process.standardError = try FileHandle(forWritingTo: log)
        try process.run()
        return process
    }

    struct Planned: Sendable {
        var id: String
        var from: String
        var to: String
        var amount: Int64
        var outcome: Transfer.State.Status
        var reason: String?
    }

    /// 100 transfers between accounts 1-5 (funded), 6 (closed) and 7 (never opened), each with
    /// the outcome it must have: the funded accounts hold far more than they send, so only the
    /// planned overdrafts are refused.
    static let plan: [Planned] = (0..<100).map { i in
        let from = 1 + i % 5
        let other = String(1 + (from + i / 5 % 4) % 5)  // never `from`
        let amount = Int64(100 + (i * 37) % 900)
        switch i % 10 {
        case 3: return Planned(id: "k\(i)", from: "\(from)", to: "6", amount: amount, outcome: .refunded, reason: BankAccount.Rule.notOpen)
        case 7: return Planned(id: "k\(i)", from: "\(from)", to: "7", amount: amount, outcome: .refunded, reason: BankAccount.Rule.notOpen)
        case 5: return Planned(id: "k\(i)", from: "\(from)", to: other, amount: 50_000_000, outcome: .rejected, reason: BankAccount.Rule.insufficientFunds)
        case 9: return Planned(id: "k\(i)", from: "6", to: other, amount: amount, outcome: .rejected, reason: BankAccount.Rule.notOpen)
        default: return Planned(id: "k\(i)", from: "\(from)", to: other, amount: amount, outcome: .completed, reason: nil)
        }
    }

    /// Account steps in the log whose outcome the transfer stream does not have yet (`transfer
    /// step`): a process killed now dies half-way through those transfers.
    static func halfway(on conn: PostgresConnection) throws -> Set<String> {
        Set(try conn.query("""
            SELECT (a.metadata->>'transfer') || ' ' || (a.metadata->>'step') FROM eventline.events a
            WHERE a.category = 'account' AND a.metadata ? 'transfer'
              AND NOT EXISTS (
                  SELECT 1 FROM eventline.events t
                  WHERE t.stream = 'transfer-' || (a.metadata->>'transfer')
                    AND t.type = CASE a.metadata->>'step' WHEN 'debit' THEN 'TransferDebited'
                                                         WHEN 'credit' THEN 'TransferCompleted' ELSE 'TransferRefunded' END)
            """).rows.map { try $0.decode(0, as: String.self) })
    }

    /// The running process that owns the reactor (the owner column names the last process to
    /// take the lease, which may be a killed one until its successor writes it), caught at work:
    /// it is frozen (SIGSTOP) at random moments and the log inspected. With `halfway`, it is
    /// returned frozen once an account step is in the log without its outcome (other than those
    /// in `left`, which an earlier owner left); otherwise once it has events to handle. Until
    /// then it goes on (SIGCONT). After `patience`, it is returned running, whatever it is doing.
    static func victim(
        _ probe: DedicatedConnection, among processes: [Process], halfway wanted: Bool, left: Set<String>, patience: Duration
    ) async throws -> (process: Process, halfway: Bool) {
        let start = ContinuousClock.now
        let pids = processes.filter(\.isRunning).map(\.processIdentifier)
        while ContinuousClock.now < start + .seconds(30) {
            let owner = try await probe.run { conn in try ReactorCatalog.status(try CheckpointStore.list(.reactor, on: conn)).first?.owner }
            if let owner, let pid = pids.first(where: { owner.hasSuffix(":\($0)") }) {
                let process = processes.first { $0.processIdentifier == pid }!
                if ContinuousClock.now > start + patience { return (process, false) }
                kill(pid, SIGSTOP)
                // A commit it had already sent still lands; then the log stands still.
                try await Task.sleep(for: .milliseconds(2))
                let (lag, pending) = try await probe.run { conn in (try ReactorCatalog.status(try CheckpointStore.list(.reactor, on: conn)).first?.lag ?? 0, try Self.halfway(on: conn)) }
                let caught = !pending.subtracting(left).isEmpty
                if caught || (!wanted && lag > 0) { return (process, caught) }
                kill(pid, SIGCONT)
            }
            try await Task.sleep(for: .milliseconds(Int.random(in: 1...4)))
        }
        throw TestFailure("no running process took the reactor's lease")
    }

    @Test("transfers under repeated SIGKILLs of the reactor process all finish as planned; each step happened exactly once; money is conserved")
    func killedReactors() async throws {
        let test = try await TestStore.make("reactkill")
        let store = test.store
        let logs = FileManager.default.temporaryDirectory.appendingPathComponent("eventline-reactkill-\(UUID().uuidString.prefix(8).lowercased())")
        try FileManager.default.createDirectory(at: logs, withIntermediateDirectories: true)
        let accounts = CommandHandler<BankAccount>(store: store)
        let transfers = CommandHandler<Transfer>(store: store)
        let initial: Int64 = 1_000_000
        for account in 1...5 { try await openAccount(accounts, "\(account)", deposit: initial) }
        try await openAccount(accounts, "6", deposit: 0)
        _ = try await accounts.handle(id: "6", command: CloseAccount())

        var processes = [try Self.reactor(test.url, logs: logs), try Self.reactor(test.url, logs: logs)]
        defer { for process in processes where process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        // Eight rounds: start a dozen transfers, and meanwhile SIGKILL the owner at work (every
        // other time half-way through a transfer, between an account step and its outcome) and
        // start a fresh standby. A standby takes over while the next round's transfers pour in.
        var kills = 0
        var halfwayKills = 0
        var left = Set<String>()
        let probe = DedicatedConnection(conninfo: test.url, name: "eventline-test-probe")
        defer { probe.shutdown() }
        for round in 0..<8 {
            let starting = Task {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for planned in Self.plan[(round * Self.plan.count / 8)..<((round + 1) * Self.plan.count / 8)] {
                        group.addTask {
                            _ = try await transfers.handle(
                                id: planned.id, command: StartTransfer(from: planned.from, to: planned.to, amount: planned.amount))
                        }
                    }
                    try await group.waitForAll()
                }
            }
            let (owner, halfway) = try await Self.victim(probe, among: processes, halfway: round % 2 == 0, left: left, patience: .seconds(3))
            kill(owner.processIdentifier, SIGKILL)
            owner.waitUntilExit()
            kills += 1
            if halfway { halfwayKills += 1 }
            left = try await probe.run { conn in try Self.halfway(on: conn) }
            processes.removeAll { !$0.isRunning }
            processes.append(try Self.reactor(test.url, logs: logs))
            try await starting.value
        }
        #expect(halfwayKills >= 1, "some kills fell between an account step and its outcome")
        #expect(kills == 8, "each round killed the owner")

        try await eventually(timeout: .seconds(180), "every transfer finished (reactor logs in \(logs.path))") {
            try await test.sql { conn in
                try conn.query("""
                    SELECT count(DISTINCT stream) FROM eventline.events
                    WHERE category = 'transfer' AND type IN ('TransferCompleted', 'TransferRefunded', 'TransferRejected')
                    """).first!.decode(0, as: Int.self)
            } == Self.plan.count
        }
        let head = try await store.headPosition()
        try await eventually("the reactor caught up with the head") {
            try await reactorStatus(test).first.map { $0.checkpoint == head && $0.error == nil } ?? false
        }
        // The owner stops gracefully on SIGTERM and gives the lease up (the standbys are killed
        // first, so that none takes it over).
        let (owner, _) = try await Self.victim(probe, among: processes, halfway: false, left: [], patience: .zero)
        for process in processes where process !== owner && process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        kill(owner.processIdentifier, SIGTERM)
        owner.waitUntilExit()
        #expect(owner.terminationReason == .exit && owner.terminationStatus == 0, "graceful stop")
        #expect(try await reactorStatus(test).first?.owner == nil)
        #expect(try await reactorStatus(test).first?.checkpoint == head)

        // Each transfer ended as planned.
        let check = CommandHandler<Transfer>(store: store)
        for planned in Self.plan {
            let state = try await check.load(try check.stream(for: planned.id)).state
            #expect(state.status == planned.outcome, "\(planned.id)")
            #expect(state.reason == planned.reason, "\(planned.id)")
        }
        // Each step happened exactly once: count the account events that name their transfer.
        let steps = try await test.sql { conn in
            try conn.query("""
                SELECT metadata->>'transfer', metadata->>'step', stream, type, count(*), sum((convert_from(data, 'UTF8')::jsonb->>'amount')::bigint)::bigint
                FROM eventline.events WHERE category = 'account' AND metadata ? 'transfer' GROUP BY 1, 2, 3, 4
                """).rows.map {
                (transfer: try $0.decode(0, as: String.self), step: try $0.decode(1, as: String.self), stream: try $0.decode(2, as: String.self),
                 type: try $0.decode(3, as: String.self), count: try $0.decode(4, as: Int.self), amount: try $0.decode(5, as: Int.self))
            }
        }
        for planned in Self.plan {
            let mine = steps.filter { $0.transfer == planned.id }
            var expected: [String] = []
            switch planned.outcome {
            case .completed: expected = ["debit account-\(planned.from) MoneyWithdrawn", "credit account-\(planned.to) MoneyDeposited"]
            case .refunded: expected = ["debit account-\(planned.from) MoneyWithdrawn", "refund account-\(planned.from) MoneyDeposited"]
            default: expected = []
            }
            #expect(Set(mine.map { "\($0.step) \($0.stream) \($0.type)" }) == Set(expected), "\(planned.id)")
            #expect(mine.allSatisfy { $0.count == 1 && $0.amount == Int(planned.amount) }, "\(planned.id): \(mine)")
        }
        // Money is conserved, and every balance is what the planned outcomes make it.
        var expectedBalances: [String: Int64] = ["1": initial, "2": initial, "3": initial, "4": initial, "5": initial, "6": 0, "7": 0]
        for planned in Self.plan where planned.outcome == .completed {
            expectedBalances[planned.from]! -= planned.amount
            expectedBalances[planned.to]! += planned.amount
        }
        let fresh = CommandHandler<BankAccount>(store: store)
        var total: Int64 = 0
        for (account, balance) in expectedBalances {
            let loaded = try await fresh.load(try fresh.stream(for: account)).state.balance
            #expect(loaded == balance, "account \(account)")
            total += loaded
        }
        #expect(total == 5 * initial)
        // The balances agree with a sum over the log.
        let sums = try await test.sql { conn in
            try conn.query("""
                SELECT split_part(stream, '-', 2),
                       sum(CASE type WHEN 'MoneyDeposited' THEN 1 ELSE -1 END * (convert_from(data, 'UTF8')::jsonb->>'amount')::bigint)::bigint
                FROM eventline.events WHERE type IN ('MoneyDeposited', 'MoneyWithdrawn') AND codec = 0 GROUP BY 1
                """).rows.map { (try $0.decode(0, as: String.self), try $0.decode(1, as: Int.self)) }
        }
        for (account, sum) in sums { #expect(Int64(sum) == expectedBalances[account], "account \(account)") }
        // The read model shows each transfer's state.
        let model = try await transfersReadModel(test)
        #expect(model.count == Self.plan.count)
        for planned in Self.plan { #expect(model[planned.id]?.state == planned.outcome.rawValue, "\(planned.id)") }
        // How often a kill fell between an account step and its outcome (the log says so).
        var resumed = 0
        for file in try FileManager.default.contentsOfDirectory(at: logs, includingPropertiesForKeys: nil) {
            resumed += try String(contentsOf: file, encoding: .utf8).components(separatedBy: "account step already in the log").count - 1
        }
        print("reactor kills: \(kills), half-way through a transfer: \(halfwayKills); steps found in the log by the next owner: \(resumed)")
        // EVENTLINE_KEEP_TEST_LOGS=1 keeps the reactors' logs for a look.
        if ProcessInfo.processInfo.environment["EVENTLINE_KEEP_TEST_LOGS"] == nil { try? FileManager.default.removeItem(at: logs) }
        await store.shutdown()
    }
}

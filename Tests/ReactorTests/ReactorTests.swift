import Aggregates
import BankDomain
import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Projector
import Reactors
import Synchronization
import Testing

/// Fast settings for tests.
func reactorConfiguration(owner: String = "test:\(getpid())") -> ReactorConfiguration {
    var configuration = ReactorConfiguration()
    configuration.standbyInterval = .milliseconds(100)
    configuration.pollInterval = .milliseconds(200)
    configuration.retryDelay = .milliseconds(20)
    configuration.maxRetryDelay = .milliseconds(200)
    configuration.batchSize = 7
    configuration.ownerName = owner
    return configuration
}

/// Runs `runner` in a task of its own; cancel the returned task to stop it.
func start(_ runner: ReactorRunner) -> Task<Void, Never> {
    Task { try? await runner.run() }
}

func reactorStatus(_ test: TestStore) async throws -> [ReactorStatus] {
    try await test.sql { conn in
        let rows = try CheckpointStore.list(.reactor, on: conn)
        return ReactorCatalog.status(rows, parked: try CheckpointStore.parkedCounts(.reactor, on: conn))
    }
}

/// Opens `account` with `deposit` in it (0: nothing deposited).
func openAccount(_ accounts: CommandHandler<BankAccount>, _ account: String, deposit: Int64) async throws {
    _ = try await accounts.handle(id: account, command: OpenAccount(owner: "Owner \(account)", currency: "EUR"))
    if deposit > 0 { _ = try await accounts.handle(id: account, command: DepositMoney(amount: deposit)) }
}

/// The transfers read model, run in-process over `test` until it has caught up with the log.
func transfersReadModel(_ test: TestStore) async throws -> [String: (state: String, reason: String?, amount: Int)] {
    let projection = try ProjectionDirectory.load(Repository.root + "/Projections").filter { $0.name == "transfers" }
    #expect(projection.count == 1)
    var configuration = ProjectorConfiguration(databaseURL: test.url)
    configuration.standbyInterval = .milliseconds(100)
    configuration.pollInterval = .milliseconds(200)
    let projector = Projector(projections: projection, configuration: configuration)
    let task = Task { try? await projector.run() }
    defer { task.cancel() }
    let head = try await test.store.headPosition()
    try await eventually(timeout: .seconds(60), "the transfers read model caught up") {
        try await test.sql { conn in try ProjectionCatalog.status(on: conn, name: "transfers") }.first?.checkpoint ?? 0 >= head
    }
    let rows = try await test.sql { conn in
        try conn.query("SELECT transfer_id, state, reason, amount FROM read_models.transfers").rows.map {
            (try $0.decode(0, as: String.self), try $0.decode(1, as: String.self), try $0.decode(2, as: String?.self), try $0.decode(3, as: Int.self))
        }
    }
    return Dictionary(uniqueKeysWithValues: rows.map { ($0.0, (state: $0.1, reason: $0.2, amount: $0.3)) })
}

@Suite("Reactors", .serialized)
struct ReactorTests {
    @Test("transfers complete, are rejected when the debit is refused, and are refunded when the credit is refused; the read model shows each")
    func transferOutcomes() async throws {
        let test = try await TestStore.make("reacttransfers")
        let store = test.store
        let accounts = CommandHandler<BankAccount>(store: store)
        let transfers = CommandHandler<Transfer>(store: store)
        try await openAccount(accounts, "a", deposit: 1000)
        try await openAccount(accounts, "b", deposit: 0)
        try await openAccount(accounts, "c", deposit: 0)
        _ = try await accounts.handle(id: "c", command: CloseAccount())
        let plan: [(id: String, from: String, to: String, amount: Int64, state: Transfer.State.Status, reason: String?)] = [
            ("t1", "a", "b", 300, .completed, nil),
            ("t2", "a", "b", 5000, .rejected, BankAccount.Rule.insufficientFunds),
            ("t3", "a", "c", 200, .refunded, BankAccount.Rule.notOpen),
            ("t4", "nobody", "b", 1, .rejected, BankAccount.Rule.notOpen),
            ("t5", "a", "missing", 50, .refunded, BankAccount.Rule.notOpen),
            ("t6", "b", "a", 300, .completed, nil),
        ]
        // t6 spends what t1 brings: transfers of one reactor run in log order.
        for transfer in plan {
            _ = try await transfers.handle(id: transfer.id, command: StartTransfer(from: transfer.from, to: transfer.to, amount: transfer.amount))
        }
        // Some events of other categories, which the reactor passes over.
        _ = try await store.append(to: "noise-1", events: [NewEvent(type: "Noise", data: Data("{}".utf8))])
        let runner = ReactorRunner(reactors: [TransferProcess(store: store)], store: store, configuration: reactorConfiguration())
        let task = start(runner)
        defer { task.cancel() }
        let check = CommandHandler<Transfer>(store: store)
        try await eventually(timeout: .seconds(60), "every transfer finished") {
            for transfer in plan {
                if try await !check.load(check.stream(for: transfer.id)).state.status.isTerminal { return false }
            }
            return true
        }
        for transfer in plan {
            let state = try await check.load(try check.stream(for: transfer.id)).state
            #expect(state.status == transfer.state, "\(transfer.id)")
            #expect(state.reason == transfer.reason, "\(transfer.id)")
        }
        let balances = CommandHandler<BankAccount>(store: store)
        #expect(try await balances.load("account-a").state.balance == 1000 - 300 + 300)
        #expect(try await balances.load("account-b").state.balance == 0)
        #expect(try await balances.load("account-c").state.balance == 0)
        #expect(try await store.streamVersion("account-missing") == 0)
        // Each account event names its transfer and step.
        let steps = try await test.sql { conn in
            try conn.query("""
                SELECT stream, type, metadata->>'transfer', metadata->>'step' FROM eventline.events
                WHERE category = 'account' AND metadata ? 'transfer' ORDER BY position
                """).rows.map { "\(try $0.decode(2, as: String.self)) \(try $0.decode(3, as: String.self)) \(try $0.decode(1, as: String.self)) \(try $0.decode(0, as: String.self))" }
        }
        #expect(Set(steps) == [
            "t1 debit MoneyWithdrawn account-a", "t1 credit MoneyDeposited account-b",
            "t3 debit MoneyWithdrawn account-a", "t3 refund MoneyDeposited account-a",
            "t5 debit MoneyWithdrawn account-a", "t5 refund MoneyDeposited account-a",
            "t6 debit MoneyWithdrawn account-b", "t6 credit MoneyDeposited account-a",
        ])
        #expect(steps.count == 8)
        let debit = try #require(try await store.event(id: TransferProcess.eventID(transfer: "t1", step: .debit)))
        #expect(debit.stream == "account-a" && debit.type == "MoneyWithdrawn")
        // The reactor is past every event, the unrelated ones too.
        let head = try await store.headPosition()
        try await eventually("the reactor caught up with the head") {
            try await reactorStatus(test).first.map { $0.checkpoint == head && $0.lag == 0 } ?? false
        }
        let status = try #require(try await reactorStatus(test).first)
        #expect(status.name == "transfers")
        #expect(status.owner == runner.configuration.ownerName)
        #expect(status.error == nil && status.failedAttempts == 0)
        // The read model agrees.
        let model = try await transfersReadModel(test)
        #expect(model.count == plan.count)
        for transfer in plan {
            #expect(model[transfer.id]?.state == transfer.state.rawValue, "\(transfer.id)")
            #expect(model[transfer.id]?.reason == transfer.reason, "\(transfer.id)")
            #expect(model[transfer.id]?.amount == Int(transfer.amount), "\(transfer.id)")
        }
        task.cancel()
        await store.shutdown()
    }

    @Test("a reactor's follow-up events carry the triggering event's id as causationId and keep its correlationId")
    func causationAndCorrelation() async throws {
        let test = try await TestStore.make("reactcause")
        let store = test.store
        let accounts = CommandHandler<BankAccount>(store: store)
        try await openAccount(accounts, "a", deposit: 1000)
        try await openAccount(accounts, "b", deposit: 0)
        let transfers = CommandHandler<Transfer>(store: store)
        _ = try await transfers.handle(
            id: "tc", command: StartTransfer(from: "a", to: "b", amount: 100), metadata: [MetadataKey.correlationId: .string("order-17")])
        let runner = ReactorRunner(reactors: [TransferProcess(store: store)], store: store, configuration: reactorConfiguration())
        let task = start(runner)
        defer { task.cancel() }
        try await eventually(timeout: .seconds(60), "the transfer completes") {
            try await transfers.load(transfers.stream(for: "tc")).state.status == .completed
        }
        let rows = try await store.readAll()
        let byID = Dictionary(uniqueKeysWithValues: rows.map { ($0.id.uuidString.lowercased(), $0) })
        func metadata(_ row: RecordedEvent) -> [String: Any] {
            (try? JSONSerialization.jsonObject(with: row.metadata)) as? [String: Any] ?? [:]
        }
        // Every event after the start: the debit, the credit and the transfer's outcomes.
        let caused = rows.filter { row in
            (row.stream == "transfer-tc" && row.version > 1) || metadata(row)["transfer"] as? String == "tc" && row.stream.hasPrefix("account-")
        }
        #expect(caused.count == 4, "\(caused.map(\.type))")
        for row in caused {
            let fields = metadata(row)
            #expect(fields[MetadataKey.correlationId] as? String == "order-17", "\(row.type): \(fields)")
            let cause = try #require(fields[MetadataKey.causationId] as? String, "\(row.type): \(fields)")
            let trigger = try #require(byID[cause], "\(row.type)'s cause \(cause) is not an event in the log")
            #expect(trigger.position < row.position)
            #expect(trigger.stream == "transfer-tc", "\(row.type) was caused by \(trigger.type)")
        }
    }

    @Test("a step already in the log (a crash after it, before it was recorded) is recorded, not decided again")
    func stepsTakenBeforeACrash() async throws {
        let test = try await TestStore.make("reactcrash")
        let store = test.store
        let accounts = CommandHandler<BankAccount>(store: store)
        let transfers = CommandHandler<Transfer>(store: store)
        try await openAccount(accounts, "a", deposit: 100)
        try await openAccount(accounts, "b", deposit: 0)
        try await openAccount(accounts, "c", deposit: 0)
        _ = try await accounts.handle(id: "c", command: CloseAccount())
        let process = TransferProcess(store: store)
        func takeStep(_ transfer: String, _ step: TransferProcess.Step, _ account: String, _ command: any DomainCommand) async throws {
            let id = TransferProcess.eventID(transfer: transfer, step: step)
            _ = try await accounts.handle(
                id: account, command: command, metadata: ["transfer": .string(transfer), "step": .string(step.rawValue)], eventIDs: { _ in id })
        }

        // t1: the whole balance was withdrawn, then the process died. Deciding again would be
        // refused for insufficient funds (the money is gone) and reject the transfer.
        _ = try await transfers.handle(id: "t1", command: StartTransfer(from: "a", to: "b", amount: 100))
        try await takeStep("t1", .debit, "a", WithdrawMoney(amount: 100))
        try await process.drive("t1")
        #expect(try await transfers.load("transfer-t1").state.status == .completed)
        #expect(try await accounts.load("account-a").state.balance == 0)
        #expect(try await accounts.load("account-b").state.balance == 100)

        // t2: the credit was applied, then the process died before recording it.
        _ = try await transfers.handle(id: "t2", command: StartTransfer(from: "b", to: "a", amount: 60))
        try await takeStep("t2", .debit, "b", WithdrawMoney(amount: 60))
        _ = try await transfers.handle(id: "t2", command: RecordDebit())
        try await takeStep("t2", .credit, "a", DepositMoney(amount: 60))
        try await process.drive("t2")
        #expect(try await transfers.load("transfer-t2").state.status == .completed)

        // t3: the refund was applied, then the process died before recording it.
        _ = try await transfers.handle(id: "t3", command: StartTransfer(from: "a", to: "c", amount: 60))
        try await takeStep("t3", .debit, "a", WithdrawMoney(amount: 60))
        _ = try await transfers.handle(id: "t3", command: RecordDebit())
        _ = try await transfers.handle(id: "t3", command: RecordCreditRefused(reason: BankAccount.Rule.notOpen))
        try await takeStep("t3", .refund, "a", DepositMoney(amount: 60))
        try await process.drive("t3")
        #expect(try await transfers.load("transfer-t3").state.status == .refunded)

        // Handing the same events over again (at-least-once) changes nothing.
        let head = try await store.headPosition()
        for transfer in ["t1", "t2", "t3"] {
            for event in try await store.readStream("transfer-\(transfer)") { try await process.react(to: event) }
        }
        #expect(try await store.headPosition() == head)
        let fresh = CommandHandler<BankAccount>(store: store)
        #expect(try await fresh.load("account-a").state.balance == 60)
        #expect(try await fresh.load("account-b").state.balance == 40)
        let perStep = try await test.sql { conn in
            try conn.query("""
                SELECT metadata->>'transfer' || ' ' || (metadata->>'step'), count(*) FROM eventline.events
                WHERE category = 'account' AND metadata ? 'transfer' GROUP BY 1
                """).rows.map { (try $0.decode(0, as: String.self), try $0.decode(1, as: Int.self)) }
        }
        #expect(Dictionary(uniqueKeysWithValues: perStep) == [
            "t1 debit": 1, "t1 credit": 1, "t2 debit": 1, "t2 credit": 1, "t3 debit": 1, "t3 refund": 1,
        ])
        await store.shutdown()
    }

    @Test("a refund the account refuses (closed after the debit) is retried and reported, never skipped")
    func refusedRefund() async throws {
        let test = try await TestStore.make("reactrefund")
        let store = test.store
        let accounts = CommandHandler<BankAccount>(store: store)
        let transfers = CommandHandler<Transfer>(store: store)
        try await openAccount(accounts, "a", deposit: 10)
        _ = try await transfers.handle(id: "t", command: StartTransfer(from: "a", to: "gone", amount: 10))
        _ = try await accounts.handle(
            id: "a", command: WithdrawMoney(amount: 10), eventIDs: { _ in TransferProcess.eventID(transfer: "t", step: .debit) })
        _ = try await accounts.handle(id: "a", command: CloseAccount())
        let runner = ReactorRunner(reactors: [TransferProcess(store: store)], store: store, configuration: reactorConfiguration())
        let task = start(runner)
        defer { task.cancel() }
        try await eventually("the refusal reported") {
            try await reactorStatus(test).first.map { $0.failedAttempts >= 2 && $0.error?.contains("refund refused") == true } ?? false
        }
        let status = try #require(try await reactorStatus(test).first)
        #expect(status.errorPosition == 3, "the transfer's first event, retried")
        #expect(status.checkpoint == 0)
        #expect(try await transfers.load("transfer-t").state.status == .creditRefused)
        task.cancel()
        await store.shutdown()
    }

    @Test("one owner at a time; a failing event is retried and reported, never skipped; a standby takes over from the checkpoint")
    func leaseRetryAndTakeover() async throws {
        let test = try await TestStore.make("reactlease")
        let store = test.store
        let log = DeliveryLog()
        let first = ReactorRunner(
            reactors: [Recorder(tag: "first", log: log)], store: store, configuration: reactorConfiguration(owner: "first"))
        let second = ReactorRunner(
            reactors: [Recorder(tag: "second", log: log)], store: store, configuration: reactorConfiguration(owner: "second"))
        let firstTask = start(first)
        try await eventually("the first runner owns the reactor") { try await reactorStatus(test).first?.owner == "first" }
        let secondTask = start(second)
        defer {
            firstTask.cancel()
            secondTask.cancel()
        }
        log.failing(at: 7)
        for n in 1...10 {
            _ = try await store.append(to: "thing-\(n)", events: [NewEvent(type: "Made", data: Data("{}".utf8))])
            _ = try await store.append(to: "noise-\(n)", events: [NewEvent(type: "Noise", data: Data("{}".utf8))])
        }
        // thing-4 is at position 7: the reactor stops there and keeps retrying it.
        try await eventually("the failing event reported") {
            try await reactorStatus(test).first.map { $0.failedAttempts >= 3 && $0.errorPosition == 7 } ?? false
        }
        var status = try #require(try await reactorStatus(test).first)
        #expect(status.error?.contains("refused position 7") == true)
        #expect((5..<7).contains(status.checkpoint), "the events before it are done, not it")
        #expect(log.positions(by: "first").filter { $0 > 7 }.isEmpty, "nothing after it was handed over")
        #expect(log.positions(by: "second").isEmpty, "the standby did nothing")
        log.failing(at: nil)
        try await eventually("caught up after the failure cleared") {
            try await reactorStatus(test).first.map { $0.lag == 0 && $0.failedAttempts == 0 && $0.error == nil } ?? false
        }
        #expect(Set(log.positions(by: "first")) == Set(stride(from: 1, through: 19, by: 2)))
        #expect(log.positions(by: "first").filter { $0 == 7 }.count >= 4, "retried, then handled")

        // The owner stops; the standby takes over from the checkpoint.
        firstTask.cancel()
        try await eventually("the standby owns the reactor") { try await reactorStatus(test).first?.owner == "second" }
        for n in 11...15 { _ = try await store.append(to: "thing-\(n)", events: [NewEvent(type: "Made", data: Data("{}".utf8))]) }
        try await eventually("the standby caught up") {
            try await reactorStatus(test).first.map { $0.lag == 0 } ?? false
        }
        status = try #require(try await reactorStatus(test).first)
        #expect(status.checkpoint == 25)
        #expect(log.positions(by: "second") == [21, 22, 23, 24, 25], "only what came after the checkpoint")
        // Every event of the filter was handed over, in log order.
        let all = log.positions(by: nil)
        #expect(Set(all) == Set(Array(stride(from: 1, through: 19, by: 2)) + [21, 22, 23, 24, 25]))
        #expect(all == all.sorted())
        secondTask.cancel()
        await store.shutdown()
    }

    @Test("runners refuse bad and duplicate reactor names")
    func names() async throws {
        let test = try await TestStore.make("reactnames")
        for reactors: [any Reactor] in [
            [Recorder(tag: "x", log: DeliveryLog(), name: "Bad-Name")],
            [Recorder(tag: "x", log: DeliveryLog()), Recorder(tag: "y", log: DeliveryLog())],
        ] {
            await #expect(throws: ReactorError.self) { try await ReactorRunner(reactors: reactors, store: test.store).run() }
        }
        #expect(ReactorCatalog.isValidName("transfers_2"))
        #expect(!ReactorCatalog.isValidName("2transfers"))
        #expect(!ReactorCatalog.isValidName(""))
        await test.store.shutdown()
    }
}

/// What test reactors were handed, by whom.
final class DeliveryLog: Sendable {
    private struct State {
        var deliveries: [(tag: String, position: Int)] = []
        var failing: Int?
    }
    private let state = Mutex(State())

    /// Makes every delivery of `position` fail (nil: none).
    func failing(at position: Int?) {
        state.withLock { $0.failing = position }
    }

    /// Records a delivery; throws when it is the failing position.
    func deliver(_ position: Int, tag: String) throws {
        let fail = state.withLock { state -> Bool in
            state.deliveries.append((tag, position))
            return state.failing == position
        }
        if fail { throw TestFailure("refused position \(position)") }
    }

    func positions(by tag: String?) -> [Int] {
        state.withLock { $0.deliveries.filter { tag == nil || $0.tag == tag }.map(\.position) }
    }
}

/// A reactor that records what it is handed (events of category `thing`).
struct Recorder: Reactor {
    let tag: String
    let log: DeliveryLog
    var name = "recorder"
    var filter: EventFilter { EventFilter(category: "thing") }

    func react(to event: RecordedEvent) async throws {
        try log.deliver(event.position, tag: tag)
    }
}

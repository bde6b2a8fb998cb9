import Aggregates
import BankDomain
import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Testing

@Suite("Bank rules (pure)")
struct BankRuleTests {
    typealias Account = BankAccount
    static let open = Account.evolve(Account.initialState, .accountOpened(owner: "Ada", currency: "EUR"))

    static func refusal(_ command: Account.Command, _ state: Account.State) -> String? {
        do {
            _ = try Account.decide(command, state)
            return nil
        } catch {
            return error.code
        }
    }

    @Test("opening validates owner and currency and happens once")
    func opening() throws {
        #expect(try Account.decide(.openAccount(owner: "Ada", currency: "EUR"), Account.initialState) == [.accountOpened(owner: "Ada", currency: "EUR")])
        #expect(Self.refusal(.openAccount(owner: "", currency: "EUR"), Account.initialState) == Account.Rule.invalidOwner)
        #expect(Self.refusal(.openAccount(owner: String(repeating: "a", count: 201), currency: "EUR"), Account.initialState) == Account.Rule.invalidOwner)
        #expect(try Account.decide(.openAccount(owner: String(repeating: "é", count: 200), currency: "EUR"), Account.initialState).count == 1)
        for currency in ["eur", "EU", "EURO", "E1R", "ÉUR"] {
            #expect(Self.refusal(.openAccount(owner: "Ada", currency: currency), Account.initialState) == Account.Rule.invalidCurrency, "\(currency)")
        }
        #expect(Self.refusal(.openAccount(owner: "Ada", currency: "EUR"), Self.open) == Account.Rule.alreadyOpened)
    }

    @Test("deposits need an open account, a positive amount, and must not overflow")
    func deposits() throws {
        #expect(Self.refusal(.depositMoney(amount: 5), Account.initialState) == Account.Rule.notOpen)
        #expect(Self.refusal(.depositMoney(amount: 0), Self.open) == Account.Rule.invalidAmount)
        #expect(Self.refusal(.depositMoney(amount: -5), Self.open) == Account.Rule.invalidAmount)
        let rich = Account.evolve(Self.open, .moneyDeposited(amount: .max - 1))
        #expect(Self.refusal(.depositMoney(amount: 2), rich) == Account.Rule.balanceOverflow)
        #expect(try Account.decide(.depositMoney(amount: 1), rich) == [.moneyDeposited(amount: 1, currency: "EUR")])
    }

    @Test("withdrawals never take the balance below zero")
    func withdrawals() throws {
        let funded = Account.evolve(Self.open, .moneyDeposited(amount: 100))
        #expect(try Account.decide(.withdrawMoney(amount: 100), funded) == [.moneyWithdrawn(amount: 100, currency: "EUR")])
        #expect(Self.refusal(.withdrawMoney(amount: 101), funded) == Account.Rule.insufficientFunds)
        #expect(Self.refusal(.withdrawMoney(amount: .max), funded) == Account.Rule.insufficientFunds)
        #expect(Self.refusal(.withdrawMoney(amount: 0), funded) == Account.Rule.invalidAmount)
        #expect(Self.refusal(.withdrawMoney(amount: 1), Account.initialState) == Account.Rule.notOpen)
    }

    @Test("closing needs a zero balance, and a closed account takes no more commands")
    func closing() throws {
        let funded = Account.evolve(Self.open, .moneyDeposited(amount: 1))
        #expect(Self.refusal(.closeAccount, funded) == Account.Rule.balanceNotZero)
        #expect(try Account.decide(.closeAccount, Self.open) == [.accountClosed])
        let closed = Account.evolve(Self.open, .accountClosed)
        for command: Account.Command in [.depositMoney(amount: 1), .withdrawMoney(amount: 1), .closeAccount] {
            #expect(Self.refusal(command, closed) == Account.Rule.notOpen)
        }
        #expect(Self.refusal(.openAccount(owner: "Ada", currency: "EUR"), closed) == Account.Rule.alreadyOpened)
    }

    @Test("commands decode from their JSON bodies; unknown fields and wrong types name the field")
    func wire() throws {
        #expect(try Account.Command.decode(typeName: "DepositMoney", data: Data(#"{"amount":5}"#.utf8)) == .depositMoney(amount: 5))
        #expect(try Account.Command.decode(typeName: "CloseAccount", data: Data("{}".utf8)) == .closeAccount)
        #expect(try Account.Command.decode(typeName: "Teleport", data: Data("{}".utf8)) == nil)
        for (body, field) in [(#"{"amount":5,"extra":1}"#, "extra"), (#"{"amount":"5"}"#, "amount"), (#"{}"#, "amount"),
                              (#"{"amount":1e40}"#, "amount"), (#"{"amount":99999999999999999999}"#, "amount"),
                              (#"{"amount":5.5}"#, "amount"), (#"{"amount":true}"#, "amount"), (#"[5]"#, "")] {
            do {
                _ = try Account.Command.decode(typeName: "DepositMoney", data: Data(body.utf8))
                Issue.record("\(body) was accepted")
            } catch let error as DecodingError {
                #expect(field.isEmpty || error.fieldPath.contains(field), "\(body): \(error)")
            }
        }
        for event: Account.Event in [
            .accountOpened(owner: "Ada", currency: "EUR"), .moneyDeposited(amount: 3), .moneyWithdrawn(amount: 2),
            .moneyDeposited(amount: 3, currency: "EUR"), .moneyWithdrawn(amount: 2, currency: "CHF"), .accountClosed,
        ] {
            #expect(try Account.Event.decode(typeName: event.typeName, data: event.encodedData()) == event)
        }
    }
}

extension DecodingError {
    /// The dotted path of the field the error is about.
    var fieldPath: String {
        let context: DecodingError.Context? = switch self {
        case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context): context
        case .keyNotFound(let key, let context): .init(codingPath: context.codingPath + [key], debugDescription: context.debugDescription)
        @unknown default: nil
        }
        return context?.codingPath.map(\.stringValue).joined(separator: ".") ?? ""
    }
}

@Suite("Command handling against the event store")
struct CommandHandlerTests {
    @Test("a command loads, decides and appends; rule violations write nothing")
    func handleCommands() async throws {
        let test = try await TestStore.make("cmd")
        let accounts = CommandHandler<BankAccount>(store: test.store)
        let opened = try await accounts.handle(id: "1", command: .openAccount(owner: "Ada", currency: "EUR"))
        #expect(opened.stream == "account-1")
        #expect(opened.version == 1)
        #expect(try await accounts.handle(id: "1", command: .depositMoney(amount: 70)).version == 2)
        let refused = await #expect(throws: RuleViolation.self) { try await accounts.handle(id: "1", command: .withdrawMoney(amount: 71)) }
        #expect(refused?.code == BankAccount.Rule.insufficientFunds)
        #expect(try await accounts.handle(id: "1", command: .withdrawMoney(amount: 70)).events.map(\.type) == ["MoneyWithdrawn"])
        #expect(try await accounts.handle(id: "1", command: .closeAccount, metadata: ["user": "ops"]).version == 4)
        #expect(try await test.store.streamVersion("account-1") == 4)
        let stored = try await test.store.readStream("account-1")
        #expect(stored.map(\.type) == ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn", "AccountClosed"])
        #expect(try stored[3].metadataFields()["user"] == "ops")
        await test.store.shutdown()
    }

    @Test("50 concurrent deposits to one account without expected versions all succeed and sum up")
    func concurrentDeposits() async throws {
        let test = try await TestStore.make("deposits")
        // Several handlers, as several server processes would have, each with its own cache.
        let handlers = (0..<3).map { _ in CommandHandler<BankAccount>(store: test.store) }
        _ = try await handlers[0].handle(id: "7", command: .openAccount(owner: "Ada", currency: "EUR"))
        try await withThrowingTaskGroup(of: Void.self) { group in
            for amount in 1...50 {
                group.addTask { _ = try await handlers[amount % 3].handle(id: "7", command: .depositMoney(amount: Int64(amount))) }
            }
            try await group.waitForAll()
        }
        let fresh = CommandHandler<BankAccount>(store: test.store)
        let (state, version) = try await fresh.load(try fresh.stream(for: "7"))
        #expect(version == 51)
        #expect(state.balance == Int64((1...50).reduce(0, +)))
        await test.store.shutdown()
    }

    @Test("a named expected version that does not match is the answer, with the current version")
    func expectedVersion() async throws {
        let test = try await TestStore.make("cmdexp")
        let accounts = CommandHandler<BankAccount>(store: test.store)
        _ = try await accounts.handle(id: "2", command: .openAccount(owner: "Ada", currency: "EUR"))
        _ = try await accounts.handle(id: "2", command: .depositMoney(amount: 5), expectedVersion: 1)
        let conflict = await #expect(throws: EventStoreError.self) {
            try await accounts.handle(id: "2", command: .depositMoney(amount: 5), expectedVersion: 1)
        }
        #expect(conflict?.code == .wrongExpectedVersion)
        #expect(conflict?.currentVersion == 2)
        // Another process wrote meanwhile: this handler's cache is stale, the expected version still decides.
        _ = try await test.store.append(to: "account-2", expected: .exact(2), events: [NewEvent(type: "MoneyDeposited", data: Data(#"{"amount":1}"#.utf8))])
        let stale = await #expect(throws: EventStoreError.self) {
            try await accounts.handle(id: "2", command: .depositMoney(amount: 5), expectedVersion: 2)
        }
        #expect(stale?.currentVersion == 3)
        #expect(try await accounts.handle(id: "2", command: .withdrawMoney(amount: 6), expectedVersion: 3).version == 4)
        await test.store.shutdown()
    }

    @Test("snapshots are written every N events and used by a cold handler; a snapshot of another shape is ignored")
    func snapshots() async throws {
        let test = try await TestStore.make("snap")
        let accounts = CommandHandler<BankAccount>(store: test.store)
        _ = try await accounts.handle(id: "9", command: .openAccount(owner: "Ada", currency: "EUR"))
        for _ in 1..<250 { _ = try await accounts.handle(id: "9", command: .depositMoney(amount: 2)) }
        try await eventually("the snapshot at version 200") {
            try await test.store.loadSnapshot("account-9")?.version == 200
        }
        let cold = CommandHandler<BankAccount>(store: test.store)
        let (state, version) = try await cold.load(try cold.stream(for: "9"))
        #expect(version == 250)
        #expect(state.balance == 498)

        // A snapshot whose state shape is unknown, or whose bytes are garbage, is ignored.
        try await test.store.saveSnapshot("account-9", Snapshot(version: 250, stateVersion: 99, data: Data(#"{"unexpected":true}"#.utf8)))
        let (ignored, _) = try await CommandHandler<BankAccount>(store: test.store).load(try cold.stream(for: "9"))
        #expect(ignored.balance == 498)
        try await test.sql { conn in
            try conn.execute("UPDATE eventline.snapshots SET state_version = 1, data = \(Data([1, 2, 3])) WHERE stream = 'account-9'")
        }
        let (afterGarbage, _) = try await CommandHandler<BankAccount>(store: test.store).load(try cold.stream(for: "9"))
        #expect(afterGarbage.balance == 498)
        await test.store.shutdown()
    }
}

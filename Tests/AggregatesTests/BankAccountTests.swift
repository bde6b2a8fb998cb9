import BankDomain
import EventlineTesting
import Foundation
import PostgresClient
import Testing

@Suite("Bank rules (pure)")
struct BankRuleTests {
    typealias Spec = AggregateSpec<BankAccount>
    typealias Rule = BankAccount.Rule
    static let opened = AccountOpened(owner: "Ada", currency: "EUR")

    @Test("opening validates owner and currency and happens once")
    func opening() throws {
        try Spec.given().when(OpenAccount(owner: "Ada", currency: "EUR")).then(AccountOpened(owner: "Ada", currency: "EUR"))
        try Spec.given().when(OpenAccount(owner: "", currency: "EUR")).thenRefused(Rule.invalidOwner)
        try Spec.given().when(OpenAccount(owner: String(repeating: "a", count: 201), currency: "EUR")).thenRefused(Rule.invalidOwner)
        let longest = String(repeating: "é", count: 200)
        try Spec.given().when(OpenAccount(owner: longest, currency: "EUR")).then(AccountOpened(owner: longest, currency: "EUR"))
        for currency in ["eur", "EU", "EURO", "E1R", "ÉUR"] {
            try Spec.given().when(OpenAccount(owner: "Ada", currency: currency)).thenRefused(Rule.invalidCurrency)
        }
        try Spec.given(Self.opened).when(OpenAccount(owner: "Ada", currency: "EUR")).thenRefused(Rule.alreadyOpened)
    }

    @Test("an account number is 5 to 34 letters and digits, stored in upper case, and taken once across all accounts")
    func accountNumbers() throws {
        try Spec.given().when(OpenAccount(owner: "Ada", currency: "EUR", number: "de44500105175407324931"))
            .then(AccountOpened(owner: "Ada", currency: "EUR", number: "DE44500105175407324931"))
        for bad in ["DE12", "DE 1234567", "DE-1234567", String(repeating: "9", count: 35), "ÉBCDEF"] {
            try Spec.given().when(OpenAccount(owner: "Ada", currency: "EUR", number: bad)).thenRefused(Rule.invalidNumber)
        }
        // Another account's AccountOpened with the number, in any case, takes it; another number does not.
        let taken = try Spec.given().elsewhere(AccountOpened(owner: "Bob", currency: "EUR", number: "DE4412345678"))
        try taken.when(OpenAccount(owner: "Ada", currency: "EUR", number: "de4412345678")).thenRefused(Rule.numberTaken)
        try taken.when(OpenAccount(owner: "Ada", currency: "EUR", number: "DE4412345679"))
            .then(AccountOpened(owner: "Ada", currency: "EUR", number: "DE4412345679"))
        try taken.when(OpenAccount(owner: "Ada", currency: "EUR")).then(AccountOpened(owner: "Ada", currency: "EUR"))
        #expect(AccountOpened(owner: nil, currency: "EUR", number: "DE4412345678").tags == ["account-number:DE4412345678"])
        #expect(BankAccount.boundary(of: OpenAccount(owner: "Ada", currency: "EUR")) == nil)
        #expect(BankAccount.boundary(of: DepositMoney(amount: 1)) == nil)
    }

    @Test("deposits need an open account, a positive amount, and must not overflow")
    func deposits() throws {
        try Spec.given().when(DepositMoney(amount: 5)).thenRefused(Rule.notOpen)
        try Spec.given(Self.opened).when(DepositMoney(amount: 0)).thenRefused(Rule.invalidAmount)
        try Spec.given(Self.opened).when(DepositMoney(amount: -5)).thenRefused(Rule.invalidAmount)
        let rich = try Spec.given(Self.opened, MoneyDeposited(amount: .max - 1))
        try rich.when(DepositMoney(amount: 2)).thenRefused(Rule.balanceOverflow)
        try rich.when(DepositMoney(amount: 1)).then(MoneyDeposited(amount: 1, currency: "EUR"))
    }

    @Test("withdrawals never take the balance below zero")
    func withdrawals() throws {
        let funded = try Spec.given(Self.opened, MoneyDeposited(amount: 100))
        try funded.when(WithdrawMoney(amount: 100)).then(MoneyWithdrawn(amount: 100, currency: "EUR"))
        try funded.when(WithdrawMoney(amount: 101)).thenRefused(Rule.insufficientFunds)
        try funded.when(WithdrawMoney(amount: .max)).thenRefused(Rule.insufficientFunds)
        try funded.when(WithdrawMoney(amount: 0)).thenRefused(Rule.invalidAmount)
        try Spec.given().when(WithdrawMoney(amount: 1)).thenRefused(Rule.notOpen)
    }

    @Test("closing needs a zero balance, and a closed account takes no more commands")
    func closing() throws {
        try Spec.given(Self.opened, MoneyDeposited(amount: 1)).when(CloseAccount()).thenRefused(Rule.balanceNotZero)
        try Spec.given(Self.opened).when(CloseAccount()).then(AccountClosed())
        let closed = try Spec.given(Self.opened, AccountClosed())
        for command: any DomainCommand in [DepositMoney(amount: 1), WithdrawMoney(amount: 1), CloseAccount()] {
            try closed.when(command).thenRefused(Rule.notOpen)
        }
        try closed.when(OpenAccount(owner: "Ada", currency: "EUR")).thenRefused(Rule.alreadyOpened)
    }

    @Test("a then that does not hold fails, showing both sides")
    func specFailures() throws {
        let funded = try Spec.given(Self.opened, MoneyDeposited(amount: 100))
        #expect(throws: SpecFailure.self) { try funded.when(WithdrawMoney(amount: 100)).then(MoneyWithdrawn(amount: 99, currency: "EUR")) }
        #expect(throws: SpecFailure.self) { try funded.when(WithdrawMoney(amount: 100)).thenRefused(Rule.insufficientFunds) }
        #expect(throws: SpecFailure.self) { try funded.when(WithdrawMoney(amount: 101)).then(MoneyWithdrawn(amount: 101, currency: "EUR")) }
        #expect(throws: SpecFailure.self) { try Spec.given(TransferDebited()) }
    }

    @Test("commands decode from their JSON bodies; unknown fields and wrong types name the field")
    func wire() throws {
        let codec = AggregateCodec<BankAccount>()
        func decode(_ type: String, _ body: String) throws -> (any DomainCommand)? {
            try codec.command(type, JSONValue(parsing: Data(body.utf8)))
        }
        #expect(try decode("DepositMoney", #"{"amount":5}"#) as? DepositMoney == DepositMoney(amount: 5))
        #expect(try decode("DepositMoney", #"{"amount":5.0}"#) as? DepositMoney == DepositMoney(amount: 5))
        #expect(try decode("CloseAccount", "{}") is CloseAccount)
        #expect(try decode("Teleport", "{}") == nil)
        #expect(try decode("OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#) as? OpenAccount == OpenAccount(owner: "Ada", currency: "EUR"))
        for (body, field) in [(#"{"amount":5,"extra":1}"#, "extra"), (#"{"amount":"5"}"#, "amount"), (#"{}"#, "amount"),
                              (#"{"amount":1e40}"#, "amount"), (#"{"amount":99999999999999999999}"#, "amount"),
                              (#"{"amount":5.5}"#, "amount"), (#"{"amount":true}"#, "amount"), (#"{"amount":null}"#, "amount"),
                              (#"[5]"#, "")] {
            do {
                _ = try decode("DepositMoney", body)
                Issue.record("\(body) was accepted")
            } catch let error as DecodingError {
                #expect(field.isEmpty || error.fieldPath == field, "\(body): \(error)")
            }
        }
        do {
            _ = try decode("CloseAccount", #"{"now":true}"#)
            Issue.record("an unknown field of an empty command was accepted")
        } catch let error as DecodingError {
            #expect(error.fieldPath == "now")
        }
        // Events round-trip through the log's JSON, and read leniently (fields added later are ignored).
        let events: [any DomainEvent] = [
            AccountOpened(owner: "Ada", currency: "EUR"), MoneyDeposited(amount: 3), MoneyWithdrawn(amount: 2),
            MoneyDeposited(amount: 3, currency: "EUR"), MoneyWithdrawn(amount: 2, currency: "CHF"), AccountClosed(),
        ]
        for event in events {
            let stored = try codec.newEvent(event, id: nil, metadata: Data("{}".utf8))
            #expect(stored.schemaVersion == 1)
            let read = try #require(try codec.event(stored.type, stored.data))
            #expect(try EventEncoding.encode(read) == EventEncoding.encode(event))
        }
        #expect(try codec.event("MoneyDeposited", Data(#"{"amount":3,"note":"later"}"#.utf8)) as? MoneyDeposited == MoneyDeposited(amount: 3))
        #expect(MoneyDeposited(amount: 3).currency == nil)
        #expect(String(decoding: try EventEncoding.encode(AccountOpened(owner: "Ada", currency: "EUR")), as: UTF8.self)
            == #"{"currency":"EUR","owner":"Ada"}"#)
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
        let opened = try await accounts.handle(id: "1", command: OpenAccount(owner: "Ada", currency: "EUR"))
        #expect(opened.stream == "account-1")
        #expect(opened.version == 1)
        #expect(try await accounts.handle(id: "1", command: DepositMoney(amount: 70)).version == 2)
        let refused = await #expect(throws: RuleViolation.self) { try await accounts.handle(id: "1", command: WithdrawMoney(amount: 71)) }
        #expect(refused?.code == BankAccount.Rule.insufficientFunds)
        #expect(try await accounts.handle(id: "1", command: WithdrawMoney(amount: 70)).events.map(\.type) == ["MoneyWithdrawn"])
        #expect(try await accounts.handle(id: "1", command: CloseAccount(), metadata: ["user": "ops"]).version == 4)
        #expect(try await test.store.streamVersion("account-1") == 4)
        let stored = try await test.store.readStream("account-1")
        #expect(stored.map(\.type) == ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn", "AccountClosed"])
        #expect(try stored[3].metadataFields()["user"] == "ops")
        await test.store.shutdown()
    }

    @Test("50 concurrent deposits to one account without expected versions all succeed and sum up")
    func concurrentDeposits() async throws {
        let test = try await TestStore.make("deposits")
        // Several handlers, as several server processes would have, each with its own cache. A
        // conflict means another deposit committed in between, so no deposit can conflict more
        // than 49 times: within the handler's bound however the machine schedules them.
        let handlers = (0..<3).map { _ in CommandHandler<BankAccount>(store: test.store) }
        _ = try await handlers[0].handle(id: "7", command: OpenAccount(owner: "Ada", currency: "EUR"))
        try await withThrowingTaskGroup(of: Void.self) { group in
            for amount in 1...50 {
                group.addTask { _ = try await handlers[amount % 3].handle(id: "7", command: DepositMoney(amount: Int64(amount))) }
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
        _ = try await accounts.handle(id: "2", command: OpenAccount(owner: "Ada", currency: "EUR"))
        _ = try await accounts.handle(id: "2", command: DepositMoney(amount: 5), expectedVersion: 1)
        let conflict = await #expect(throws: EventStoreError.self) {
            try await accounts.handle(id: "2", command: DepositMoney(amount: 5), expectedVersion: 1)
        }
        #expect(conflict?.code == .wrongExpectedVersion)
        #expect(conflict?.currentVersion == 2)
        // Another process wrote meanwhile: this handler's cache is stale, the expected version still decides.
        _ = try await test.store.append(to: "account-2", expected: .exact(2), events: [NewEvent(type: "MoneyDeposited", data: Data(#"{"amount":1}"#.utf8))])
        let stale = await #expect(throws: EventStoreError.self) {
            try await accounts.handle(id: "2", command: DepositMoney(amount: 5), expectedVersion: 2)
        }
        #expect(stale?.currentVersion == 3)
        #expect(try await accounts.handle(id: "2", command: WithdrawMoney(amount: 6), expectedVersion: 3).version == 4)
        await test.store.shutdown()
    }

    @Test("snapshots are written every N events and used by a cold handler; a snapshot of another shape is ignored")
    func snapshots() async throws {
        let test = try await TestStore.make("snap")
        let accounts = CommandHandler<BankAccount>(store: test.store)
        _ = try await accounts.handle(id: "9", command: OpenAccount(owner: "Ada", currency: "EUR"))
        for _ in 1..<250 { _ = try await accounts.handle(id: "9", command: DepositMoney(amount: 2)) }
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

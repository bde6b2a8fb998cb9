import BankDomain
import EventlineTesting
import Foundation
import Testing

@Suite("Transfer rules (pure)")
struct TransferRuleTests {
    typealias Spec = AggregateSpec<Transfer>
    typealias State = Transfer.State
    typealias Rule = Transfer.Rule

    static let started: [any DomainEvent] = [TransferStarted(from: "a", to: "b", amount: 5)]

    @Test("StartTransfer needs two different valid account ids and a positive amount, and happens once")
    func starting() throws {
        try Spec.given().when(StartTransfer(from: "a", to: "b", amount: 5)).then(Self.started)
        let state = try Spec.given(Self.started).state
        #expect(state.status == .started && state.from == "a" && state.to == "b" && state.amount == 5 && state.reason == nil)
        try Spec.given(Self.started).when(StartTransfer(from: "a", to: "b", amount: 5)).thenRefused(Rule.alreadyStarted)
        try Spec.given().when(StartTransfer(from: "a", to: "a", amount: 5)).thenRefused(Rule.invalidTransfer)
        // Two spellings of one account (NFC and NFD) are the same account.
        try Spec.given().when(StartTransfer(from: "caf\u{e9}", to: "cafe\u{301}", amount: 5)).thenRefused(Rule.invalidTransfer)
        for bad in ["", "x\u{1}y", "padded ", String(repeating: "x", count: 250)] {
            try Spec.given().when(StartTransfer(from: bad, to: "b", amount: 5)).thenRefused(Rule.invalidTransfer)
            try Spec.given().when(StartTransfer(from: "a", to: bad, amount: 5)).thenRefused(Rule.invalidTransfer)
        }
        try Spec.given().when(StartTransfer(from: "a", to: "b", amount: 0)).thenRefused(Rule.invalidAmount)
        try Spec.given().when(StartTransfer(from: "a", to: "b", amount: -1)).thenRefused(Rule.invalidAmount)
        // Ids with dashes are fine: the account stream is account-<id>.
        try Spec.given().when(StartTransfer(from: "eu-1", to: "eu-2", amount: .max)).then(TransferStarted(from: "eu-1", to: "eu-2", amount: .max))
    }

    @Test("each outcome is accepted only in the state it follows from, so no step is recorded twice")
    func outcomes() throws {
        let every: [any DomainCommand] = [
            RecordDebit(), RecordDebitRefused(reason: "insufficient-funds"), RecordCredit(),
            RecordCreditRefused(reason: "account-not-open"), RecordRefund(),
        ]
        // Which outcomes each state accepts (by command name), and the event each one gives.
        let accepted: [State.Status: [String: any DomainEvent]] = [
            .started: ["RecordDebit": TransferDebited(), "RecordDebitRefused": TransferRejected(reason: "insufficient-funds")],
            .debited: ["RecordCredit": TransferCompleted(), "RecordCreditRefused": TransferCreditRefused(reason: "account-not-open")],
            .creditRefused: ["RecordRefund": TransferRefunded()],
        ]
        let histories: [State.Status: [any DomainEvent]] = [
            .new: [],
            .started: Self.started,
            .debited: Self.started + [TransferDebited()],
            .creditRefused: Self.started + [TransferDebited(), TransferCreditRefused(reason: "account-not-open")],
            .completed: Self.started + [TransferDebited(), TransferCompleted()],
            .refunded: Self.started + [TransferDebited(), TransferCreditRefused(reason: "account-not-open"), TransferRefunded()],
            .rejected: Self.started + [TransferRejected(reason: "insufficient-funds")],
        ]
        #expect(Set(histories.keys) == Set(State.Status.allCases))
        for (status, history) in histories {
            let given = try Spec.given(history)
            #expect(given.state.status == status)
            #expect(given.state.status.isTerminal == [.completed, .refunded, .rejected].contains(status))
            for command in every {
                if let event = accepted[status]?[type(of: command).typeName] {
                    try given.when(command).then(event)
                } else {
                    try given.when(command).thenRefused(status == .new ? Rule.notStarted : Rule.stepOutOfOrder)
                }
            }
        }
        #expect(try Spec.given(histories[.rejected]!).state.reason == "insufficient-funds")
        #expect(try Spec.given(histories[.refunded]!).state.reason == "account-not-open")
        try Spec.given(Self.started).when(RecordDebitRefused(reason: "")).thenRefused(Rule.invalidReason)
    }

    @Test("only StartTransfer decodes from JSON: the outcome commands cannot come from outside")
    func wire() throws {
        let codec = AggregateCodec<Transfer>()
        func decode(_ type: String, _ body: String) throws -> (any DomainCommand)? {
            try codec.command(type, JSONValue(parsing: Data(body.utf8)))
        }
        #expect(try decode("StartTransfer", #"{"from":"1","to":"2","amount":300}"#) as? StartTransfer == StartTransfer(from: "1", to: "2", amount: 300))
        #expect(codec.commandTypes.keys.sorted() == ["StartTransfer"])
        for command: any DomainCommand in [RecordDebit(), RecordDebitRefused(reason: "x"), RecordCredit(), RecordCreditRefused(reason: "x"), RecordRefund()] {
            #expect(try decode(type(of: command).typeName, String(decoding: try EventEncoding.encode(command), as: UTF8.self)) == nil)
        }
        for body in [#"{"from":"1","to":"2"}"#, #"{"from":"1","to":"2","amount":"3"}"#, #"{"from":1,"to":"2","amount":3}"#,
                     #"{"from":"1","to":"2","amount":3,"fee":1}"#] {
            #expect(throws: DecodingError.self, "\(body)") { try decode("StartTransfer", body) }
        }
        let events: [any DomainEvent] = [
            TransferStarted(from: "a\"b", to: "ü", amount: .max), TransferDebited(), TransferRejected(reason: "insufficient-funds"),
            TransferCompleted(), TransferCreditRefused(reason: "account-not-open"), TransferRefunded(),
        ]
        for event in events {
            let stored = try codec.newEvent(event, id: nil, metadata: Data("{}".utf8))
            let read = try #require(try codec.event(stored.type, stored.data))
            #expect(try EventEncoding.encode(read) == EventEncoding.encode(event))
        }
    }
}

import Aggregates
import BankDomain
import EventStore
import Foundation
import Testing

@Suite("Transfer rules (pure)")
struct TransferRuleTests {
    typealias State = Transfer.State

    static func refusal(_ command: Transfer.Command, _ state: State) -> String? {
        do {
            _ = try Transfer.decide(command, state)
            return nil
        } catch {
            return error.code
        }
    }

    static func state(_ events: [Transfer.Event]) -> State {
        events.reduce(Transfer.initialState, Transfer.evolve)
    }

    static let started: [Transfer.Event] = [.transferStarted(from: "a", to: "b", amount: 5)]

    @Test("StartTransfer needs two different valid account ids and a positive amount, and happens once")
    func starting() throws {
        #expect(try Transfer.decide(.startTransfer(from: "a", to: "b", amount: 5), Transfer.initialState) == Self.started)
        let state = Self.state(Self.started)
        #expect(state.status == .started && state.from == "a" && state.to == "b" && state.amount == 5 && state.reason == nil)
        #expect(Self.refusal(.startTransfer(from: "a", to: "b", amount: 5), state) == Transfer.Rule.alreadyStarted)
        #expect(Self.refusal(.startTransfer(from: "a", to: "a", amount: 5), Transfer.initialState) == Transfer.Rule.invalidTransfer)
        // Two spellings of one account (NFC and NFD) are the same account.
        #expect(Self.refusal(.startTransfer(from: "caf\u{e9}", to: "cafe\u{301}", amount: 5), Transfer.initialState) == Transfer.Rule.invalidTransfer)
        for bad in ["", "x\u{1}y", "padded ", String(repeating: "x", count: 250)] {
            #expect(Self.refusal(.startTransfer(from: bad, to: "b", amount: 5), Transfer.initialState) == Transfer.Rule.invalidTransfer, "\(bad)")
            #expect(Self.refusal(.startTransfer(from: "a", to: bad, amount: 5), Transfer.initialState) == Transfer.Rule.invalidTransfer, "\(bad)")
        }
        #expect(Self.refusal(.startTransfer(from: "a", to: "b", amount: 0), Transfer.initialState) == Transfer.Rule.invalidAmount)
        #expect(Self.refusal(.startTransfer(from: "a", to: "b", amount: -1), Transfer.initialState) == Transfer.Rule.invalidAmount)
        // Ids with dashes are fine: the account stream is account-<id>.
        #expect(try Transfer.decide(.startTransfer(from: "eu-1", to: "eu-2", amount: .max), Transfer.initialState).count == 1)
    }

    @Test("each outcome is accepted only in the state it follows from, so no step is recorded twice")
    func outcomes() throws {
        let every: [Transfer.Command] = [
            .recordDebit, .recordDebitRefused(reason: "insufficient-funds"), .recordCredit,
            .recordCreditRefused(reason: "account-not-open"), .recordRefund,
        ]
        // Which outcomes each state accepts, and the event each one gives.
        let accepted: [State.Status: [Transfer.Command: Transfer.Event]] = [
            .started: [.recordDebit: .transferDebited, .recordDebitRefused(reason: "insufficient-funds"): .transferRejected(reason: "insufficient-funds")],
            .debited: [.recordCredit: .transferCompleted, .recordCreditRefused(reason: "account-not-open"): .transferCreditRefused(reason: "account-not-open")],
            .creditRefused: [.recordRefund: .transferRefunded],
        ]
        let histories: [State.Status: [Transfer.Event]] = [
            .new: [],
            .started: Self.started,
            .debited: Self.started + [.transferDebited],
            .creditRefused: Self.started + [.transferDebited, .transferCreditRefused(reason: "account-not-open")],
            .completed: Self.started + [.transferDebited, .transferCompleted],
            .refunded: Self.started + [.transferDebited, .transferCreditRefused(reason: "account-not-open"), .transferRefunded],
            .rejected: Self.started + [.transferRejected(reason: "insufficient-funds")],
        ]
        #expect(Set(histories.keys) == Set(State.Status.allCases))
        for (status, history) in histories {
            let state = Self.state(history)
            #expect(state.status == status)
            #expect(state.status.isTerminal == [.completed, .refunded, .rejected].contains(status))
            for command in every {
                if let event = accepted[status]?[command] {
                    #expect(try Transfer.decide(command, state) == [event], "\(status) \(command)")
                } else {
                    let expected = status == .new ? Transfer.Rule.notStarted : Transfer.Rule.stepOutOfOrder
                    #expect(Self.refusal(command, state) == expected, "\(status) \(command)")
                }
            }
        }
        #expect(Self.state(histories[.rejected]!).reason == "insufficient-funds")
        #expect(Self.state(histories[.refunded]!).reason == "account-not-open")
        #expect(Self.refusal(.recordDebitRefused(reason: ""), Self.state(Self.started)) == Transfer.Rule.invalidReason)
    }

    @Test("only StartTransfer decodes from JSON: the outcome commands cannot come from outside")
    func wire() throws {
        #expect(try Transfer.Command.decode(typeName: "StartTransfer", data: Data(#"{"from":"1","to":"2","amount":300}"#.utf8))
            == .startTransfer(from: "1", to: "2", amount: 300))
        #expect(Transfer.Command.typeNames == ["StartTransfer"])
        for command: Transfer.Command in [.recordDebit, .recordDebitRefused(reason: "x"), .recordCredit, .recordCreditRefused(reason: "x"), .recordRefund] {
            #expect(try Transfer.Command.decode(typeName: command.typeName, data: command.encodedData()) == nil)
        }
        for body in [#"{"from":"1","to":"2"}"#, #"{"from":"1","to":"2","amount":"3"}"#, #"{"from":1,"to":"2","amount":3}"#,
                     #"{"from":"1","to":"2","amount":3,"fee":1}"#] {
            #expect(throws: DecodingError.self, "\(body)") {
                try Transfer.Command.decode(typeName: "StartTransfer", data: Data(body.utf8))
            }
        }
        for event: Transfer.Event in [
            .transferStarted(from: "a\"b", to: "ü", amount: .max), .transferDebited, .transferRejected(reason: "insufficient-funds"),
            .transferCompleted, .transferCreditRefused(reason: "account-not-open"), .transferRefunded,
        ] {
            #expect(try Transfer.Event.decode(typeName: event.typeName, data: event.encodedData()) == event)
            #expect(Transfer.Event.typeNames.contains(event.typeName))
        }
    }
}

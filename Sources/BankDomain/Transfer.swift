import Aggregates
import EventStore
import Foundation

/// A money transfer between two bank accounts, in stream category `transfer`.
///
/// The transfer's stream is the record of a process that `TransferProcess` (a reactor) drives:
/// `StartTransfer` starts it; the process then withdraws from `from`, deposits to `to`, and
/// refunds `from` when the deposit is refused, recording each outcome here. `decide` accepts an
/// outcome only in the state it follows from, so the stream is always one of
///
///     TransferStarted → TransferRejected                                   (debit refused)
///     TransferStarted → TransferDebited → TransferCompleted
///     TransferStarted → TransferDebited → TransferCreditRefused → TransferRefunded
///
/// and a duplicate or out-of-order outcome is refused without writing anything.
public enum Transfer: Aggregate {
    public static let category = "transfer"
    public static let stateVersion = 1
    /// A transfer has at most four events: snapshots would cost more than they save.
    public static let snapshotEvery: Int? = nil

    /// A transfer's state.
    public struct State: Codable, Sendable, Hashable {
        /// Where the transfer is. The raw values are the `transfers` read model's `state` column.
        public enum Status: String, Codable, Sendable, CaseIterable {
            case new
            case started
            case debited
            case creditRefused = "credit_refused"
            case completed
            case refunded
            case rejected

            /// Completed, refunded or rejected: nothing more will happen.
            public var isTerminal: Bool { self == .completed || self == .refunded || self == .rejected }
        }
        public var status: Status
        /// The account ids (the part after `account-`).
        public var from: String
        public var to: String
        public var amount: Int64
        /// Why the debit or the credit was refused (a bank rule code).
        public var reason: String?
    }

    public static let initialState = State(status: .new, from: "", to: "", amount: 0, reason: nil)

    /// Commands. Only `startTransfer` is accepted from outside (it is the only one with a JSON
    /// decoding); the others record what the transfer process did and are issued by it alone.
    public enum Command: Sendable, Hashable {
        case startTransfer(from: String, to: String, amount: Int64)
        /// The withdrawal from `from` is in the log.
        case recordDebit
        /// `from` refused the withdrawal (`reason` is its rule code); nothing was taken.
        case recordDebitRefused(reason: String)
        /// The deposit to `to` is in the log.
        case recordCredit
        /// `to` refused the deposit (`reason` is its rule code); the money must go back.
        case recordCreditRefused(reason: String)
        /// The money is back in `from`.
        case recordRefund
    }

    /// What happened to a transfer.
    public enum Event: Sendable, Hashable {
        case transferStarted(from: String, to: String, amount: Int64)
        case transferDebited
        case transferRejected(reason: String)
        case transferCompleted
        case transferCreditRefused(reason: String)
        case transferRefunded
    }

    /// Stable rule codes, one per rule.
    public enum Rule {
        /// An account id is not valid, or `from` and `to` are the same account.
        public static let invalidTransfer = "invalid-transfer"
        /// The amount is not greater than zero.
        public static let invalidAmount = "invalid-amount"
        public static let alreadyStarted = "transfer-already-started"
        /// An outcome was recorded for a transfer that was never started.
        public static let notStarted = "transfer-not-started"
        /// An outcome that does not follow from the transfer's state (a duplicate, or a step
        /// out of order).
        public static let stepOutOfOrder = "transfer-step-out-of-order"
        /// A refusal without a reason.
        public static let invalidReason = "invalid-reason"
    }

    public static func evolve(_ state: State, _ event: Event) -> State {
        var state = state
        switch event {
        case .transferStarted(let from, let to, let amount):
            state.status = .started
            state.from = from
            state.to = to
            state.amount = amount
        case .transferDebited:
            state.status = .debited
        case .transferRejected(let reason):
            state.status = .rejected
            state.reason = reason
        case .transferCompleted:
            state.status = .completed
        case .transferCreditRefused(let reason):
            state.status = .creditRefused
            state.reason = reason
        case .transferRefunded:
            state.status = .refunded
        }
        return state
    }

    public static func decide(_ command: Command, _ state: State) throws(RuleViolation) -> [Event] {
        switch command {
        case .startTransfer(let from, let to, let amount):
            guard state.status == .new else { throw RuleViolation(Rule.alreadyStarted, "the transfer is already started") }
            guard let fromAccount = accountID(from) else {
                throw RuleViolation(Rule.invalidTransfer, "from must be an account id (account-<id> must be a valid stream name)")
            }
            guard let toAccount = accountID(to) else {
                throw RuleViolation(Rule.invalidTransfer, "to must be an account id (account-<id> must be a valid stream name)")
            }
            guard fromAccount != toAccount else {
                throw RuleViolation(Rule.invalidTransfer, "from and to must be different accounts")
            }
            guard amount > 0 else { throw RuleViolation(Rule.invalidAmount, "the amount must be greater than zero") }
            return [.transferStarted(from: fromAccount, to: toAccount, amount: amount)]
        case .recordDebit:
            try expect(.started, state, "RecordDebit")
            return [.transferDebited]
        case .recordDebitRefused(let reason):
            try expect(.started, state, "RecordDebitRefused")
            return [.transferRejected(reason: try checked(reason))]
        case .recordCredit:
            try expect(.debited, state, "RecordCredit")
            return [.transferCompleted]
        case .recordCreditRefused(let reason):
            try expect(.debited, state, "RecordCreditRefused")
            return [.transferCreditRefused(reason: try checked(reason))]
        case .recordRefund:
            try expect(.creditRefused, state, "RecordRefund")
            return [.transferRefunded]
        }
    }

    /// The account id as the account's stream will hold it (Unicode NFC), or nil when
    /// `account-<id>` is not a valid stream name.
    static func accountID(_ id: String) -> String? {
        guard !id.isEmpty, let stream = try? StreamName("\(BankAccount.category)-\(id)") else { return nil }
        return stream.id
    }

    private static func expect(_ status: State.Status, _ state: State, _ command: String) throws(RuleViolation) {
        guard state.status != .new else { throw RuleViolation(Rule.notStarted, "the transfer has not been started") }
        guard state.status == status else {
            throw RuleViolation(Rule.stepOutOfOrder, "\(command) does not follow from a transfer that is \(state.status.rawValue)")
        }
    }

    private static func checked(_ reason: String) throws(RuleViolation) -> String {
        guard (1...200).contains(reason.count) else { throw RuleViolation(Rule.invalidReason, "a reason must be 1 to 200 characters") }
        return reason
    }
}

// MARK: - Wire format

extension Transfer.Command: TypedJSON {
    /// Only `StartTransfer` is known by name: the outcome commands are never decoded, so no
    /// client can declare a debit or a refund that did not happen.
    public static let typeNames = ["StartTransfer"]

    public var typeName: String {
        switch self {
        case .startTransfer: "StartTransfer"
        case .recordDebit: "RecordDebit"
        case .recordDebitRefused: "RecordDebitRefused"
        case .recordCredit: "RecordCredit"
        case .recordCreditRefused: "RecordCreditRefused"
        case .recordRefund: "RecordRefund"
        }
    }

    public func encodedData() throws -> Data {
        switch self {
        case .startTransfer(let from, let to, let amount): TransferWire.started(from: from, to: to, amount: amount)
        case .recordDebitRefused(let reason), .recordCreditRefused(let reason): TransferWire.reason(reason)
        case .recordDebit, .recordCredit, .recordRefund: Data("{}".utf8)
        }
    }

    public static func decode(typeName: String, data: Data) throws -> Self? {
        guard typeNames.contains(typeName) else { return nil }
        return try decode(typeName: typeName, json: JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]))
    }

    public static func decode(typeName: String, json: Any) throws -> Self? {
        guard typeName == "StartTransfer" else { return nil }
        let fields = try BankWire.fields(json, allowed: ["from", "to", "amount"])
        return .startTransfer(
            from: try BankWire.string(fields, "from"), to: try BankWire.string(fields, "to"), amount: try BankWire.int64(fields, "amount"))
    }
}

extension Transfer.Event: TypedJSON {
    public static let typeNames = [
        "TransferStarted", "TransferDebited", "TransferRejected", "TransferCompleted", "TransferCreditRefused", "TransferRefunded",
    ]

    public var typeName: String {
        switch self {
        case .transferStarted: "TransferStarted"
        case .transferDebited: "TransferDebited"
        case .transferRejected: "TransferRejected"
        case .transferCompleted: "TransferCompleted"
        case .transferCreditRefused: "TransferCreditRefused"
        case .transferRefunded: "TransferRefunded"
        }
    }

    public func encodedData() throws -> Data {
        switch self {
        case .transferStarted(let from, let to, let amount): TransferWire.started(from: from, to: to, amount: amount)
        case .transferRejected(let reason), .transferCreditRefused(let reason): TransferWire.reason(reason)
        case .transferDebited, .transferCompleted, .transferRefunded: Data("{}".utf8)
        }
    }

    /// Events are read leniently (fields added later are ignored): the log outlives the code.
    public static func decode(typeName: String, data: Data) throws -> Self? {
        switch typeName {
        case "TransferStarted":
            let fields = try BankWire.fields(data, allowed: nil)
            return .transferStarted(
                from: try BankWire.string(fields, "from"), to: try BankWire.string(fields, "to"), amount: try BankWire.int64(fields, "amount"))
        case "TransferRejected":
            return .transferRejected(reason: try BankWire.string(BankWire.fields(data, allowed: nil), "reason"))
        case "TransferCreditRefused":
            return .transferCreditRefused(reason: try BankWire.string(BankWire.fields(data, allowed: nil), "reason"))
        case "TransferDebited": return .transferDebited
        case "TransferCompleted": return .transferCompleted
        case "TransferRefunded": return .transferRefunded
        default: return nil
        }
    }
}

enum TransferWire {
    static func started(from: String, to: String, amount: Int64) -> Data {
        Data(#"{"amount":\#(amount),"from":\#(JSONValue.quoted(from)),"to":\#(JSONValue.quoted(to))}"#.utf8)
    }

    static func reason(_ reason: String) -> Data {
        Data(#"{"reason":\#(JSONValue.quoted(reason))}"#.utf8)
    }
}

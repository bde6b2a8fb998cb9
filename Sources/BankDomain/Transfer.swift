import Eventline
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

    /// Only `StartTransfer` is accepted over HTTP: the outcome commands (`RecordDebit` …) are
    /// handled in-process for the transfer process alone, so no client can declare a debit or
    /// a refund that did not happen.
    public static let commands: [any DomainCommand.Type] = [StartTransfer.self]
    public static let events: [any DomainEvent.Type] = [
        TransferStarted.self, TransferDebited.self, TransferRejected.self, TransferCompleted.self, TransferCreditRefused.self,
        TransferRefunded.self,
    ]

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

    public static func evolve(_ state: State, _ event: any DomainEvent) -> State {
        var state = state
        switch event {
        case let started as TransferStarted:
            state.status = .started
            state.from = started.from
            state.to = started.to
            state.amount = started.amount
        case is TransferDebited:
            state.status = .debited
        case let rejected as TransferRejected:
            state.status = .rejected
            state.reason = rejected.reason
        case is TransferCompleted:
            state.status = .completed
        case let refused as TransferCreditRefused:
            state.status = .creditRefused
            state.reason = refused.reason
        case is TransferRefunded:
            state.status = .refunded
        default:
            break
        }
        return state
    }

    public static func decide(_ command: any DomainCommand, _ state: State) throws(RuleViolation) -> [any DomainEvent] {
        switch command {
        case let start as StartTransfer:
            guard state.status == .new else { throw RuleViolation(Rule.alreadyStarted, "the transfer is already started") }
            guard let fromAccount = accountID(start.from) else {
                throw RuleViolation(Rule.invalidTransfer, "from must be an account id (account-<id> must be a valid stream name)")
            }
            guard let toAccount = accountID(start.to) else {
                throw RuleViolation(Rule.invalidTransfer, "to must be an account id (account-<id> must be a valid stream name)")
            }
            guard fromAccount != toAccount else {
                throw RuleViolation(Rule.invalidTransfer, "from and to must be different accounts")
            }
            guard start.amount > 0 else { throw RuleViolation(Rule.invalidAmount, "the amount must be greater than zero") }
            return [TransferStarted(from: fromAccount, to: toAccount, amount: start.amount)]
        case is RecordDebit:
            try expect(.started, state, RecordDebit.typeName)
            return [TransferDebited()]
        case let refused as RecordDebitRefused:
            try expect(.started, state, RecordDebitRefused.typeName)
            return [TransferRejected(reason: try checked(refused.reason))]
        case is RecordCredit:
            try expect(.debited, state, RecordCredit.typeName)
            return [TransferCompleted()]
        case let refused as RecordCreditRefused:
            try expect(.debited, state, RecordCreditRefused.typeName)
            return [TransferCreditRefused(reason: try checked(refused.reason))]
        case is RecordRefund:
            try expect(.creditRefused, state, RecordRefund.typeName)
            return [TransferRefunded()]
        default:
            throw .unhandled(command)
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
        // Bytes are bounded too: one character (a grapheme cluster) may carry any number of marks.
        guard (1...200).contains(reason.count), reason.utf8.count <= 800 else {
            throw RuleViolation(Rule.invalidReason, "a reason must be 1 to 200 characters and at most 800 bytes")
        }
        return reason
    }
}

// MARK: - Commands

/// Moves `amount` (minor units, > 0) from account `from` to account `to` (account ids).
public struct StartTransfer: DomainCommand, Hashable {
    public static let typeName = "StartTransfer"
    public var from: String
    public var to: String
    public var amount: Int64
    public init(from: String, to: String, amount: Int64) {
        self.from = from
        self.to = to
        self.amount = amount
    }
}

/// The withdrawal from `from` is in the log.
public struct RecordDebit: DomainCommand, Hashable {
    public static let typeName = "RecordDebit"
    public init() {}
}

/// `from` refused the withdrawal (`reason` is its rule code); nothing was taken.
public struct RecordDebitRefused: DomainCommand, Hashable {
    public static let typeName = "RecordDebitRefused"
    public var reason: String
    public init(reason: String) { self.reason = reason }
}

/// The deposit to `to` is in the log.
public struct RecordCredit: DomainCommand, Hashable {
    public static let typeName = "RecordCredit"
    public init() {}
}

/// `to` refused the deposit (`reason` is its rule code); the money must go back.
public struct RecordCreditRefused: DomainCommand, Hashable {
    public static let typeName = "RecordCreditRefused"
    public var reason: String
    public init(reason: String) { self.reason = reason }
}

/// The money is back in `from`.
public struct RecordRefund: DomainCommand, Hashable {
    public static let typeName = "RecordRefund"
    public init() {}
}

// MARK: - Events

public struct TransferStarted: DomainEvent, Hashable {
    public static let typeName = "TransferStarted"
    public var from: String
    public var to: String
    public var amount: Int64
    public init(from: String, to: String, amount: Int64) {
        self.from = from
        self.to = to
        self.amount = amount
    }
}

public struct TransferDebited: DomainEvent, Hashable {
    public static let typeName = "TransferDebited"
    public init() {}
}

public struct TransferRejected: DomainEvent, Hashable {
    public static let typeName = "TransferRejected"
    public var reason: String
    public init(reason: String) { self.reason = reason }
}

public struct TransferCompleted: DomainEvent, Hashable {
    public static let typeName = "TransferCompleted"
    public init() {}
}

public struct TransferCreditRefused: DomainEvent, Hashable {
    public static let typeName = "TransferCreditRefused"
    public var reason: String
    public init(reason: String) { self.reason = reason }
}

public struct TransferRefunded: DomainEvent, Hashable {
    public static let typeName = "TransferRefunded"
    public init() {}
}

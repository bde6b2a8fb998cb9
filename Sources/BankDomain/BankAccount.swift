import Eventline
import Foundation

/// The sample domain: bank accounts in stream category `account`, amounts in minor units.
public enum BankAccount: Aggregate {
    public static let category = "account"
    public static let stateVersion = 1
    public static let snapshotEvery: Int? = 100

    /// An account's state.
    public struct State: Codable, Sendable, Hashable {
        public enum Status: String, Codable, Sendable { case new, open, closed }
        public var status: Status
        public var owner: String
        public var currency: String
        public var balance: Int64
    }

    public static let initialState = State(status: .new, owner: "", currency: "", balance: 0)

    /// What the bank accepts over HTTP.
    public static let commands: [any DomainCommand.Type] = [OpenAccount.self, DepositMoney.self, WithdrawMoney.self, CloseAccount.self]
    /// What happens to an account.
    public static let events: [any DomainEvent.Type] = [AccountOpened.self, MoneyDeposited.self, MoneyWithdrawn.self, AccountClosed.self]

    /// Stable rule codes, one per rule.
    public enum Rule {
        public static let alreadyOpened = "account-already-opened"
        public static let notOpen = "account-not-open"
        public static let insufficientFunds = "insufficient-funds"
        public static let balanceNotZero = "balance-not-zero"
        public static let balanceOverflow = "balance-overflow"
        public static let invalidOwner = "invalid-owner"
        public static let invalidCurrency = "invalid-currency"
        public static let invalidAmount = "invalid-amount"
        public static let invalidNumber = "invalid-account-number"
        public static let numberTaken = "number-taken"
    }

    /// An account number is unique across all accounts: opening an account with one is a
    /// decision over every `AccountOpened` tagged with it, whatever its stream.
    public static func boundary(of command: any DomainCommand) -> EventQuery? {
        guard let open = command as? OpenAccount, let number = open.number, isValidNumber(number) else { return nil }
        return EventQuery(EventQuery.Item(types: [AccountOpened.typeName], tags: [AccountOpened.numberTag(number)]))
    }

    /// 5 to 34 ASCII letters and digits (an IBAN's alphabet and length). Numbers are compared
    /// and stored in upper case.
    public static func isValidNumber(_ number: String) -> Bool {
        (5...34).contains(number.utf8.count)
            && number.utf8.allSatisfy { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0 & 0xDF) }
    }

    public static func decide(
        _ command: any DomainCommand, _ state: State, across events: [RecordedEvent]
    ) throws(RuleViolation) -> [any DomainEvent] {
        let decided = try decide(command, state)
        // Another account opened with this number: the number is taken.
        if let open = command as? OpenAccount, let number = open.number, let taken = events.first {
            throw RuleViolation(Rule.numberTaken, "account number \(number.uppercased()) is taken (by \(taken.stream))")
        }
        return decided
    }

    public static func evolve(_ state: State, _ event: any DomainEvent) -> State {
        var state = state
        switch event {
        case let opened as AccountOpened:
            state.status = .open
            state.owner = opened.owner ?? ""  // nil once the account is forgotten
            state.currency = opened.currency
        case let deposited as MoneyDeposited:
            // Saturating: decide never lets the balance overflow, and a corrupt log must not crash a fold.
            let (sum, overflow) = state.balance.addingReportingOverflow(deposited.amount)
            state.balance = overflow ? .max : sum
        case let withdrawn as MoneyWithdrawn:
            let (difference, overflow) = state.balance.subtractingReportingOverflow(withdrawn.amount)
            state.balance = overflow ? .min : difference
        case is AccountClosed:
            state.status = .closed
        default:
            break
        }
        return state
    }

    public static func decide(_ command: any DomainCommand, _ state: State) throws(RuleViolation) -> [any DomainEvent] {
        switch command {
        case let open as OpenAccount:
            guard state.status == .new else { throw RuleViolation(Rule.alreadyOpened, "the account is already opened") }
            if let problem = OpenAccount.ownerProblem(open.owner) { throw RuleViolation(Rule.invalidOwner, problem) }
            guard open.currency.utf8.count == 3, open.currency.utf8.allSatisfy({ (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0) }) else {
                throw RuleViolation(Rule.invalidCurrency, "the currency must be 3 uppercase letters (ISO 4217)")
            }
            if let number = open.number, !isValidNumber(number) {
                throw RuleViolation(Rule.invalidNumber, "the account number must be 5 to 34 letters and digits")
            }
            return [AccountOpened(owner: open.owner, currency: open.currency, number: open.number?.uppercased())]
        case let deposit as DepositMoney:
            guard deposit.amount > 0 else { throw RuleViolation(Rule.invalidAmount, "the amount must be greater than zero") }
            guard state.status == .open else { throw RuleViolation(Rule.notOpen, "the account is not open") }
            guard !state.balance.addingReportingOverflow(deposit.amount).overflow else {
                throw RuleViolation(Rule.balanceOverflow, "the deposit would overflow the balance")
            }
            return [MoneyDeposited(amount: deposit.amount, currency: state.currency)]
        case let withdrawal as WithdrawMoney:
            guard withdrawal.amount > 0 else { throw RuleViolation(Rule.invalidAmount, "the amount must be greater than zero") }
            guard state.status == .open else { throw RuleViolation(Rule.notOpen, "the account is not open") }
            guard withdrawal.amount <= state.balance else {
                throw RuleViolation(Rule.insufficientFunds, "the balance of \(state.balance) does not cover \(withdrawal.amount)")
            }
            return [MoneyWithdrawn(amount: withdrawal.amount, currency: state.currency)]
        case is CloseAccount:
            guard state.status == .open else { throw RuleViolation(Rule.notOpen, "the account is not open") }
            guard state.balance == 0 else {
                throw RuleViolation(Rule.balanceNotZero, "the balance is \(state.balance); it must be zero to close")
            }
            return [AccountClosed()]
        default:
            throw .unhandled(command)
        }
    }
}

// MARK: - Commands

/// Opens an account for `owner` (a name of 1 to 200 characters and at most 800 bytes, with a
/// letter or digit and no control characters) in `currency` (ISO 4217, three capitals).
public struct OpenAccount: DomainCommand, Hashable {
    public static let typeName = "OpenAccount"
    public var owner: String
    public var currency: String
    /// Optional: 5 to 34 letters and digits, unique across all accounts.
    public var number: String?
    public init(owner: String, currency: String, number: String? = nil) {
        self.owner = owner
        self.currency = currency
        self.number = number
    }

    /// At most this many bytes of UTF-8: the character bound alone counts grapheme clusters,
    /// and one cluster may carry any number of combining marks.
    public static let maxOwnerBytes = 800

    /// Why `owner` is not a name, or nil. A name has a letter or a digit (not only spaces or
    /// marks), no control characters (tabs and line breaks included), 1 to 200 characters and
    /// at most `maxOwnerBytes` bytes.
    public static func ownerProblem(_ owner: String) -> String? {
        if owner.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
            return "the owner must not contain control characters (tabs, line breaks)"
        }
        if owner.utf8.count > maxOwnerBytes { return "the owner must be at most \(maxOwnerBytes) bytes of UTF-8" }
        guard (1...200).contains(owner.count) else { return "the owner must be 1 to 200 characters" }
        guard owner.unicodeScalars.contains(where: { $0.properties.isAlphabetic || $0.properties.numericType != nil }) else {
            return "the owner must contain a letter or a digit"
        }
        return nil
    }
}

/// Adds `amount` (minor units, > 0) to an open account.
public struct DepositMoney: DomainCommand, Hashable {
    public static let typeName = "DepositMoney"
    public var amount: Int64
    public init(amount: Int64) { self.amount = amount }
}

/// Takes `amount` (minor units, > 0, at most the balance) from an open account.
public struct WithdrawMoney: DomainCommand, Hashable {
    public static let typeName = "WithdrawMoney"
    public var amount: Int64
    public init(amount: Int64) { self.amount = amount }
}

/// Closes an open account whose balance is zero.
public struct CloseAccount: DomainCommand, Hashable {
    public static let typeName = "CloseAccount"
    public init() {}
}

// MARK: - Events

public struct AccountOpened: DomainEvent, Hashable {
    public static let typeName = "AccountOpened"
    /// The owner's name is personal data of the account (subject `account-<id>`, the stream):
    /// stored encrypted, and read as null once the account is forgotten.
    public static let personalFields = ["owner"]
    /// Optional, as every personal field must be: it reads as null once its subject is forgotten.
    public var owner: String?
    public var currency: String
    /// The account's number, in upper case, when it was opened with one.
    public var number: String?
    public init(owner: String?, currency: String, number: String? = nil) {
        self.owner = owner
        self.currency = currency
        self.number = number
    }

    /// The tag of an account number, which makes it unique (`BankAccount.boundary(of:)`).
    public static func numberTag(_ number: String) -> String { "account-number:\(number.uppercased())" }

    public var tags: [String] { number.map { [Self.numberTag($0)] } ?? [] }
}

/// Deposits and withdrawals carry the account's currency, so that consumers (the `daily_totals`
/// projection) need no other event to place them; events written before it was added have none.
public struct MoneyDeposited: DomainEvent, Hashable {
    public static let typeName = "MoneyDeposited"
    public var amount: Int64
    public var currency: String?
    public init(amount: Int64, currency: String? = nil) {
        self.amount = amount
        self.currency = currency
    }
}

public struct MoneyWithdrawn: DomainEvent, Hashable {
    public static let typeName = "MoneyWithdrawn"
    public var amount: Int64
    public var currency: String?
    public init(amount: Int64, currency: String? = nil) {
        self.amount = amount
        self.currency = currency
    }
}

public struct AccountClosed: DomainEvent, Hashable {
    public static let typeName = "AccountClosed"
    public init() {}
}

import Aggregates
import EventStore
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

    /// What the bank accepts.
    public enum Command: Sendable, Hashable {
        case openAccount(owner: String, currency: String)
        case depositMoney(amount: Int64)
        case withdrawMoney(amount: Int64)
        case closeAccount
    }

    /// What happened to an account. Deposits and withdrawals carry the account's currency, so
    /// that consumers (the `daily_totals` projection) need no other event to place them; events
    /// written before it was added have none.
    public enum Event: Sendable, Hashable {
        case accountOpened(owner: String, currency: String)
        case moneyDeposited(amount: Int64, currency: String? = nil)
        case moneyWithdrawn(amount: Int64, currency: String? = nil)
        case accountClosed
    }

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
    }

    public static func evolve(_ state: State, _ event: Event) -> State {
        var state = state
        switch event {
        case .accountOpened(let owner, let currency):
            state.status = .open
            state.owner = owner
            state.currency = currency
        case .moneyDeposited(let amount, _):
            // Saturating: decide never lets the balance overflow, and a corrupt log must not crash a fold.
            state.balance = state.balance.addingReportingOverflow(amount).overflow ? .max : state.balance + amount
        case .moneyWithdrawn(let amount, _):
            state.balance = state.balance.subtractingReportingOverflow(amount).overflow ? .min : state.balance - amount
        case .accountClosed:
            state.status = .closed
        }
        return state
    }

    public static func decide(_ command: Command, _ state: State) throws(RuleViolation) -> [Event] {
        switch command {
        case .openAccount(let owner, let currency):
            guard state.status == .new else { throw RuleViolation(Rule.alreadyOpened, "the account is already opened") }
            guard (1...200).contains(owner.count) else {
                throw RuleViolation(Rule.invalidOwner, "the owner must be 1 to 200 characters")
            }
            guard currency.utf8.count == 3, currency.utf8.allSatisfy({ (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0) }) else {
                throw RuleViolation(Rule.invalidCurrency, "the currency must be 3 uppercase letters (ISO 4217)")
            }
            return [.accountOpened(owner: owner, currency: currency)]
        case .depositMoney(let amount):
            guard amount > 0 else { throw RuleViolation(Rule.invalidAmount, "the amount must be greater than zero") }
            guard state.status == .open else { throw RuleViolation(Rule.notOpen, "the account is not open") }
            guard !state.balance.addingReportingOverflow(amount).overflow else {
                throw RuleViolation(Rule.balanceOverflow, "the deposit would overflow the balance")
            }
            return [.moneyDeposited(amount: amount, currency: state.currency)]
        case .withdrawMoney(let amount):
            guard amount > 0 else { throw RuleViolation(Rule.invalidAmount, "the amount must be greater than zero") }
            guard state.status == .open else { throw RuleViolation(Rule.notOpen, "the account is not open") }
            guard amount <= state.balance else {
                throw RuleViolation(Rule.insufficientFunds, "the balance of \(state.balance) does not cover \(amount)")
            }
            return [.moneyWithdrawn(amount: amount, currency: state.currency)]
        case .closeAccount:
            guard state.status == .open else { throw RuleViolation(Rule.notOpen, "the account is not open") }
            guard state.balance == 0 else {
                throw RuleViolation(Rule.balanceNotZero, "the balance is \(state.balance); it must be zero to close")
            }
            return [.accountClosed]
        }
    }
}

// MARK: - Wire format

/// The JSON bodies of the bank's commands and events, read and written by hand: they are tiny,
/// and this is the hot path of every command. Unknown fields are refused, so a typo never
/// passes silently; a field of the wrong type is a `DecodingError` naming it.
enum BankWire {
    /// The members of a JSON object; with `allowed`, any other member is an error.
    static func fields(_ data: Data, allowed: Set<String>?) throws -> [String: Any] {
        try fields(JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]), allowed: allowed)
    }

    static func fields(_ object: Any, allowed: Set<String>?) throws -> [String: Any] {
        guard let fields = object as? [String: Any] else {
            throw DecodingError.typeMismatch(
                [String: Any].self, .init(codingPath: [], debugDescription: "the data must be a JSON object"))
        }
        if let allowed, let unknown = fields.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw DecodingError.dataCorrupted(.init(codingPath: [WireKey(unknown)], debugDescription: "is not a known field"))
        }
        return fields
    }

    static func string(_ fields: [String: Any], _ key: String) throws -> String {
        guard let value = fields[key] else {
            throw DecodingError.keyNotFound(WireKey(key), .init(codingPath: [], debugDescription: "\(key) is required"))
        }
        guard let string = value as? String else {
            throw DecodingError.typeMismatch(String.self, .init(codingPath: [WireKey(key)], debugDescription: "\(key) must be a string"))
        }
        return string
    }

    static func int64(_ fields: [String: Any], _ key: String) throws -> Int64 {
        guard let value = fields[key] else {
            throw DecodingError.keyNotFound(WireKey(key), .init(codingPath: [], debugDescription: "\(key) is required"))
        }
        guard let number = value as? NSNumber, String(cString: number.objCType) != "c" else {
            throw DecodingError.typeMismatch(Int64.self, .init(codingPath: [WireKey(key)], debugDescription: "\(key) must be an integer"))
        }
        let outOfRange = DecodingError.dataCorrupted(.init(
            codingPath: [WireKey(key)], debugDescription: "must be an integer between \(Int64.min) and \(Int64.max)"))
        // Whole numbers only, within 64 bits: integers as parsed, decimals and doubles only when exact.
        if let decimal = number as? NSDecimalNumber {
            guard let exact = Int64(decimal.stringValue) else { throw outOfRange }
            return exact
        }
        switch String(cString: number.objCType) {
        case "c", "s", "i", "l", "q": return number.int64Value
        case "C", "S", "I", "L", "Q":
            guard let exact = Int64(exactly: number.uint64Value) else { throw outOfRange }
            return exact
        default:
            let double = number.doubleValue
            guard double.rounded() == double, let exact = Int64(exactly: double) else { throw outOfRange }
            return exact
        }
    }


    static func opened(owner: String, currency: String) -> Data {
        Data(#"{"currency":\#(JSONValue.quoted(currency)),"owner":\#(JSONValue.quoted(owner))}"#.utf8)
    }

    static func amount(_ amount: Int64, currency: String?) -> Data {
        guard let currency else { return Data(#"{"amount":\#(amount)}"#.utf8) }
        return Data(#"{"amount":\#(amount),"currency":\#(JSONValue.quoted(currency))}"#.utf8)
    }

    /// An optional string member (nil when absent or null).
    static func optionalString(_ fields: [String: Any], _ key: String) throws -> String? {
        guard let value = fields[key], !(value is NSNull) else { return nil }
        return try string(fields, key)
    }

    struct WireKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ string: String) { stringValue = string }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
}

extension BankAccount.Command: TypedJSON {
    public static let typeNames = ["OpenAccount", "DepositMoney", "WithdrawMoney", "CloseAccount"]

    public var typeName: String {
        switch self {
        case .openAccount: "OpenAccount"
        case .depositMoney: "DepositMoney"
        case .withdrawMoney: "WithdrawMoney"
        case .closeAccount: "CloseAccount"
        }
    }

    public func encodedData() throws -> Data {
        switch self {
        case .openAccount(let owner, let currency): BankWire.opened(owner: owner, currency: currency)
        case .depositMoney(let amount), .withdrawMoney(let amount): BankWire.amount(amount, currency: nil)
        case .closeAccount: Data("{}".utf8)
        }
    }

    public static func decode(typeName: String, data: Data) throws -> Self? {
        guard typeNames.contains(typeName) else { return nil }
        return try decode(typeName: typeName, json: JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]))
    }

    public static func decode(typeName: String, json: Any) throws -> Self? {
        switch typeName {
        case "OpenAccount":
            let fields = try BankWire.fields(json, allowed: ["owner", "currency"])
            return .openAccount(owner: try BankWire.string(fields, "owner"), currency: try BankWire.string(fields, "currency"))
        case "DepositMoney":
            return .depositMoney(amount: try BankWire.int64(BankWire.fields(json, allowed: ["amount"]), "amount"))
        case "WithdrawMoney":
            return .withdrawMoney(amount: try BankWire.int64(BankWire.fields(json, allowed: ["amount"]), "amount"))
        case "CloseAccount":
            _ = try BankWire.fields(json, allowed: [])
            return .closeAccount
        default:
            return nil
        }
    }
}

extension BankAccount.Event: TypedJSON {
    public static let typeNames = ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn", "AccountClosed"]

    public var typeName: String {
        switch self {
        case .accountOpened: "AccountOpened"
        case .moneyDeposited: "MoneyDeposited"
        case .moneyWithdrawn: "MoneyWithdrawn"
        case .accountClosed: "AccountClosed"
        }
    }

    public func encodedData() throws -> Data {
        switch self {
        case .accountOpened(let owner, let currency): BankWire.opened(owner: owner, currency: currency)
        case .moneyDeposited(let amount, let currency), .moneyWithdrawn(let amount, let currency):
            BankWire.amount(amount, currency: currency)
        case .accountClosed: Data("{}".utf8)
        }
    }

    /// Events are read leniently (fields added later are ignored): the log outlives the code.
    public static func decode(typeName: String, data: Data) throws -> Self? {
        switch typeName {
        case "AccountOpened":
            let fields = try BankWire.fields(data, allowed: nil)
            return .accountOpened(owner: try BankWire.string(fields, "owner"), currency: try BankWire.string(fields, "currency"))
        case "MoneyDeposited", "MoneyWithdrawn":
            let fields = try BankWire.fields(data, allowed: nil)
            let amount = try BankWire.int64(fields, "amount")
            let currency = try BankWire.optionalString(fields, "currency")
            return typeName == "MoneyDeposited"
                ? .moneyDeposited(amount: amount, currency: currency) : .moneyWithdrawn(amount: amount, currency: currency)
        case "AccountClosed": return .accountClosed
        default: return nil
        }
    }
}

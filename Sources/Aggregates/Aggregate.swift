import EventStore
import Foundation

/// A type whose values travel as `{"type": …, "data": …}`: a stable type name and a JSON body.
/// Commands and events of an aggregate conform, usually as enums with one case per type.
public protocol TypedJSON: Sendable {
    /// The stable name of this value's type, for example `MoneyDeposited`.
    var typeName: String { get }
    /// The value's data as JSON.
    func encodedData() throws -> Data
    /// Decodes a value of type `typeName` from `data`; nil when the type name is unknown.
    /// Throws `DecodingError` (with the offending field's path) when the data does not fit.
    static func decode(typeName: String, data: Data) throws -> Self?
    /// Decodes from JSON already parsed by `JSONSerialization` (the HTTP layer has parsed the
    /// request); by default it is encoded again and given to `decode(typeName:data:)`.
    static func decode(typeName: String, json: Any) throws -> Self?
    /// Every type name this type knows.
    static var typeNames: [String] { get }
}

extension TypedJSON {
    public static func decode(typeName: String, json: Any) throws -> Self? {
        try decode(typeName: typeName, data: JSONSerialization.data(withJSONObject: json, options: [.fragmentsAllowed]))
    }
}

/// A broken business rule: the command is refused and nothing is written. `code` is stable and
/// machine-readable (it becomes the problem `type` over HTTP).
public struct RuleViolation: Error, Sendable, Hashable, CustomStringConvertible {
    /// A short kebab-case code, for example `insufficient-funds`.
    public var code: String
    /// A sentence for people.
    public var message: String

    public init(_ code: String, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}

/// An event-sourced aggregate in the decide/evolve style.
///
/// State is a left fold of `evolve` over the stream's events from `initialState`; `decide`
/// turns a command and the current state into new events or throws `RuleViolation`. Both are
/// pure: the command handler does the I/O.
public protocol Aggregate: Sendable {
    associatedtype State: Codable & Sendable
    associatedtype Command: TypedJSON
    associatedtype Event: TypedJSON

    /// The stream category, the part before the first `-` (`account` for `account-42`).
    static var category: String { get }
    /// The state of a stream with no events.
    static var initialState: State { get }
    /// The shape of `State`; bump it when `State` changes so old snapshots are ignored.
    static var stateVersion: Int { get }
    /// Write a snapshot every this many events (nil: never).
    static var snapshotEvery: Int? { get }

    static func evolve(_ state: State, _ event: Event) -> State
    static func decide(_ command: Command, _ state: State) throws(RuleViolation) -> [Event]
}

extension Aggregate {
    public static var stateVersion: Int { 1 }
    public static var snapshotEvery: Int? { 100 }
}

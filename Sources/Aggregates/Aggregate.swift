import EventStore
import Foundation

/// A command: a plain `Codable` value with a stable name, sent as
/// `{"type": <typeName>, "data": <the value>}`.
///
/// ```swift
/// struct DepositMoney: DomainCommand {
///     static let typeName = "DepositMoney"
///     var amount: Int64
/// }
/// ```
/// The platform decodes it strictly: a member the type does not read is refused, and a member
/// of the wrong type, or a number out of its type's range, is named in the error.
public protocol DomainCommand: Codable, Sendable {
    /// The name clients send in `type`. It is part of the API: never change it.
    static var typeName: String { get }
}

/// An event: a plain `Codable` value with a stable name, stored as its type name and its data.
///
/// The name is part of the log: rename the Swift type freely, never `typeName` (to rename an
/// event type, give it a new name and register the old one as an alias in the aggregate's
/// `upcasters`). When the data's shape changes, register an upcaster from the old shape; the
/// platform records the schema version each new event is written at.
public protocol DomainEvent: Codable, Sendable {
    /// The name the event is stored under.
    static var typeName: String { get }
    /// Member paths of the event's data that are personal data (`["owner"]`,
    /// `["address.street"]`): stored encrypted under the key of `subject(ofStream:)`, and read
    /// as `null` once that subject is forgotten. None by default.
    static var personalFields: [String] { get }
    /// Whose personal data the event holds: by default the stream it belongs to (the account).
    static func subject(ofStream stream: String) -> String
    /// The tags the event is stored with (`account-number:DE0012345`): queries, and so the
    /// decisions of `Aggregate.boundary(of:)`, find it by them whatever its stream. None by default.
    var tags: [String] { get }
}

extension DomainEvent {
    public static var personalFields: [String] { [] }
    public static func subject(ofStream stream: String) -> String { stream }
    public var tags: [String] { [] }
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
///
/// ```swift
/// enum BankAccount: Aggregate {
///     static let category = "account"
///     static let commands: [any DomainCommand.Type] = [OpenAccount.self, DepositMoney.self]
///     static let events: [any DomainEvent.Type] = [AccountOpened.self, MoneyDeposited.self]
///     static let initialState = State()
///     static func decide(_ command: any DomainCommand, _ state: State) throws(RuleViolation) -> [any DomainEvent] {
///         switch command {
///         case let deposit as DepositMoney: …
///         default: throw RuleViolation.unhandled(command)
///         }
///     }
///     static func evolve(_ state: State, _ event: any DomainEvent) -> State { … }
/// }
/// ```
public protocol Aggregate: Sendable {
    associatedtype State: Codable & Sendable

    /// The stream category, the part before the first `-` (`account` for `account-42`).
    static var category: String { get }
    /// The state of a stream with no events.
    static var initialState: State { get }
    /// The shape of `State`; bump it when `State` changes so old snapshots are ignored.
    static var stateVersion: Int { get }
    /// Write a snapshot every this many events (nil: never).
    static var snapshotEvery: Int? { get }
    /// The commands it accepts, by their type names.
    static var commands: [any DomainCommand.Type] { get }
    /// The events it records; the stream holds no others.
    static var events: [any DomainEvent.Type] { get }
    /// How its events' shapes and names changed; every reader sees them in the current shape.
    static var upcasters: EventUpcasters { get }

    static func evolve(_ state: State, _ event: any DomainEvent) -> State
    static func decide(_ command: any DomainCommand, _ state: State) throws(RuleViolation) -> [any DomainEvent]

    /// The events beyond the stream that deciding `command` rests on, as a query (a Dynamic
    /// Consistency Boundary: a unique account number, the seats of a course), or nil when the
    /// stream alone decides (the default). The handler reads the events matching the query,
    /// decides with `decide(_:_:across:)`, and appends only if no event matching the query was
    /// written after the position it read up to; otherwise it reads and decides again.
    static func boundary(of command: any DomainCommand) -> EventQuery?
    /// Decides over the stream's state and the events matching `boundary(of:)`, in log order
    /// and their current shape (any stream's, this one's included). By default the events are
    /// ignored: `decide(command, state)`.
    static func decide(_ command: any DomainCommand, _ state: State, across events: [RecordedEvent]) throws(RuleViolation) -> [any DomainEvent]
}

extension Aggregate {
    public static func boundary(of command: any DomainCommand) -> EventQuery? { nil }
    public static func decide(
        _ command: any DomainCommand, _ state: State, across events: [RecordedEvent]
    ) throws(RuleViolation) -> [any DomainEvent] {
        try decide(command, state)
    }
    public static var stateVersion: Int { 1 }
    public static var snapshotEvery: Int? { 100 }
    public static var upcasters: EventUpcasters { EventUpcasters() }
}

extension RuleViolation {
    /// For the `default:` of a `decide` switch: a command the aggregate lists but does not handle.
    public static func unhandled(_ command: any DomainCommand) -> RuleViolation {
        RuleViolation("unhandled-command", "\(type(of: command).typeName) is not handled")
    }
}

/// An aggregate's command and event types by name, and the coding of both: built once per
/// aggregate type.
public struct AggregateCodec<A: Aggregate>: Sendable {
    public let commandTypes: [String: any DomainCommand.Type]
    public let eventTypes: [String: any DomainEvent.Type]
    /// The schema version each event type is written at.
    public let eventVersions: [String: Int]
    public let upcasters: EventUpcasters
    /// The personal fields its event types declare.
    public let personalData: PersonalDataDeclarations

    public init() {
        var commands: [String: any DomainCommand.Type] = [:]
        for type in A.commands {
            precondition(commands[type.typeName] == nil, "\(A.self) lists two commands named \(type.typeName)")
            commands[type.typeName] = type
        }
        var events: [String: any DomainEvent.Type] = [:]
        for type in A.events {
            precondition(events[type.typeName] == nil, "\(A.self) lists two events named \(type.typeName)")
            events[type.typeName] = type
        }
        commandTypes = commands
        eventTypes = events
        upcasters = A.upcasters
        var personal = PersonalDataDeclarations()
        for type in A.events where !type.personalFields.isEmpty {
            personal.declare(type.typeName, fields: type.personalFields) { type.subject(ofStream: $0) }
        }
        personalData = personal
        eventVersions = events.keys.reduce(into: [:]) { versions, name in versions[name] = A.upcasters.currentVersion(of: name) }
    }

    /// The command of `typeName` in `data`; nil for a name the aggregate does not accept.
    /// Throws `DecodingError` naming the field at fault.
    public func command(_ typeName: String, _ data: JSONValue) throws -> (any DomainCommand)? {
        guard let type = commandTypes[typeName] else { return nil }
        return try JSONValueDecoder(strict: true).decodeValue(of: type, from: data) as? any DomainCommand
    }

    /// The event `recorded` holds (already in its current shape), or nil for a type the
    /// aggregate does not record.
    public func event(_ recorded: RecordedEvent) throws -> (any DomainEvent)? {
        try event(recorded.type, recorded.data)
    }

    /// An event of `typeName` from its current-shape JSON data.
    public func event(_ typeName: String, _ data: Data) throws -> (any DomainEvent)? {
        guard let type = eventTypes[typeName] else { return nil }
        return try JSONValueDecoder().decodeValue(of: type, from: JSONValue(parsing: data)) as? any DomainEvent
    }

    /// Whether the aggregate can read an event of `type` stored at `schemaVersion` with `data`
    /// (a raw append to one of its streams must not break its commands).
    public func accepts(type: String, schemaVersion: Int, data: Data) -> Bool {
        let name = upcasters.currentName(of: type)
        guard let current = eventVersions[name], schemaVersion <= current else { return false }
        do {
            let current = try upcasters.upcast(type: type, version: schemaVersion, data: JSONValue(parsing: data))
            return try event(name, Data(current.jsonText.utf8)) != nil
        } catch {
            return false
        }
    }

    /// `event` as a new event for the log: its type name, its data and the schema version it
    /// is written at. Fails for an event type the aggregate does not list.
    public func newEvent(_ event: any DomainEvent, id: UUID?, metadata: Data) throws -> NewEvent {
        let name = type(of: event).typeName
        guard let version = eventVersions[name] else {
            throw AggregateError(message: "\(A.self).decide returned \(name), which is not in \(A.self).events")
        }
        return NewEvent(id: id, type: name, data: try EventEncoding.encode(event), metadata: metadata, schemaVersion: version, tags: event.tags)
    }
}

/// Event data as the platform writes it: compact JSON with sorted keys (stable bytes, so that a
/// retried append with the same events is recognised).
public enum EventEncoding {
    public static func encode(_ value: some Encodable) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(value)
    }
}

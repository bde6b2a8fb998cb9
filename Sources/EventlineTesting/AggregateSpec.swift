@_exported import Eventline
@_exported import EventlineTestSupport
import Foundation

/// Given–when–then for an aggregate, with no database: given these events, when this command,
/// then these events or this rule violation. Events are compared as the log would hold them
/// (type name and JSON data), so a test reads like the stream.
///
/// ```swift
/// @Test func overdraft() throws {
///     try AggregateSpec<BankAccount>
///         .given(AccountOpened(owner: "Ada", currency: "EUR"), MoneyDeposited(amount: 100))
///         .when(WithdrawMoney(amount: 101))
///         .thenRefused(BankAccount.Rule.insufficientFunds)
/// }
/// ```
/// A `then` that does not hold throws `SpecFailure`, which fails the test with both sides shown.
public struct AggregateSpec<A: Aggregate>: Sendable {
    /// The state the given events fold to.
    public let state: A.State
    /// The given events, as the log would hold them.
    public let history: [any DomainEvent]
    /// The given events and those of other streams (`elsewhere(_:)`) as the log would hold them.
    public var recorded: [RecordedEvent] = []

    /// The aggregate after `events`, each checked to be one the aggregate lists and to
    /// survive a round trip through its JSON.
    public static func given(_ events: any DomainEvent...) throws -> AggregateSpec {
        try given(events)
    }

    public static func given(_ events: [any DomainEvent]) throws -> AggregateSpec {
        let codec = AggregateCodec<A>()
        var state = A.initialState
        for event in events {
            guard codec.eventTypes[type(of: event).typeName] != nil else {
                throw SpecFailure("\(type(of: event).typeName) is not an event of \(A.self) (not in \(A.self).events)")
            }
            // Folded as the handler folds it: from the JSON the log would hold.
            let stored = try codec.newEvent(event, id: nil, metadata: Data("{}".utf8))
            guard let decoded = try codec.event(stored.type, stored.data) else {
                throw SpecFailure("\(stored.type) is not an event of \(A.self)")
            }
            state = A.evolve(state, decoded)
        }
        var spec = AggregateSpec(state: state, history: events)
        try spec.record(events, stream: "\(A.category)-given")
        return spec
    }

    private mutating func record(_ events: [any DomainEvent], stream: String) throws {
        let codec = AggregateCodec<A>()
        for event in events {
            let stored = try codec.newEvent(event, id: nil, metadata: Data("{}".utf8))
            recorded.append(RecordedEvent(
                position: recorded.count + 1, stream: stream, version: recorded.filter { $0.stream == stream }.count + 1, id: stored.id,
                type: stored.type, data: stored.data, metadata: stored.metadata, recordedAt: Date(), schemaVersion: stored.schemaVersion ?? 1,
                tags: stored.tags))
        }
    }

    /// Events of other streams in the log (another account's, say), after the given ones: a
    /// command with a boundary (`Aggregate.boundary(of:)`) decides over those of all these
    /// events that match its query, as the command handler would read them.
    public func elsewhere(_ events: any DomainEvent...) throws -> AggregateSpec {
        var spec = self
        try spec.record(events, stream: "\(A.category)-elsewhere")
        return spec
    }

    /// Decides `command` on the given state (and, for a command with a boundary, the events
    /// matching it).
    public func when(_ command: any DomainCommand) -> Outcome {
        do {
            guard let boundary = A.boundary(of: command) else {
                return Outcome(command: command, result: .success(try A.decide(command, state)))
            }
            return Outcome(command: command, result: .success(try A.decide(command, state, across: recorded.filter(boundary.matches))))
        } catch {
            return Outcome(command: command, result: .failure(error))
        }
    }

    /// What a command decided.
    public struct Outcome: Sendable {
        public let command: any DomainCommand
        public let result: Result<[any DomainEvent], RuleViolation>

        /// The events the command decided (a refusal throws it).
        public var events: [any DomainEvent] {
            get throws { try result.get() }
        }

        /// Expects exactly `expected`, in order.
        public func then(_ expected: any DomainEvent...) throws {
            try then(expected)
        }

        public func then(_ expected: [any DomainEvent]) throws {
            let commandName = type(of: command).typeName
            switch result {
            case .failure(let violation):
                throw SpecFailure("\(commandName) was refused (\(violation)); expected \(try Self.describe(expected))")
            case .success(let events):
                let (got, want) = (try Self.describe(events), try Self.describe(expected))
                guard got == want else { throw SpecFailure("\(commandName) decided \(got); expected \(want)") }
            }
        }

        /// Expects a refusal with the rule `code`.
        public func thenRefused(_ code: String) throws {
            let commandName = type(of: command).typeName
            switch result {
            case .failure(let violation):
                guard violation.code == code else { throw SpecFailure("\(commandName) was refused with \(violation.code); expected \(code)") }
            case .success(let events):
                throw SpecFailure("\(commandName) decided \(try Self.describe(events)); expected a refusal with \(code)")
            }
        }

        /// The events as `Type {json}` lines, as the log would hold them.
        static func describe(_ events: [any DomainEvent]) throws -> String {
            "[" + (try events.map { event in
                "\(type(of: event).typeName) \(String(decoding: try EventEncoding.encode(event), as: UTF8.self))"
            }).joined(separator: ", ") + "]"
        }
    }
}

/// Checks of a domain's upcasters: stored data of an old version reads as the current event.
public enum UpcasterCheck {
    /// Reads `data` (JSON text) stored as `type` at schema `version` the way every reader of
    /// `A`'s events does, and returns the event; throws when it does not read or is not `E`.
    public static func read<A: Aggregate, E: DomainEvent>(
        _ aggregate: A.Type, type: String, version: Int, data: String, as expected: E.Type = E.self
    ) throws -> E {
        let codec = AggregateCodec<A>()
        let stored = RecordedEvent(
            position: 1, stream: "\(A.category)-check", version: 1, id: UUID(), type: type, data: Data(data.utf8),
            metadata: Data("{}".utf8), recordedAt: Date(), schemaVersion: version)
        let current = try codec.upcasters.upcast(stored)
        guard let event = try codec.event(current) else { throw SpecFailure("\(type) reads as \(current.type), which \(A.self) does not list") }
        guard let typed = event as? E else { throw SpecFailure("\(type) v\(version) reads as \(Swift.type(of: event)), not \(E.self)") }
        return typed
    }

    /// Expects `data` stored as `type` at `version` to read as `expected` (compared as JSON).
    public static func expect<A: Aggregate>(
        _ aggregate: A.Type, type: String, version: Int, data: String, reads expected: some DomainEvent
    ) throws {
        let event = try read(aggregate, type: type, version: version, data: data, as: Swift.type(of: expected))
        let (got, want) = (try EventEncoding.encode(event), try EventEncoding.encode(expected))
        guard got == want else {
            throw SpecFailure(
                "\(type) v\(version) \(data) reads as \(String(decoding: got, as: UTF8.self)); expected \(String(decoding: want, as: UTF8.self))")
        }
    }
}

/// A given–when–then expectation that does not hold.
public struct SpecFailure: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

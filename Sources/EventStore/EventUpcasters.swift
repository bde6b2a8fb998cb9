import Foundation

/// How a domain's events changed shape since they were first written, so that every reader that
/// goes through the platform sees the current shape while the stored log is never rewritten.
///
/// A type's schema starts at version 1. Each upcaster turns the data of one version into the
/// next; registering one from version `n` makes `n + 1` the type's current version, and a
/// stored event is taken through every step from its own version to the current one. A rename
/// is an alias: events stored under the old name read as the new one (and keep their version,
/// counted in the new name's chain).
///
/// ```swift
/// var upcasters = EventUpcasters()
/// upcasters.register("StockReceived", from: 1) { data in   // {"qty": N} → {"quantity": N}
///     try data.renamingMember("qty", to: "quantity")
/// }
/// upcasters.alias("ItemStocked", as: "StockReceived")
/// ```
public struct EventUpcasters: Sendable {
    /// Turns the data of one schema version into the next.
    public typealias Upcast = @Sendable (JSONValue) throws -> JSONValue

    private var steps: [String: [Int: Upcast]] = [:]
    private var currentVersions: [String: Int] = [:]
    private var renamed: [String: String] = [:]

    public init() {}

    /// No upcasters and no aliases: events are read as stored.
    public var isEmpty: Bool { steps.isEmpty && renamed.isEmpty }

    /// Registers the step from `version` of `type`'s data to `version + 1`. Steps of a type are
    /// registered from 1 upwards without gaps; a gap or a second step from one version is a
    /// programming error and traps when the domain is built.
    public mutating func register(_ type: String, from version: Int, _ upcast: @escaping Upcast) {
        precondition(version >= 1, "an upcaster of \(type) must start from version 1 or later, not \(version)")
        precondition(renamed[type] == nil, "\(type) is renamed to \(renamed[type] ?? ""): register its upcasters under that name")
        precondition(steps[type]?[version] == nil, "\(type) has two upcasters from version \(version)")
        steps[type, default: [:]][version] = upcast
        currentVersions[type] = max(currentVersions[type] ?? 1, version + 1)
        precondition(
            (1..<currentVersions[type]!).allSatisfy { steps[type]![$0] != nil },
            "the upcasters of \(type) must go from version 1 to \(currentVersions[type]!) without a gap")
    }

    /// Events stored as `oldName` read as `currentName`. A name is renamed once, to a name that
    /// is not itself renamed (rename `A` to `C` and `B` to `C`, never `A` to `B` to `C`), and has
    /// no upcasters of its own; a mistake traps when the domain is built.
    public mutating func alias(_ oldName: String, as currentName: String) {
        precondition(oldName != currentName, "\(oldName) cannot be an alias of itself")
        precondition(renamed[currentName] == nil, "\(currentName) is itself renamed to \(renamed[currentName] ?? "")")
        precondition(!renamed.values.contains(oldName), "\(oldName) is the new name of another type; rename that type to \(currentName) directly")
        precondition(renamed[oldName] == nil || renamed[oldName] == currentName, "\(oldName) is already renamed to \(renamed[oldName] ?? "")")
        precondition(steps[oldName] == nil, "\(oldName) has upcasters: register them under \(currentName)")
        renamed[oldName] = currentName
    }

    /// The types that have upcasters.
    public var typesWithSteps: [String] { steps.keys.sorted() }

    /// Whether `type` is an old name that reads as another.
    public func isAlias(_ type: String) -> Bool { renamed[type] != nil }

    /// Adds every step and alias of `other` (a domain is built from several aggregates).
    public mutating func merge(_ other: EventUpcasters) {
        for (type, chain) in other.steps.sorted(by: { $0.key < $1.key }) {
            for (version, upcast) in chain.sorted(by: { $0.key < $1.key }) { register(type, from: version, upcast) }
        }
        for (old, new) in other.renamed.sorted(by: { $0.key < $1.key }) { alias(old, as: new) }
    }

    /// Why an event of `type` cannot be stored at `version` for these upcasters, or nil: a
    /// version newer than the type's current one (it would skip the steps added later), or data
    /// the steps from its version cannot read (every later read of it would fail).
    public func problem(type: String, version: Int, data: Data) -> String? {
        let current = currentVersion(of: currentName(of: type))
        if version > current, current > 1 {
            return "schema version \(version) of \(type) is newer than the current one, \(current)"
        }
        guard changes(type: type, version: version), version < current else { return nil }
        do {
            _ = try upcast(type: type, version: version, data: JSONValue(parsing: data))
            return nil
        } catch let error as UpcastError {
            return error.description
        } catch {
            return "the data is not JSON: \(error)"
        }
    }

    /// The version new events of `type` are written at: 1 plus the number of steps.
    public func currentVersion(of type: String) -> Int { currentVersions[type] ?? 1 }

    /// The name events stored as `type` read as.
    public func currentName(of type: String) -> String { renamed[type] ?? type }

    /// The stored type names that read as one of `types`: the types and their aliases (for a
    /// query that filters the log by type).
    public func storedNames(of types: [String]) -> [String] {
        guard !renamed.isEmpty else { return types }
        let wanted = Set(types)
        return types + renamed.filter { wanted.contains($0.value) }.keys.sorted()
    }

    /// Whether an event stored as `type` at `version` reads differently from how it is stored.
    public func changes(type: String, version: Int) -> Bool {
        renamed[type] != nil || version < currentVersion(of: type)
    }

    /// `data` of `type`, stored at `version`, in the current shape.
    public func upcast(type: String, version: Int, data: JSONValue) throws -> JSONValue {
        let type = currentName(of: type)
        let current = currentVersion(of: type)
        guard version < current else { return data }
        guard let chain = steps[type] else { return data }
        var value = data
        for step in max(version, 1)..<current {
            do {
                value = try chain[step]!(value)
            } catch {
                throw UpcastError(type: type, fromVersion: step, underlying: error)
            }
        }
        return value
    }

    /// The event as the domain reads it now: renamed, its data upcast to the current version.
    public func upcast(_ event: RecordedEvent) throws -> RecordedEvent {
        guard changes(type: event.type, version: event.schemaVersion) else { return event }
        var event = event
        let type = currentName(of: event.type)
        if event.schemaVersion < currentVersion(of: type) {
            let stored = try JSONValue(parsing: event.data)
            let current = try upcast(type: type, version: event.schemaVersion, data: stored)
            event.data = Data(current.jsonText.utf8)
            event.schemaVersion = currentVersion(of: type)
        }
        event.type = type
        return event
    }
}

/// An upcaster refused an event's data: it is not in the shape that version had.
public struct UpcastError: Error, Sendable, CustomStringConvertible {
    public var type: String
    public var fromVersion: Int
    public var message: String

    init(type: String, fromVersion: Int, underlying: any Error) {
        self.type = type
        self.fromVersion = fromVersion
        self.message = "\(underlying)"
    }

    public var description: String { "\(type) data of version \(fromVersion) cannot be upcast: \(message)" }
}

extension JSONValue {
    /// Parses JSON text (any value, not only objects).
    public init(parsing data: Data) throws {
        self.init(foundation: try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]))
    }

    /// The value of a tree `JSONSerialization` parsed. Integers stay exact; numbers written
    /// with a fraction or exponent that hold a whole number within 64 bits become integers.
    public init(foundation object: Any) {
        switch object {
        case let text as String: self = .string(text)
        case let number as NSNumber: self = Self.number(number)
        case let items as [Any]: self = .array(items.map(JSONValue.init(foundation:)))
        case let members as [String: Any]: self = .object(members.mapValues(JSONValue.init(foundation:)))
        default: self = .null
        }
    }

    private static func number(_ number: NSNumber) -> JSONValue {
        // JSONSerialization gives booleans as NSNumber too; their type code tells them apart.
        let code = UInt8(bitPattern: number.objCType.pointee)
        if code == UInt8(ascii: "c") {
            return .bool(number.boolValue)
        }
        if let decimal = number as? NSDecimalNumber {
            if let exact = Int(decimal.stringValue) { return .integer(exact) }
            return .number(decimal.doubleValue)
        }
        switch code {
        case UInt8(ascii: "s"), UInt8(ascii: "i"), UInt8(ascii: "l"), UInt8(ascii: "q"): return .integer(number.intValue)
        case UInt8(ascii: "C"), UInt8(ascii: "S"), UInt8(ascii: "I"), UInt8(ascii: "L"), UInt8(ascii: "Q"):
            if let exact = Int(exactly: number.uint64Value) { return .integer(exact) }
            return .number(number.doubleValue)
        default:
            let double = number.doubleValue
            if double.rounded() == double, let exact = Int(exactly: double) { return .integer(exact) }
            return .number(double)
        }
    }

    /// An object's members (nil for other values).
    public var objectMembers: [String: JSONValue]? {
        if case .object(let members) = self { return members }
        return nil
    }

    /// The object with member `old` renamed to `new` (an upcaster's most common step). Throws
    /// when the value is not an object; an object without `old` is returned as it is.
    public func renamingMember(_ old: String, to new: String) throws -> JSONValue {
        guard var members = objectMembers else { throw UpcastFailure("the data is not a JSON object") }
        if let value = members.removeValue(forKey: old) { members[new] = value }
        return .object(members)
    }

    /// The object with `member` set to `value`.
    public func settingMember(_ member: String, to value: JSONValue) throws -> JSONValue {
        guard var members = objectMembers else { throw UpcastFailure("the data is not a JSON object") }
        members[member] = value
        return .object(members)
    }
}

/// A reason an upcaster gives for refusing data.
public struct UpcastFailure: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

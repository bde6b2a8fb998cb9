import Aggregates
import EventStore
import Foundation

/// The aggregates the server accepts commands for, by stream category.
public struct CommandRegistry: Sendable {
    /// Decodes a command of a type name from JSON data and handles it for an aggregate id.
    struct Entry: Sendable {
        var commandTypes: [String]
        var eventTypes: [String]
        /// Whether an event of this type, schema version and data is one the aggregate can read back.
        var acceptsEvent: @Sendable (_ type: String, _ schemaVersion: Int, _ data: Data) -> Bool
        var handle: @Sendable (
            _ id: String, _ type: String, _ data: JSONValue, _ expectedVersion: Int?, _ metadata: [String: JSONValue],
            _ eventIDs: (@Sendable (Int) -> UUID)?, _ resumed: Bool
        )
            async throws -> CommandOutcome?
    }

    private(set) var entries: [String: Entry] = [:]

    public init() {}

    /// Accepts commands for aggregate `A` at `/v1/commands/<A.category>/{id}`.
    public mutating func register<A: Aggregate>(_ handler: CommandHandler<A>) {
        let codec = handler.codec
        entries[A.category] = Entry(
            commandTypes: codec.commandTypes.keys.sorted(), eventTypes: codec.eventTypes.keys.sorted(),
            acceptsEvent: { type, version, data in codec.accepts(type: type, schemaVersion: version, data: data) }
        ) { id, type, data, expectedVersion, metadata, eventIDs, resumed in
            guard let command = try codec.command(type, data) else { return nil }
            return try await handler.handle(
                id: id, command: command, expectedVersion: expectedVersion, metadata: metadata, eventIDs: eventIDs,
                resumed: resumed)
        }
    }

    /// The registered categories.
    public var categories: [String] { entries.keys.sorted() }
}

import ArgumentParser
import EventStore
import Foundation
import PostgresClient

/// `eventctl projections|reactors parked|retry|skip`: the parked keys of one projection or
/// reactor, listed and acted on as the API does (`…/parked`, `…/parked/retry`, `…/parked/skip`).
enum ParkedKeyCommands {
    static func list(_ kind: ConsumerID.Kind, name: String, database: DatabaseOptions) async throws {
        let (parked, skipped) = try await database.withConnection { conn -> ([ParkedKey], [SkippedEvent]) in
            try requireStore(on: conn)
            guard try !CheckpointStore.list(kind, name: name, on: conn).isEmpty else { throw CLIError("no \(kind.rawValue) named \(name)") }
            return (try CheckpointStore.parked(kind, name: name, on: conn), try CheckpointStore.skipped(kind, name: name, on: conn))
        }
        if parked.isEmpty {
            print("\(name): no parked keys")
        } else {
            print("\(name): \(parked.count) parked key(s)")
            for key in parked {
                var line = "  \(key.key)  at position \(key.position) (\(key.eventType))  \(key.held) held  attempts \(key.attempts)"
                if let request = key.request { line += "  \(request) requested" }
                print(line)
                print("    \(key.error)")
            }
        }
        for event in skipped {
            print("  skipped: \(event.key) at position \(event.position) (\(event.eventType)) by \(event.skippedBy): \(event.error)")
        }
    }

    static func request(_ action: String, _ kind: ConsumerID.Kind, name: String, keys: [String], database: DatabaseOptions) async throws {
        let asked = keys.isEmpty ? nil : keys
        let requested: [String]
        do {
            requested = try await database.withConnection { conn in
                try requireStore(on: conn)
                return try CheckpointStore.request(action, kind, name: name, keys: asked, on: conn)
            }
        } catch let error as ParkingError {
            throw CLIError(error.code == .keysRequired ? "skip needs --key (the parked keys whose failing event to skip)" : error.message)
        }
        if requested.isEmpty {
            print("\(name): no parked keys")
        } else {
            print("\(action) requested for \(requested.joined(separator: ", ")); the \(kind.rawValue)'s process carries it out at its next step")
        }
    }

    static func requireStore(on conn: PostgresConnection) throws {
        let installed = try conn.query("SELECT to_regclass('eventline.parked_keys') IS NOT NULL").first!.decode(0, as: Bool.self)
        guard installed else { throw CLIError("parked keys are not installed: run \(CLI.name) migrate") }
    }
}

/// The subcommands both `projections` and `reactors` have.
struct ParkedList<Kind: ConsumerKind>: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: "parked", abstract: "The \(Kind.kind.rawValue)'s parked keys (the event each failed on, the events held) and skipped events.")
    }
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The name.") var name: String

    func run() async throws {
        try await CLI.run { try await ParkedKeyCommands.list(Kind.kind, name: name, database: database) }
    }
}

struct ParkedRetry<Kind: ConsumerKind>: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: "retry", abstract: "Retry parked keys: their held events are applied in order (default: every parked key).")
    }
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The name.") var name: String
    @Option(name: .customLong("key"), help: "A parked key (repeatable; default: all).") var keys: [String] = []

    func run() async throws {
        try await CLI.run { try await ParkedKeyCommands.request("retry", Kind.kind, name: name, keys: keys, database: database) }
    }
}

struct ParkedSkip<Kind: ConsumerKind>: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "skip", abstract: "Skip parked keys' failing events (recorded as skipped), then apply the rest of what they hold.")
    }
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The name.") var name: String
    @Option(name: .customLong("key"), help: "A parked key (repeatable; required).") var keys: [String] = []

    func validate() throws {
        guard !keys.isEmpty else { throw ValidationError("skip needs --key (the parked keys whose failing event to skip)") }
    }

    func run() async throws {
        try await CLI.run { try await ParkedKeyCommands.request("skip", Kind.kind, name: name, keys: keys, database: database) }
    }
}

protocol ConsumerKind { static var kind: ConsumerID.Kind { get } }
enum ProjectionKind: ConsumerKind { static var kind: ConsumerID.Kind { .projection } }
enum ReactorKind: ConsumerKind { static var kind: ConsumerID.Kind { .reactor } }

/// `eventctl reactors`: the reactors' status, and their parked keys.
struct Reactors: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List reactors, resume a paused one, and list, retry or skip their parked keys.",
        subcommands: [List.self, Resume.self, ParkedList<ReactorKind>.self, ParkedRetry<ReactorKind>.self, ParkedSkip<ReactorKind>.self],
        defaultSubcommand: List.self)

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Each reactor's checkpoint, lag, owner and the event it retries.")
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            try await CLI.run { ReactorReport.print(try await ReactorReport.fetch(try database.databaseURL)) }
        }
    }
}

extension Reactors {
    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Resume a paused reactor (onError: then: pause): it retries the event it stopped at.")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The reactor's name.") var name: String

        func run() async throws {
            try await CLI.run {
                let name = self.name
                let found = try await database.withConnection { conn in try CheckpointStore.resume(.reactor, name: name, on: conn) }
                guard found > 0 else { throw CLIError("no reactor named \(name)") }
                print("resumed \(name)")
            }
        }
    }
}

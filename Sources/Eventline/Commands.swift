import ArgumentParser
import EventStore
import Foundation
import Projector

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply pending schema migrations (safe to run concurrently and repeatedly).")

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var migrations: MigrationOptions

    func run() async throws {
        try await CLI.run {
            let migrator = Migrator(databaseURL: try database.databaseURL, migrations: try migrations.load())
            let applied = try await migrator.migrate()
            if applied.isEmpty {
                print("schema is up to date (\(migrator.migrations.count) migrations)")
            } else {
                for migration in applied { print("applied \(migration.name)") }
            }
        }
    }
}

struct Append: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Append one event to a stream.")

    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The stream, category-id (for example account-42).") var stream: String
    @Option(help: "The event type.") var type: String
    @Option(help: "The event data, JSON.") var data: String
    @Option(help: "The event metadata, a JSON object.") var metadata: String?
    @Option(name: .customLong("expected-version"), help: "any, no-stream, exists, or the stream's current version.")
    var expectedVersion: String = "any"
    @Option(help: "The event id (a UUID); makes a retried append idempotent.") var id: String?
    @Option(name: .customLong("tag"), help: "A tag (student:s1), repeated for more: queries and append conditions find the event by it.")
    var tags: [String] = []

    func validate() throws {
        if ExpectedVersion(parsing: expectedVersion) == nil {
            throw ValidationError("--expected-version must be any, no-stream, exists or a number ≥ 0, not '\(expectedVersion)'")
        }
        if let id, UUID(uuidString: id) == nil { throw ValidationError("--id must be a UUID, not '\(id)'") }
    }

    func run() async throws {
        try await CLI.run {
            let store = try database.openStore()
            defer { Task { await store.shutdown() } }
            let event = NewEvent(
                id: id.flatMap(UUID.init(uuidString:)), type: type, data: Data(data.utf8), metadata: metadata.map { Data($0.utf8) }, tags: tags)
            let result = try await store.append(to: stream, expected: ExpectedVersion(parsing: expectedVersion)!, events: [event])
            await store.shutdown()
            let note = result.wasAlreadyAppended ? " (already appended; nothing written)" : ""
            print("appended \(type) to \(result.stream): version \(result.version), position \(result.position)\(note)")
        }
    }
}

struct Read: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a stream's events.")

    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The stream.") var stream: String
    @Option(help: "The first version to read (default: the first, or the last with --backward).") var from: Int?
    @Option(help: "The most events to print (1-10000).") var limit: Int = 100
    @Flag(help: "Newest first.") var backward = false
    @Flag(help: "One JSON object per line.") var json = false

    func validate() throws {
        guard (1...10_000).contains(limit) else { throw ValidationError("--limit must be between 1 and 10000") }
        if let from, from < 0 { throw ValidationError("--from must be 0 or more") }
    }

    func run() async throws {
        try await CLI.run {
            let store = try database.openStore()
            let events = try await store.readStream(stream, from: from, direction: backward ? .backward : .forward, limit: limit)
            await store.shutdown()
            if events.isEmpty && from == nil {
                throw CLIError("stream \(stream) has no events")
            }
            for event in events { print(EventPrinter.line(event, json: json)) }
        }
    }
}

struct Tail: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print events of the whole log as they are committed, until interrupted.")

    @OptionGroup var database: DatabaseOptions
    @Option(help: "Start after this log position (default: the current head, so only new events).") var after: Int?
    @Option(help: "Only events of this stream category.") var category: String?
    @Option(name: .customLong("type"), help: "Only events of this type (repeatable).") var types: [String] = []
    @Flag(help: "One JSON object per line.") var json = false

    func validate() throws {
        if let after, after < 0 { throw ValidationError("--after must be 0 or more") }
    }

    func run() async throws {
        try await CLI.run {
            let store = try database.openStore()
            let start: Int
            if let after { start = after } else { start = try await store.headPosition() }
            let filter = EventFilter(category: category, types: types.isEmpty ? nil : types)
            for try await event in store.subscribe(after: start, filter: filter) {
                print(EventPrinter.line(event, json: json))
                // Flush each line, so that a pipe shows events as they come.
                fflush(nil)
            }
        }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the database, the log head, the number of streams, the migrations, projections and reactors.")

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var migrations: MigrationOptions
    @OptionGroup var projections: ProjectionOptions

    func run() async throws {
        try await CLI.run {
            try await StatusReport.print(
                databaseURL: try database.databaseURL, migrations: (try? migrations.load()) ?? [], declared: try? projections.load())
        }
    }
}

/// The report `status` prints; `dev --demo` prints it too.
enum StatusReport {
    static func print(databaseURL url: String, migrations: [Migration], declared: [YAMLProjection]? = nil) async throws {
        let info = try await ServerInfo.fetch(url)
        Swift.print("database     \(info.database) on \(info.server) as \(info.user)")
        Swift.print("server       \(info.version)")
        guard info.hasEventLog else {
            Swift.print("event log    not installed: run \(CLI.name) migrate")
            return
        }
        var configuration = Domain.current.storeConfiguration(databaseURL: url, masterKey: try EnvironmentVariables.masterKey())
        configuration.poolSize = 1
        let store = EventStore(configuration, logger: CLI.logger)
        let summary = try await store.summary()
        let deleted = try? await store.deletedStreamCount()
        let subjects = try? await store.subjectKeyCounts()  // nil before migration 0010
        await store.shutdown()
        Swift.print("head         \(summary.head)")
        Swift.print("streams      \(summary.streams)\(deleted.map { ", \($0) deleted" } ?? "")")
        if let subjects {
            var line = "subjects     \(subjects.keys) with a key, \(subjects.forgotten) forgotten"
            if subjects.otherMasterKey > 0 { line += "; \(subjects.otherMasterKey) wrapped under another master key than this one" }
            Swift.print(line)
        }
        let statuses = try await Migrator(databaseURL: url, migrations: migrations).status()
        let pending = statuses.filter { $0.state == .pending }.count
        let applied = statuses.filter { $0.state != .pending }.count
        Swift.print("migrations   \(applied) applied, \(pending) pending")
        for status in statuses {
            let when = status.appliedAt.map { " " + EventPrinter.timestamp($0) } ?? ""
            Swift.print("  \(status.name)  \(status.state.rawValue)\(when)")
        }
        if let projections = try? await ProjectionReport.fetch(url) { ProjectionReport.print(projections, declared: declared) }
        if let reactors = try? await ReactorReport.fetch(url) { ReactorReport.print(reactors) }
    }
}

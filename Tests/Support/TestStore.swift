import EmbeddedServers
import EventStore
import Foundation
import Synchronization
import PostgresClient

/// Where the repository's files are, found from this source file.
public enum Repository {
    public static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }  // Tests/Support/TestStore.swift
        return url.path
    }()

    public static var migrationsDirectory: String { root + "/Schemas/migrations" }

    /// The built `eventctl` beside the test bundle.
    public static var eventctl: String {
        get throws {
            let bundle = URL(fileURLWithPath: CommandLine.arguments.first ?? "").deletingLastPathComponent()
            for directory in [bundle, bundle.deletingLastPathComponent(), URL(fileURLWithPath: root + "/.build/debug")] {
                let candidate = directory.appendingPathComponent("eventctl").path
                if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            }
            throw TestFailure("eventctl is not built next to the tests (\(bundle.path)); run swift build first")
        }
    }
}

/// The master key the tests' stores and child processes use (a child's environment may set
/// another, or set `EVENTLINE_MASTER_KEY` empty for none).
public enum TestMasterKey {
    public static let base64 = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM="
    public static let key = try! MasterKey(base64: base64)

    /// `environment` for a child process: the test master key unless it names one (empty: none).
    public static func applied(to environment: inout [String: String]) {
        if environment["EVENTLINE_MASTER_KEY_FILE"] != nil { environment["EVENTLINE_MASTER_KEY"] = nil; return }
        if environment["EVENTLINE_MASTER_KEY"] == nil { environment["EVENTLINE_MASTER_KEY"] = base64 }
        if environment["EVENTLINE_MASTER_KEY"] == "" { environment["EVENTLINE_MASTER_KEY"] = nil }
    }
}

/// A failed test precondition, with a message.
public struct TestFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A migrated, empty database with an event store open on it.
public struct TestStore: Sendable {
    public let database: TestDatabase
    public let store: EventStore

    public var url: String { database.url }

    /// A fresh database, migrated, and a store over it.
    public static func make(
        _ label: String = "store", serverURL: String? = nil, configure: (inout EventStoreConfiguration) -> Void = { _ in }
    ) async throws -> TestStore {
        let database = try await TestDatabase.create(label, serverURL: serverURL)
        try await Migrator(databaseURL: database.url, migrations: Migration.embedded()).migrate()
        var configuration = EventStoreConfiguration(databaseURL: database.url)
        configuration.subscriptionPollInterval = .milliseconds(500)
        configuration.masterKey = TestMasterKey.key
        // The suites share two cores: a burst of hundreds of readers on a slow machine waits for a
        // connection rather than failing the test (the tests of the timeout set their own).
        configuration.acquireTimeout = .seconds(60)
        configure(&configuration)
        return TestStore(database: database, store: EventStore(configuration))
    }

    /// Another store instance (its own pool and log writer), as a second server process would have.
    public func secondStore() -> EventStore {
        EventStore(store.configuration)
    }

    /// Runs SQL on a connection of its own, outside the store.
    public func sql<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        let connection = DedicatedConnection(conninfo: url, name: "eventline-test-sql")
        defer { connection.shutdown() }
        return try await connection.run(body)
    }

    /// Runs `body` while the log writers' database sessions are killed every `interval` (as a
    /// database restart or a cut connection would end them); returns its result and the kills.
    public func whileKillingWriterSessions<T: Sendable>(
        every interval: Duration, _ body: @Sendable () async throws -> T
    ) async throws -> (result: T, kills: Int) {
        let done = Atomic<Bool>(false)
        let killer = Task {
            var kills = 0
            while !done.load(ordering: .relaxed) {
                try await Task.sleep(for: interval)
                kills += try await sql { conn in
                    try conn.query("""
                        SELECT count(pg_terminate_backend(pid)) FILTER (WHERE pg_terminate_backend(pid))
                        FROM pg_stat_activity WHERE application_name = 'eventline-log-writer' AND datname = current_database()
                        """).first!.decode(0, as: Int.self)
                }
            }
            return kills
        }
        let result: T
        do {
            result = try await body()
        } catch {
            done.store(true, ordering: .relaxed)
            _ = try? await killer.value
            throw error
        }
        done.store(true, ordering: .relaxed)
        return (result, try await killer.value)
    }

    /// Every row of the log, in position order, straight from the table.
    public func allRows() async throws -> [LogRow] {
        try await sql { conn in
            try conn.query("SELECT position, stream, version, event_id, type, codec FROM eventline.events ORDER BY position").rows.map {
                LogRow(
                    position: try $0.decode(0), stream: try $0.decode(1), version: try $0.decode(2), id: try $0.decode(3),
                    type: try $0.decode(4), codec: try $0.decode(5))
            }
        }
    }
}

/// One row of `eventline.events` as the database holds it.
public struct LogRow: Sendable, Hashable {
    public var position: Int
    public var stream: String
    public var version: Int
    public var id: UUID
    public var type: String
    public var codec: Int
}

/// Waits until `condition` holds, polling, or fails after `timeout`.
public func eventually(
    timeout: Duration = .seconds(30), _ what: String, _ condition: @Sendable () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    throw TestFailure("timed out after \(timeout) waiting for: \(what)")
}

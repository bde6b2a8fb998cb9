import ArgumentParser
import EmbeddedServers
import EventStore
import Foundation
import HTTPServer
import PostgresClient
import Projector
import Reactors
import ServiceLifecycle

struct Dev: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a private PostgreSQL, migrate it, and serve the domain until interrupted (or run a short demo).")

    @OptionGroup var migrations: MigrationOptions
    @OptionGroup var projections: ProjectionOptions
    @Flag(help: "Run a short demo of the store (appends, a conflict, a read, status), then stop.") var demo = false
    @Flag(name: .customLong("no-serve"), help: "Only run the database; do not serve HTTP.") var noServe = false
    @Option(name: .customLong("pg-port"), help: "The port for the private PostgreSQL (default: a free one).") var pgPort: Int?
    @Option(help: "The HTTP port (default 8080).") var port: Int = 8080

    func run() async throws {
        try await CLI.run {
            let loaded = try migrations.load()
            Swift.print("starting a private PostgreSQL…")
            let server = try await EmbeddedPostgres.start(.init(port: pgPort))
            defer { server.stop() }
            let admin = DedicatedConnection(conninfo: server.url(), name: "eventctl-dev")
            try await admin.run { conn in try conn.execute(unsafeSQL: "CREATE DATABASE eventline") }
            admin.shutdown()
            let url = server.url(database: "eventline")
            try await Migrator(databaseURL: url, migrations: loaded).migrate()
            Swift.print("PostgreSQL \(server.host):\(server.port) is ready and migrated.")
            Swift.print("  export EVENTLINE_DATABASE_URL='\(url)'")
            // The database lives as long as this process: so may a master key made for it.
            if try EnvironmentVariables.masterKey() == nil {
                let key = MasterKey.generate()
                setenv("EVENTLINE_MASTER_KEY", key.base64, 1)
                Swift.print("  export EVENTLINE_MASTER_KEY='\(key.base64)'   # made for this database; it encrypts personal data")
            }
            if demo {
                try await Demo.run(databaseURL: url)
                Swift.print("")
                Swift.print("$ \(CLI.name) status")
                try await StatusReport.print(databaseURL: url, migrations: loaded)
                return
            }
            if noServe {
                Swift.print("Press Ctrl-C to stop (the database is deleted).")
                await Signals.wait(for: [SIGINT, SIGTERM])
                Swift.print("stopping")
                return
            }
            var configuration = ServerConfiguration()
            configuration.port = port
            let base = "http://127.0.0.1:\(port)"
            // The projections of the directory, kept live in this process.
            var services: [any Service] = []
            var readModels = ReadModels()
            if FileManager.default.fileExists(atPath: projections.path) {
                let loaded = try projections.load()
                readModels.declared = Set(loaded.map(\.name))
                services.append(ProjectorService(projector: Projector(
                    projections: loaded, configuration: Domain.current.projectorConfiguration(databaseURL: url, masterKey: try EnvironmentVariables.masterKey()),
                    logger: CLI.logger)))
                Swift.print("Projecting \(loaded.map(\.name).joined(separator: ", ")) from \(projections.path).")
            }
            // And the domain's reactors (the bank's carry out transfers).
            // A runner with nothing to run returns at once, which would end the whole group.
            let (reactorStore, reactors) = try React.runner(url: url, logger: CLI.logger)
            if !reactors.reactors.isEmpty { services.append(ReactorService(runner: reactors)) }
            let domain = Domain.current
            var banner = ["Serving the \(domain.name) domain on \(base) (Ctrl-C stops it and deletes the database)."]
            if !domain.devExamples.isEmpty {
                banner[0] += " Try:"
                banner += domain.devExamples.map { "  " + $0.replacingOccurrences(of: "{base}", with: base) }
            }
            try await Server.run(
                databaseURL: url, configuration: configuration, readModels: readModels, alongside: services, banner: banner)
            await reactorStore.shutdown()  // what the reactor appended commits first
        }
    }
}

/// A short walk through the event store, printed as the equivalent eventctl commands.
enum Demo {
    static func run(databaseURL: String) async throws {
        let store = EventStore(Domain.current.storeConfiguration(databaseURL: databaseURL, masterKey: try EnvironmentVariables.masterKey()), logger: CLI.logger)
        let stream = "account-\(Int.random(in: 1000...9999))"
        func show(_ command: String) { Swift.print("\n$ \(CLI.name) \(command)") }

        show("append \(stream) --type AccountOpened --data '{\"owner\":\"Ada\",\"currency\":\"EUR\"}' --expected-version no-stream")
        var result = try await store.append(
            to: stream, expected: .noStream,
            events: [NewEvent(type: "AccountOpened", data: Data(#"{"owner":"Ada","currency":"EUR"}"#.utf8))])
        Swift.print("appended AccountOpened to \(stream): version \(result.version), position \(result.position)")

        for amount in [5000, 2500] {
            show("append \(stream) --type MoneyDeposited --data '{\"amount\":\(amount)}' --expected-version \(result.version)")
            result = try await store.append(
                to: stream, expected: .exact(result.version),
                events: [NewEvent(type: "MoneyDeposited", data: Data(#"{"amount":\#(amount)}"#.utf8))])
            Swift.print("appended MoneyDeposited to \(stream): version \(result.version), position \(result.position)")
        }

        show("append \(stream) --type MoneyWithdrawn --data '{\"amount\":100}' --expected-version 1   # stale")
        do {
            _ = try await store.append(
                to: stream, expected: .exact(1), events: [NewEvent(type: "MoneyWithdrawn", data: Data(#"{"amount":100}"#.utf8))])
            Swift.print("unexpected: the stale append succeeded")
        } catch let error as EventStoreError where error.code == .wrongExpectedVersion {
            Swift.print("\(CLI.name): error: \(error.message)   (exit code 3)")
        }

        show("read \(stream)")
        for event in try await store.readStream(stream) { Swift.print(EventPrinter.line(event, json: false)) }
        await store.shutdown()
    }
}

/// Waits for a signal without the default action (which would skip cleanup).
enum Signals {
    static func wait(for signals: [Int32]) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let once = OnceFlag()
            var sources: [any DispatchSourceSignal] = []
            for number in signals {
                signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
                source.setEventHandler {
                    if once.set() { continuation.resume() }
                }
                source.resume()
                sources.append(source)
            }
            Signals.keep(sources)
        }
    }

    private nonisolated(unsafe) static var retained: [any DispatchSourceSignal] = []
    private static func keep(_ sources: [any DispatchSourceSignal]) { retained = sources }
}

/// True the first time only.
final class OnceFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var done = false
    func set() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if done { return false }
        done = true
        return true
    }
}

import EventStore
import Foundation
import Logging
import Metrics
import PostgresClient
import Tracing

/// Runs reactors in this process: each one catches up from its checkpoint, then follows the log,
/// woken by the log writer's NOTIFY. One process owns each reactor at a time (a PostgreSQL
/// advisory lock); the others stand by and take over within `standbyInterval` when the owner
/// dies.
///
/// ```swift
/// let runner = ReactorRunner(reactors: [TransferProcess(store: store)], store: store)
/// try await runner.run()   // until the task is cancelled
/// ```
///
/// For each event the owner checks that its lease session is alive, calls `react(to:)` (again
/// and again, with backoff, until it returns), then moves the checkpoint on that same session,
/// only from where it left it. A process that lost its session therefore never moves the
/// checkpoint, and finds out before it reacts to its next event; what it was reacting to when
/// the session went is handed to the next owner too (at-least-once, see `Reactor`).
public final class ReactorRunner: Sendable {
    public let reactors: [any Reactor]
    public let configuration: ReactorConfiguration
    private let store: EventStore
    private let logger: Logger

    public init(
        reactors: [any Reactor], store: EventStore, configuration: ReactorConfiguration = .init(),
        logger: Logger = Logger(label: "eventline.reactor")
    ) {
        self.reactors = reactors
        self.store = store
        self.configuration = configuration
        self.logger = logger
    }

    /// Runs every reactor until the calling task is cancelled. Throws `ReactorError` at once
    /// for a bad or duplicate name.
    public func run() async throws {
        var names = Set<String>()
        for reactor in reactors {
            guard ReactorCatalog.isValidName(reactor.name) else {
                throw ReactorError("reactor name \(reactor.name) is not [a-z][a-z0-9_]* (at most 63 characters)")
            }
            guard names.insert(reactor.name).inserted else { throw ReactorError("two reactors are named \(reactor.name)") }
        }
        let workers = reactors.map { ReactorWorker(reactor: $0, store: store, configuration: configuration, logger: logger) }
        await withTaskGroup(of: Void.self) { group in
            for worker in workers {
                group.addTask { await worker.run() }
            }
        }
    }
}

/// Runs one reactor: stands by until it holds the lease, then follows the log.
final class ReactorWorker: Sendable {
    let reactor: any Reactor
    let store: EventStore
    let configuration: ReactorConfiguration
    let logger: Logger
    /// The session that holds the lease and moves the checkpoint.
    private let connection: DedicatedConnection
    /// Reported through swift-metrics (the process decides where it goes).
    private let handled: Timer
    private let retries: Counter
    private let retrying: Gauge

    init(reactor: any Reactor, store: EventStore, configuration: ReactorConfiguration, logger: Logger) {
        self.reactor = reactor
        let dimensions = [("reactor", reactor.name)]
        handled = Timer(label: "eventline_reactor_event_seconds", dimensions: dimensions)
        retries = Counter(label: "eventline_reactor_retries_total", dimensions: dimensions)
        retrying = Gauge(label: "eventline_reactor_retrying", dimensions: dimensions)
        self.store = store
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "reactor.name"] = "\(reactor.name)"
        self.logger = logger
        self.connection = DedicatedConnection(conninfo: store.configuration.databaseURL, name: "eventline-reactor-\(reactor.name)") { conn in
            try conn.execute(unsafeSQL: "SET application_name = 'eventline-reactor'")
        }
    }

    /// The lease as this process holds it: the session it lives in.
    struct Lease: Sendable {
        var backendPID: Int32
        var checkpoint: Int
    }

    /// The lease session is gone (another process may own the reactor now), or the checkpoint
    /// moved under us.
    struct LeaseLost: Error, CustomStringConvertible {
        var description: String { "the reactor's lease was lost" }
    }

    /// Runs until the task is cancelled.
    func run() async {
        defer { connection.shutdown() }
        while !Task.isCancelled {
            do {
                guard let lease = try await acquire() else {
                    try await Task.sleep(for: configuration.standbyInterval)
                    continue
                }
                logger.info("reactor lease taken", metadata: ["reactor.checkpoint": "\(lease.checkpoint)"])
                try await follow(lease)
            } catch is CancellationError {
                break
            } catch {
                logger.warning("reactor interrupted; taking the lease again", metadata: ["error": "\(error)"])
                try? await release()
                try? await Task.sleep(for: configuration.standbyInterval)
            }
        }
        try? await release()
    }

    /// Registers the reactor and takes its lease if it is free.
    func acquire() async throws -> Lease? {
        let name = reactor.name
        let owner = configuration.ownerName
        return try await connection.run { conn -> Lease? in
            try conn.execute("INSERT INTO eventline.reactors (name) VALUES (\(name)) ON CONFLICT (name) DO NOTHING")
            guard let row = try conn.query("SELECT lock_id FROM eventline.reactors WHERE name = \(name)").first else {
                throw ReactorError("reactor \(name) is not registered")
            }
            let lockID = try row.decode(0, as: Int.self)
            let locked = try conn.query(
                "SELECT pg_try_advisory_lock(eventline.reactor_lock_namespace(), \(Int32(lockID)))"
            ).first!.decode(0, as: Bool.self)
            guard locked else { return nil }
            let checkpoint = try conn.query("""
                UPDATE eventline.reactors SET owner = \(owner), owner_since = now(), updated_at = now()
                WHERE name = \(name) RETURNING checkpoint
                """).first!.decode(0, as: Int.self)
            return Lease(backendPID: conn.backendPID, checkpoint: checkpoint)
        }
    }

    /// Gives the lease up (a no-op on a session that does not hold it).
    func release() async throws {
        let name = reactor.name
        let owner = configuration.ownerName
        try await connection.run { conn in
            _ = try conn.query("SELECT pg_advisory_unlock_all()")
            try conn.execute("UPDATE eventline.reactors SET owner = NULL WHERE name = \(name) AND owner = \(owner)")
        }
    }

    /// Reacts to events and moves the checkpoint until the lease is lost or the task ends.
    private func follow(_ lease: Lease) async throws {
        // Listen before the first read, so a commit between a read and the wait still wakes us.
        var wakeups = PostgresListener.events(
            conninfo: store.configuration.databaseURL, channels: [EventStore.notificationChannel],
            pollInterval: configuration.pollInterval
        ).makeAsyncIterator()
        var checkpoint = lease.checkpoint
        while true {
            try Task.checkCancellation()
            let head = try await store.headPosition()
            guard head > checkpoint else {
                guard await wakeups.next() != nil else { throw CancellationError() }
                continue
            }
            let events = try await store.readAll(after: checkpoint, limit: configuration.batchSize, filter: reactor.filter)
            for event in events {
                try await react(to: event, lease: lease)
                try await save(from: checkpoint, to: event.position, lease: lease)
                checkpoint = event.position
            }
            // A short page holds every matching event committed before the read, and so every
            // one up to `head`: the events in between are not the reactor's, and it is past them.
            if events.count < configuration.batchSize, head > checkpoint {
                try await save(from: checkpoint, to: head, lease: lease)
                checkpoint = head
            }
        }
    }

    /// Calls the reactor until it handles `event`, with backoff, recording each failure.
    private func react(to event: RecordedEvent, lease: Lease) async throws {
        var attempts = 0
        // The commands it issues meanwhile carry the event as their cause and keep its
        // correlation id; with a tracer, they continue the trace that wrote the event.
        let causing = CausingEvent(event)
        while true {
            try await verify(lease)
            do {
                let started = ContinuousClock.now
                try await CausingEvent.$current.withValue(causing) {
                    guard EventTrace.isEnabled else { return try await reactor.react(to: event) }
                    let span = EventTrace.startSpan("eventline.reactor.react \(reactor.name)", ofKind: .consumer, for: [event])
                    defer { span.end() }
                    span.attributes["eventline.event.position"] = event.position
                    try await ServiceContext.$current.withValue(span.context) { try await reactor.react(to: event) }
                }
                handled.record(duration: ContinuousClock.now - started)
                if attempts > 0 { retrying.record(0) }
                return
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                attempts += 1
                retries.increment()
                retrying.record(1)
                try await recordFailure(position: event.position, message: "\(error)", attempts: attempts, lease: lease)
                let delay = min(configuration.retryDelay * (1 << min(attempts - 1, 16)), configuration.maxRetryDelay)
                logger.warning(
                    "event failed; retrying it",
                    metadata: [
                        "event.position": "\(event.position)", "event.stream": "\(event.stream)", "event.type": "\(event.type)",
                        "error": "\(error)", "attempt": "\(attempts)",
                    ])
                try await Task.sleep(for: delay)
            }
        }
    }

    /// Throws `LeaseLost` unless the lease session is still the one that took the lease and
    /// answers (a session that answers still holds its advisory locks).
    private func verify(_ lease: Lease) async throws {
        try await connection.run { conn in
            guard conn.backendPID == lease.backendPID else { throw LeaseLost() }
            _ = try conn.query("SELECT 1")
        }
    }

    /// Moves the checkpoint on the lease session, only from where this owner left it.
    private func save(from: Int, to: Int, lease: Lease) async throws {
        let name = reactor.name
        try await connection.run { conn in
            guard conn.backendPID == lease.backendPID else { throw LeaseLost() }
            let moved = try conn.execute("""
                UPDATE eventline.reactors
                SET checkpoint = \(to), error = NULL, error_position = NULL, failed_attempts = 0, updated_at = now()
                WHERE name = \(name) AND checkpoint = \(from)
                """)
            guard moved == 1 else { throw LeaseLost() }
        }
    }

    private func recordFailure(position: Int, message: String, attempts: Int, lease: Lease) async throws {
        let name = reactor.name
        try await connection.run { conn in
            guard conn.backendPID == lease.backendPID else { throw LeaseLost() }
            try conn.execute("""
                UPDATE eventline.reactors
                SET error = \(message), error_position = \(position), failed_attempts = \(attempts), updated_at = now()
                WHERE name = \(name)
                """)
        }
    }
}

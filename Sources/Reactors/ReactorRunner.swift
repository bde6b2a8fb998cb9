import EventStore
import Foundation
import Logging
import Metrics
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
        let wakeups = ChangeSignal()
        let timing = FollowSchedule.Timing(
            pollInterval: configuration.pollInterval, standbyInterval: configuration.standbyInterval,
            retryDelay: configuration.retryDelay, maxRetryDelay: configuration.maxRetryDelay)
        let followers = reactors.map { reactor in
            let worker = ReactorWorker(reactor: reactor, store: store, configuration: configuration, logger: logger)
            return LogFollower(consumer: worker, wakeups: wakeups, timing: timing, logger: worker.logger)
        }
        let databaseURL = store.configuration.databaseURL
        let pollInterval = configuration.pollInterval
        await withTaskGroup(of: Void.self) { group in
            // One LISTEN session wakes every reactor of the process.
            let listener = Task { await wakeups.signalCommits(conninfo: databaseURL, pollInterval: pollInterval) }
            for follower in followers {
                group.addTask {
                    await follower.run()
                    follower.consumer.shutdown()
                }
            }
            await withTaskCancellationHandler {
                await group.waitForAll()
            } onCancel: {
                listener.cancel()
            }
            listener.cancel()
        }
    }
}

/// One reactor as a consumer of the log: its lease, its checkpoint, its batches. Its
/// `LogFollower` stands by until it holds the lease, then follows the log.
final class ReactorWorker: LogConsumer {
    let reactor: any Reactor
    let store: EventStore
    let configuration: ReactorConfiguration
    let logger: Logger
    /// The session that holds the lease and moves the checkpoint.
    private let session: LeaseSession
    private let consumer: ConsumerID
    /// Reported through swift-metrics (the process decides where it goes).
    private let handled: Timer
    private let retries: Counter
    private let retrying: Gauge
    private let parkedKeys: Gauge

    init(reactor: any Reactor, store: EventStore, configuration: ReactorConfiguration, logger: Logger) {
        self.reactor = reactor
        let dimensions = [("reactor", reactor.name)]
        handled = Timer(label: "eventline_reactor_event_seconds", dimensions: dimensions)
        retries = Counter(label: "eventline_reactor_retries_total", dimensions: dimensions)
        retrying = Gauge(label: "eventline_reactor_retrying", dimensions: dimensions)
        parkedKeys = Gauge(label: "eventline_reactor_parked_keys", dimensions: dimensions)
        self.store = store
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "reactor.name"] = "\(reactor.name)"
        self.logger = logger
        self.consumer = ConsumerID(.reactor, reactor.name)
        self.session = LeaseSession(
            databaseURL: store.configuration.databaseURL, application: "eventline-reactor", threadName: "eventline-reactor-\(reactor.name)")
    }

    /// The lease as this process holds it: the session it lives in.
    struct Lease: Sendable {
        var held: HeldLease
        var checkpoint: Int { get { held.checkpoint } set { held.checkpoint = newValue } }
        /// Failed attempts at the event after the checkpoint.
        var attempts = 0
        /// The reactor's parked streams: their events are held, not reacted to.
        var parkedKeys: Set<String> = []
        /// Paused when last looked at.
        var paused = false
    }

    func shutdown() { session.shutdown() }

    /// Registers the reactor and takes its lease if it is free.
    func acquire() async throws -> Lease? {
        guard let held = try await session.acquire(consumer, owner: configuration.ownerName) else { return nil }
        let parked = try await session.parkedKeys(held)
        parkedKeys.record(parked.count)
        logger.info("reactor lease taken", metadata: ["reactor.checkpoint": "\(held.checkpoint)", "reactor.parked_keys": "\(parked.count)"])
        return Lease(held: held, parkedKeys: parked)
    }

    /// Gives the lease up (a no-op on a session that does not hold it).
    func release() async {
        await session.release(consumer, owner: configuration.ownerName)
    }

    /// Reacts to the next page of events, moving the checkpoint past each one; stops at an event
    /// that fails (the follower tries it again after a backoff, never skipping it).
    func step(_ lease: inout Lease) async throws -> FollowOutcome {
        let (state, requests) = try await session.state(lease.held)
        guard state == "running" else {
            lease.paused = true  // (onError: then: pause) until resumed
            return .paused
        }
        if lease.paused {
            // Resumed: the event it stopped at gets its retries again.
            lease.paused = false
            lease.attempts = 0
        }
        if requests {
            try await carryOutRequests(&lease)
            return .progressed
        }
        let head = try await store.headPosition()
        guard head > lease.checkpoint else { return .caughtUp }
        let events: [RecordedEvent]
        do {
            events = try await store.readAll(after: lease.checkpoint, limit: configuration.batchSize, filter: reactor.filter)
        } catch let error as EventStoreError where error.code == .masterKey || error.code == .corruptEvent {
            // An event the reactor cannot read: recorded (eventctl status shows it) and retried with backoff.
            try await fail(at: lease.checkpoint + 1, message: error.message, lease: &lease)
            logger.error("the log cannot be read; retrying", metadata: ["error": "\(error.message)", "attempt": "\(lease.attempts)"])
            return .failed
        }
        for event in events {
            try await verify(lease)
            // A parked stream's events wait behind it, in order.
            if lease.parkedKeys.contains(event.stream) {
                try await session.advance(
                    lease.held, from: lease.checkpoint, to: event.position,
                    with: [CheckpointStore.hold(consumer, key: event.stream, position: event.position)])
                lease.checkpoint = event.position
                continue
            }
            do {
                try await react(to: event)
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                let metadata: Logger.Metadata = [
                    "event.position": "\(event.position)", "event.stream": "\(event.stream)", "event.type": "\(event.type)", "error": "\(error)",
                ]
                // The database or the store being unavailable is no fault of the event: retried
                // for as long as it lasts, never parked.
                let transient = Self.isTransient(error)
                try await fail(at: event.position, message: "\(error)", lease: &lease, park: !transient && lease.attempts + 1 >= policy.attempts && policy.then == .pause)
                guard transient || lease.attempts < policy.attempts else {
                    switch policy.then {
                    case .pause:
                        logger.error("reactor paused: an event keeps failing", metadata: metadata)
                        lease.paused = true
                        return .paused
                    case .parkKey, .skip:
                        try await settle(event, message: "\(error)", parkKey: policy.then == .parkKey, lease: &lease)
                        logger.error(
                            policy.then == .parkKey
                                ? "stream parked: its event keeps failing; its later events wait, other streams go on"
                                : "event skipped after failing (onError: skip); recorded in eventline.skipped_events",
                            metadata: metadata)
                        continue
                    }
                }
                logger.warning("event failed; retrying it", metadata: metadata.merging(["attempt": "\(lease.attempts)"]) { $1 })
                return .failed
            }
            if lease.attempts > 0 {
                lease.attempts = 0
                retrying.record(0)
            }
            try await save(from: lease.checkpoint, to: event.position, lease: lease)
            lease.checkpoint = event.position
        }
        // A short page holds every matching event committed before the read, and so every
        // one up to `head`: the events in between are not the reactor's, and it is past them.
        if events.count < configuration.batchSize, head > lease.checkpoint {
            try await save(from: lease.checkpoint, to: head, lease: lease)
            lease.checkpoint = head
        }
        return .progressed
    }

    /// What an event that keeps failing does.
    var policy: ErrorPolicy { reactor.onError ?? configuration.onError }

    /// Whether `error` says the store or the database could not be reached, rather than that the
    /// event could not be handled.
    static func isTransient(_ error: any Error) -> Bool {
        if let error = error as? EventStoreError {
            return [.unavailable, .commitOutcomeUnknown, .shutdown, .database].contains(error.code)
        }
        return false
    }

    /// Parks the event's stream at it (its later events are held) or skips it (recorded), and
    /// moves the checkpoint past it, in one transaction.
    private func settle(_ event: RecordedEvent, message: String, parkKey: Bool, lease: inout Lease) async throws {
        let statements = parkKey
            ? CheckpointStore.park(consumer, key: event.stream, event: event, error: message, attempts: lease.attempts)
            : [CheckpointStore.skip(consumer, key: event.stream, event: event, error: message, by: "policy")]
        try await session.advance(lease.held, from: lease.checkpoint, to: event.position, with: statements)
        lease.checkpoint = event.position
        lease.attempts = 0
        retrying.record(0)
        if parkKey {
            lease.parkedKeys.insert(event.stream)
            parkedKeys.record(lease.parkedKeys.count)
        }
    }

    /// Carries out operators' requests about parked streams: a skip records the stream's
    /// failing event as skipped; then the stream's held events are reacted to in order. A stream
    /// whose held events all go through is released; one whose event fails again stays parked
    /// there (at-least-once, as always: an event reacted to before a crash is reacted to again).
    private func carryOutRequests(_ lease: inout Lease) async throws {
        for (key, request) in try await session.requests(lease.held) {
            var events = try await store.events(at: try await session.held(lease.held, key: key))
            if request == "skip", let first = events.first {
                try await session.skipFirst(lease.held, key: key, event: first)
                events.removeFirst()
            }
            var released = true
            for event in events {
                try await verify(lease)
                do {
                    try await react(to: event)
                } catch is CancellationError {
                    throw CancellationError()
                } catch {
                    try await session.repark(lease.held, key: key, at: event, error: "\(error)", handled: request)
                    logger.warning("a retried parked stream failed again; it stays parked", metadata: ["event.stream": "\(key)", "error": "\(error)"])
                    released = false
                    break
                }
                try await session.handled(lease.held, key: key, position: event.position)
            }
            if released {
                try await session.unpark(lease.held, key: key)
                lease.parkedKeys.remove(key)
                parkedKeys.record(lease.parkedKeys.count)
                logger.notice("parked stream released", metadata: ["event.stream": "\(key)"])
            }
        }
    }

    /// Counts one more failed attempt at the event at `position`, and records it (pausing the
    /// reactor when `park`).
    private func fail(at position: Int, message: String, lease: inout Lease, park: Bool = false) async throws {
        lease.attempts += 1
        retries.increment()
        retrying.record(1)
        try await session.recordFailure(lease.held, position: position, handler: nil, message: message, attempts: lease.attempts, park: park)
    }

    /// Calls the reactor once for `event`, in the event's trace and as the cause of the commands it issues.
    private func react(to event: RecordedEvent) async throws {
        // The commands it issues meanwhile carry the event as their cause and keep its
        // correlation id; with a tracer, they continue the trace that wrote the event.
        let causing = CausingEvent(event)
        let started = ContinuousClock.now
        try await CausingEvent.$current.withValue(causing) {
            guard EventTrace.isEnabled else { return try await reactor.react(to: event) }
            let span = EventTrace.startSpan("eventline.reactor.react \(reactor.name)", ofKind: .consumer, for: [event])
            defer { span.end() }
            span.attributes["eventline.event.position"] = event.position
            try await ServiceContext.$current.withValue(span.context) { try await reactor.react(to: event) }
        }
        handled.record(duration: ContinuousClock.now - started)
    }

    /// Throws `LogLeaseLost` unless the lease session is still the one that took the lease and
    /// answers (a session that answers still holds its advisory locks).
    private func verify(_ lease: Lease) async throws {
        try await session.verify(lease.held)
    }

    /// Moves the checkpoint on the lease session, only from where this owner left it.
    private func save(from: Int, to: Int, lease: Lease) async throws {
        try await session.advance(lease.held, from: from, to: to)
    }

}

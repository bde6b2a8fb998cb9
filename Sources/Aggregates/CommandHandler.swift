import EventStore
import Foundation
import Logging
import Synchronization
import Tracing

/// What a handled command did.
public struct CommandOutcome: Sendable, Hashable {
    /// The aggregate's stream.
    public var stream: String
    /// The stream's version after the command.
    public var version: Int
    /// The log position of the last event written (or of the stream's last event when the
    /// command wrote nothing).
    public var position: Int?
    /// The events the command wrote, with their versions and positions.
    public var events: [AppendedEvent]

    public init(stream: String, version: Int, position: Int?, events: [AppendedEvent]) {
        self.stream = stream
        self.version = version
        self.position = position
        self.events = events
    }
}

extension CommandOutcome {
    /// The outcome of an append that wrote the command's events.
    public init(_ result: AppendResult) {
        self.init(stream: result.stream, version: result.version, position: result.position, events: result.events)
    }
}

/// Errors of command handling that are neither rule violations nor store errors.
public struct AggregateError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

/// A command without an expected version lost the race for its stream on every attempt: other
/// processes kept writing to it. Nothing was written; the command may simply be sent again.
public struct CommandContention: Error, Sendable, CustomStringConvertible {
    public var stream: String
    public var attempts: Int
    public var currentVersion: Int?
    public var description: String {
        "stream \(stream) changed under the command on each of \(attempts) attempts; nothing was written, send it again"
    }
}

/// Handles commands for one aggregate type: load the state, decide, append with the loaded
/// version as the expected version.
///
/// ```swift
/// let accounts = CommandHandler<BankAccount>(store: store)
/// let outcome = try await accounts.handle(id: "42", command: DepositMoney(amount: 500))
/// ```
/// Loading starts from the newest of an in-memory state cache and the latest snapshot, then
/// reads only the events after it, so a command's cost does not grow with its stream's length.
/// Commands for one stream run one at a time in this process. On a version conflict with another
/// process the handler reloads and decides again (bounded retries with jitter), unless the
/// caller named an expected version: then the conflict is the answer. Snapshots are
/// written every `A.snapshotEvery` events, after the command has been answered.
public final class CommandHandler<A: Aggregate>: Sendable {
    /// Handler settings; every field has a default.
    public struct Configuration: Sendable {
        /// Decide-and-append attempts before a conflict with other processes is given up on.
        ///
        /// Every conflict means that another writer committed to the stream after this command
        /// read it, so the bound is how many other writes may get in first. It must exceed what
        /// other processes queue for one stream: a process that runs its queued commands back to
        /// back from its cache wins most races against one that must read after each conflict.
        public var maxAttempts = 100
        /// Streams whose state is kept in memory (a bank account's state is a few dozen bytes).
        public var cacheSize = 100_000
        /// Events read per page while loading.
        public var loadPageSize = 1000

        public init() {}
    }

    private struct Cached: Sendable {
        var version: Int
        var state: A.State
    }

    public let store: EventStore
    public let configuration: Configuration
    /// The aggregate's command and event types, and how they are read and written.
    public let codec = AggregateCodec<A>()
    private let logger: Logger
    private let cache = Mutex<[String: Cached]>([:])
    private let streamLocks = KeyedLock()

    public init(store: EventStore, configuration: Configuration = .init(), logger: Logger = Logger(label: "eventline.aggregates")) {
        self.store = store
        self.configuration = configuration
        self.logger = logger
    }

    /// The stream of the aggregate `id`.
    public func stream(for id: String) throws -> StreamName {
        try StreamName("\(A.category)-\(id)")
    }

    /// Handles `command` for the aggregate `id`. With `expectedVersion`, the command runs only
    /// if the stream is at that version (else `wrongExpectedVersion` with the current version);
    /// without, conflicts with concurrent writers are retried. Throws `RuleViolation` when the
    /// aggregate refuses the command; nothing is written then.
    ///
    /// `eventIDs` names the events the command writes (derived from an idempotency key, say).
    /// A run that finds events with those ids already in the log (an earlier run of the same
    /// request committed them) answers with what that run wrote and writes nothing: on a
    /// conflict or a refusal it looks, and with `resumed` (the earlier run was interrupted) it
    /// looks before deciding at all.
    public func handle(
        id: String, command: any DomainCommand, expectedVersion: Int? = nil, metadata: [String: JSONValue] = [:],
        eventIDs: (@Sendable (Int) -> UUID)? = nil, resumed: Bool = false
    ) async throws -> CommandOutcome {
        let stream = try stream(for: id)
        var metadata = metadata
        CausingEvent.apply(to: &metadata)
        func run(_ metadata: [String: JSONValue]) async throws -> CommandOutcome {
            let metadataJSON = JSONValue.jsonData(metadata)
            return try await streamLocks.withLock(stream.rawValue) {
                if resumed, let earlier = try await earlierOutcome(eventIDs) { return earlier }
                return try await decideAndAppend(
                    stream, command, expectedVersion: expectedVersion, metadata: metadataJSON, eventIDs: eventIDs)
            }
        }
        guard EventTrace.isEnabled else { return try await run(metadata) }
        return try await withSpan("eventline.command \(A.category)") { span in
            span.attributes["eventline.stream"] = stream.rawValue
            // Stored with the events: whoever handles them later continues this trace.
            EventTrace.inject(into: &metadata)
            return try await run(metadata)
        }
    }

    private func decideAndAppend(
        _ stream: StreamName, _ command: any DomainCommand, expectedVersion: Int?, metadata metadataJSON: Data,
        eventIDs: (@Sendable (Int) -> UUID)?
    ) async throws -> CommandOutcome {
        var attempt = 0
        var fresh = false
        let boundary = A.boundary(of: command)
        while true {
            attempt += 1
            // The cached state is trusted without a read: the append below names its version, so
            // a state made stale by another process is caught as a conflict and reloaded.
            var (state, version) = try await EventTrace.withSpan("eventline.load") { try await load(stream, readLog: fresh) }
            if let expectedVersion, expectedVersion != version, !fresh {
                (state, version) = try await load(stream, readLog: true)
            }
            if let expectedVersion, expectedVersion != version {
                throw EventStoreError(
                    code: .wrongExpectedVersion,
                    message: "version conflict on stream \(stream): expected \(expectedVersion), current version is \(version)",
                    stream: stream.rawValue, expectedVersion: .exact(expectedVersion), currentVersion: version)
            }
            // A decision across streams reads the events of its boundary, and the position it
            // read them up to: the append below is conditional on nothing matching since.
            var across: (events: [RecordedEvent], upTo: Int)? = nil
            if let boundary {
                across = try await EventTrace.withSpan("eventline.load_boundary") { try await readBoundary(boundary) }
            }
            var events: [any DomainEvent] = []
            var refusal: RuleViolation? = nil
            do {
                events = try EventTrace.withSpan("eventline.decide") { () throws(RuleViolation) in
                    if let across { try A.decide(command, state, across: across.events) } else { try A.decide(command, state) }
                }
            } catch {
                refusal = error
            }
            if let refusal {
                // A refusal is only an answer when decided on state read from the log: the cache
                // may predate a write that bypassed this handler.
                guard fresh else {
                    fresh = true
                    continue
                }
                // Refused on a state that may hold this very command's events (a retry).
                if let earlier = try await earlierOutcome(eventIDs) { return earlier }
                throw refusal
            }
            guard !events.isEmpty else {
                if !fresh {
                    fresh = true
                    continue
                }
                return CommandOutcome(stream: stream.rawValue, version: version, position: nil, events: [])
            }
            // A plain loop: this generic code runs unspecialised, and `map` over `enumerated()`
            // instantiated generic metadata on every command.
            var newEvents: [NewEvent] = []
            newEvents.reserveCapacity(events.count)
            for index in events.indices {
                newEvents.append(try codec.newEvent(events[index], id: eventIDs?(index), metadata: metadataJSON))
            }
            do {
                let expected: ExpectedVersion = version == 0 ? .noStream : .exact(version)
                let result = try await EventTrace.withSpan("eventline.append") {
                    guard let boundary, let across else {
                        return try await store.append(to: stream, expected: expected, events: newEvents)
                    }
                    return try await store.append(
                        [StreamAppend(stream: stream.rawValue, expected: expected, events: newEvents)],
                        condition: AppendCondition(failIfEventsMatch: boundary, after: across.upTo)
                    ).appends[0]
                }
                if result.wasAlreadyAppended {
                    // An earlier run of this very request committed these events.
                    forget(stream.rawValue)
                    return CommandOutcome(result)
                }
                var newState = state
                for event in events { newState = A.evolve(newState, event) }
                remember(stream.rawValue, Cached(version: result.version, state: newState))
                snapshotIfDue(stream.rawValue, from: version, to: result.version, state: newState)
                return CommandOutcome(result)
            } catch let error as EventStoreError where error.code == .wrongExpectedVersion {
                forget(stream.rawValue)
                fresh = true
                // The conflict may be with this very command's events, written by an earlier run.
                if let earlier = try await earlierOutcome(eventIDs) { return earlier }
                if expectedVersion != nil { throw error }
                guard attempt < configuration.maxAttempts else {
                    throw CommandContention(stream: stream.rawValue, attempts: attempt, currentVersion: error.currentVersion)
                }
                try await backOff(attempt)
            } catch let error as EventStoreError where error.code == .appendConditionFailed {
                // Something the decision did not see happened within its boundary: decide again
                // over the events as they are now (an expected version given is still met).
                if let earlier = try await earlierOutcome(eventIDs) { return earlier }
                guard attempt < configuration.maxAttempts else {
                    throw CommandContention(stream: stream.rawValue, attempts: attempt, currentVersion: nil)
                }
                try await backOff(attempt)
            }
        }
    }

    /// Jittered backoff, so that racing writers of one stream or boundary spread out.
    private func backOff(_ attempt: Int) async throws {
        let ceiling = min(100, 1 << min(attempt, 7))
        try await Task.sleep(for: .microseconds(Int.random(in: 0...(ceiling * 1000))))
    }

    /// Every event matching `boundary`, in log order, and the position the query was evaluated to.
    private func readBoundary(_ boundary: EventQuery) async throws -> (events: [RecordedEvent], upTo: Int) {
        var events: [RecordedEvent] = []
        var after = 0
        while true {
            let page = try await store.read(matching: boundary, after: after, limit: configuration.loadPageSize)
            events += try page.events.map { recorded in
                do {
                    return codec.upcasters.isEmpty ? recorded : try codec.upcasters.upcast(recorded)
                } catch {
                    throw AggregateError(message: "the boundary of a \(A.category) command holds an unreadable \(recorded.type) at position \(recorded.position): \(error)")
                }
            }
            if page.events.count < configuration.loadPageSize { return (events, page.evaluatedUpTo) }
            after = page.evaluatedUpTo
        }
    }

    /// What an earlier run of this request wrote, found by its event ids; nil without ids or
    /// when the log holds none of them.
    private func earlierOutcome(_ eventIDs: (@Sendable (Int) -> UUID)?) async throws -> CommandOutcome? {
        guard let eventIDs, let earlier = try await store.appendedEarlier(withIDs: eventIDs) else { return nil }
        return CommandOutcome(earlier)
    }

    /// The current state and version of `stream`. With `readLog` false, a cached state is
    /// returned as it is (it is current unless another process has written since).
    public func load(_ stream: StreamName, readLog: Bool = true) async throws -> (state: A.State, version: Int) {
        var state = A.initialState
        var version = 0
        if let cached = cache.withLock({ $0[stream.rawValue] }) {
            (state, version) = (cached.state, cached.version)
            if !readLog { return (state, version) }
        } else {
            // Cold: the snapshot and the first page of events after it in one round trip.
            let loaded = try await store.readForLoad(stream.rawValue, stateVersion: A.stateVersion, limit: configuration.loadPageSize)
            var page = loaded.events
            if let snapshot = loaded.snapshot, let decoded = try? JSONDecoder().decode(A.State.self, from: snapshot.data) {
                (state, version) = (decoded, snapshot.version)
            } else if loaded.snapshot != nil || loaded.snapshotUnusable {
                // A snapshot that no longer decodes is ignored: the log is the truth.
                page = try await store.readStream(stream.rawValue, from: 1, limit: configuration.loadPageSize)
            }
            for recorded in page {
                state = try apply(recorded, to: state, in: stream)
                version = recorded.version
            }
            if page.count < configuration.loadPageSize { return (state, version) }
        }
        while true {
            let page = try await store.readStream(stream.rawValue, from: version + 1, limit: configuration.loadPageSize)
            for recorded in page {
                state = try apply(recorded, to: state, in: stream)
                version = recorded.version
            }
            if page.count < configuration.loadPageSize { break }
        }
        return (state, version)
    }

    private func apply(_ recorded: RecordedEvent, to state: A.State, in stream: StreamName) throws -> A.State {
        // A deleted stream takes no command (its append would be refused too).
        if recorded.type == EventStore.tombstoneType { throw EventStoreError.streamDeleted(stream.rawValue) }
        let decoded: (any DomainEvent)?
        do {
            decoded = try codec.event(codec.upcasters.isEmpty ? recorded : codec.upcasters.upcast(recorded))
        } catch {
            // The log holds it already: this is the aggregate's problem, never the caller's input.
            throw AggregateError(message: "stream \(stream) holds an unreadable \(recorded.type) at version \(recorded.version): \(error)")
        }
        guard let event = decoded else {
            throw AggregateError(message: "stream \(stream) holds an event of unknown type \(recorded.type) at version \(recorded.version)")
        }
        return A.evolve(state, event)
    }

    private func remember(_ stream: String, _ entry: Cached) {
        cache.withLock { cache in
            if cache[stream] == nil, cache.count >= configuration.cacheSize, let victim = cache.keys.randomElement() {
                cache.removeValue(forKey: victim)
            }
            if (cache[stream]?.version ?? 0) <= entry.version { cache[stream] = entry }
        }
    }

    private func forget(_ stream: String) {
        _ = cache.withLock { $0.removeValue(forKey: stream) }
    }

    private func snapshotIfDue(_ stream: String, from oldVersion: Int, to newVersion: Int, state: A.State) {
        guard let every = A.snapshotEvery, every > 0, newVersion / every > oldVersion / every else { return }
        let store = self.store
        let logger = self.logger
        // Off the critical path: the command has its answer already.
        Task.detached(priority: .utility) {
            do {
                let data = try JSONEncoder().encode(state)
                try await store.saveSnapshot(stream, Snapshot(version: newVersion, stateVersion: A.stateVersion, data: data))
            } catch {
                logger.warning("snapshot not written", metadata: ["stream.name": "\(stream)", "error": "\(error)"])
            }
        }
    }
}

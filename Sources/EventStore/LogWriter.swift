import Foundation
import Logging
import PostgresClient
import Synchronization
import Tracing

/// An event ready for the log: validated, its data encoded for storage.
struct PreparedEvent: Sendable {
    var id: UUID
    var type: String
    var storedData: Data
    var codec: Int16
    var metadata: Data
    /// The schema version of the data; 0 when none is recorded (stored as NULL).
    var schemaVersion: Int16 = 0
    /// Personal fields still to seal (the store seals them before the append reaches the writer).
    var personal: PendingPersonalData? = nil
    var tags: [String] = []
}

/// An event's personal data, validated, waiting for its subject's key.
struct PendingPersonalData: Sendable {
    var declaration: PersonalData
    /// The event's data and metadata as given (valid JSON).
    var data: [UInt8]
    var metadata: [UInt8]
}

/// One unit for the log writer: appends to one or more streams, written all together or not
/// at all, with expectations about other streams and an optional DCB condition.
struct PreparedAppend: Sendable {
    /// One stream's events.
    struct Part: Sendable {
        var stream: StreamName
        var expected: ExpectedVersion
        var events: [PreparedEvent]
    }

    /// The streams written, in order: their events take consecutive positions in this order.
    var parts: [Part]
    /// Expectations about streams the unit checks but does not write.
    var checks: [StreamCondition] = []
    /// Fails the unit when an event matching its query has a position after its `after`.
    var condition: PreparedCondition? = nil
    /// The stored size of the events' data and metadata, to bound groups by bytes.
    var byteCount: Int
    /// The appender's trace context (with a tracer installed), for the group commit's span.
    var trace: ServiceContext? = nil

    /// The subjects whose personal data the events hold: the append fails if one of them is
    /// forgotten when the writer decides it (a key cached by a writer is no licence).
    var subjects: [String] = []
    /// Statements that run in the transaction that writes this append, after its events, and
    /// only if they are written (not for a failed append, nor for a retry already in the log).
    var effects: [SQLQuery] = []

    init(stream: StreamName, expected: ExpectedVersion, events: [PreparedEvent], byteCount: Int) {
        self.init(parts: [Part(stream: stream, expected: expected, events: events)], byteCount: byteCount)
    }

    init(parts: [Part], byteCount: Int) {
        self.parts = parts
        self.byteCount = byteCount
    }

    /// The first stream written (the one errors of the whole unit name).
    var stream: StreamName { parts[0].stream }
    var eventCount: Int { parts.reduce(0) { $0 + $1.events.count } }

    /// Whether some events have personal fields still to seal.
    var personal: Bool { parts.contains { $0.events.contains { $0.personal != nil } } }
}

/// A unit's outcome: one result per stream part.
typealias UnitOutcome = Result<[AppendResult], any Error>

/// Where an already-written event id sits in the log.
private struct ExistingEvent {
    var stream: String
    var version: Int
    var position: Int
    var type: String
    var recordedAt: Date
}

/// The single writer of the event log in this process (DESIGN.md, "The log").
///
/// Appends queue here; a dedicated connection thread takes everything that queued while the
/// previous batch committed and writes it as one transaction: lock the log head row, read the
/// streams' versions, decide each append's outcome, insert, move the head, NOTIFY, COMMIT. The
/// head lock serialises writers of every process, so positions are dense and commit-ordered.
/// A conflict fails only its own append; a statement that fails for one append makes the batch
/// retry its appends one by one, so each keeps its own outcome.
final class LogWriter: Sendable {
    private struct Pending {
        var append: PreparedAppend
        /// Resumed once: by the outcome, or earlier by the appender's `DatabaseDeadline`.
        var continuation: DatabaseDeadline.Completion<[AppendResult]>
    }

    private struct State {
        var pending: [Pending] = []
        var writing = false
        var closed = false
        /// The appends counted since the last batch was answered, and when it was: how soon
        /// as many arrive as that batch held tells whether waiting for them pays (`gather`).
        var answeredAt: ContinuousClock.Instant? = nil
        var awaitedArrivals = 0
        /// Moving averages, in seconds: how long a batch's worth of appends takes to arrive
        /// after a batch is answered, and how long writing a batch takes.
        var returnTime = 0.0
        var writeTime = 0.0

        /// Counts one arrival; the last one of a batch's worth records how long they took.
        mutating func arrived(at now: ContinuousClock.Instant) {
            guard awaitedArrivals > 0, let answeredAt else { return }
            awaitedArrivals -= 1
            if awaitedArrivals == 0 { recordReturn(now - answeredAt) }
        }

        mutating func recordReturn(_ elapsed: Duration) {
            returnTime += (elapsed.inSeconds - returnTime) / 8
            answeredAt = nil
        }
    }

    /// Counters for metrics and benchmarks.
    struct Statistics: Sendable, Equatable {
        var batches = 0
        var appends = 0
        var events = 0
        /// Time spent writing groups (both round trips and the commit), not waiting for work.
        var writing: Duration = .zero
    }

    static let notificationChannel = "eventline_events"
    private static let maxRowsPerInsert = 1000
    /// Bounds one INSERT's payload (PostgreSQL refuses messages over 1 GB) and one group's.
    private static let maxBytesPerInsert = 16 << 20
    private static let maxBytesPerBatch = 64 << 20

    private let connection: DedicatedConnection
    private let state = Mutex(State())
    /// Signalled on every arrival, so the writer can wait for a group to gather.
    private let arrivals = NSCondition()
    private let groupWindow: Duration
    /// How long the writer keeps asking whether a commit whose connection broke happened.
    private let resolutionWindow: Duration
    private let counters = Mutex(Statistics())
    /// Boxed: a closure kept directly in a `Mutex` is re-abstracted (wrapped in one more thunk)
    /// on every `withLock`, which nests without bound and overflows the stack.
    private final class Observer: Sendable {
        let call: @Sendable (_ appends: Int, _ events: Int) -> Void
        init(_ call: @escaping @Sendable (_ appends: Int, _ events: Int) -> Void) { self.call = call }
    }
    private let observer = Mutex<Observer?>(nil)

    /// Calls `observer` after every committed group with its numbers of appends and events.
    func observeGroups(_ observer: @escaping @Sendable (_ appends: Int, _ events: Int) -> Void) {
        let box = Observer(observer)
        self.observer.withLock { $0 = box }
    }
    private let maxBatchEvents: Int
    private let logger: Logger
    /// The nodes the writer has written to: a new one after a reconnect is a failover.
    let nodes: WriterNodes

    /// How long the writer waits for a silent server (more for large groups), or nil.
    private let answerTimeout: Duration?

    init(
        conninfo: String, maxBatchEvents: Int, groupWindow: Duration, resolutionWindow: Duration, answerTimeout: Duration?,
        connectTimeout: Duration, logger: Logger
    ) {
        self.groupWindow = groupWindow
        self.resolutionWindow = resolutionWindow
        self.answerTimeout = answerTimeout
        let nodes = WriterNodes(logger: logger)
        self.nodes = nodes
        self.connection = DedicatedConnection(conninfo: conninfo, name: "eventline-log-writer", connectTimeout: connectTimeout) { conn in
            nodes.connected(to: conn.node)
            // Named, so that operators can find the writer's session in pg_stat_activity.
            try conn.execute(unsafeSQL: "SET application_name = 'eventline-log-writer'")
            // The writer never idles inside a transaction; if its process hangs there, the server
            // ends the session so the head lock does not block every other writer.
            try conn.execute(unsafeSQL: "SET idle_in_transaction_session_timeout = '15s'")
            // Every statement is prepared and planned once per session (planning each group
            // again cost a sixth of the server's work). A plan made while the log was small
            // must still suit it grown: every look-up goes through its index, never a scan of
            // the table. With scans priced out, JIT would take every plan for a huge one.
            try conn.execute(unsafeSQL: "SET plan_cache_mode = force_generic_plan")
            try conn.execute(unsafeSQL: "SET enable_seqscan = off")
            try conn.execute(unsafeSQL: "SET jit = off")
            // The fast path's single statement runs in an implicit transaction: pinned to
            // READ COMMITTED like the explicit ones, whatever the server's default (below).
            try conn.execute(unsafeSQL: "SET default_transaction_isolation = 'read committed'")
        }
        self.maxBatchEvents = max(1, maxBatchEvents)
        self.logger = logger
    }

    var statistics: Statistics { counters.withLock { $0 } }

    /// Queues `append` for the next group commit and waits for its own outcome.
    func append(_ append: PreparedAppend) async throws -> [AppendResult] {
        // A request whose deadline passes first stops waiting; its append is left in the group
        // (it may commit), so its outcome is unknown: retried with the same event ids, it is
        // applied once.
        let stream = append.parts.first?.stream.rawValue
        return try await DatabaseDeadline.wait({ (continuation: DatabaseDeadline.Completion<[AppendResult]>) in
            let now = ContinuousClock.now
            let startDraining = state.withLock { state -> Bool? in
                if state.closed { return nil }
                state.pending.append(Pending(append: append, continuation: continuation))
                state.arrived(at: now)
                if state.writing { return false }
                state.writing = true
                return true
            }
            switch startDraining {
            case nil:
                continuation.resume(with: .failure(EventStoreError(code: .shutdown, message: "the event store is shut down")))
            case true?:
                if !connection.enqueue({ [self] in self.drain() }) { failPending() }
            case false?:
                arrivals.lock()
                arrivals.signal()
                arrivals.unlock()
            }
        }, onDeadline: {
            EventStoreError(
                code: .commitOutcomeUnknown,
                message: "the request's deadline passed before the database said whether the events were committed; retry with the same event ids",
                stream: stream, underlying: DatabaseDeadline.exceeded("the commit"))
        })
    }

    /// Refuses new appends, lets queued ones commit, then closes the writer's connection.
    func shutdown() async {
        state.withLock { $0.closed = true }
        // The drain job runs before this one on the same thread, so queued appends finish first.
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            if !connection.enqueue({ continuation.resume() }) { continuation.resume() }
        }
        connection.shutdown()
        failPending()
    }

    private func failPending() {
        let pending = state.withLock { state -> [Pending] in
            defer { state.pending = []; state.writing = false }
            return state.pending
        }
        for item in pending {
            item.continuation.resume(with: .failure(EventStoreError(code: .shutdown, message: "the event store is shut down")))
        }
    }

    /// Waits up to the group window until `target` appends are queued, when they are expected
    /// soon. Appenders in this process usually come straight back with their next append;
    /// without this wait they would trail the appends that queued meanwhile by one batch, and
    /// under load the appenders would settle into two half-size groups that commit alternately.
    /// Clients farther away (over HTTP, say) take longer to come back than a batch takes to
    /// write: waiting for them would only idle the writer, so when a batch's worth of appends
    /// has lately taken more than half a batch's write time to arrive, the next batch is
    /// written at once and the clients' round trips overlap the writes.
    private func gather(target: Int) {
        guard groupWindow > .zero, target > 1 else { return }
        let worthWaiting = state.withLock { state in
            state.returnTime <= state.writeTime / 2 && state.returnTime <= groupWindow.inSeconds
        }
        guard worthWaiting else { return }
        let deadline = Date(timeIntervalSinceNow: groupWindow.inSeconds)
        arrivals.lock()
        defer { arrivals.unlock() }
        while state.withLock({ $0.pending.count }) < target, arrivals.wait(until: deadline) {}
    }

    /// Runs on the writer thread until the queue is empty.
    private func drain() {
        var returning = 0
        while true {
            if returning > 1 {
                gather(target: state.withLock { $0.pending.count } + returning)
            }
            let batch = state.withLock { state -> [Pending] in
                guard !state.pending.isEmpty else {
                    state.writing = false
                    return []
                }
                var events = 0
                var bytes = 0
                var count = 0
                for item in state.pending {
                    if count > 0
                        && (events + item.append.eventCount > maxBatchEvents || bytes + item.append.byteCount > Self.maxBytesPerBatch)
                    {
                        break
                    }
                    events += item.append.eventCount
                    bytes += item.append.byteCount
                    count += 1
                }
                defer { state.pending.removeFirst(count) }
                return Array(state.pending.prefix(count))
            }
            if batch.isEmpty { return }
            let started = ContinuousClock.now
            // One span per group commit: the child of the first traced append's span, linked to
            // the others' (each request's trace then shows the commit that made it durable).
            let traces = batch.compactMap(\.append.trace)
            let span = traces.isEmpty ? nil : EventTrace.startSpan("eventline.log_writer.group_commit", parent: traces[0], links: traces.dropFirst())
            span?.attributes["eventline.group.appends"] = batch.count
            let outcomes = write(batch.map(\.append), attempt: 1)
            span?.end()
            let answered = ContinuousClock.now
            let elapsed = answered - started
            counters.withLock { $0.writing += elapsed }
            state.withLock { state in
                // Appends still awaited from the batch before took longer than a whole batch.
                if let previous = state.answeredAt { state.recordReturn(answered - previous) }
                state.writeTime += (elapsed.inSeconds - state.writeTime) / 8
                if batch.count > 1 {
                    (state.answeredAt, state.awaitedArrivals) = (answered, batch.count)
                }
            }
            for (item, outcome) in zip(batch, outcomes) {
                item.continuation.resume(with: outcome)
            }
            returning = batch.count
            if let unreachable = Self.unreachable(outcomes) {
                // The appends that queued while the database could not be reached would only
                // wait as long again to learn the same: they fail now, having written nothing.
                let waiting = state.withLock { state -> [Pending] in
                    defer { state.pending = [] }
                    return state.pending
                }
                for item in waiting {
                    item.continuation.resume(with: .failure(EventStoreError.database(unreachable, stream: item.append.stream.rawValue)))
                }
                returning = 0
            }
        }
    }

    /// The connection failure every outcome of a batch reports, when opening a session failed.
    private static func unreachable(_ outcomes: [UnitOutcome]) -> PostgresError? {
        var failure: PostgresError? = nil
        for outcome in outcomes {
            guard case .failure(let error as EventStoreError) = outcome, error.code == .unavailable,
                let underlying = error.underlying, underlying.code == .connectionFailed || underlying.timedOut
            else { return nil }
            failure = underlying
        }
        return failure
    }

    // MARK: - One batch

    /// Why a batch did not commit.
    private enum BatchFailure: Error {
        /// The connection failed before anything could have been committed.
        case beforeCommit(PostgresError)
        /// A statement failed and the transaction rolled back.
        case statement(PostgresError)
        /// The connection broke after the writes were sent: the commit may or may not have happened.
        case uncertain(
            PostgresError, firstPosition: Int, firstId: UUID, session: Int32, planned: [UnitOutcome])
    }

    private func write(_ appends: [PreparedAppend], attempt: Int) -> [UnitOutcome] {
        do {
            let outcomes = try connection.withConnectionOnThread { conn in try writeBatch(appends, on: conn) }
            return outcomes
        } catch BatchFailure.statement(let error) {
            if appends.count > 1 {
                // Find the append the statement failed for; every other append still commits.
                return appends.flatMap { write([$0], attempt: attempt) }
            }
            logger.warning("append failed", metadata: ["stream.name": "\(appends[0].stream)", "error": "\(error)"])
            return [.failure(EventStoreError.database(error, stream: appends[0].stream.rawValue))]
        } catch BatchFailure.beforeCommit(let error) {
            if attempt < 2 && !error.timedOut { return write(appends, attempt: attempt + 1) }
            return appends.map { .failure(EventStoreError.database(error, stream: $0.stream.rawValue)) }
        } catch BatchFailure.uncertain(let error, let firstPosition, let firstId, let session, let planned) {
            return resolveUncertainCommit(
                appends, error: error, firstPosition: firstPosition, firstId: firstId, session: session, planned: planned,
                attempt: attempt)
        } catch let error as PostgresError {
            // Opening the connection failed: the database is not reachable now. (A session that
            // broke in use is replaced on the next attempt; one that cannot be opened, or a
            // database that does not answer, is not worth a second wait.)
            if attempt < 2 && error.code != .connectionFailed && !error.timedOut { return write(appends, attempt: attempt + 1) }
            return appends.map { .failure(EventStoreError.database(error, stream: $0.stream.rawValue)) }
        } catch {
            return appends.map { _ in .failure(error) }
        }
    }

    /// After a connection broke during COMMIT: the batch committed exactly when its first event
    /// sits at the position planned for it. The broken session may still be alive on the server
    /// with its COMMIT in flight, so the check first ends it, then takes the head lock, which is
    /// granted only once that transaction has finished one way or the other.
    private func resolveUncertainCommit(
        _ appends: [PreparedAppend], error: PostgresError, firstPosition: Int, firstId: UUID, session: Int32,
        planned: [UnitOutcome], attempt: Int
    ) -> [UnitOutcome] {
        // The database may be restarting (a crash ends every session): keep asking until the
        // resolution window closes, so that the client gets the outcome, not "unknown".
        let deadline = ContinuousClock.now + resolutionWindow
        var committed: Bool? = nil
        while true {
            do {
                committed = try connection.withConnectionOnThread { conn in
                    let results = try conn.pipeline([
                        """
                        SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                        WHERE pid = \(Int(session))::int AND pid <> pg_backend_pid() AND application_name = 'eventline-log-writer'
                        """,
                        "BEGIN ISOLATION LEVEL READ COMMITTED",
                        "SET LOCAL lock_timeout = '30s'",
                        "SELECT 1 FROM eventline.log_head FOR UPDATE",
                        "SELECT event_id FROM eventline.events WHERE position = \(firstPosition)",
                        "ROLLBACK",
                    ])
                    return try results[4].get().first?.decode(0, as: UUID.self) == firstId
                }
            } catch let failure as PostgresError where failure.timedOut {
                // A database that does not answer (hung, not restarting) will not say soon.
                break
            } catch {}
            if committed != nil || ContinuousClock.now >= deadline { break }
            Thread.sleep(forTimeInterval: 0.1)
        }
        switch committed {
        case true?:
            logger.notice("commit confirmed after the connection broke", metadata: ["log.position": "\(firstPosition)"])
            return planned
        case false? where attempt < 2:
            return write(appends, attempt: attempt + 1)
        case false?:
            // Definitely not written; the database is not answering well enough to try again now.
            return failWritten(appends, planned) { append in
                EventStoreError.database(error, stream: append.stream.rawValue)
            }
        case nil:
            return failWritten(appends, planned) { append in
                EventStoreError(
                    code: .commitOutcomeUnknown,
                    message: "the database connection broke during commit (\(error.message)); retry with the same event ids",
                    stream: append.stream.rawValue, underlying: error)
            }
        }
    }

    /// Replaces the outcomes of appends that were to be written by `failure`; outcomes decided
    /// before writing (conflicts, idempotent replays) stand.
    private func failWritten(
        _ appends: [PreparedAppend], _ planned: [UnitOutcome],
        _ failure: (PreparedAppend) -> EventStoreError
    ) -> [UnitOutcome] {
        zip(appends, planned).map { append, outcome in
            if case .success(let results) = outcome, results.contains(where: { !$0.wasAlreadyAppended }) { return .failure(failure(append)) }
            return outcome
        }
    }

    /// One row of a batch: an event with its planned place in the log.
    private typealias Row = (position: Int, stream: StreamName, version: Int, event: PreparedEvent)

    /// What this writer knows of the log without reading it: the head after its last commit
    /// and the versions of streams it has lately read or written. Both are exact for as long
    /// as no other process writes, and the fast path checks exactly that, under the head lock.
    /// Touched only on the writer's thread.
    private struct Known {
        var head: Int? = nil
        var versions: [String: Int] = [:]
        /// Streams closed by a tombstone.
        var deleted: Set<String> = []
        /// Batches left to write the long way after the fast path found another writer.
        var pausedBatches = 0
        static let maxStreams = 100_000

        mutating func forget() {
            head = nil
            versions = [:]
            deleted = []
        }

        mutating func learn(head newHead: Int, versions learned: [String: Int], deleted closed: Set<String>) {
            // A version known without its tombstone would let a deleted stream be written: the
            // two are forgotten together.
            if versions.count + learned.count > Self.maxStreams || deleted.count + closed.count > Self.maxStreams {
                versions = [:]
                deleted = []
            }
            versions.merge(learned) { _, new in new }
            deleted.formUnion(closed)
            head = newHead
        }
    }
    private let known = Mutex(Known())

    /// Decides each unit in order, as if they ran one after another, against the streams'
    /// `versions` and the ids already `existing` in the log; plans the rows from `head + 1`.
    /// `versions` ends holding every stream's version after the batch. `conditionHits` holds,
    /// per unit index, the first position up to `head` matching the unit's condition; the rows
    /// planned for earlier units of this batch are checked here.
    private func decide(
        _ appends: [PreparedAppend], head: Int, versions: inout [String: Int], deleted: inout Set<String>,
        forgotten: Set<String> = [], conditionHits: [Int: Int] = [:], existing: [UUID: ExistingEvent], now: Date
    ) -> (outcomes: [UnitOutcome], rows: [Row]) {
        var existing = existing
        var outcomes: [UnitOutcome] = []
        var rows: [Row] = []
        var nextPosition = head + 1
        units: for (index, append) in appends.enumerated() {
            // A retry of a unit that committed finds every part's events in the log.
            var replays: [AppendResult] = []
            for part in append.parts {
                switch idempotentOutcome(part, existing: existing, current: versions[part.stream.rawValue] ?? 0) {
                case .success(let results)?: replays += results
                case .failure(let error)?:
                    outcomes.append(.failure(error))
                    continue units
                case nil: break
                }
            }
            if replays.count == append.parts.count {
                outcomes.append(.success(replays))
                continue
            }
            if !replays.isEmpty {
                // Some parts' ids are in the log and others' are not: not a retry of this unit.
                let id = append.parts.lazy.flatMap(\.events).first { existing[$0.id] != nil }!.id
                outcomes.append(.failure(EventStoreError.duplicateEventId(id, stream: append.stream.rawValue, existingStream: existing[id]!.stream)))
                continue
            }
            // A tombstone closes its stream for good: nothing is appended after it.
            if !deleted.isEmpty, let stream = Self.firstDeleted(append, deleted) {
                outcomes.append(.failure(EventStoreError.streamDeleted(stream)))
                continue
            }
            if let subject = append.subjects.first(where: forgotten.contains) {
                outcomes.append(.failure(EventStoreError.subjectForgotten(subject)))
                continue
            }
            // Plain loops: this runs for every append of every group, on the writer's thread.
            var conflicts: [StreamConflict] = []
            for part in append.parts {
                let current = versions[part.stream.rawValue] ?? 0
                if !part.expected.isSatisfied(by: current) {
                    conflicts.append(StreamConflict(stream: part.stream.rawValue, expected: part.expected, current: current))
                }
            }
            for check in append.checks {
                let current = versions[check.stream] ?? 0
                if !check.expected.isSatisfied(by: current) { conflicts.append(StreamConflict(stream: check.stream, expected: check.expected, current: current)) }
            }
            if !conflicts.isEmpty {
                outcomes.append(.failure(EventStoreError.wrongExpectedVersion(conflicts)))
                continue
            }
            if let condition = append.condition {
                // A decision cannot have read past the head: such an `after` would exempt the
                // events up to it from the condition.
                guard condition.after <= head else {
                    outcomes.append(.failure(EventStoreError.invalidArgument(
                        "condition.after is \(condition.after), beyond the log's head (\(head)): name the position the decision read up to")))
                    continue
                }
                let planned = rows.first { $0.position > condition.after && condition.matches(type: $0.event.type, tags: $0.event.tags) }
                if let hit = conditionHits[index] ?? planned?.position {
                    outcomes.append(.failure(EventStoreError.appendConditionFailed(at: hit, after: condition.after)))
                    continue
                }
            }
            var results: [AppendResult] = []
            for part in append.parts {
                let stream = part.stream.rawValue
                let current = versions[stream] ?? 0
                if part.events.contains(where: { $0.type == EventStore.tombstoneType }) { deleted.insert(stream) }
                var appended: [AppendedEvent] = []
                for (offset, event) in part.events.enumerated() {
                    let version = current + offset + 1
                    rows.append((nextPosition, part.stream, version, event))
                    appended.append(AppendedEvent(id: event.id, type: event.type, version: version, position: nextPosition))
                    existing[event.id] = ExistingEvent(
                        stream: stream, version: version, position: nextPosition, type: event.type, recordedAt: now)
                    nextPosition += 1
                }
                versions[stream] = current + part.events.count
                results.append(AppendResult(
                    stream: stream, version: current + part.events.count, position: nextPosition - 1, events: appended,
                    recordedAt: now, wasAlreadyAppended: false))
            }
            outcomes.append(.success(results))
        }
        return (outcomes, rows)
    }

    /// The first stream of `append`, written or checked, that a tombstone closes.
    private static func firstDeleted(_ append: PreparedAppend, _ deleted: Set<String>) -> String? {
        for part in append.parts where deleted.contains(part.stream.rawValue) { return part.stream.rawValue }
        for check in append.checks where deleted.contains(check.stream) { return check.stream }
        return nil
    }

    /// The rows as the binary arrays every insert of the writer unnests, in column order.
    private static func rowArrays(_ rows: ArraySlice<Row>) -> [PostgresBinaryArray] {
        [
            PostgresBinaryArray(int8: rows.map(\.position)), PostgresBinaryArray(text: rows.map(\.stream.rawValue)),
            PostgresBinaryArray(int8: rows.map(\.version)), PostgresBinaryArray(uuid: rows.map(\.event.id)),
            PostgresBinaryArray(text: rows.map(\.event.type)), PostgresBinaryArray(bytea: rows.map(\.event.storedData)),
            PostgresBinaryArray(int2: rows.map(\.event.codec)), PostgresBinaryArray(jsonb: rows.map(\.event.metadata)),
            PostgresBinaryArray(int2: rows.map(\.event.schemaVersion)),
            // Tags joined by newlines (a tag holds none), NULL for none: the insert splits them.
            PostgresBinaryArray(optionalText: rows.map { $0.event.tags.isEmpty ? nil : $0.event.tags.joined(separator: "\n") }),
        ]
    }

    private func writeBatch(_ appends: [PreparedAppend], on conn: PostgresConnection) throws -> [UnitOutcome] {
        // A large group takes the server longer to insert: a second more per 8 MiB.
        conn.answerTimeout = answerTimeout.map { base in
            base + .seconds(appends.reduce(0) { $0 + $1.byteCount } / (8 << 20))
        }
        if let outcomes = try writeKnownBatch(appends, on: conn) { return outcomes }
        return try writeReadBatch(appends, on: conn)
    }

    private func committed(_ appends: [PreparedAppend], rows: Int) {
        counters.withLock { counters in
            counters.batches += 1
            counters.appends += appends.count
            counters.events += rows
        }
        observer.withLock { $0 }?.call(appends.count, rows)
    }

    /// The fast path, one round trip: when every append succeeds against what the writer knows,
    /// the head moves only if it still stands where the writer left it (so nobody else has
    /// written since and every known version is current), and the events are inserted in the
    /// same statement, stamped with the time the head lock was granted. Returns nil, having
    /// written nothing, when the batch needs the log read first: an unknown stream, an append
    /// that would fail, an id already in the log (a unique violation), or another writer.
    private func writeKnownBatch(_ appends: [PreparedAppend], on conn: PostgresConnection) throws -> [UnitOutcome]? {
        let plan = known.withLock { known -> (head: Int, versions: [String: Int])? in
            if known.pausedBatches > 0 {
                known.pausedBatches -= 1
                return nil
            }
            guard let head = known.head else { return nil }
            var versions: [String: Int] = [:]
            for append in appends {
                // Effects and conditions over queries (read under the head lock), and appends
                // to deleted streams (refused), go the long way.
                guard append.effects.isEmpty, append.condition == nil else { return nil }
                for part in append.parts {
                    let stream = part.stream.rawValue
                    if known.deleted.contains(stream) { return nil }
                    if versions[stream] != nil { continue }
                    if let version = known.versions[stream] {
                        versions[stream] = version
                    } else if part.expected == .noStream {
                        // A stream that exists after all makes its version 1 a unique violation.
                        versions[stream] = 0
                    } else {
                        return nil
                    }
                }
                // A stream only checked must be known: nothing would catch a wrong guess.
                for check in append.checks {
                    if known.deleted.contains(check.stream) { return nil }
                    if versions[check.stream] != nil { continue }
                    guard let version = known.versions[check.stream] else { return nil }
                    versions[check.stream] = version
                }
            }
            return (head, versions)
        }
        guard let plan else { return nil }
        var versions = plan.versions
        var deleted: Set<String> = []
        // The time is a placeholder until the database answers; it is not written.
        var (outcomes, rows) = decide(appends, head: plan.head, versions: &versions, deleted: &deleted, existing: [:], now: Date())
        guard let firstRow = rows.first,
            !outcomes.contains(where: { if case .failure = $0 { true } else { false } }),
            rows.count <= Self.maxRowsPerInsert, rows.reduce(0, { $0 + $1.event.storedData.count }) <= Self.maxBytesPerInsert
        else { return nil }
        let newHead = plan.head + rows.count
        let arrays = Self.rowArrays(rows[...])
        let tags = Self.tagArrays(rows[...]) ?? Self.noTags
        // One statement, so one implicit transaction: it commits whole or not at all.
        let statements: [SQLQuery] = [
            // The head row's lock is taken by the UPDATE, which waits for any other writer and
            // then moves the head only from where this writer left it. The notification is
            // delivered at COMMIT, so listeners never hear of uncommitted events.
            SQLQuery("""
                WITH head AS (
                    UPDATE eventline.log_head SET position = \(newHead) WHERE position = \(plan.head)
                      AND NOT EXISTS (
                          SELECT 1 FROM eventline.subject_keys
                          WHERE subject = ANY(\(PostgresBinaryArray(text: appends.flatMap(\.subjects)))) AND wrapped_key IS NULL)
                    RETURNING clock_timestamp() AS now, pg_notify(\(Self.notificationChannel), position::text)
                ), written AS (
                    INSERT INTO eventline.events (position, stream, version, event_id, type, data, codec, metadata, recorded_at, schema_version, tags)
                    SELECT batch.position, batch.stream, batch.version, batch.event_id, batch.type, batch.data, batch.codec,
                           batch.metadata, head.now, NULLIF(batch.schema_version, 0), string_to_array(batch.tags, E'\\n')
                    FROM head, unnest(\(arrays[0]), \(arrays[1]), \(arrays[2]), \(arrays[3]), \(arrays[4]), \(arrays[5]), \(arrays[6]), \(arrays[7]), \(arrays[8]), \(arrays[9]))
                         AS batch (position, stream, version, event_id, type, data, codec, metadata, schema_version, tags)
                    RETURNING 1
                ), tagged AS (
                    -- Runs (a data-modifying WITH always does) only if the head moved.
                    INSERT INTO eventline.event_tags (tag, position)
                    SELECT tagged.tag, tagged.position FROM head, unnest(\(tags.tags), \(tags.positions)) AS tagged (tag, position)
                )
                SELECT now, (SELECT count(*) FROM written) FROM head
                """).prepared()
        ]
        let results: [Result<PostgresResult, PostgresError>]
        do {
            results = try sendWrites(statements, on: conn, firstRow: firstRow, planned: outcomes)
        } catch let error as PostgresError {
            // Refused before or after running: the long way reads the log again, and finds
            // these ids there if they were written after all.
            logger.debug("the one-round-trip append failed", metadata: ["error": "\(error)"])
            known.withLock { $0.forget() }
            return nil
        }
        if results.contains(where: { if case .failure = $0 { true } else { false } }) {
            // An id already in the log, or a stream that exists after all: nothing was written.
            return nil
        }
        guard case .success(let answer) = results[0], let row = answer.first,
            (try? row.decode(1, as: Int.self)) == rows.count, let now = try? row.decode(0, as: Date.self)
        else {
            // Another writer moved the head, so this transaction committed nothing; its
            // streams' versions are unknown now, and while it keeps writing the fast path would
            // miss. (An answer that cannot be read ends the same way: the long way finds the
            // events if they were written.)
            known.withLock { known in
                known.forget()
                known.pausedBatches = 16
            }
            return nil
        }
        for index in outcomes.indices {
            guard case .success(var results) = outcomes[index] else { continue }
            for part in results.indices { results[part].recordedAt = now }
            outcomes[index] = .success(results)
        }
        known.withLock { $0.learn(head: newHead, versions: versions, deleted: deleted) }
        committed(appends, rows: rows.count)
        return outcomes
    }

    /// Sends the statements that end a batch, its COMMIT among them (explicit or implicit).
    /// A connection broken meanwhile leaves the commit uncertain (`BatchFailure.uncertain`), and
    /// the writer forgets what it knew of the log. Other errors are the statements' own.
    private func sendWrites(
        _ statements: [SQLQuery], on conn: PostgresConnection, firstRow: Row, planned: [UnitOutcome]
    ) throws -> [Result<PostgresResult, PostgresError>] {
        let session = conn.backendPID
        func uncertain(_ error: PostgresError) -> BatchFailure {
            known.withLock { $0.forget() }
            return .uncertain(error, firstPosition: firstRow.position, firstId: firstRow.event.id, session: session, planned: planned)
        }
        let results: [Result<PostgresResult, PostgresError>]
        do {
            results = try conn.pipeline(statements)
        } catch let error as PostgresError where error.isConnectionError {
            throw uncertain(error)
        }
        for case .failure(let error) in results where error.isConnectionError { throw uncertain(error) }
        return results
    }

    /// The long way, two round trips: lock the head and read the streams' versions and any
    /// given ids already in the log; then decide, insert, move the head, notify and commit.
    private func writeReadBatch(_ appends: [PreparedAppend], on conn: PostgresConnection) throws -> [UnitOutcome] {
        // Phase 1, one round trip: lock the head, then read what the decisions need.
        let streams = Array(Set(appends.flatMap { $0.parts.map(\.stream.rawValue) + $0.checks.map(\.stream) }))
        // Every id is looked up, generated ones too: a hit can only be a retry of the same event.
        let ids = appends.flatMap { $0.parts.flatMap { $0.events.map(\.id) } }
        // Every statement of a batch has fixed text and is prepared once per session: rows
        // travel as binary arrays, so planning costs nothing per batch.
        var reads: [SQLQuery] = [
            // Pinned, whatever the server's default: under REPEATABLE READ a second process's
            // writer would fail with a serialization error every time the head moved.
            "BEGIN ISOLATION LEVEL READ COMMITTED",
            SQLQuery("SELECT position, clock_timestamp() FROM eventline.log_head FOR UPDATE").prepared(),
            // Read after the head lock is held: each statement sees every batch committed before.
            // Each stream's last event: its version, and whether it is a tombstone.
            SQLQuery("""
                SELECT name, last.version, last.type
                FROM unnest(\(PostgresBinaryArray(text: streams))) AS batch (name)
                LEFT JOIN LATERAL (
                    SELECT version, type FROM eventline.events WHERE stream = name ORDER BY version DESC LIMIT 1
                ) last ON true
                """).prepared(),
        ]
        reads.append(SQLQuery("""
            SELECT event_id, stream, version, position, type, recorded_at FROM eventline.events
            WHERE event_id = ANY(\(PostgresBinaryArray(uuid: ids)))
            """).prepared())
        // Read under the head lock: a forget committed before this batch is seen.
        reads.append(SQLQuery("""
            SELECT subject FROM eventline.subject_keys
            WHERE subject = ANY(\(PostgresBinaryArray(text: Array(Set(appends.flatMap(\.subjects)))))) AND wrapped_key IS NULL
            """).prepared())
        // The units' conditions, each item probing its index for the first match after `after`.
        let conditionItems = appends.enumerated().flatMap { index, append in
            (append.condition?.items ?? []).map { (unit: index, after: append.condition!.after, item: $0) }
        }
        if !conditionItems.isEmpty {
            let arrays = EventStore.conditionArrays(conditionItems)
            reads.append(SQLQuery("""
                SELECT q.unit, min(hit.position)
                FROM unnest(\(arrays.units), \(arrays.afters), \(arrays.tags), \(arrays.types)) AS q (unit, after, tags, types)
                CROSS JOIN LATERAL (\(unsafeSQL: EventStore.matchingPositions(limit: "1"))) hit
                GROUP BY q.unit
                """).prepared())
        }
        let readResults: [PostgresResult]
        do {
            readResults = try conn.pipeline(reads).map { try $0.get() }
        } catch let error as PostgresError {
            conn.rollbackQuietly()
            known.withLock { $0.forget() }
            throw error.isConnectionError ? BatchFailure.beforeCommit(error) : BatchFailure.statement(error)
        }
        guard let headRow = readResults[1].first else {
            conn.rollbackQuietly()
            throw BatchFailure.statement(PostgresError(
                code: .server, message: "eventline.log_head has no row; run eventctl migrate"))
        }
        let head = try headRow.decode(0, as: Int.self)
        let now = try headRow.decode(1, as: Date.self)
        var versions: [String: Int] = [:]
        var deleted: Set<String> = []
        for row in readResults[2].rows {
            let stream = try row.decode(0, as: String.self)
            versions[stream] = try row.decode(1, as: Int?.self) ?? 0
            if try row.decode(2, as: String?.self) == EventStore.tombstoneType { deleted.insert(stream) }
        }
        var existing: [UUID: ExistingEvent] = [:]
        for row in readResults[3].rows {
            existing[try row.decode(0, as: UUID.self)] = ExistingEvent(
                stream: try row.decode(1), version: try row.decode(2), position: try row.decode(3),
                type: try row.decode(4), recordedAt: try row.decode(5))
        }
        var forgotten: Set<String> = []
        for row in readResults[4].rows { forgotten.insert(try row.decode(0, as: String.self)) }
        var conditionHits: [Int: Int] = [:]
        if !conditionItems.isEmpty {
            for row in readResults[5].rows { conditionHits[try row.decode(0, as: Int.self)] = try row.decode(1, as: Int.self) }
        }
        // Versions known from before are current only if nobody else has written since.
        known.withLock { known in
            if known.head != head { known.forget() }
        }

        let (outcomes, rows) = decide(
            appends, head: head, versions: &versions, deleted: &deleted, forgotten: forgotten, conditionHits: conditionHits,
            existing: existing, now: now)
        guard let firstRow = rows.first else {
            // Nothing to write: release the head lock.
            conn.rollbackQuietly()
            known.withLock { $0.learn(head: head, versions: versions, deleted: deleted) }
            return outcomes
        }

        // Phase 2, one round trip: insert, move the head, notify, commit.
        var writes: [SQLQuery] = []
        var start = 0
        while start < rows.count {
            var end = start + 1
            var bytes = rows[start].event.storedData.count
            while end < rows.count && end - start < Self.maxRowsPerInsert
                && bytes + rows[end].event.storedData.count <= Self.maxBytesPerInsert
            {
                bytes += rows[end].event.storedData.count
                end += 1
            }
            let arrays = Self.rowArrays(rows[start..<end])
            writes.append(SQLQuery("""
                INSERT INTO eventline.events (position, stream, version, event_id, type, data, codec, metadata, recorded_at, schema_version, tags)
                SELECT position, stream, version, event_id, type, data, codec, metadata, \(now), NULLIF(schema_version, 0),
                       string_to_array(tags, E'\\n')
                FROM unnest(\(arrays[0]), \(arrays[1]), \(arrays[2]), \(arrays[3]), \(arrays[4]), \(arrays[5]), \(arrays[6]), \(arrays[7]), \(arrays[8]), \(arrays[9]))
                     AS batch (position, stream, version, event_id, type, data, codec, metadata, schema_version, tags)
                """).prepared())
            if let tags = Self.tagArrays(rows[start..<end]) {
                writes.append(SQLQuery("""
                    INSERT INTO eventline.event_tags (tag, position) SELECT tag, position FROM unnest(\(tags.tags), \(tags.positions)) AS t (tag, position)
                    """).prepared())
            }
            start = end
        }
        // The effects of the appends written here, in the same transaction.
        for (append, outcome) in zip(appends, outcomes) {
            guard case .success(let results) = outcome, results.contains(where: { !$0.wasAlreadyAppended }) else { continue }
            writes += append.effects
        }
        let newHead = rows[rows.count - 1].position
        // The notification is delivered at COMMIT, so listeners never hear of uncommitted events.
        writes.append(SQLQuery("""
            UPDATE eventline.log_head SET position = \(newHead)
            RETURNING pg_notify(\(Self.notificationChannel), position::text)
            """).prepared())
        writes.append("COMMIT")

        let writeResults: [Result<PostgresResult, PostgresError>]
        do {
            writeResults = try sendWrites(writes, on: conn, firstRow: firstRow, planned: outcomes)
        } catch let error as PostgresError {
            conn.rollbackQuietly()
            known.withLock { $0.forget() }
            throw BatchFailure.statement(error)
        }
        for result in writeResults {
            guard case .failure(let error) = result else { continue }
            known.withLock { $0.forget() }
            throw BatchFailure.statement(error)
        }
        known.withLock { $0.learn(head: newHead, versions: versions, deleted: deleted) }
        committed(appends, rows: rows.count)
        return outcomes
    }

    private static let noTags = (tags: PostgresBinaryArray(text: []), positions: PostgresBinaryArray(int8: []))

    /// One row per tag of `rows`, as the arrays the tags' insert unnests.
    private static func tagArrays(_ rows: ArraySlice<Row>) -> (tags: PostgresBinaryArray, positions: PostgresBinaryArray)? {
        var tags: [String] = []
        var positions: [Int] = []
        for row in rows {
            for tag in row.event.tags {
                tags.append(tag)
                positions.append(row.position)
            }
        }
        guard !tags.isEmpty else { return nil }
        return (PostgresBinaryArray(text: tags), PostgresBinaryArray(int8: positions))
    }

    /// The outcome of a part whose given event ids are already in the log, or nil when none is.
    private func idempotentOutcome(
        _ append: PreparedAppend.Part, existing: [UUID: ExistingEvent], current: Int
    ) -> UnitOutcome? {
        // The common case, no id in the log, allocates nothing.
        guard append.events.contains(where: { existing[$0.id] != nil }) else { return nil }
        let stream = append.stream.rawValue
        let found = append.events.map { existing[$0.id] }
        guard let firstIndex = found.firstIndex(where: { $0 != nil }), let first = found[firstIndex] else { return nil }
        let stored = found.compactMap { $0 }
        let sameStreamInOrder = stored.count == found.count
            && stored.enumerated().allSatisfy { offset, event in
                event.stream == stream && event.version == stored[0].version + offset
            }
        guard sameStreamInOrder, let start = stored.first, let last = stored.last else {
            return .failure(EventStoreError.duplicateEventId(
                append.events[firstIndex].id, stream: stream, existingStream: first.stream))
        }
        guard append.expected.isSatisfied(by: start.version - 1) else {
            return .failure(EventStoreError.wrongExpectedVersion(stream, expected: append.expected, current: current))
        }
        let events = zip(append.events, stored).map { event, stored in
            AppendedEvent(id: event.id, type: stored.type, version: stored.version, position: stored.position)
        }
        return .success([AppendResult(
            stream: stream, version: last.version, position: last.position, events: events, recordedAt: last.recordedAt,
            wasAlreadyAppended: true)])
    }
}

/// The node (`host:port`) the log writer's session reached, and how many times it changed:
/// with a multi-host URL, a reconnect that lands on another node follows a failover. Each is
/// logged once, when the writer's first session on the new primary opens.
final class WriterNodes: Sendable {
    private let state = Mutex<(node: String?, failovers: Int)>((nil, 0))
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    var current: (node: String?, failovers: Int) { state.withLock { $0 } }

    func connected(to node: String?) {
        guard let node else { return }
        let previous = state.withLock { state -> String? in
            defer { state.node = node }
            if let was = state.node, was != node { state.failovers += 1 }
            return state.node
        }
        if let previous, previous != node {
            logger.warning("failover: the log writer now writes to \(node) (was \(previous))", metadata: ["db.primary": "\(node)", "db.primary.previous": "\(previous)"])
        }
    }
}

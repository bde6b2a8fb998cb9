import EventStore
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import PostgresClient
import Projector
import ServiceLifecycle
import Synchronization

/// The live feed of the log (`GET /v1/events/live`): each client catches up from the table,
/// then follows the log writer's NOTIFY, one page at a time.
///
/// One LISTEN session and one reader per server follow the log's head and keep its newest
/// events in memory (the tail: a contiguous run of positions, bounded in events and bytes).
/// A client at the tail takes what matches its filter from there, so a commit costs one read
/// however many clients follow; a client behind the tail (catching up, or slow) reads its own
/// pages from the table. A client never skips or repeats an event: it moves "after the last
/// position seen", over dense, commit-ordered positions. It holds at most one page: the next is
/// taken only once the last is written, so a slow client is served from the table at its own
/// pace and never buffered without bound. On graceful shutdown every stream ends with a final comment,
/// so that the server can stop (and the client reconnect elsewhere with `Last-Event-ID`).
final class LiveFeed: Service, Sendable {
    let store: EventStore
    let heartbeat: Duration
    /// Signalled at every commit, every poll tick and every reconnect of the listener (the
    /// server's one LISTEN session).
    let head = ChangeSignal()
    /// Signalled when the tail has new events (or the feed closes).
    let tailed = ChangeSignal()
    /// Signalled when a client connects: the tail is kept only while someone follows it.
    fileprivate let demand = ChangeSignal()
    /// The newest events of the log: every event after `start` up to `end`, in position order.
    fileprivate struct Tail {
        var start: Int
        var end: Int
        var events: [RecordedEvent] = []
        var bytes = 0
    }
    /// Nil until the reader has found the head.
    fileprivate let tail = Mutex<Tail?>(nil)
    static let tailEvents = 10_000
    static let tailBytes = 16 << 20
    private let closing = Atomic<Bool>(false)
    private let streaming = Atomic<Int>(0)
    /// Clients streaming now (for metrics).
    var clients: Int { streaming.load(ordering: .relaxed) }

    /// Also signalled at every commit and poll tick (for waiting consumer-group fetches).
    private let commits: ChangeSignal?

    /// Streams allowed at once, in all and per client (an API key, or an address when the API
    /// is open). A stream holds its connection for as long as the client stays: without a
    /// bound of their own, idle streams would take every connection the server has, and
    /// health checks and commands with them.
    let maxClients: Int
    let maxClientsPerClient: Int
    /// Slots taken: streams running, and responses returned whose stream has not ended.
    private let slots = Mutex<(total: Int, byClient: [String: Int])>((0, [:]))

    init(store: EventStore, heartbeat: Duration, commits: ChangeSignal? = nil, maxClients: Int = 256, maxClientsPerClient: Int = 64) {
        self.store = store
        self.heartbeat = heartbeat
        self.commits = commits
        self.maxClients = max(1, maxClients)
        self.maxClientsPerClient = max(1, maxClientsPerClient)
    }

    /// A stream's place among the bounded few. It is given back when the last reference goes:
    /// the response body holds it, so a stream that ends, and a response never written (its
    /// client gone first), both give it back.
    final class Slot: Sendable {
        private let feed: LiveFeed
        private let client: String

        fileprivate init(feed: LiveFeed, client: String) {
            self.feed = feed
            self.client = client
        }

        deinit { feed.giveBack(client) }
    }

    /// Takes a slot for `client`, or throws 503 with Retry-After when the server's or the
    /// client's streams are all taken.
    func takeSlot(client: String) throws -> Slot {
        let refusal = slots.withLock { slots -> String? in
            if slots.total >= maxClients {
                return "the server streams to \(maxClients) live feed clients at most, and all are taken"
            }
            if slots.byClient[client, default: 0] >= maxClientsPerClient {
                return "a client (an API key, or an address when the API is open) may follow the live feed \(maxClientsPerClient) times at once, and this one does"
            }
            slots.total += 1
            slots.byClient[client, default: 0] += 1
            return nil
        }
        if let refusal {
            throw Problem(
                .serviceUnavailable, "live-clients-exhausted", "Too many live feed clients", detail: "\(refusal); retry later",
                headers: [.retryAfter: "5"])
        }
        return Slot(feed: self, client: client)
    }

    fileprivate func giveBack(_ client: String) {
        slots.withLock { slots in
            slots.total -= 1
            let left = slots.byClient[client, default: 1] - 1
            slots.byClient[client] = left > 0 ? left : nil
        }
    }

    func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                let commits = self.commits
                let events = PostgresListener.events(
                    conninfo: self.store.configuration.databaseURL, channels: [EventStore.notificationChannel],
                    pollInterval: self.store.configuration.subscriptionPollInterval)
                for await _ in events {
                    self.head.signal()
                    commits?.signal()
                }
            }
            group.addTask {
                // Its tick is also the heartbeat clock of the clients at the tail.
                let timing = FollowSchedule.Timing(
                    pollInterval: min(self.store.configuration.subscriptionPollInterval, self.heartbeat), standbyInterval: .seconds(1),
                    retryDelay: .milliseconds(50), reconnectDelay: .milliseconds(50))
                await LogFollower(consumer: TailReader(feed: self), wakeups: self.head, timing: timing, logger: Logger(label: "eventline.live")).run()
            }
            try? await gracefulShutdown()
            group.cancelAll()
        }
    }

    /// Reads every new event once, into the tail, while someone follows it: its lease is
    /// demand (no client, no reading, so an idle feed costs the log writer's commits nothing).
    private struct TailReader: LogConsumer {
        let feed: LiveFeed

        /// Waits for a client, then starts the tail at the log's head.
        func acquire() async throws -> Int? {
            while feed.clients == 0 {
                let wanted = feed.demand.generation
                if feed.clients == 0 { await feed.demand.wait(after: wanted) }
                try Task.checkCancellation()
            }
            let position = try await feed.store.headPosition()
            feed.tail.withLock { $0 = Tail(start: position, end: position) }
            return position
        }

        /// Appends the next page of the log to the tail; `end` is the tail's last position.
        func step(_ end: inout Int) async throws -> FollowOutcome {
            guard feed.clients > 0 else { return .released }
            let store = feed.store
            let page = try await store.readAll(
                after: end, limit: store.configuration.subscriptionBatchSize, maxBytes: store.configuration.subscriptionPageBytes)
            guard let last = page.last else {
                // Also a tick for the clients at the tail, which wait with no timer of their
                // own: they look at their heartbeat at least once per poll interval (which is
                // no longer than the heartbeat).
                feed.tailed.signal()
                return .caughtUp
            }
            end = last.position
            // Events in memory were read decrypted: a forget that reaches the tail erases them
            // there too, as the table reads them from now on.
            let forgotten = Set(page.compactMap(\.forgottenSubject))
            feed.tail.withLock { tail in
                guard var current = tail else { return }
                if !forgotten.isEmpty { current.events = current.events.map { $0.erasingPersonalData(of: forgotten) } }
                current.events += forgotten.isEmpty ? page : page.map { $0.erasingPersonalData(of: forgotten) }
                current.bytes += page.reduce(0) { $0 + $1.data.count + $1.metadata.count }
                current.end = last.position
                // Bounded: the oldest go; a client behind them reads the table.
                var drop = 0
                while drop < current.events.count
                    && (current.events.count - drop > LiveFeed.tailEvents || current.bytes > LiveFeed.tailBytes)
                {
                    current.bytes -= current.events[drop].data.count + current.events[drop].metadata.count
                    drop += 1
                }
                if drop > 0 {
                    current.start = current.events[drop - 1].position
                    current.events.removeFirst(drop)
                }
                tail = current
            }
            feed.tailed.signal()
            return .progressed
        }

        /// Drops the tail: the clients read the table until it starts again.
        func release() async {
            feed.tail.withLock { $0 = nil }
            feed.tailed.signal()
        }
    }

    /// What the tail holds for a client after `position`: nil when the client is behind the
    /// tail (it must read the table); else the events that match `filter` (at most `limit`) and
    /// the position the client has then seen up to.
    private func fromTail(after position: Int, filter: EventFilter, limit: Int) -> (events: [RecordedEvent], upTo: Int)? {
        tail.withLock { tail -> ([RecordedEvent], Int)? in
            guard let tail, position >= tail.start, position <= tail.end else { return nil }
            var matching: [RecordedEvent] = []
            var upTo = position
            // Positions are dense: the event after `position` sits at a known index.
            var index = position - tail.start
            while index < tail.events.count && matching.count < limit {
                let event = tail.events[index]
                if filter.matches(event) { matching.append(event) }
                upTo = event.position
                index += 1
            }
            return (matching, upTo)
        }
    }

    /// Ends every stream (the server is shutting down).
    func close() {
        closing.store(true, ordering: .relaxed)
        head.signal()
        tailed.signal()
    }

    var isClosing: Bool { closing.load(ordering: .relaxed) }

    enum Format {
        case serverSentEvents
        case ndjson

        var contentType: String {
            switch self {
            case .serverSentEvents: "text/event-stream"
            case .ndjson: "application/x-ndjson"
            }
        }

        /// One event, framed. Stored data is validated JSON, so a line break in it can only be
        /// whitespace between tokens: SSE carries it as a second `data:` line, NDJSON as a space.
        func frame(_ event: RecordedEvent) -> String {
            let json = JSONIO.event(event, includeStream: true)
            switch self {
            case .serverSentEvents:
                let lines = json.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\r", with: "\n")
                    .split(separator: "\n", omittingEmptySubsequences: false)
                return "id: \(event.position)\n" + lines.map { "data: \($0)\n" }.joined() + "\n"
            case .ndjson:
                return json.replacingOccurrences(of: "\r", with: " ").replacingOccurrences(of: "\n", with: " ") + "\n"
            }
        }

        /// A line a client ignores: a comment in SSE, an empty line in NDJSON.
        func comment(_ text: String) -> String {
            switch self {
            case .serverSentEvents: ": \(text)\n\n"
            case .ndjson: "\n"
            }
        }
    }

    /// The response that streams the events after `position` matching `filter`.
    func response(
        after position: Int, filter: EventFilter, format: Format, client: String, connectionClosed: EventLoopFuture<Void>?,
        logger: Logger
    ) throws -> Response {
        let store = self.store
        let pageSize = store.configuration.subscriptionBatchSize
        let pageBytes = store.configuration.subscriptionPageBytes
        let slot = try takeSlot(client: client)
        let body = ResponseBody { writer in
            // Held until the stream ends.
            defer { withExtendedLifetime(slot) {} }
            self.streaming.add(1, ordering: .relaxed)
            self.demand.signal()
            defer { self.streaming.subtract(1, ordering: .relaxed) }
            var position = position
            // A client that has gone ends its stream at once, instead of at its next heartbeat:
            // woken at every commit until then, it would cost CPU for nothing.
            let gone = Gone()
            connectionClosed?.whenComplete { _ in
                gone.flag.store(true, ordering: .relaxed)
                self.tailed.signal()
                self.head.signal()
            }
            func send(_ text: String) async throws { try await writer.write(ByteBuffer(string: text)) }
            try await send(format.comment("eventline live feed after \(position)"))
            var lastWrite = ContinuousClock.now
            // The server's graceful shutdown waits for requests in flight: a stream must end then.
            try await withGracefulShutdownHandler {
            while !Task.isCancelled && !self.isClosing && !gone.flag.load(ordering: .relaxed) {
                let tailGeneration = self.tailed.generation
                let headGeneration = self.head.generation
                let page: [RecordedEvent]
                let upTo: Int
                let atTail: Bool
                if let (events, end) = self.fromTail(after: position, filter: filter, limit: pageSize) {
                    (page, upTo, atTail) = (events, end, true)
                } else {
                    // Behind the tail (or no tail yet): the table.
                    do {
                        // Catching up may read a standby: it reads a dense prefix of the log,
                        // so one that lags only delays the page, never skips an event. When the
                        // tail shows events past the client, the page must hold the next one: a
                        // standby behind that waits for replay or leaves the page to the primary.
                        let known = self.tail.withLock { $0?.end ?? 0 }
                        page = try await ReadContext.$current.withValue(ReadContext(minPosition: known > position ? position + 1 : nil)) {
                            try await store.readAll(after: position, limit: pageSize, filter: filter, maxBytes: pageBytes)
                        }
                    } catch let error as EventStoreError where error.code == .shutdown {
                        break
                    } catch {
                        // The database is away: say so, keep the client, and read again after the next wake-up.
                        logger.warning("live feed read failed; retrying", metadata: ["error": "\(error)"])
                        try await send(format.comment("the log cannot be read now; retrying"))
                        lastWrite = .now
                        await self.head.wait(after: headGeneration, timeout: self.heartbeat)
                        continue
                    }
                    (upTo, atTail) = (page.last?.position ?? position, false)
                }
                if !page.isEmpty {
                    try await send(page.map(format.frame).joined())
                    lastWrite = .now
                }
                if upTo > position {
                    position = upTo
                    continue
                }
                let idle = ContinuousClock.now - lastWrite
                if idle >= self.heartbeat {
                    try await send(format.comment("heartbeat"))
                    lastWrite = .now
                    continue
                }
                // At the tail the reader ticks every poll interval: no timer of our own.
                if atTail {
                    await self.tailed.wait(after: tailGeneration)
                } else {
                    await self.head.wait(after: headGeneration, timeout: self.heartbeat - idle)
                }
            }
            } onGracefulShutdown: {
                self.close()
            }
            if self.isClosing { try? await send(format.comment("the server is shutting down; reconnect after \(position)")) }
            try await writer.finish(nil)
        }
        var headers: HTTPFields = [.contentType: format.contentType, .cacheControl: "no-cache"]
        headers[HTTPField.Name("X-Accel-Buffering")!] = "no"  // a proxy in front must not buffer the stream
        return Response(status: .ok, headers: headers, body: body)
    }
}

/// Set once the client of a stream has gone.
private final class Gone: Sendable {
    let flag = Atomic<Bool>(false)
}

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
/// One LISTEN session per server wakes every client (a client costs no connection while it
/// waits). A client never skips or repeats an event: it reads "after the last position sent",
/// and positions are dense and commit-ordered. It holds at most one page: the next is read only
/// once the last is written, so a slow client is served from the table at its own pace and
/// never buffered without bound. On graceful shutdown every stream ends with a final comment,
/// so that the server can stop (and the client reconnect elsewhere with `Last-Event-ID`).
final class LiveFeed: Service, Sendable {
    let store: EventStore
    let heartbeat: Duration
    /// Signalled at every commit, every poll tick and every reconnect of the listener.
    let head = ChangeSignal()
    private let closing = Atomic<Bool>(false)
    /// Clients streaming now (for metrics).
    let clients = Atomic<Int>(0)

    init(store: EventStore, heartbeat: Duration) {
        self.store = store
        self.heartbeat = heartbeat
    }

    func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                let events = PostgresListener.events(
                    conninfo: self.store.configuration.databaseURL, channels: [EventStore.notificationChannel],
                    pollInterval: self.store.configuration.subscriptionPollInterval)
                for await _ in events { self.head.signal() }
            }
            try? await gracefulShutdown()
            group.cancelAll()
        }
    }

    /// Ends every stream (the server is shutting down).
    func close() {
        closing.store(true, ordering: .relaxed)
        head.signal()
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
    func response(after position: Int, filter: EventFilter, format: Format, logger: Logger) -> Response {
        let store = self.store
        let pageSize = store.configuration.subscriptionBatchSize
        let pageBytes = store.configuration.subscriptionPageBytes
        let body = ResponseBody { writer in
            self.clients.add(1, ordering: .relaxed)
            defer { self.clients.subtract(1, ordering: .relaxed) }
            var position = position
            func send(_ text: String) async throws { try await writer.write(ByteBuffer(string: text)) }
            try await send(format.comment("eventline live feed after \(position)"))
            var lastWrite = ContinuousClock.now
            // The server's graceful shutdown waits for requests in flight: a stream must end then.
            try await withGracefulShutdownHandler {
            while !Task.isCancelled && !self.isClosing {
                let generation = self.head.generation
                let page: [RecordedEvent]
                do {
                    page = try await store.readAll(after: position, limit: pageSize, filter: filter, maxBytes: pageBytes)
                } catch let error as EventStoreError where error.code == .shutdown {
                    break
                } catch {
                    // The database is away: say so, keep the client, and read again after the next wake-up.
                    logger.warning("live feed read failed; retrying", metadata: ["error": "\(error)"])
                    try await send(format.comment("the log cannot be read now; retrying"))
                    lastWrite = .now
                    await self.head.wait(after: generation, timeout: self.heartbeat)
                    continue
                }
                if !page.isEmpty {
                    try await send(page.map(format.frame).joined())
                    position = page[page.count - 1].position
                    lastWrite = .now
                    continue
                }
                let idle = ContinuousClock.now - lastWrite
                if idle >= self.heartbeat {
                    try await send(format.comment("heartbeat"))
                    lastWrite = .now
                    continue
                }
                await self.head.wait(after: generation, timeout: self.heartbeat - idle)
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

import EmbeddedServers
import Foundation
import HTTPTypes
import Hummingbird
import Synchronization

/// A webhook receiver on loopback (Hummingbird): answers each POST as `answer` says for that
/// attempt, and keeps every request it was sent.
public final class WebhookReceiver: Sendable {
    public struct Received: Sendable {
        public var body: String
        public var signature: String?
        public var group: String?
        /// The status it was answered with (0: no answer, the receiver hung).
        public var status: Int
    }

    /// What to do with the n-th request (0-based): a status, or hang for that long.
    public enum Answer: Sendable {
        case status(Int)
        case hang(Duration)
    }

    private final class State: Sendable {
        let requests = Mutex<[Received]>([])
    }

    public let port: Int
    private let state = State()
    private let task: Task<Void, any Error>

    public init(answer: @escaping @Sendable (Int) -> Answer) throws {
        let port = try FreePort.pick()
        self.port = port
        let state = self.state
        let router = Router()
        router.post("/hook") { request, _ -> Response in
            let body = String(buffer: try await request.body.collect(upTo: 16 << 20))
            let index = state.requests.withLock { $0.count }
            var received = Received(
                body: body, signature: request.headers[HTTPField.Name("Eventline-Signature")!],
                group: request.headers[HTTPField.Name("Eventline-Group")!], status: 0)
            switch answer(index) {
            case .hang(let duration):
                state.requests.withLock { $0.append(received) }
                try await Task.sleep(for: duration)
                return Response(status: .ok)
            case .status(let code):
                received.status = code
                state.requests.withLock { $0.append(received) }
                return Response(status: HTTPResponse.Status(code: code))
            }
        }
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: port)))
        task = Task { try await app.runService() }
    }

    public var url: String { "http://127.0.0.1:\(port)/hook" }
    public var requests: [Received] { state.requests.withLock { $0 } }

    public func stop() { task.cancel() }

    /// The messages of a request's batch.
    public static func messages(_ body: String) -> [GroupMessage] { GroupMessage.parse(body) }
}


/// A consumer group's message as a fetch answers it, or a webhook's batch carries it.
public struct GroupMessage: Sendable {
    public var deliveryId: String
    public var attempt: Int
    public var position: Int
    public var stream: String
    public var version: Int

    /// The `messages` of a JSON body (none when it has none).
    public static func parse(_ body: String) -> [GroupMessage] {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
            let messages = object["messages"] as? [[String: Any]]
        else { return [] }
        return messages.compactMap { item in
            guard let id = item["deliveryId"] as? String, let attempt = item["attempt"] as? Int, let position = item["position"] as? Int,
                let stream = item["stream"] as? String, let version = item["version"] as? Int
            else { return nil }
            return GroupMessage(deliveryId: id, attempt: attempt, position: position, stream: stream, version: version)
        }
    }
}

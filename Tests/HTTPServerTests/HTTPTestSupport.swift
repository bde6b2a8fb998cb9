import Aggregates
import BankDomain
import Cache
import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Projector

/// A live server (real HTTP on loopback) over a migrated test database.
struct TestServer {
    let test: TestStore
    var configuration = ServerConfiguration()
    var handlerConfiguration = CommandHandler<BankAccount>.Configuration()
    /// The read-model cache (nil: reads go to PostgreSQL).
    var cache: ReadModelCache? = nil
    /// How long a read with atLeast waits.
    var readWaitTimeout: Duration = .seconds(5)
    /// The server's logger (nil: the default one).
    var logger: Logger? = nil

    static func make(_ label: String, configure: (inout ServerConfiguration) -> Void = { _ in }) async throws -> TestServer {
        var server = TestServer(test: try await TestStore.make(label))
        server.configuration.port = 0
        configure(&server.configuration)
        return server
    }

    /// Runs `body` against a freshly built application over a store of its own (as a server
    /// process would have), so that calling this twice is a server restart.
    func run<T: Sendable>(_ body: @Sendable (any TestClientProtocol) async throws -> T) async throws -> T {
        let store = EventStore(test.store.configuration)
        var commands = CommandRegistry()
        commands.register(CommandHandler<BankAccount>(store: store, configuration: handlerConfiguration))
        commands.register(CommandHandler<Transfer>(store: store))
        let openAPI = FileManager.default.contents(atPath: Repository.root + "/Schemas/openapi.yaml")
        var readConfiguration = ReadModelService.Configuration(databaseURL: test.url)
        readConfiguration.waitTimeout = readWaitTimeout
        let readModels = ReadModelService(readConfiguration, cache: cache)
        let app = buildApplication(
            configuration, store: store, commands: commands, readModels: readModels, openAPI: openAPI,
            logger: logger ?? Logger(label: "eventline.http"))
        return try await app.test(.live) { client in try await body(client) }
    }
}

extension TestClientProtocol {
    /// Sends JSON (or any bytes) and returns the response.
    @discardableResult
    func send(
        _ method: HTTPRequest.Method, _ uri: String, json: String? = nil, headers: HTTPFields = [:],
        contentType: String? = "application/json", bytes: [UInt8]? = nil
    ) async throws -> TestResponse {
        var headers = headers
        if (json != nil || bytes != nil), let contentType { headers[.contentType] = contentType }
        let body = bytes.map { ByteBuffer(bytes: $0) } ?? json.map { ByteBuffer(string: $0) }
        return try await execute(uri: uri, method: method, headers: headers, body: body)
    }

    func command(_ id: String, _ type: String, _ data: String, expectedVersion: Int? = nil, headers: HTTPFields = [:]) async throws -> TestResponse {
        let expected = expectedVersion.map { #","expectedVersion":\#($0)"# } ?? ""
        return try await send(.post, "/v1/commands/account/\(id)", json: #"{"type":"\#(type)","data":\#(data)\#(expected)}"#, headers: headers)
    }
}

extension TestResponse {
    var text: String { String(buffer: body) }

    /// The body as a JSON object (empty when it is not one).
    var json: [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
    }

    var isProblem: Bool { headers[.contentType] == "application/problem+json" }
}

/// Bytes sent as they are, for requests that break HTTP itself (which a client will not send):
/// a new connection to 127.0.0.1:`port`, then what the server answers until it closes the
/// connection or `timeout` passes. Blocking socket calls, on a thread of their own.
func rawExchange(port: Int, _ request: [UInt8], timeout: Double = 3) async throws -> String {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<String, any Error>) in
        Thread {
            continuation.resume(with: Result {
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                guard fd >= 0 else { throw POSIXError(.EIO) }
                defer { close(fd) }
                var address = sockaddr_in()
                address.sin_family = sa_family_t(AF_INET)
                address.sin_port = in_port_t(UInt16(port).bigEndian)
                address.sin_addr.s_addr = inet_addr("127.0.0.1")
                let connected = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
                guard connected == 0 else { throw POSIXError(.ECONNREFUSED) }
                var wait = timeval(tv_sec: Int(timeout), tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
                guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == request.count else { throw POSIXError(.EIO) }
                var answer: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 65536)
                while true {
                    let count = recv(fd, &buffer, buffer.count, 0)
                    if count <= 0 { break }
                    answer += buffer[0..<count]
                }
                return String(decoding: answer, as: UTF8.self)
            })
        }.start()
    }
}

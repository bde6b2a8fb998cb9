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
import ReadModels

/// A live server (real HTTP on loopback) over a migrated test database.
struct TestServer {
    let test: TestStore
    var configuration = ServerConfiguration()
    var handlerConfiguration = CommandHandler<BankAccount>.Configuration()
    /// The read-model cache (nil: reads go to PostgreSQL).
    var cache: ReadModelCache? = nil
    /// How long a read with atLeast waits.
    var readWaitTimeout: Duration = .seconds(5)
    /// Projections declared to the server (as its projections directory would).
    var declaredProjections: Set<String> = []
    /// The server's logger (nil: the default one).
    var logger: Logger? = nil
    /// Standbys for read-model reads (the store's come from its configuration).
    var readDatabaseURL: String? = nil

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
        var readConfiguration = ReadModelService.Configuration(databaseURL: test.url)
        readConfiguration.waitTimeout = readWaitTimeout
        readConfiguration.declared = declaredProjections
        readConfiguration.readDatabaseURL = readDatabaseURL
        let readModels = ReadModelService(readConfiguration, cache: cache)
        let app = buildApplication(
            configuration, store: store, commands: commands, readModels: readModels,
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

    /// A command sent over a connection of its own. The test client pipelines every request over
    /// one connection, which the server answers one at a time: requests from concurrent tasks
    /// only run at once this way.
    func commandAlone(_ id: String, _ type: String, _ data: String) async throws -> LoopbackHTTP.Answer {
        try await LoopbackHTTP.request(
            "POST", port: port!, "/v1/commands/account/\(id)", body: #"{"type":"\#(type)","data":\#(data)}"#, timeout: 120)
    }
}

/// `text` as a JSON object (empty when it is not one).
func jsonObject(_ text: String) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
}

extension LoopbackHTTP.Answer {
    var json: [String: Any] { jsonObject(body) }
}

extension TestResponse {
    var text: String { String(buffer: body) }

    var json: [String: Any] { jsonObject(text) }

    var isProblem: Bool { headers[.contentType] == "application/problem+json" }
}

/// Bytes sent as they are to the test server (see `LoopbackHTTP.exchange`).
func rawExchange(port: Int, _ request: [UInt8], timeout: Double = 3) async throws -> String {
    try await LoopbackHTTP.exchange(port: port, request, timeout: timeout)
}

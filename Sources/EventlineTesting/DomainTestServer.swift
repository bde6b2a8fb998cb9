import Foundation
import Hummingbird
@_exported import HummingbirdTesting
import Logging

/// A domain's service for integration tests: a fresh migrated database on the private
/// PostgreSQL server, the domain's HTTP application on loopback (real HTTP, port 0), and its
/// YAML projections projecting while the test runs.
///
/// ```swift
/// let server = try await DomainTestServer.make(Warehouse.domain, projections: "Projections")
/// try await server.run { client in
///     let response = try await client.command("item", "7", "RegisterItem", #"{"sku":"A-1","name":"Bolt"}"#)
///     #expect(response.status == .ok)
/// }
/// ```
public struct DomainTestServer: Sendable {
    public let domain: Domain
    /// The database and a store over it (with the domain's upcasters and personal data, and a
    /// master key made for the test).
    public let test: TestStore
    /// The projections run while `run` runs.
    public let projections: [YAMLProjection]

    /// A new database for `domain`; `projections` is a directory of YAML projections (nil: none).
    public static func make(_ domain: Domain, projections directory: String? = nil, label: String? = nil) async throws -> DomainTestServer {
        let masterKey = MasterKey.generate()
        let test = try await TestStore.make(label ?? domain.name) { configuration in
            configuration = domain.storeConfiguration(databaseURL: configuration.databaseURL, masterKey: masterKey)
            configuration.subscriptionPollInterval = .milliseconds(500)
        }
        let projections = try directory.map(ProjectionDirectory.load) ?? []
        return DomainTestServer(domain: domain, test: test, projections: projections)
    }

    /// Runs `body` against the live application; the projector runs beside it and stops after.
    public func run<T: Sendable>(_ body: @Sendable (any TestClientProtocol) async throws -> T) async throws -> T {
        let logger = Logger(label: "eventline.test")
        let store = EventStore(test.store.configuration)
        var configuration = ServerConfiguration()
        configuration.port = 0
        let app = Eventline.application(domain, store: store, configuration: configuration, logger: logger)
        let projector = projections.isEmpty ? nil : Projector(
            projections: projections, configuration: domain.projectorConfiguration(databaseURL: test.url, masterKey: test.store.configuration.masterKey), logger: logger)
        let projecting = Task { try await projector?.run() }
        let outcome: Result<T, any Error>
        do {
            outcome = .success(try await app.test(.live) { client in try await body(client) })
        } catch {
            outcome = .failure(error)
        }
        projecting.cancel()
        // A projector that failed (not one that was stopped) is the test's failure too.
        let projected = await projecting.result
        await store.shutdown()
        if case .failure(let error) = projected, !(error is CancellationError), case .success = outcome { throw error }
        return try outcome.get()
    }
}

extension TestClientProtocol {
    /// Sends a command `type` with `data` (JSON text) to aggregate `id` of `category`.
    @discardableResult
    public func command(
        _ category: String, _ id: String, _ type: String, _ data: String, expectedVersion: Int? = nil
    ) async throws -> TestResponse {
        let expected = expectedVersion.map { #","expectedVersion":\#($0)"# } ?? ""
        return try await execute(
            uri: "/v1/commands/\(category)/\(id)", method: .post, headers: [.contentType: "application/json"],
            body: ByteBuffer(string: #"{"type":"\#(type)","data":\#(data)\#(expected)}"#))
    }

    /// Sends `json` to `uri` with `method`.
    @discardableResult
    public func json(_ method: HTTPRequest.Method, _ uri: String, _ json: String? = nil) async throws -> TestResponse {
        try await execute(
            uri: uri, method: method, headers: json == nil ? [:] : [.contentType: "application/json"],
            body: json.map { ByteBuffer(string: $0) })
    }
}

extension TestResponse {
    /// The body as text.
    public var text: String { String(buffer: body) }

    /// The body as a JSON object (empty when it is not one).
    public var object: [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
    }
}

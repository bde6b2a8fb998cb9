import Aggregates
import BankDomain
import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import Logging
import PostgresClient
import Projector
import Testing

@Suite("A database without Eventline's schema", .serialized)
struct SchemaStateTests {
    @Test("every route answers 503 problem+json /problems/schema-missing (never 500) when the schema is dropped under a running server; /health/ready says why")
    func schemaDroppedWhileRunning() async throws {
        let server = try await TestServer.make("schemagone")
        try await server.run { client in
            #expect(try await client.command("1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#).status == .ok)
            try await server.test.sql { conn in try conn.execute(unsafeSQL: "DROP SCHEMA eventline CASCADE; DROP SCHEMA read_models CASCADE") }
            let requests: [(HTTPRequest.Method, String, String?)] = [
                (.post, "/v1/commands/account/2", #"{"type":"OpenAccount","data":{"owner":"Bo","currency":"EUR"}}"#),
                (.post, "/v1/commands/account/1", #"{"type":"DepositMoney","data":{"amount":5}}"#),
                (.post, "/v1/streams/raw-1/events", #"{"events":[{"type":"Noted","data":{}}]}"#),
                (.get, "/v1/streams/account-1", nil),
                (.get, "/v1/events", nil),
                (.get, "/v1/read-models", nil),
                (.get, "/v1/read-models/account_balances/1", nil),
                (.get, "/health/ready", nil),
            ]
            for (method, path, body) in requests {
                let response = try await client.send(method, path, json: body)
                #expect(response.status == .serviceUnavailable, "\(method) \(path): \(response.status) \(response.text)")
                #expect(response.isProblem, "\(method) \(path)")
                #expect(response.json["type"] as? String == "/problems/schema-missing", "\(method) \(path): \(response.text)")
                #expect((response.json["detail"] as? String)?.contains("eventctl migrate") == true, "\(method) \(path)")
            }
            #expect(try await client.send(.get, "/health/live").status == .ok)
        }
    }

    @Test("the atLeast a 504 echoes is the integer sent, exactly, past a Double's 2^53")
    func exactIntegers() async throws {
        var server = try await TestServer.make("exactints")
        server.declaredProjections = ["account_balances"]
        server.readWaitTimeout = .milliseconds(200)
        try await server.run { client in
            for big in ["9007199254740993", "10000000000000000", "9223372036854775807"] {
                let behind = try await client.send(.get, "/v1/read-models/account_balances/a1?atLeast=\(big)")
                #expect(behind.status == .gatewayTimeout, "\(behind.text)")
                #expect(behind.text.contains(#""atLeast":\#(big)"#), "\(behind.text)")
                #expect(behind.text.contains(#""checkpoint":0"#), "\(behind.text)")
            }
        }
    }

    @Test("a read with atLeast of a declared projection that no projector has registered yet waits for it; an unknown name is 404 at once")
    func readYourWritesBeforeTheProjectorRegisters() async throws {
        var server = try await TestServer.make("rywdeclared")
        server.declaredProjections = ["account_balances"]
        let test = server.test
        try await server.run { client in
            let opened = try await client.command("a1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#)
            let position = client.position(of: opened)
            // The projector starts only after the read began waiting.
            let projector = Task {
                try await Task.sleep(for: .milliseconds(300))
                return try startProjector(test)
            }
            defer { Task { try? await projector.value.cancel() } }
            let row = try await client.send(.get, "/v1/read-models/account_balances/a1?atLeast=\(position)")
            #expect(row.status == .ok, "\(row.text)")
            #expect(row.json["owner"] as? String == "Ada")
            // A wait would end in 504 read-model-behind; a name nobody declares is 404 without one.
            let unknown = try await client.send(.get, "/v1/read-models/no_such_model/a1?atLeast=\(position)")
            #expect(unknown.status == .notFound, "\(unknown.text)")
        }
    }
}

@Suite("Database errors told to clients")
struct DatabaseErrorDetailTests {
    @Test("an unreachable database is a 503 whose detail names no host, port or user; the server's log keeps libpq's message")
    func unreachableDatabaseDetail() async throws {
        let captured = CapturedLines()
        var logger = Logger(label: "eventline.http") { label in ServerLogHandler(label: label, format: .text, write: captured.sink) }
        logger.logLevel = .info
        var storeConfiguration = EventStoreConfiguration(databaseURL: "postgresql://secret_user@127.0.0.1:1/nowhere?connect_timeout=1")
        storeConfiguration.acquireTimeout = .seconds(2)
        let store = EventStore(storeConfiguration)
        var commands = CommandRegistry()
        commands.register(CommandHandler<BankAccount>(store: store))
        var configuration = ServerConfiguration()
        configuration.port = 0
        let app = buildApplication(configuration, store: store, commands: commands, logger: logger)
        try await app.test(.live) { client in
            for response in [
                try await client.command("1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#),
                try await client.send(.get, "/v1/streams/account-1"),
                try await client.send(.get, "/health/ready"),
            ] {
                #expect(response.status == .serviceUnavailable, "\(response.text)")
                #expect(response.isProblem)
                for secret in ["secret_user", "127.0.0.1", "port 1", "nowhere"] {
                    #expect(!response.text.contains(secret), "the answer leaks \(secret): \(response.text)")
                }
            }
        }
        let log = captured.all.joined(separator: "\n")
        #expect(log.contains("request failed") && log.contains("127.0.0.1"), "\(log)")
    }
}

import Aggregates
import BankDomain
import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import Testing

@Suite("HTTP streams, log, health and bad input", .serialized)
struct StreamRouteTests {
    @Test("appending to a stream is 201 with version and position; a wrong expected version is 409 with the current version")
    func appendEvents() async throws {
        let server = try await TestServer.make("httpappend")
        try await server.run { client in
            let id = UUID().uuidString
            let body = #"{"expectedVersion":"noStream","events":[{"id":"\#(id)","type":"Noted","data":{"n":1},"metadata":{"user":"ops"}},{"type":"Noted","data":[2]}]}"#
            var response = try await client.send(.post, "/v1/streams/notes-1/events", json: body)
            #expect(response.status == .created)
            #expect(response.json["version"] as? Int == 2)
            #expect(response.json["position"] as? Int == 2)
            // The same ids again: idempotent.
            response = try await client.send(.post, "/v1/streams/notes-1/events", json: body)
            #expect(response.status == .conflict || response.status == .created)
            response = try await client.send(.post, "/v1/streams/notes-1/events", json: #"{"expectedVersion":1,"events":[{"type":"Noted","data":{}}]}"#)
            #expect(response.status == .conflict)
            #expect(response.json["currentVersion"] as? Int == 2)
            for expected in [#""exists""#, "3", #""any""#] {
                response = try await client.send(.post, "/v1/streams/notes-1/events", json: #"{"expectedVersion":\#(expected),"events":[{"type":"Noted","data":{}}]}"#)
                #expect(response.status == .created, "\(expected): \(response.text)")
            }
        }
        #expect(try await server.test.store.streamVersion("notes-1") == 5)
    }

    @Test("reading a stream forward and backward, with paging; 404 for a stream with no events")
    func readStream() async throws {
        let server = try await TestServer.make("httpread")
        for index in 1...5 {
            _ = try await server.test.store.append(to: "doc-1", events: [NewEvent(type: "Edited", data: Data(#"{"i":\#(index)}"#.utf8))])
        }
        try await server.run { client in
            var response = try await client.send(.get, "/v1/streams/doc-1?from=2&limit=2")
            #expect(response.status == .ok)
            var events = response.json["events"] as? [[String: Any]] ?? []
            #expect(events.map { $0["version"] as? Int } == [2, 3])
            #expect((events.first?["data"] as? [String: Int])?["i"] == 2)
            #expect(response.json["next"] as? Int == 4)
            #expect(response.json["version"] as? Int == 5)
            response = try await client.send(.get, "/v1/streams/doc-1?direction=backward&limit=2")
            events = response.json["events"] as? [[String: Any]] ?? []
            #expect(events.map { $0["version"] as? Int } == [5, 4])
            #expect(response.json["next"] as? Int == 3)
            response = try await client.send(.get, "/v1/streams/doc-1")
            #expect(response.json["next"] is NSNull)
            response = try await client.send(.get, "/v1/streams/missing-1")
            #expect(response.status == .notFound)
            #expect(response.isProblem)
        }
    }

    @Test("the log reads in pages after a position, filtered by category and type")
    func readLog() async throws {
        let server = try await TestServer.make("httplog")
        for index in 1...6 {
            _ = try await server.test.store.append(
                to: index % 2 == 0 ? "order-\(index)" : "invoice-\(index)", events: [NewEvent(type: index % 3 == 0 ? "Big" : "Small", data: Data("{}".utf8))])
        }
        try await server.run { client in
            var response = try await client.send(.get, "/v1/events?after=0&limit=4")
            var events = response.json["events"] as? [[String: Any]] ?? []
            #expect(events.map { $0["position"] as? Int } == [1, 2, 3, 4])
            #expect(response.json["next"] as? Int == 4)
            response = try await client.send(.get, "/v1/events?after=4&limit=4")
            #expect((response.json["events"] as? [Any])?.count == 2)
            #expect(response.json["next"] is NSNull)
            response = try await client.send(.get, "/v1/events?category=order")
            events = response.json["events"] as? [[String: Any]] ?? []
            #expect(events.map { $0["stream"] as? String } == ["order-2", "order-4", "order-6"])
            response = try await client.send(.get, "/v1/events?type=Big&type=Small&category=invoice")
            #expect((response.json["events"] as? [Any])?.count == 3)
        }
    }

    @Test("bad input gets a problem+json 4xx and changes nothing")
    func badInput() async throws {
        let server = try await TestServer.make("httpbad") { $0.maxBodySize = 4096 }
        _ = try await server.test.store.append(to: "keep-1", events: [NewEvent(type: "Kept", data: Data("{}".utf8))])
        try await server.run { client in
            let cases: [(HTTPRequest.Method, String, String?, [UInt8]?, String?, HTTPResponse.Status)] = [
                (.post, "/v1/commands/account/1", "{not json", nil, "application/json", .badRequest),
                (.post, "/v1/commands/account/1", "[1,2]", nil, "application/json", .badRequest),
                (.post, "/v1/commands/account/1", #"{"type":5,"data":{}}"#, nil, "application/json", .badRequest),
                (.post, "/v1/commands/account/1", #"{"type":"OpenAccount","data":"x"}"#, nil, "application/json", .badRequest),
                (.post, "/v1/commands/account/1", #"{"type":"OpenAccount","data":{},"expectedVersion":-1}"#, nil, "application/json", .badRequest),
                (.post, "/v1/commands/account/1", #"{"type":"OpenAccount","data":{},"expectedVersion":1.5}"#, nil, "application/json", .badRequest),
                (.post, "/v1/commands/account/1", nil, [0x7B, 0x22, 0xFF, 0xFE, 0x22, 0x3A, 0x31, 0x7D], "application/json", .badRequest),
                (.post, "/v1/commands/account/1", #"{"type":"OpenAccount","data":{}}"#, nil, "text/plain", .unsupportedMediaType),
                (.post, "/v1/commands/account/1", #"{"type":"OpenAccount","data":{}}"#, nil, nil, .unsupportedMediaType),
                (.post, "/v1/commands/account/1", #"{"type":"OpenAccount","data":{}}"#, nil, "application/jsonx", .unsupportedMediaType),
                (.post, "/v1/commands/account/1", #"{"type":"OpenAccount","data":{}}"#, nil, "application/x-json; charset=utf-8", .unsupportedMediaType),
                (.post, "/v1/commands/account/1", "{\"type\":\"" + String(repeating: "x", count: 5000) + "\"}", nil, "application/json", .contentTooLarge),
                (.post, "/v1/commands/account/1", String(repeating: "[", count: 3000), nil, "application/json", .badRequest),
                (.post, "/v1/streams/bad%0Aname/events", #"{"events":[{"type":"T","data":{}}]}"#, nil, "application/json", .badRequest),
                (.post, "/v1/streams/-x/events", #"{"events":[{"type":"T","data":{}}]}"#, nil, "application/json", .badRequest),
                (.post, "/v1/streams/s-1/events", #"{"events":[]}"#, nil, "application/json", .badRequest),
                (.post, "/v1/streams/s-1/events", #"{"events":[{"type":"T"}]}"#, nil, "application/json", .badRequest),
                (.post, "/v1/streams/s-1/events", #"{"events":[{"type":"T","data":{},"id":"nope"}]}"#, nil, "application/json", .badRequest),
                (.post, "/v1/streams/s-1/events", #"{"events":[{"type":"T","data":{},"metadata":[1]}]}"#, nil, "application/json", .badRequest),
                (.post, "/v1/streams/s-1/events", #"{"expectedVersion":"soon","events":[{"type":"T","data":{}}]}"#, nil, "application/json", .badRequest),
                (.post, "/v1/streams/s-1/events", #"{"events":[{"type":"has space","data":{}}]}"#, nil, "application/json", .badRequest),
                (.get, "/v1/streams/keep-1?limit=-1", nil, nil, nil, .badRequest),
                (.get, "/v1/streams/keep-1?limit=100000000000000000000", nil, nil, nil, .badRequest),
                (.get, "/v1/streams/keep-1?from=abc", nil, nil, nil, .badRequest),
                (.get, "/v1/streams/keep-1?direction=sideways", nil, nil, nil, .badRequest),
                (.get, "/v1/events?after=-5", nil, nil, nil, .badRequest),
                (.get, "/v1/events?limit=0", nil, nil, nil, .badRequest),
                (.get, "/v1/events?bogus=1", nil, nil, nil, .badRequest),
            ]
            for (method, uri, json, bytes, contentType, status) in cases {
                let response = try await client.send(method, uri, json: json, contentType: contentType, bytes: bytes)
                #expect(response.status == status, "\(method) \(uri) \(json?.prefix(60) ?? ""): \(response.status) \(response.text)")
                #expect(response.isProblem, "\(uri)")
                #expect(response.status.code < 500)
            }
            // Parameters, spaces and case in the content type are fine.
            for contentType in ["Application/JSON", " application/json ; charset=utf-8", "application/json;charset=UTF-8"] {
                let response = try await client.send(
                    .post, "/v1/streams/ct-1/events", json: #"{"events":[{"type":"T","data":{}}]}"#, contentType: contentType)
                #expect(response.status == .created, "\(contentType): \(response.text)")
            }
            let huge = try await client.send(.get, "/v1/events", headers: [HTTPField.Name("X-Filler")!: String(repeating: "a", count: 200_000)])
            #expect(huge.status.code < 500)
        }
        #expect(try await server.test.store.headPosition() == 4)
    }

    @Test("health, metrics and the OpenAPI document are served")
    func operations() async throws {
        let server = try await TestServer.make("httpops")
        try await server.run { client in
            #expect(try await client.send(.get, "/health/live").status == .ok)
            let ready = try await client.send(.get, "/health/ready")
            #expect(ready.status == .ok)
            _ = try await client.command("1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#)
            let metrics = try await client.send(.get, "/metrics")
            #expect(metrics.status == .ok)
            #expect(metrics.text.contains(#"eventline_http_requests_total{method="POST",route="/v1/commands/{category}/{id}",status="200"} 1"#))
            #expect(metrics.text.contains("eventline_group_commit_appends_bucket"))
            #expect(metrics.text.contains("eventline_db_pool_open"))
            let spec = try await client.send(.get, "/openapi.yaml")
            #expect(spec.status == .ok)
            #expect(spec.text.hasPrefix("openapi: 3"))
        }
    }

    @Test("a body that breaks HTTP framing, and a request line or header that does, are 400s that change nothing")
    func brokenHTTP() async throws {
        let server = try await TestServer.make("httpframing")
        try await server.run { client in
            let port = try #require(client.port)
            let chunked = "POST /v1/streams/f-1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
            let answer = try await rawExchange(port: port, Array(chunked.utf8))
            #expect(answer.hasPrefix("HTTP/1.1 400"), "\(answer)")
            #expect(answer.contains("application/problem+json") && answer.contains("/problems/malformed-request"), "\(answer)")
            // Broken below the application: NIO's parser answers 400 and closes.
            for request in ["GET /a b c HTTP/1.1\r\nHost: x\r\n\r\n", "GET /v1/events HTTP/1.1\r\nHost: x\r\nNo colon\r\n\r\n",
                            "POST /v1/streams/f-1/events HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n{}"] {
                let answer = try await rawExchange(port: port, Array(request.utf8))
                #expect(answer.hasPrefix("HTTP/1.1 400"), "\(request.prefix(40)): \(answer)")
            }
            #expect(try await client.send(.get, "/health/live").status == .ok)
        }
        #expect(try await server.test.store.headPosition() == 0)
    }

    @Test("HEAD is GET without a body; OPTIONS is 204 with Allow; another method on a known path is 405 with Allow")
    func methods() async throws {
        let server = try await TestServer.make("httpmethods")
        _ = try await server.test.store.append(to: "m-1", events: [NewEvent(type: "Kept", data: Data("{}".utf8))])
        try await server.run { client in
            let get = try await client.send(.get, "/v1/streams/m-1")
            let head = try await client.send(.head, "/v1/streams/m-1")
            #expect(head.status == .ok)
            #expect(head.headers[.contentType] == "application/json")
            #expect(head.headers[.contentLength] == get.headers[.contentLength])
            #expect(head.text.isEmpty)
            #expect(try await client.send(.head, "/v1/streams/nothing-here").status == .notFound)

            let options = try await client.send(.options, "/v1/streams/m-1/events")
            #expect(options.status == .noContent)
            #expect(options.headers[.allow] == "POST, OPTIONS")
            #expect(try await client.send(.options, "/v1/events").headers[.allow] == "GET, POST, HEAD, OPTIONS")

            for (method, uri, allow) in [
                (HTTPRequest.Method.patch, "/v1/streams/m-1", "GET, DELETE, HEAD, OPTIONS"), (.put, "/v1/streams/m-1/events", "POST, OPTIONS"),
                (.get, "/v1/commands/account/1", "POST, OPTIONS"), (.patch, "/health/live", "GET, HEAD, OPTIONS"),
                (.trace, "/v1/events", "GET, POST, HEAD, OPTIONS"), (.get, "/v1/events/query", "POST, OPTIONS"),
            ] {
                let response = try await client.send(method, uri)
                #expect(response.status == .methodNotAllowed, "\(method) \(uri)")
                #expect(response.headers[.allow] == allow, "\(method) \(uri)")
                #expect(response.isProblem)
                #expect(response.json["type"] as? String == "/problems/method-not-allowed")
            }
            #expect(try await client.send(.delete, "/v1/nowhere").status == .notFound)
            // A method outside HTTP's own (WebDAV's, here; NIO's parser knows it, the router has
            // no route for it): 405 with Allow on a known path, 404 elsewhere.
            let propfind = try await client.send(HTTPRequest.Method("PROPFIND")!, "/v1/streams/m-1/events", json: "{}")
            #expect(propfind.status == .methodNotAllowed, "\(propfind.text)")
            #expect(propfind.headers[.allow] == "POST, OPTIONS")
            #expect((propfind.json["detail"] as? String)?.hasSuffix("not PROPFIND") == true, "\(propfind.text)")
            #expect(try await client.send(HTTPRequest.Method("PROPFIND")!, "/v1/nowhere").status == .notFound)
        }
        #expect(try await server.test.store.headPosition() == 1)
    }

    @Test("with the database unreachable, requests fail fast with 503 and readiness says so")
    func databaseDown() async throws {
        let server = try await TestServer.make("httpdown")
        var configuration = EventStoreConfiguration(databaseURL: "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
        configuration.acquireTimeout = .seconds(2)
        let store = EventStore(configuration)
        var commands = CommandRegistry()
        commands.register(CommandHandler<BankAccount>(store: store))
        let app = buildApplication(server.configuration, store: store, commands: commands)
        try await app.test(.live) { client in
            let started = ContinuousClock.now
            let response = try await client.command("1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#)
            #expect(response.status == .serviceUnavailable)
            #expect(response.isProblem)
            #expect(response.headers[.retryAfter] != nil)
            #expect(ContinuousClock.now - started < .seconds(10))
            #expect(try await client.send(.get, "/health/ready").status == .serviceUnavailable)
            #expect(try await client.send(.get, "/health/live").status == .ok)
            #expect(try await client.send(.get, "/v1/streams/a-1").status == .serviceUnavailable)
        }
    }
}

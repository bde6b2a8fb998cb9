import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import Synchronization
import Testing

/// Real responses, recorded for the OpenAPI check.
final class ResponseLog: Sendable {
    struct Entry: Codable, Sendable {
        var method: String
        var path: String
        var status: Int
        var contentType: String
        var body: String
    }

    private let entries = Mutex<[Entry]>([])

    func record(_ method: HTTPRequest.Method, _ template: String, _ response: TestResponse) {
        let entry = Entry(
            method: method.rawValue, path: template, status: Int(response.status.code),
            contentType: response.headers[.contentType] ?? "", body: response.text)
        entries.withLock { $0.append(entry) }
    }

    func write(to path: String) throws {
        try JSONEncoder().encode(entries.withLock { $0 }).write(to: URL(fileURLWithPath: path))
    }
}

@Suite("OpenAPI conformance")
struct OpenAPITests {
    @Test("real responses of every route, successes and errors, validate against Schemas/openapi.yaml")
    func responsesMatchTheSpec() async throws {
        var server = try await TestServer.make("openapi") { $0.maxBodySize = 2048 }
        server.readWaitTimeout = .milliseconds(200)
        let test = server.test
        let log = ResponseLog()
        try await server.run { client in
            func call(_ method: HTTPRequest.Method, _ uri: String, _ template: String, json: String? = nil, contentType: String? = "application/json", headers: HTTPFields = [:]) async throws {
                log.record(method, template, try await client.send(method, uri, json: json, headers: headers, contentType: contentType))
            }
            let command = "/v1/commands/{category}/{id}"
            try await call(.post, "/v1/commands/account/1", command, json: #"{"type":"OpenAccount","data":{"owner":"Ada","currency":"EUR"}}"#)
            try await call(.post, "/v1/commands/account/1", command, json: #"{"type":"DepositMoney","data":{"amount":5},"expectedVersion":1}"#)
            try await call(.post, "/v1/commands/account/1", command, json: #"{"type":"DepositMoney","data":{"amount":5},"expectedVersion":1}"#)
            try await call(.post, "/v1/commands/account/1", command, json: #"{"type":"WithdrawMoney","data":{"amount":500}}"#)
            try await call(.post, "/v1/commands/account/1", command, json: #"{"type":"Teleport","data":{}}"#)
            try await call(.post, "/v1/commands/account/1", command, json: #"{"type":"DepositMoney","data":{"amount":"x"}}"#)
            try await call(.post, "/v1/commands/rocket/1", command, json: #"{"type":"Launch","data":{}}"#)
            try await call(.post, "/v1/commands/account/1", command, json: "{oops")
            try await call(.post, "/v1/commands/account/1", command, json: "{}", contentType: "text/plain")
            try await call(.post, "/v1/commands/account/1", command, json: #"{"type":"\#(String(repeating: "x", count: 3000))"}"#)
            let key: HTTPFields = [HTTPField.Name("Idempotency-Key")!: "k1"]
            try await call(.post, "/v1/commands/account/1", command, json: #"{"type":"DepositMoney","data":{"amount":1}}"#, headers: key)
            try await call(.post, "/v1/commands/account/1", command, json: #"{"type":"DepositMoney","data":{"amount":2}}"#, headers: key)

            let append = "/v1/streams/{stream}/events"
            try await call(.post, "/v1/streams/notes-1/events", append, json: #"{"expectedVersion":"noStream","events":[{"type":"Noted","data":{"n":1},"metadata":{"user":"ops"}}]}"#)
            try await call(.post, "/v1/streams/notes-1/events", append, json: #"{"expectedVersion":5,"events":[{"type":"Noted","data":{}}]}"#)
            try await call(.post, "/v1/streams/notes-1/events", append, json: #"{"events":[]}"#)

            let read = "/v1/streams/{stream}"
            try await call(.get, "/v1/streams/account-1?limit=1", read)
            try await call(.get, "/v1/streams/account-1?direction=backward", read)
            try await call(.get, "/v1/streams/missing-1", read)
            try await call(.get, "/v1/streams/account-1?limit=0", read)
            try await call(.get, "/v1/events?after=0&limit=2", "/v1/events")
            try await call(.get, "/v1/events?category=notes&type=Noted", "/v1/events")
            try await call(.get, "/v1/events?after=-1", "/v1/events")
            try await call(.get, "/v1/events?category=notes,account&type=Noted,Other", "/v1/events")
            try await call(.get, "/v1/events/live?after=-1", "/v1/events/live")
            try await call(.get, "/v1/events/live", "/v1/events/live", headers: [HTTPField.Name("Last-Event-ID")!: "not-a-position"])

            let group = "/v1/consumer-groups/{name}"
            try await call(.put, "/v1/consumer-groups/notes", group, json: #"{"categories":["notes"],"maxDeliveries":1,"ackTimeout":5}"#)
            try await call(.put, "/v1/consumer-groups/notes", group, json: #"{"categories":["notes"],"maxDeliveries":1}"#)
            try await call(.put, "/v1/consumer-groups/notes", group, json: #"{"startAfter":3}"#)
            try await call(.put, "/v1/consumer-groups/notes", group, json: #"{"maxDeliveries":0}"#)
            try await call(.put, "/v1/consumer-groups/hook", group, json: #"{"webhook":{"url":"http://127.0.0.1:1/","secret":"s"}}"#)
            try await call(.get, "/v1/consumer-groups/notes", group)
            try await call(.get, "/v1/consumer-groups/hook", group)
            try await call(.get, "/v1/consumer-groups/none", group)
            try await call(.get, "/v1/consumer-groups", "/v1/consumer-groups")
            let fetched = try await client.send(.post, "/v1/consumer-groups/notes/fetch", json: #"{"consumer":"c1","max":5}"#)
            log.record(.post, group + "/fetch", fetched)
            let ids = ((fetched.json["messages"] as? [[String: Any]]) ?? []).compactMap { $0["deliveryId"] as? String }
            #expect(!ids.isEmpty, "\(fetched.text)")
            try await call(.post, "/v1/consumer-groups/notes/fetch", group + "/fetch", json: #"{"consumer":"c1","wait":0}"#)
            try await call(.post, "/v1/consumer-groups/notes/fetch", group + "/fetch", json: #"{"max":5}"#)
            try await call(.post, "/v1/consumer-groups/hook/fetch", group + "/fetch", json: #"{"consumer":"c1"}"#)
            try await call(.post, "/v1/consumer-groups/notes/nack", group + "/nack", json: #"{"deliveryIds":["\#(ids[0])"],"retryAfter":0}"#)
            try await call(.post, "/v1/consumer-groups/notes/ack", group + "/ack", json: #"{"deliveryIds":["\#(ids[0])"]}"#)
            try await call(.post, "/v1/consumer-groups/notes/ack", group + "/ack", json: #"{"deliveryIds":"all"}"#)
            try await call(.get, "/v1/consumer-groups/notes/parked", group + "/parked")
            try await call(.get, "/v1/consumer-groups/notes/parked?limit=0", group + "/parked")
            try await call(.post, "/v1/consumer-groups/notes/parked/retry", group + "/parked/retry", json: #"{"positions":[1]}"#)
            try await call(.post, "/v1/consumer-groups/none/parked/retry", group + "/parked/retry", json: "{}")
            try await call(.delete, "/v1/consumer-groups/hook", group)
            try await call(.delete, "/v1/consumer-groups/hook", group)

            let personal = #"{"events":[{"type":"CustomerRegistered","data":{"email":"ada@example.com"},"subject":"customer-1","personal":["email"]}]}"#
            try await call(.post, "/v1/streams/customer-1/events", append, json: personal)
            try await call(.post, "/v1/streams/customer-1/events", append, json: #"{"events":[{"type":"T","data":{},"subject":"customer-1"}]}"#)
            let subject = "/v1/subjects/{subject}"
            try await call(.delete, "/v1/subjects/customer-1", subject)
            try await call(.delete, "/v1/subjects/customer-1", subject)
            try await call(.delete, "/v1/subjects/%01", subject)
            try await call(.post, "/v1/streams/customer-1/events", append, json: personal)
            try await call(.post, "/v1/commands/account/2", command, json: #"{"type":"OpenAccount","data":{"owner":"Bo","currency":"EUR"}}"#)
            try await call(.delete, "/v1/streams/account-2?expectedVersion=5", read)
            try await call(.delete, "/v1/streams/account-2?expectedVersion=soon", read)
            try await call(.delete, "/v1/streams/account-2", read)
            try await call(.get, "/v1/streams/account-2", read)
            try await call(.post, "/v1/commands/account/2", command, json: #"{"type":"DepositMoney","data":{"amount":1}}"#)
            try await call(.post, "/v1/streams/account-2/events", append, json: #"{"events":[{"type":"MoneyDeposited","data":{"amount":1}}]}"#)

            let across = "/v1/events"
            let moved = #"{"type":"Moved","data":{},"tags":["item:a"]}"#
            try await call(.post, "/v1/events", across, json: #"{"appends":[{"stream":"stock-a","expectedVersion":"noStream","events":[\#(moved)]},{"stream":"stock-b","events":[\#(moved)]}],"conditions":[{"stream":"notes-1","expectedVersion":1}]}"#)
            try await call(.post, "/v1/events", across, json: #"{"appends":[{"stream":"stock-a","expectedVersion":5,"events":[\#(moved)]}],"conditions":[{"stream":"stock-c","expectedVersion":"exists"}]}"#)
            let claim = #"{"events":[{"type":"UsernameClaimed","data":{},"tags":["username:ada"]}],"condition":{"failIfEventsMatch":{"items":[{"types":["UsernameClaimed"],"tags":["username:ada"]}]},"after":0}}"#
            try await call(.post, "/v1/events", across, json: claim)
            try await call(.post, "/v1/events", across, json: claim)
            try await call(.post, "/v1/events", across, json: #"{"events":[\#(moved)],"condition":{"failIfEventsMatch":{"items":[]}}}"#)
            try await call(.post, "/v1/events/query", "/v1/events/query", json: #"{"query":{"items":[{"tags":["item:a"]},{"types":["UsernameClaimed"]}]},"limit":2}"#)
            try await call(.post, "/v1/events/query", "/v1/events/query", json: #"{"query":{"items":[{"tags":["a,b"]}]}}"#)
            try await call(.get, "/v1/events?query=%7B%22items%22%3A%5B%7B%22tags%22%3A%5B%22item%3Aa%22%5D%7D%5D%7D", "/v1/events")
            try await call(.post, "/v1/commands/account/3", command, json: #"{"type":"OpenAccount","data":{"owner":"Cy","currency":"EUR","number":"DE4412345678"}}"#)
            try await call(.post, "/v1/commands/account/4", command, json: #"{"type":"OpenAccount","data":{"owner":"Di","currency":"EUR","number":"de4412345678"}}"#)

            let projector = try startProjector(test)
            defer { projector.cancel() }
            _ = try await client.waitCaughtUp("account_balances", position: 1)
            _ = try await client.waitCaughtUp("daily_totals", position: 1)
            try await call(.get, "/v1/read-models", "/v1/read-models")
            try await call(.get, "/v1/read-models?x=1", "/v1/read-models")
            let rows = "/v1/read-models/{name}"
            try await call(.get, "/v1/read-models/account_balances?limit=1", rows)
            try await call(.get, "/v1/read-models/account_balances?currency=EUR", rows)
            try await call(.get, "/v1/read-models/account_balances?colour=red", rows)
            try await call(.get, "/v1/read-models/account_balances?balance=lots", rows)
            try await call(.get, "/v1/read-models/nothing", rows)
            try await call(.get, "/v1/read-models/account_balances?atLeast=999999", rows)
            let row = "/v1/read-models/{name}/{key}"
            try await call(.get, "/v1/read-models/account_balances/1", row)
            let etag = try await client.send(.get, "/v1/read-models/account_balances/1").headers[.eTag] ?? ""
            try await call(.get, "/v1/read-models/account_balances/1", row, headers: [.ifNoneMatch: etag])
            try await call(.get, "/v1/read-models/account_balances/404", row)
            try await call(.get, "/v1/read-models/account_balances/1?atLeast=x", row)
            try await call(.get, "/health/live", "/health/live")
            try await call(.get, "/health/ready", "/health/ready")
            try await call(.get, "/metrics", "/metrics")
            try await call(.get, "/openapi.yaml", "/openapi.yaml")
        }
        let responses = FileManager.default.temporaryDirectory.appendingPathComponent("eventline-responses-\(UUID()).json").path
        defer { try? FileManager.default.removeItem(atPath: responses) }
        try log.write(to: responses)
        // Debian's own python3 with python3-yaml and python3-jsonschema (`make deps`), never pip.
        let output = try await runProgram("/usr/bin/python3", [
            Repository.root + "/Tests/HTTPServerTests/validate_openapi.py", Repository.root + "/Schemas/openapi.yaml", responses,
        ])
        #expect(output.status == 0, "\(output.stdout)\(output.stderr)")
        #expect(output.stdout.contains("86 responses checked, 0 failures"), "\(output.stdout)\(output.stderr)")
    }
}

import Aggregates
import BankDomain
import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import PostgresClient
import Testing

@Suite("HTTP appends across streams, queries and DCB conditions")
struct BoundaryRouteTests {
    @Test("POST /v1/events writes every stream or none: 201 with each stream's version and positions in the order given; 409 names every stream at fault with its version; an Idempotency-Key retry gets the first answer")
    func multiStreamAppend() async throws {
        let server = try await TestServer.make("httpmulti")
        try await server.test.store.append(to: "stock-x", events: [NewEvent(type: "Counted", data: Data("{}".utf8))])
        try await server.run { client in
            let body = #"""
                {"appends": [
                    {"stream": "stock-a", "expectedVersion": "noStream", "events": [{"type": "Moved", "data": {"n": 1}, "tags": ["item:a"]}, {"type": "Moved", "data": {"n": 2}}]},
                    {"stream": "stock-b", "expectedVersion": 0, "events": [{"type": "Moved", "data": {"n": 3}, "tags": ["item:b", "move:m1"]}]}
                 ],
                 "conditions": [{"stream": "stock-x", "expectedVersion": 1}]}
                """#
            let key: HTTPFields = [HTTPField.Name("Idempotency-Key")!: "move-1"]
            var response = try await client.send(.post, "/v1/events", json: body, headers: key)
            #expect(response.status == .created, "\(response.text)")
            #expect(response.json["position"] as? Int == 4)
            let appends = response.json["appends"] as? [[String: Any]] ?? []
            #expect(appends.map { $0["stream"] as? String } == ["stock-a", "stock-b"])
            #expect(appends.map { $0["version"] as? Int } == [2, 1])
            #expect(appends.flatMap { ($0["events"] as? [[String: Any]] ?? []).map { $0["position"] as? Int } } == [2, 3, 4])
            let first = response.text
            response = try await client.send(.post, "/v1/events", json: body, headers: key)
            #expect(response.status == .created && response.text == first)
            #expect(response.headers[HTTPField.Name("Idempotent-Replayed")!] == "true")

            // Two streams at fault: both named, nothing written.
            response = try await client.send(.post, "/v1/events", json: #"""
                {"appends": [{"stream": "stock-a", "expectedVersion": 2, "events": [{"type": "Moved", "data": {}}]},
                             {"stream": "stock-b", "expectedVersion": 7, "events": [{"type": "Moved", "data": {}}]}],
                 "conditions": [{"stream": "stock-c", "expectedVersion": "exists"}]}
                """#)
            #expect(response.status == .conflict && response.isProblem)
            #expect(response.json["type"] as? String == "/problems/version-conflict")
            let conflicts = response.json["conflicts"] as? [[String: Any]] ?? []
            #expect(conflicts.map { $0["stream"] as? String } == ["stock-b", "stock-c"])
            #expect(conflicts.map { $0["currentVersion"] as? Int } == [1, 0])
            #expect(conflicts.map { "\($0["expectedVersion"] ?? "")" } == ["7", "exists"])

            // The log shows the tags; a query finds the events by them.
            response = try await client.send(.get, "/v1/events?query=" + #"{"items":[{"tags":["item:b"]}]}"#.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)
            #expect(response.status == .ok, "\(response.text)")
            let events = response.json["events"] as? [[String: Any]] ?? []
            #expect(events.map { $0["position"] as? Int } == [4])
            #expect(events.first?["tags"] as? [String] == ["item:b", "move:m1"])
            #expect(response.json["evaluatedUpTo"] as? Int == 4)
        }
        #expect(try await server.test.store.headPosition() == 4)
    }

    @Test("a DCB claim over HTTP: read by POST /v1/events/query, append with the condition; a second claim is 409 naming the first conflicting position")
    func conditionalAppend() async throws {
        let server = try await TestServer.make("httpdcb")
        try await server.run { client in
            let query = #"{"items": [{"types": ["UsernameClaimed"], "tags": ["username:ada"]}]}"#
            var response = try await client.send(.post, "/v1/events/query", json: #"{"query": \#(query)}"#)
            #expect(response.status == .ok && (response.json["events"] as? [Any])?.isEmpty == true)
            let upTo = response.json["evaluatedUpTo"] as? Int ?? -1
            #expect(upTo == 0)
            let claim = #"{"events": [{"type": "UsernameClaimed", "data": {"user": "u1"}, "tags": ["username:ada"]}], "condition": {"failIfEventsMatch": \#(query), "after": \#(upTo)}}"#
            response = try await client.send(.post, "/v1/events", json: claim)
            #expect(response.status == .created, "\(response.text)")
            #expect((response.json["appends"] as? [[String: Any]])?.first?["stream"] as? String == "$tagged-UsernameClaimed")
            // The same claim, decided on the same stale read: refused.
            response = try await client.send(.post, "/v1/events", json: claim.replacingOccurrences(of: "u1", with: "u2"))
            #expect(response.status == .conflict && response.isProblem)
            #expect(response.json["type"] as? String == "/problems/append-condition-failed")
            #expect(response.json["conflictingPosition"] as? Int == 1)
            response = try await client.send(.post, "/v1/events/query", json: #"{"query": \#(query), "after": 0, "limit": 10}"#)
            #expect((response.json["events"] as? [[String: Any]])?.map { ($0["data"] as? [String: String])?["user"] } == ["u1"])
            #expect(response.json["evaluatedUpTo"] as? Int == 1)
        }
        #expect(try await server.test.store.headPosition() == 1)
    }

    @Test("bad appends, conditions and queries are 400 problems naming the field, and write nothing")
    func badInput() async throws {
        let server = try await TestServer.make("httpdcbbad")
        let event = #"{"type": "Moved", "data": {}}"#
        let tooMany = (0...EventStore.maxAppendsPerRequest).map { #"{"stream": "s-\#($0)", "events": [\#(event)]}"# }.joined(separator: ",")
        let cases: [(String, String)] = [
            (#"{"appends": [{"stream": "s-1", "events": [\#(event)]}], "extra": 1}"#, "extra"),
            (#"{"appends": [{"stream": "s-1", "events": [\#(event)], "tags": []}]}"#, "tags"),
            (#"{"appends": [\#(tooMany)]}"#, "appends"),
            (#"{"appends": []}"#, "appends"),
            (#"{"appends": [{"stream": "s-1", "events": [{"type": "Moved", "data": {}, "tags": ["a,b"]}]}]}"#, "appends[0].events[0]"),
            (#"{"appends": [{"stream": "s-1", "events": [{"type": "Moved", "data": {}, "tags": "a"}]}]}"#, "appends[0].events[0].tags"),
            (#"{"appends": [{"stream": "s-1", "events": [\#(event)]}], "condition": {"failIfEventsMatch": {"items": []}, "after": 0}}"#, "condition.failIfEventsMatch"),
            (#"{"appends": [{"stream": "s-1", "events": [\#(event)]}], "condition": {"failIfEventsMatch": {"items": [{}]}}}"#, "condition.failIfEventsMatch"),
            (#"{"appends": [{"stream": "s-1", "events": [\#(event)]}], "condition": {"failIfEventsMatch": {"items": [{"tags": ["x"], "types": "A"}]}}}"#, "condition.failIfEventsMatch.items[0].types"),
            (#"{"appends": [{"stream": "s-1", "events": [\#(event)]}], "condition": {"failIfEventsMatch": {"items": [{"tags": ["x"]}]}, "after": -1}}"#, "after"),
            (#"{"appends": [{"stream": "s-1", "events": [\#(event)]}], "condition": {"after": 0}}"#, "condition.failIfEventsMatch"),
            (#"{"appends": [{"stream": "s-1", "events": [\#(event)]}], "conditions": [{"stream": "s-2"}]}"#, "conditions[0].expectedVersion"),
            (#"{"appends": [{"stream": "s-1", "events": [\#(event)]}], "events": [\#(event)]}"#, "events"),
            (#"{"events": [\#(event)], "conditions": [{"stream": "s-2", "expectedVersion": 1}]}"#, "conditions"),
            (#"{"events": []}"#, "events"),
            (#"{}"#, "appends"),
        ]
        try await server.run { client in
            for (body, field) in cases {
                let response = try await client.send(.post, "/v1/events", json: body)
                #expect(response.status == .badRequest && response.isProblem, "\(body.prefix(120)): \(response.status) \(response.text)")
                if let named = response.json["field"] as? String {
                    #expect(named == field, "\(body.prefix(120)): \(response.text)")
                }
            }
            // The store refuses what only it can check: a stream twice, a condition on a written stream, a tag too long.
            for body in [
                #"{"appends": [{"stream": "s-1", "events": [\#(event)]}, {"stream": "s-1", "events": [\#(event)]}]}"#,
                #"{"appends": [{"stream": "s-1", "events": [\#(event)]}], "conditions": [{"stream": "s-1", "expectedVersion": 1}]}"#,
                #"{"events": [{"type": "Moved", "data": {}, "tags": ["\#(String(repeating: "t", count: EventTag.maxLength + 1))"]}]}"#,
            ] {
                let response = try await client.send(.post, "/v1/events", json: body)
                #expect(response.status == .badRequest && response.isProblem, "\(response.text)")
            }
            for uri in [
                "/v1/events?query=notjson", "/v1/events?query=%7B%7D", "/v1/events?query=%7B%22items%22%3A%5B%5D%7D",
                "/v1/events?type=A&query=%7B%22items%22%3A%5B%7B%22types%22%3A%5B%22A%22%5D%7D%5D%7D",
            ] {
                let response = try await client.send(.get, uri)
                #expect(response.status == .badRequest && response.isProblem, "\(uri): \(response.text)")
            }
            for body in [#"{}"#, #"{"query": {"items": [{"tags": ["x"]}]}, "limit": 0}"#, #"{"query": {"items": [{"tags": ["x"]}]}, "page": 1}"#] {
                let response = try await client.send(.post, "/v1/events/query", json: body)
                #expect(response.status == .badRequest && response.isProblem, "\(body): \(response.text)")
            }
        }
        #expect(try await server.test.store.headPosition() == 0)
    }

    @Test("OpenAccount's number is unique across accounts: 32 concurrent commands on two servers for one number open exactly one account; the rest are refused with number-taken, case aside")
    func uniqueAccountNumber() async throws {
        let server = try await TestServer.make("httpnumber")
        let outcomes = try await server.run { first in
            try await server.run { second in
                try await withThrowingTaskGroup(of: (Int, String?).self) { group in
                    for index in 0..<32 {
                        let client = index % 2 == 0 ? first : second
                        let number = index % 3 == 0 ? "de4412345678" : "DE4412345678"
                        group.addTask {
                            let response = try await client.commandAlone(
                                "n\(index)", "OpenAccount", #"{"owner": "Owner \#(index)", "currency": "EUR", "number": "\#(number)"}"#)
                            return (response.status, response.json["type"] as? String)
                        }
                    }
                    var all: [(Int, String?)] = []
                    for try await outcome in group { all.append(outcome) }
                    return all
                }
            }
        }
        #expect(outcomes.filter { $0.0 == 200 }.count == 1)
        #expect(outcomes.filter { $0.0 == 422 && $0.1 == "/problems/number-taken" }.count == 31, "\(outcomes)")
        // The checker: the database holds one account opened with the number.
        let stored = try await server.test.sql { conn in
            try conn.query("""
                SELECT count(*) FROM eventline.events WHERE type = 'AccountOpened' AND tags @> ARRAY['account-number:DE4412345678']
                """).first!.decode(0, as: Int.self)
        }
        #expect(stored == 1)
        #expect(try await server.test.store.headPosition() == 1)
        try await server.run { client in
            // Another number is free; a malformed one is refused; an account without one opens as before.
            var response = try await client.command("m1", "OpenAccount", #"{"owner": "M", "currency": "EUR", "number": "NL91ABNA0417164300"}"#)
            #expect(response.status == .ok, "\(response.text)")
            for bad in ["DE12", "DE-1234567", String(repeating: "1", count: 35), "ÄBCDEF"] {
                response = try await client.command("m2", "OpenAccount", #"{"owner": "M", "currency": "EUR", "number": "\#(bad)"}"#)
                #expect(response.status == .unprocessableContent && response.json["type"] as? String == "/problems/invalid-account-number", "\(bad): \(response.text)")
            }
            response = try await client.command("m3", "OpenAccount", #"{"owner": "M", "currency": "EUR"}"#)
            #expect(response.status == .ok)
            // The opened account carries its number as a tag.
            response = try await client.send(.post, "/v1/events/query", json: #"{"query": {"items": [{"tags": ["account-number:NL91ABNA0417164300"]}]}}"#)
            #expect((response.json["events"] as? [[String: Any]])?.map { $0["stream"] as? String } == ["account-m1"])
        }
    }
}

import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import PostgresClient
import Projector
import Testing

/// A projection whose table refuses n ≥ 100 (the poison); each stream's row counts its events
/// and keeps the version it applied last, applying an event only right after its predecessor.
private let strict = """
    name: strict
    version: 1
    key: id
    onError: { retries: 1, backoff: 10ms }
    create: |
      CREATE TABLE $table (id text PRIMARY KEY, n bigint NOT NULL CONSTRAINT small CHECK (n < 100), events bigint NOT NULL, last_version bigint NOT NULL)
    handlers:
      Num: |
        INSERT INTO $table AS t (id, n, events, last_version) VALUES (:id, :data.n::bigint, 1, :version::bigint)
        ON CONFLICT (id) DO UPDATE SET n = t.n + excluded.n, events = t.events + 1, last_version = excluded.last_version
        WHERE t.last_version = excluded.last_version - 1
        RETURNING id
    """

@Suite("Per-key parking over HTTP and eventctl")
struct ParkingRouteTests {
    @Test("a poison event parks its key only: later events of the key are held in order, every other key reaches the head; retry, skip (recorded) and bad requests over HTTP and eventctl")
    func parkedKeys() async throws {
        let server = try await TestServer.make("parking")
        let test = server.test
        var configuration = ProjectorConfiguration(databaseURL: test.url)
        configuration.standbyInterval = .milliseconds(100)
        configuration.pollInterval = .milliseconds(100)
        let projector = Projector(projections: [try ProjectionDirectory.parse(strict, source: "strict.yaml")], configuration: configuration)
        let task = Task { try? await projector.run() }
        defer { task.cancel() }
        @Sendable func num(_ stream: String, _ values: [Int]) -> String {
            #"{"events":[\#(values.map { #"{"type":"Num","data":{"n":\#($0)}}"# }.joined(separator: ","))]}"#
        }
        try await server.run { client in
            for (stream, values) in [("num-1", [1, 2]), ("num-2", [500, 3, 4]), ("num-3", [5])] {
                #expect(try await client.send(.post, "/v1/streams/\(stream)/events", json: num(stream, values)).status == .created)
            }
            @Sendable func status() async throws -> [String: Any] {
                let items = try await client.send(.get, "/v1/read-models").json["items"] as? [[String: Any]] ?? []
                return items.first { $0["name"] as? String == "strict" } ?? [:]
            }
            try await eventually("num-2 parked, every other key at the head") {
                let status = try await status()
                return status["parkedKeys"] as? Int == 1 && status["lag"] as? Int == 0
            }
            var parked = try await client.send(.get, "/v1/read-models/strict/parked")
            #expect(parked.status == .ok)
            var items = parked.json["items"] as? [[String: Any]] ?? []
            #expect(items.count == 1)
            let key = items.first ?? [:]
            #expect(key["key"] as? String == "num-2" && key["position"] as? Int == 3 && key["type"] as? String == "Num", "\(parked.text)")
            #expect(key["held"] as? Int == 3 && key["attempts"] as? Int == 2 && key["request"] is NSNull, "\(parked.text)")
            #expect((key["error"] as? String)?.contains("small") == true, "\(parked.text)")
            for id in ["1", "3"] { #expect(try await client.send(.get, "/v1/read-models/strict/\(id)").status == .ok) }
            #expect(try await client.send(.get, "/v1/read-models/strict/2").status == .notFound)

            // Bad requests: each a problem, and nothing asked.
            for (method, uri, body, status, detail) in [
                (HTTPRequest.Method.post, "/v1/read-models/strict/parked/retry", #"{"keys":["num-1"]}"#, HTTPResponse.Status.notFound, "num-1"),
                (.post, "/v1/read-models/strict/parked/retry", #"{"keys":"num-2"}"#, .badRequest, "keys"),
                (.post, "/v1/read-models/strict/parked/retry", #"{"keys":["num-2"],"more":1}"#, .badRequest, "more"),
                (.post, "/v1/read-models/strict/parked/skip", #"{}"#, .badRequest, "keys"),
                (.get, "/v1/read-models/nope/parked", nil, .notFound, "nope"),
                (.post, "/v1/reactors/nope/parked/retry", #"{"keys":["a"]}"#, .notFound, "no reactor named nope"),
                (.post, "/v1/read-models/Bad!/parked/retry", nil, .badRequest, "name"),
            ] as [(HTTPRequest.Method, String, String?, HTTPResponse.Status, String)] {
                let response = try await client.send(method, uri, json: body)
                #expect(response.status == status && response.isProblem, "\(uri) \(body ?? ""): \(response.text)")
                #expect(response.text.contains(detail), "\(uri) \(body ?? ""): \(response.text)")
            }
            items = try await client.send(.get, "/v1/read-models/strict/parked").json["items"] as? [[String: Any]] ?? []
            #expect(items.first?["request"] is NSNull)

            // eventctl lists and refuses the same way.
            let environment = ["EVENTLINE_DATABASE_URL": test.url]
            var output = try await runProgram(try Repository.eventctl, ["projections", "parked", "strict"], environment: environment)
            #expect(output.status == 0 && output.stdout.contains("num-2  at position 3 (Num)  3 held  attempts 2"), "\(output.stdout)\(output.stderr)")
            output = try await runProgram(try Repository.eventctl, ["projections", "retry", "strict", "--key", "num-9"], environment: environment)
            #expect(output.status == 1 && output.stderr.split(separator: "\n").count == 1 && output.stderr.contains("not parked in projection strict: num-9"), "\(output.stderr)")
            output = try await runProgram(try Repository.eventctl, ["projections", "skip", "strict"], environment: environment)
            #expect(output.status == 64 && output.stderr.contains("skip needs --key"), "\(output.stderr)")
            output = try await runProgram(try Repository.eventctl, ["reactors", "parked", "nope"], environment: environment)
            #expect(output.status == 1 && output.stderr.contains("no reactor named nope"), "\(output.stderr)")

            // A retry before the cause is fixed fails again: the key stays parked, one more attempt.
            var answer = try await client.send(.post, "/v1/read-models/strict/parked/retry")
            #expect(answer.status == .accepted && answer.json["requested"] as? [String] == ["num-2"], "\(answer.text)")
            try await eventually("the retry ran and failed again") {
                let items = try await client.send(.get, "/v1/read-models/strict/parked").json["items"] as? [[String: Any]] ?? []
                return items.first?["request"] is NSNull && items.first?["attempts"] as? Int == 3
            }
            // A skip (eventctl) records the poison and applies the held events in order.
            output = try await runProgram(try Repository.eventctl, ["projections", "skip", "strict", "--key", "num-2"], environment: environment)
            #expect(output.status == 0 && output.stdout.contains("skip requested for num-2"), "\(output.stdout)\(output.stderr)")
            try await eventually("num-2 released") { try await status()["parkedKeys"] as? Int == 0 }
            let row = try await client.send(.get, "/v1/read-models/strict/2").json
            #expect(row["n"] as? Int == 7 && row["events"] as? Int == 2 && row["last_version"] as? Int == 3, "\(row)")
            parked = try await client.send(.get, "/v1/read-models/strict/parked")
            let skipped = parked.json["skipped"] as? [[String: Any]] ?? []
            #expect(skipped.count == 1 && skipped.first?["position"] as? Int == 3 && skipped.first?["skippedBy"] as? String == "operator", "\(parked.text)")
            #expect((skipped.first?["error"] as? String)?.contains("small") == true)

            // Another poison; the cause is fixed; a retry applies the key's held events in order.
            #expect(try await client.send(.post, "/v1/streams/num-4/events", json: num("num-4", [600, 6])).status == .created)
            _ = try await client.send(.post, "/v1/streams/num-1/events", json: #"{"expectedVersion":2,"events":[{"type":"Num","data":{"n":3}}]}"#)
            try await eventually("num-4 parked, num-1 applied") {
                let status = try await status()
                return status["parkedKeys"] as? Int == 1 && status["lag"] as? Int == 0
            }
            try await test.sql { conn in try conn.execute(unsafeSQL: "ALTER TABLE read_models.strict DROP CONSTRAINT small") }
            answer = try await client.send(.post, "/v1/read-models/strict/parked/retry", json: #"{"keys":["num-4"]}"#)
            #expect(answer.status == .accepted, "\(answer.text)")
            try await eventually("num-4 retried and released") { try await status()["parkedKeys"] as? Int == 0 }
            let retried = try await client.send(.get, "/v1/read-models/strict/4").json
            #expect(retried["n"] as? Int == 606 && retried["events"] as? Int == 2 && retried["last_version"] as? Int == 2, "\(retried)")
            let one = try await client.send(.get, "/v1/read-models/strict/1").json
            #expect(one["n"] as? Int == 6 && one["events"] as? Int == 3)
        }
        task.cancel()
        await task.value
        await test.store.shutdown()
    }
}

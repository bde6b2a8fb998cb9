import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import Synchronization
import Testing

/// A client of the live feed over a real socket: reads the stream on a thread of its own and
/// keeps what it was sent.
final class LiveClient: Sendable {
    private final class Received: Sendable {
        let state = Mutex<(bytes: [UInt8], ended: Bool)>(([], false))
    }

    private let fd: Int32
    private let received = Received()

    init(port: Int, path: String, headers: [String: String] = [:]) throws {
        // The name the server was bound to (Hummingbird's live test server binds `localhost`,
        // which a stock Debian resolves to ::1 first), every address of it tried.
        let socket = try LoopbackHTTP.connect(host: LoopbackHTTP.host, port: port)
        fd = socket
        var request = "GET \(path) HTTP/1.1\r\nHost: localhost\r\n"
        for (name, value) in headers { request += "\(name): \(value)\r\n" }
        request += "\r\n"
        _ = Array(request.utf8).withUnsafeBytes { write(socket, $0.baseAddress, $0.count) }
        let received = self.received
        let thread = Thread {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = read(socket, &buffer, buffer.count)
                if count <= 0 { break }
                received.state.withLock { $0.bytes += buffer[0..<count] }
            }
            received.state.withLock { $0.ended = true }
        }
        thread.start()
    }

    deinit { close(fd) }

    /// Stops reading (the server sees the connection close).
    func disconnect() { shutdown(fd, Int32(SHUT_RDWR)) }

    var text: String { received.state.withLock { String(decoding: $0.bytes, as: UTF8.self) } }
    var ended: Bool { received.state.withLock { $0.ended } }

    /// The body after the response head, with CRLF as LF (Swift takes "\r\n" for one character,
    /// which a split on "\n" would not see). The chunked framing's size lines are left in:
    /// events are found by their own lines.
    var body: String {
        let all = text
        guard let range = all.range(of: "\r\n\r\n") else { return "" }
        return String(all[range.upperBound...]).replacingOccurrences(of: "\r\n", with: "\n")
    }

    /// The `id:` of every SSE message, in the order received.
    var ids: [Int] {
        body.split(separator: "\n").compactMap { line in line.hasPrefix("id: ") ? Int(line.dropFirst(4).trimmingCharacters(in: .whitespaces)) : nil }
    }

    /// The `data:` of every SSE message, parsed.
    var events: [[String: Any]] {
        body.split(separator: "\n").compactMap { line in
            guard line.hasPrefix("data: ") else { return nil }
            return (try? JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8))) as? [String: Any]
        }
    }
}

@Suite("The live feed", .timeLimit(.minutes(2)))
struct LiveFeedTests {
    static func server(_ label: String) async throws -> TestServer {
        try await TestServer.make(label) { $0.liveHeartbeat = .milliseconds(300) }
    }

    @Test("a client from the start and one resuming mid-load with Last-Event-ID each get every matching event once, in order")
    func concurrentLoad() async throws {
        let server = try await Self.server("livefeed")
        let store = server.test.store
        try await server.run { client in
            let port = try #require(client.port)
            let early = try LiveClient(port: port, path: "/v1/events/live?category=thing,gadget&type=Made")
            // Eight writers at once: Made events in two categories, and events the filter leaves out.
            let writers = Task {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for writer in 0..<8 {
                        group.addTask {
                            for n in 0..<25 {
                                let category = writer % 2 == 0 ? "thing" : "gadget"
                                _ = try await store.append(to: "\(category)-\(writer)", events: [
                                    NewEvent(type: "Made", data: Data(#"{"n":\#(n)}"#.utf8)),
                                    NewEvent(type: "Noted", data: Data("{}".utf8)),
                                ])
                                _ = try await store.append(to: "noise-\(writer)", events: [NewEvent(type: "Made", data: Data("{}".utf8))])
                            }
                        }
                    }
                    try await group.waitForAll()
                }
            }
            // A second client joins mid-load, resuming after an event the first one saw.
            try await eventually("the first client saw some events") { early.ids.count >= 40 }
            let resumeAfter = early.ids[20]
            let late = try LiveClient(
                port: port, path: "/v1/events/live?category=thing,gadget&type=Made", headers: ["Last-Event-ID": String(resumeAfter)])
            try await writers.value
            let expected = try await store.readAll(limit: 10_000, filter: EventFilter(categories: ["thing", "gadget"], types: ["Made"])).map(\.position)
            #expect(expected.count == 200)
            try await eventually("both clients caught up") {
                early.ids.count >= expected.count && late.ids.count >= expected.filter { $0 > resumeAfter }.count
            }
            #expect(early.ids == expected)
            #expect(late.ids == expected.filter { $0 > resumeAfter })
            #expect(early.events.allSatisfy { ($0["type"] as? String) == "Made" && ($0["stream"] as? String)?.hasPrefix("noise") == false })
            #expect(early.events.map { $0["position"] as? Int } == expected.map { Optional($0) })
            let metrics = try await client.send(.get, "/metrics")
            #expect(metrics.text.contains("eventline_live_clients 2"), "\(metrics.text)")
            // Quiet: heartbeats keep the connection alive.
            try await eventually("a heartbeat") { early.body.contains(": heartbeat") }
            #expect(early.text.hasPrefix("HTTP/1.1 200"))
            #expect(early.text.lowercased().contains("content-type: text/event-stream"))
            early.disconnect()
            late.disconnect()
            // The server notices at once, not at a heartbeat or a write.
            try await eventually("the streams ended") {
                try await client.send(.get, "/metrics").text.contains("eventline_live_clients 0")
            }
        }
        await store.shutdown()
    }

    @Test("NDJSON on request, after= resumes, and bad input is a problem; GET /v1/events takes lists too")
    func formatsAndInput() async throws {
        let server = try await Self.server("liveinput")
        let store = server.test.store
        for n in 1...5 {
            _ = try await store.append(to: "thing-\(n % 2)", events: [NewEvent(type: n % 2 == 0 ? "Made" : "Broken", data: Data(#"{"n":\#(n)}"#.utf8))])
        }
        try await server.run { client in
            let port = try #require(client.port)
            let ndjson = try LiveClient(port: port, path: "/v1/events/live?after=2", headers: ["Accept": "application/x-ndjson"])
            try await eventually("three events") {
                ndjson.body.split(separator: "\n").filter { $0.hasPrefix("{") }.count == 3
            }
            let positions = ndjson.body.split(separator: "\n").filter { $0.hasPrefix("{") }.compactMap {
                ((try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any])?["position"] as? Int
            }
            #expect(positions == [3, 4, 5])
            #expect(ndjson.text.lowercased().contains("content-type: application/x-ndjson"))
            ndjson.disconnect()

            for (path, headers, field) in [
                ("/v1/events/live", ["Last-Event-ID": "x"], "Last-Event-ID"),
                ("/v1/events/live?after=-1", [:], "after"),
                ("/v1/events/live?category=a,,b", [:], "category"),
                ("/v1/events/live?nope=1", [:], "nope"),
            ] as [(String, [String: String], String)] {
                var fields = HTTPFields()
                for (name, value) in headers { fields[HTTPField.Name(name)!] = value }
                let response = try await client.send(.get, path, headers: fields)
                #expect(response.status == .badRequest, "\(path)")
                #expect(response.headers[.contentType] == "application/problem+json")
                #expect(response.json["field"] as? String == field, "\(path): \(response.text)")
            }
            let page = try await client.send(.get, "/v1/events?category=thing,other&type=Made,Broken&type=Else")
            #expect((page.json["events"] as? [Any])?.count == 5)
            let made = try await client.send(.get, "/v1/events?type=Made")
            #expect((made.json["events"] as? [[String: Any]])?.compactMap { $0["position"] as? Int } == [2, 4])
        }
        await store.shutdown()
    }

    @Test("a client that leaves a quiet stream ends it at once, not at its next heartbeat or event")
    func clientLeavesQuietStream() async throws {
        // A heartbeat far longer than the test's wait: only the close can end the stream.
        let server = try await TestServer.make("livegone") { $0.liveHeartbeat = .seconds(600) }
        let store = server.test.store
        try await server.run { client in
            let port = try #require(client.port)
            let quiet = try LiveClient(port: port, path: "/v1/events/live?category=nobody")
            try await eventually("the stream began") { quiet.body.contains("eventline live feed") }
            try await eventually("the client is counted") {
                try await client.send(.get, "/metrics").text.contains("eventline_live_clients 1")
            }
            quiet.disconnect()
            try await eventually(timeout: .seconds(10), "the stream ended") {
                try await client.send(.get, "/metrics").text.contains("eventline_live_clients 0")
            }
            #expect(quiet.ended)
        }
        await store.shutdown()
    }
}

@Suite("The live feed and forgotten subjects", .timeLimit(.minutes(2)))
struct LiveFeedForgetTests {
    @Test("a live client sees personal fields decrypted; once the subject is forgotten, a client served from the tail sees them null, like one served from the table")
    func forgetReachesTheTail() async throws {
        let server = try await LiveFeedTests.server("livefeed-forget")
        let store = server.test.store
        try await server.run { client in
            let port = try #require(client.port)
            let first = try LiveClient(port: port, path: "/v1/events/live?category=customer")
            // The first client keeps the tail alive; its events come from the tail.
            try await eventually("the first client is streaming") { first.body.contains(": eventline live feed") }
            for id in ["1", "2"] {
                try await store.append(to: "customer-\(id)", events: [NewEvent(
                    type: "CustomerRegistered", data: Data(#"{"email":"c\#(id)@example.com","city":"London"}"#.utf8),
                    personal: PersonalData(subject: "customer-\(id)", fields: ["email"]))])
            }
            try await eventually("the first client saw both") { first.ids.count == 2 }
            #expect(first.body.contains("c1@example.com") && first.body.contains("c2@example.com"))
            try await store.forget(subject: "customer-1")
            try await store.append(to: "customer-3", events: [NewEvent(type: "Noted", data: Data("{}".utf8))])
            try await eventually("the first client saw the later event") { first.ids.count == 3 }
            // A client after the forget, from the tail: the forgotten subject's field is null.
            let second = try LiveClient(port: port, path: "/v1/events/live?category=customer")
            try await eventually("the second client caught up") { second.ids.count == 3 }
            #expect(!second.body.contains("c1@example.com") && second.body.contains("c2@example.com"), "\(second.body)")
            let erased = second.events.first { ($0["stream"] as? String) == "customer-1" }
            #expect((erased?["data"] as? [String: Any])?["email"] is NSNull)
            #expect(((erased?["metadata"] as? [String: Any])?["personal"] as? [String: Any])?["erased"] as? [String] == ["email"])
            // And one that reads the table (the same filter, NDJSON) agrees.
            let table = try await client.send(.get, "/v1/events?category=customer")
            #expect(!table.text.contains("c1@example.com") && table.text.contains("c2@example.com"))
            first.disconnect()
            second.disconnect()
        }
        await store.shutdown()
    }
}

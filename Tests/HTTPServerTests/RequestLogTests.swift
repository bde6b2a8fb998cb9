import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import Logging
import Synchronization
import Testing

/// Log lines written by a handler, kept in memory.
final class CapturedLines: Sendable {
    private let lines = Mutex<[String]>([])
    var all: [String] { lines.withLock { $0 } }

    var sink: @Sendable (Data) -> Void {
        { [self] data in
            let text = String(decoding: data, as: UTF8.self)
            lines.withLock { $0 += text.split(separator: "\n").map(String.init) }
        }
    }
}

@Suite("Request logs")
struct RequestLogTests {
    @Test("every request writes one JSON line with its request id, method, route, status and duration")
    func jsonRequestLines() async throws {
        let captured = CapturedLines()
        var server = try await TestServer.make("log-json")
        var logger = Logger(label: "eventline.http") { label in ServerLogHandler(label: label, format: .json, write: captured.sink) }
        logger.logLevel = .info
        server.logger = logger
        let (given, generated) = try await server.run { client in
            let live = try await client.send(.get, "/health/live", headers: [HTTPField.Name("X-Request-Id")!: "trace-42"])
            #expect(live.headers[HTTPField.Name("X-Request-Id")!] == "trace-42")
            let refused = try await client.command("log-1", "NoSuchCommand", "{}")
            #expect(refused.status == .unprocessableContent)
            let id = try #require(refused.headers[HTTPField.Name("X-Request-Id")!])
            #expect(refused.json["requestId"] as? String == id)
            return ("trace-42", id)
        }
        let requests = captured.all.compactMap { line -> [String: String]? in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String] else {
                Issue.record("not a JSON object of strings: \(line)")
                return nil
            }
            return object["message"] == "request" ? object : nil
        }
        #expect(requests.count == 2)
        let live = try #require(requests.first { $0["request.id"] == given })
        #expect(live["http.method"] == "GET")
        #expect(live["http.route"] == "/health/live")
        #expect(live["http.status"] == "200")
        #expect(live["level"] == "info")
        #expect(live["label"] == "eventline.http")
        #expect(live["duration.ms"].flatMap(Double.init) != nil)
        #expect(live["time"]?.hasPrefix("20") == true)
        let refused = try #require(requests.first { $0["request.id"] == generated })
        #expect(refused["http.method"] == "POST")
        #expect(refused["http.route"] == "/v1/commands/{category}/{id}")
        #expect(refused["http.status"] == "422")
    }

    @Test("text lines read as swift-log's stream handler writes them, metadata sorted, and metadata set on a logger is kept")
    func textLines() async throws {
        let captured = CapturedLines()
        var logger = Logger(label: "eventline.test") { label in ServerLogHandler(label: label, format: .text, write: captured.sink) }
        logger.logLevel = .info
        logger[metadataKey: "z.set"] = "on the logger"
        logger.info("hello", metadata: ["a.given": "1"])
        logger.debug("below the level")
        let lines = captured.all
        #expect(lines.count == 1)
        let line = try #require(lines.first)
        let pattern = #/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} info eventline\.test: a\.given=1 z\.set=on the logger \[HTTPServerTests\] hello$/#
        #expect(line.wholeMatch(of: pattern) != nil, "\(line)")
    }
}

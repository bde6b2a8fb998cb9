import EmbeddedServers
import EventlineTestSupport
import Foundation
import Hummingbird
import PostgresClient
import Synchronization
import Testing

/// An OTLP/HTTP receiver on loopback: collects the spans exporters POST to /v1/traces.
final class OTLPReceiver: Sendable {
    struct ReceivedSpan: Sendable, CustomStringConvertible {
        var traceID = ""
        var spanID = ""
        var parentSpanID = ""
        var name = ""
        var kind = 0
        var links: [String] = []  // the linked spans' trace ids
        var description: String { "\(name) trace=\(traceID) span=\(spanID) parent=\(parentSpanID) kind=\(kind) links=\(links)" }
    }

    private final class Received: Sendable {
        let spans = Mutex<[ReceivedSpan]>([])
    }

    let port: Int
    private let received = Received()
    private let task: Task<Void, any Error>

    /// Listens on a port the system picks (a port picked beforehand could be taken by another
    /// test's server before this one binds it).
    init() async throws {
        let received = self.received
        let router = Router()
        router.post("/v1/traces") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 16 << 20)
            let spans = try OTLPReceiver.decode(Array(body.readableBytesView))
            received.spans.withLock { $0 += spans }
            return Response(status: .ok, headers: [.contentType: "application/x-protobuf"], body: ResponseBody())
        }
        let (ports, listening) = AsyncStream<Int>.makeStream()
        let app = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in listening.yield(channel.localAddress?.port ?? 0) })
        let server = Task {
            defer { listening.finish() }
            try await app.runService()
        }
        task = server
        var bound: Int? = nil
        for await port in ports {
            bound = port
            break
        }
        guard let bound, bound > 0 else {
            server.cancel()
            throw TestFailure("the OTLP receiver did not start: \(String(describing: await server.result))")
        }
        port = bound
    }

    var spans: [ReceivedSpan] { received.spans.withLock { $0 } }

    func stop() { task.cancel() }

    // MARK: - ExportTraceServiceRequest, read with the protobuf wire format (the generated
    // types of swift-otel are not public): resource_spans 1 → scope_spans 2 → spans 2.

    private enum Field {
        case varint(UInt64)
        case bytes(ArraySlice<UInt8>)
        case fixed
    }

    private struct Malformed: Error {}

    private static func fields(_ input: ArraySlice<UInt8>) throws -> [(number: Int, value: Field)] {
        var bytes = input
        func varint() throws -> UInt64 {
            var result: UInt64 = 0
            var shift: UInt64 = 0
            while true {
                guard let byte = bytes.popFirst(), shift < 64 else { throw Malformed() }
                result |= UInt64(byte & 0x7F) << shift
                if byte & 0x80 == 0 { return result }
                shift += 7
            }
        }
        func take(_ count: Int) throws -> ArraySlice<UInt8> {
            guard count >= 0, bytes.count >= count else { throw Malformed() }
            defer { bytes = bytes.dropFirst(count) }
            return bytes.prefix(count)
        }
        var out: [(number: Int, value: Field)] = []
        while !bytes.isEmpty {
            let tag = try varint()
            switch tag & 7 {
            case 0: out.append((Int(tag >> 3), .varint(try varint())))
            case 1: _ = try take(8); out.append((Int(tag >> 3), .fixed))
            case 2: out.append((Int(tag >> 3), .bytes(try take(Int(try varint())))))
            case 5: _ = try take(4); out.append((Int(tag >> 3), .fixed))
            default: throw Malformed()
            }
        }
        return out
    }

    private static func messages(_ data: ArraySlice<UInt8>, _ number: Int) throws -> [ArraySlice<UInt8>] {
        try fields(data).compactMap { field in
            if field.number == number, case .bytes(let bytes) = field.value { return bytes }
            return nil
        }
    }

    private static func hex(_ bytes: ArraySlice<UInt8>) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    static func decode(_ body: [UInt8]) throws -> [ReceivedSpan] {
        var spans: [ReceivedSpan] = []
        for resource in try messages(body[...], 1) {
            for scope in try messages(resource, 2) {
                for encoded in try messages(scope, 2) {
                    var span = ReceivedSpan()
                    for field in try fields(encoded) {
                        switch (field.number, field.value) {
                        case (1, .bytes(let bytes)): span.traceID = hex(bytes)
                        case (2, .bytes(let bytes)): span.spanID = hex(bytes)
                        case (4, .bytes(let bytes)): span.parentSpanID = hex(bytes)
                        case (5, .bytes(let bytes)): span.name = String(decoding: bytes, as: UTF8.self)
                        case (6, .varint(let kind)): span.kind = Int(kind)
                        case (13, .bytes(let link)): span.links += try messages(link, 1).map(hex)
                        default: break
                        }
                    }
                    spans.append(span)
                }
            }
        }
        return spans
    }
}

@Suite("Tracing with OpenTelemetry", .serialized)
struct TracingTests {
    @Test("a command's HTTP span, its handler's load and append, the group commit and the projector's apply share the caller's trace id; events keep traceparent and the X-Correlation-Id")
    func oneTraceFromRequestToReadModel() async throws {
        let receiver = try await OTLPReceiver()
        defer { receiver.stop() }
        let database = try await TestDatabase.create("tracing")
        let eventctl = try Repository.eventctl
        let environment = [
            "EVENTLINE_DATABASE_URL": database.url, "EVENTLINE_PROJECTIONS_DIR": Repository.root + "/Projections",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:\(receiver.port)", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        ].merging(tolerantDatabaseTimeouts) { $1 }
        #expect(try await runProgram(eventctl, ["migrate"], environment: environment).status == 0)
        let port = try FreePort.pick()
        let server = try BackgroundProcess(eventctl, ["serve", "--port", "\(port)"], environment: environment)
        let projector = try BackgroundProcess(eventctl, ["project"], environment: environment)
        defer { killProcessTree(server.pid); killProcessTree(projector.pid) }
        try await eventually("the server answers") { await LoopbackHTTP.answers(port: port) }

        let traceID = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        let callerSpan = "00f067aa0ba902b7"
        let answer = try await LoopbackHTTP.request(
            "POST", port: port, "/v1/commands/account/tr1",
            headers: ["traceparent": "00-\(traceID)-\(callerSpan)-01", "X-Correlation-Id": "order-4711"],
            body: #"{"type":"OpenAccount","data":{"owner":"Ada","currency":"EUR"}}"#)
        #expect(answer.status == 200, "\(answer.body)")

        let wanted = ["eventline.command account", "eventline.load", "eventline.append", "eventline.log_writer.group_commit",
                      "eventline.projection.apply account_balances"]
        try await eventually(timeout: .seconds(30), "every span of the command reaches the receiver") {
            let names = Set(receiver.spans.filter { $0.traceID == traceID }.map(\.name))
            return wanted.allSatisfy(names.contains) && receiver.spans.contains { $0.traceID == traceID && $0.kind == 2 }
        }
        let spans = receiver.spans.filter { $0.traceID == traceID }
        let http = try #require(spans.first { $0.kind == 2 })
        #expect(http.parentSpanID == callerSpan, "the server span continues the caller's span: \(http)")
        #expect(http.name == "/v1/commands/{category}/{id}" || http.name.contains("commands"), "\(http)")
        let command = try #require(spans.first { $0.name == "eventline.command account" })
        #expect(command.parentSpanID == http.spanID, "\(spans)")
        let apply = try #require(spans.first { $0.name == "eventline.projection.apply account_balances" })
        #expect(apply.kind == 5, "a consumer span: \(apply)")

        // The event carries the trace context and the correlation id.
        let metadata = try await DedicatedConnection(conninfo: database.url).run { conn in
            try conn.query("SELECT metadata::text FROM eventline.events WHERE stream = 'account-tr1'").first!.decode(0, as: String.self)
        }
        #expect(metadata.contains(traceID), "\(metadata)")
        #expect(metadata.contains(#""correlationId": "order-4711""#) || metadata.contains(#""correlationId":"order-4711""#), "\(metadata)")

        // A transfer: the reactor's handling of TransferStarted, and the account commands it
        // issues, continue the trace of the request that started it.
        let reactor = try BackgroundProcess(eventctl, ["react"], environment: environment)
        defer { killProcessTree(reactor.pid) }
        _ = try await LoopbackHTTP.request(
            "POST", port: port, "/v1/commands/account/tr2", body: #"{"type":"OpenAccount","data":{"owner":"Bo","currency":"EUR"}}"#)
        _ = try await LoopbackHTTP.request("POST", port: port, "/v1/commands/account/tr1", body: #"{"type":"DepositMoney","data":{"amount":50}}"#)
        let transferTrace = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        let started = try await LoopbackHTTP.request(
            "POST", port: port, "/v1/commands/transfer/tt1", headers: ["traceparent": "00-\(transferTrace)-\(callerSpan)-01"],
            body: #"{"type":"StartTransfer","data":{"from":"tr1","to":"tr2","amount":20}}"#)
        #expect(started.status == 200, "\(started.body)")
        try await eventually(timeout: .seconds(30), "the reactor's spans reach the receiver in the transfer's trace") {
            let names = receiver.spans.filter { $0.traceID == transferTrace }.map(\.name)
            return names.contains("eventline.reactor.react transfers") && names.filter { $0 == "eventline.command account" }.count >= 1
        }
        let react = try #require(receiver.spans.first { $0.traceID == transferTrace && $0.name == "eventline.reactor.react transfers" })
        #expect(receiver.spans.contains { $0.traceID == transferTrace && $0.name == "eventline.command account" && $0.parentSpanID == react.spanID })

        #expect(await server.stop() == 0, "\(server.output)")
        #expect(await projector.stop() == 0, "\(projector.output)")
        #expect(await reactor.stop() == 0, "\(reactor.output)")
    }

    @Test("an OTLP protocol eventctl is not built for is refused in one line, not a crash")
    func grpcRefused() async throws {
        let test = try await TestStore.make("tracinggrpc")
        let output = try await runProgram(try Repository.eventctl, ["serve", "--port", "0"], environment: [
            "EVENTLINE_DATABASE_URL": test.url, "EVENTLINE_PROJECTIONS_DIR": "/nonexistent",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        ])
        EventCtlTests.expectOneLineError(output, containing: "OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported")
    }
}

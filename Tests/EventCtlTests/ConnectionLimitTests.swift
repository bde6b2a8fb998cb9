import EmbeddedServers
import EventlineTestSupport
import Foundation
import Synchronization
import Testing

/// `eventctl serve` over a migrated database of its own, with `environment` added.
private func serve(_ label: String, _ environment: [String: String]) async throws -> (process: BackgroundProcess, port: Int) {
    let test = try await TestStore.make(label)
    return try await DeploymentTests.serve(
        try Repository.eventctl, url: test.url, environment: environment.merging(["EVENTLINE_PROJECTIONS_DIR": "/nonexistent"]) { $1 })
}

/// A connection driven by hand, byte by byte; the blocking calls run on a thread of their own.
private func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
    }
}

/// What one `recv` on `fd` returns, waiting up to `seconds`: bytes read, 0 when the server
/// closed the connection, -1 on a timeout or an error.
private func receive(_ fd: Int32, within seconds: Int) -> Int {
    var wait = timeval(tv_sec: seconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
    var buffer = [UInt8](repeating: 0, count: 4096)
    return recv(fd, &buffer, buffer.count, 0)
}

/// Whether the server has closed `fd`: a read that returns end of file (waiting up to `seconds`).
private func closedByServer(_ fd: Int32, within seconds: Int) -> Bool {
    while true {
        let count = receive(fd, within: seconds)
        if count == 0 { return true }
        if count < 0 { return errno == ECONNRESET }
    }
}

@Suite("HTTP connections: idle timeout and limit", .serialized)
struct ConnectionLimitTests {
    @Test("EVENTLINE_HTTP_IDLE_TIMEOUT: a connection that sends nothing, or dribbles a request head or body, is closed")
    func idleAndSlowHeads() async throws {
        let (server, port) = try await serve("httpidle", ["EVENTLINE_HTTP_IDLE_TIMEOUT": "0.5"])
        defer { killProcessTree(server.pid) }
        do {
            let silent = try LoopbackHTTP.connect(host: LoopbackHTTP.host, port: port)
            defer { close(silent) }
            #expect(try await onThread { closedByServer(silent, within: 20) }, "a silent connection stayed open")

            // One byte every 100 ms of a head that would take 10 s to finish.
            let slow = try LoopbackHTTP.connect(host: LoopbackHTTP.host, port: port)
            defer { close(slow) }
            let head = Array("GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: \(String(repeating: "a", count: 70))\r\n\r\n".utf8)
            let sent = try await onThread { () -> Int in
                for (index, byte) in head.enumerated() {
                    var one = byte
                    if send(slow, &one, 1, Int32(MSG_NOSIGNAL)) != 1 { return index }
                    var buffer = [UInt8](repeating: 0, count: 16)
                    if recv(slow, &buffer, buffer.count, Int32(MSG_DONTWAIT)) == 0 { return index }
                    usleep(100_000)
                }
                return head.count
            }
            #expect(sent < head.count, "the whole slow head was accepted")

            // A whole head, then a body one byte every 100 ms: 408, and the connection closed.
            let dribbler = try LoopbackHTTP.connect(host: LoopbackHTTP.host, port: port)
            defer { close(dribbler) }
            let body = Array(#"{"type":"OpenAccount","data":{"owner":"\#(String(repeating: "a", count: 60))","currency":"EUR"}}"#.utf8)
            let bodyHead = Array("POST /v1/commands/account/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n".utf8)
            let (answer, closed) = try await onThread { () -> (String, Bool) in
                _ = bodyHead.withUnsafeBytes { send(dribbler, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                // Between bytes, wait 100 ms for an answer (reading it as soon as it comes).
                var wait = timeval(tv_sec: 0, tv_usec: 100_000)
                setsockopt(dribbler, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
                var received: [UInt8] = []
                for byte in body {
                    var one = byte
                    let sent = send(dribbler, &one, 1, Int32(MSG_NOSIGNAL)) == 1
                    var buffer = [UInt8](repeating: 0, count: 4096)
                    let count = recv(dribbler, &buffer, buffer.count, 0)
                    if count > 0 { received += buffer[0..<count] }
                    if !sent || count == 0 || !received.isEmpty { break }
                }
                // The rest of the answer, until the server closes (for up to 20 s).
                var closed = false
                let until = Date().addingTimeInterval(20)
                while !received.isEmpty, !closed, Date() < until {
                    var buffer = [UInt8](repeating: 0, count: 4096)
                    let count = recv(dribbler, &buffer, buffer.count, 0)
                    if count > 0 { received += buffer[0..<count] }
                    closed = count == 0 || (count < 0 && errno != EAGAIN)
                }
                return (String(decoding: received, as: UTF8.self), closed)
            }
            #expect(answer.hasPrefix("HTTP/1.1 408"), "\(answer)")
            #expect(answer.contains("body-timeout") && answer.contains("application/problem+json"), "\(answer)")
            #expect(closed, "a connection with a timed-out body stayed open")
            // A request that arrives in one piece is served as before.
            #expect(try await LoopbackHTTP.request(port: port, "/health/live").status == 200)
        }
        #expect(await server.stop() == 0, "\(server.output)")
    }

    @Test("EVENTLINE_HTTP_MAX_CONNECTIONS: past the limit new connections wait until one closes")
    func connectionLimit() async throws {
        let (server, port) = try await serve("httpmaxconn", ["EVENTLINE_HTTP_MAX_CONNECTIONS": "2"])
        defer { killProcessTree(server.pid) }
        do {
            let first = try LoopbackHTTP.connect(host: LoopbackHTTP.host, port: port)
            let second = try LoopbackHTTP.connect(host: LoopbackHTTP.host, port: port)
            defer { close(second) }
            // Both are served: each answers a request and stays open.
            for fd in [first, second] {
                let request = Array("GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
                #expect(send(fd, request, request.count, Int32(MSG_NOSIGNAL)) == request.count)
                let answered = try await onThread { receive(fd, within: 10) > 0 }
                #expect(answered)
            }
            // A third waits; once the first closes it is served.
            let served = Served()
            let third = Task {
                let answer = try await LoopbackHTTP.request(port: port, "/health/live", timeout: 30)
                served.flag.store(true, ordering: .relaxed)
                return answer
            }
            try await Task.sleep(for: .milliseconds(500))
            let servedEarly = served.flag.load(ordering: .relaxed)
            #expect(!servedEarly, "a third connection was served past the limit of two")
            close(first)
            let answer = try await third.value
            #expect(answer.status == 200)
        }
        #expect(await server.stop() == 0, "\(server.output)")
    }
}

private final class Served: Sendable {
    let flag = Atomic<Bool>(false)
}

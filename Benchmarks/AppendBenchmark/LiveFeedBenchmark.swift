import EventStore
import Foundation
import Synchronization

/// (j) The live feed: clients follow `GET /v1/events/live` over real sockets while appenders
/// write; what is measured is events delivered per second (summed over the clients) and the
/// delay from an append's acknowledgement to each client's receipt of the event.
enum LiveFeedBenchmark {
    /// One follower: a socket read on a thread of its own, scanning for `id: N` lines.
    final class Follower: Sendable {
        private final class State: Sendable {
            let received = Mutex<(count: Int, last: Int, samples: [(position: Int, at: ContinuousClock.Instant)])>((0, 0, []))
        }
        private let fd: Int32
        private let state = State()

        init(port: Int, after: Int, category: String) throws {
            let socket = try connectLoopback(port: port)
            fd = socket
            let request = "GET /v1/events/live?after=\(after)&category=\(category) HTTP/1.1\r\nHost: localhost\r\n\r\n"
            _ = Array(request.utf8).withUnsafeBytes { write(socket, $0.baseAddress, $0.count) }
            let state = self.state
            Thread.detachNewThread {
                var buffer = [UInt8](repeating: 0, count: 1 << 16)
                var line: [UInt8] = []
                while true {
                    let count = read(socket, &buffer, buffer.count)
                    if count <= 0 { break }
                    let now = ContinuousClock.now
                    var found: [Int] = []
                    for byte in buffer[0..<count] {
                        if byte == UInt8(ascii: "\n") {
                            // "id: 123" (possibly with the CR of a chunk line before it: none here)
                            if line.count > 4, line[0] == UInt8(ascii: "i"), line[1] == UInt8(ascii: "d"), line[2] == UInt8(ascii: ":") {
                                if let position = Int(String(decoding: line[4...], as: UTF8.self)) { found.append(position) }
                            }
                            line.removeAll(keepingCapacity: true)
                        } else if line.count < 64 {
                            line.append(byte)
                        }
                    }
                    if !found.isEmpty {
                        state.received.withLock { received in
                            received.count += found.count
                            received.last = found[found.count - 1]
                            for position in found where position % 10 == 0 { received.samples.append((position, now)) }
                        }
                    }
                }
            }
        }

        var count: Int { state.received.withLock { $0.count } }
        var last: Int { state.received.withLock { $0.last } }
        var samples: [(position: Int, at: ContinuousClock.Instant)] { state.received.withLock { $0.samples } }
        func close() { shutdown(fd, Int32(SHUT_RDWR)); Glibc.close(fd) }
    }

    static func run(url: String, port: Int, clients: Int, appenders: Int, seconds: Int) async throws -> AppendBenchmark.Sample {
        var configuration = EventStoreConfiguration(databaseURL: url)
        configuration.poolSize = 4
        let store = EventStore(configuration)
        defer { Task { await store.shutdown() } }
        let category = "live\(UUID().uuidString.prefix(6).lowercased())"
        let head = try await store.headPosition()
        let followers = try (0..<clients).map { _ in try Follower(port: port, after: head, category: category) }
        defer { for follower in followers { follower.close() } }
        try await Task.sleep(for: .seconds(1))  // every client connected and caught up
        final class Acknowledged: Sendable { let times = Mutex<[Int: ContinuousClock.Instant]>([:]) }
        let acknowledged = Acknowledged()
        let end = ContinuousClock.now + .seconds(seconds)
        let started = ContinuousClock.now
        let written = try await withThrowingTaskGroup(of: Int.self) { group in
            for appender in 0..<appenders {
                group.addTask {
                    var count = 0
                    var version = 0
                    while ContinuousClock.now < end {
                        let result = try await store.append(
                            to: "\(category)-\(appender)", expected: version == 0 ? .noStream : .exact(version),
                            events: [NewEvent(type: "Ticked", data: Data(#"{"n":\#(count)}"#.utf8))])
                        let now = ContinuousClock.now
                        version = result.version
                        count += 1
                        if result.position % 10 == 0 { acknowledged.times.withLock { $0[result.position] = now } }
                    }
                    return count
                }
            }
            return try await group.reduce(0, +)
        }
        let last = try await store.headPosition()
        // Every client gets every event; the run lasts until the slowest has them all (or 30 s more).
        let drainDeadline = ContinuousClock.now + .seconds(30)
        while followers.contains(where: { $0.last < last }) && ContinuousClock.now < drainDeadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        let elapsed = AppendBenchmark.milliseconds(ContinuousClock.now - started) / 1000
        let delivered = followers.reduce(0) { $0 + $1.count }
        let expected = written * clients
        if delivered != expected {
            AppendBenchmark.log("(j) delivered \(delivered) of \(expected) (clients behind when the run ended)")
        }
        let acks = acknowledged.times.withLock { $0 }
        var delays: [Double] = []
        for follower in followers {
            for sample in follower.samples {
                guard let ack = acks[sample.position] else { continue }
                delays.append(max(0, AppendBenchmark.milliseconds(sample.at - ack)))
            }
        }
        delays.sort()
        func percentile(_ p: Double) -> Double? {
            delays.isEmpty ? nil : delays[min(delays.count - 1, Int(Double(delays.count) * p))]
        }
        return AppendBenchmark.Sample(eventsPerSecond: Double(delivered) / elapsed, p50: percentile(0.5), p99: percentile(0.99))
    }

    static func connectLoopback(port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw AppendBenchmark.BenchError("socket failed") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            Glibc.close(fd)
            throw AppendBenchmark.BenchError("cannot connect to 127.0.0.1:\(port)")
        }
        return fd
    }
}

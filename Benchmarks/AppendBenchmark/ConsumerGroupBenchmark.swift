import AsyncHTTPClient
import EventStore
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization

/// (l) A consumer group with 4 consumers over HTTP (fetch up to 100, acknowledge, again) while
/// 16 appenders write to 1,000 streams: events acknowledged per second against the append
/// rate, and the delay from an append's acknowledgement to the consumer's ack of its event.
enum ConsumerGroupBenchmark {
    struct Result {
        var appendedPerSecond: Double
        var acknowledgedPerSecond: Double
        var p50: Double?
        var p99: Double?
    }

    static func run(url: String, port: Int, consumers: Int, appenders: Int, seconds: Int) async throws -> Result {
        var configuration = EventStoreConfiguration(databaseURL: url)
        configuration.poolSize = 4
        let store = EventStore(configuration)
        let category = "cg\(UUID().uuidString.prefix(6).lowercased())"
        let group = "bench-\(category)"
        let head = try await store.headPosition()
        _ = try await store.putConsumerGroup(group, ConsumerGroupSettings(filter: EventFilter(category: category), startAfter: head))
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        final class Shared: Sendable {
            let appendedAt = Mutex<[Int: ContinuousClock.Instant]>([:])
            let delays = Mutex<[Double]>([])
            let acknowledged = Atomic<Int>(0)
            let stop = Atomic<Bool>(false)
        }
        let shared = Shared()
        let base = "http://127.0.0.1:\(port)/v1/consumer-groups/\(group)"
        @Sendable func post(_ path: String, _ body: String) async throws -> [String: Any] {
            var request = HTTPClientRequest(url: base + path)
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: body))
            let response = try await client.execute(request, timeout: .seconds(30))
            let bytes = try await response.body.collect(upTo: 64 << 20)
            guard response.status.code == 200 else { throw AppendBenchmark.BenchError("\(path): HTTP \(response.status.code)") }
            return (try JSONSerialization.jsonObject(with: Data(bytes.readableBytesView))) as? [String: Any] ?? [:]
        }
        let consuming = Task {
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for consumer in 0..<consumers {
                    tasks.addTask {
                        while !shared.stop.load(ordering: .relaxed) {
                            let answer = try await post("/fetch", #"{"consumer":"c\#(consumer)","max":100,"wait":1}"#)
                            let messages = answer["messages"] as? [[String: Any]] ?? []
                            guard !messages.isEmpty else { continue }
                            let ids = messages.compactMap { $0["deliveryId"] as? String }.map { "\"\($0)\"" }.joined(separator: ",")
                            _ = try await post("/ack", #"{"deliveryIds":[\#(ids)]}"#)
                            let now = ContinuousClock.now
                            let positions = messages.compactMap { $0["position"] as? Int }
                            shared.acknowledged.add(positions.count, ordering: .relaxed)
                            let sampled = shared.appendedAt.withLock { times in positions.compactMap { times[$0] } }
                            shared.delays.withLock { $0 += sampled.map { AppendBenchmark.milliseconds(now - $0) } }
                        }
                    }
                }
                try await tasks.waitForAll()
            }
        }
        let started = ContinuousClock.now
        let end = started + .seconds(seconds)
        let written = try await withThrowingTaskGroup(of: Int.self) { tasks in
            for appender in 0..<appenders {
                tasks.addTask {
                    var count = 0
                    var versions: [Int: Int] = [:]
                    while ContinuousClock.now < end {
                        // Each appender writes streams of its own, about 1,000 in all.
                        let stream = count % max(1, 1000 / appenders)
                        let version = versions[stream, default: 0]
                        let result = try await store.append(
                            to: "\(category)-\(appender)x\(stream)", expected: version == 0 ? .noStream : .exact(version),
                            events: [NewEvent(type: "Ticked", data: Data(#"{"n":\#(count)}"#.utf8))])
                        versions[stream] = result.version
                        let now = ContinuousClock.now
                        if result.position % 10 == 0 { shared.appendedAt.withLock { $0[result.position] = now } }
                        count += 1
                    }
                    return count
                }
            }
            return try await tasks.reduce(0, +)
        }
        let appendSeconds = AppendBenchmark.milliseconds(ContinuousClock.now - started) / 1000
        // The rate is what the consumers acknowledge while the appends run and until they drain.
        let deadline = ContinuousClock.now + .seconds(60)
        while shared.acknowledged.load(ordering: .relaxed) < written && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        let elapsed = AppendBenchmark.milliseconds(ContinuousClock.now - started) / 1000
        shared.stop.store(true, ordering: .relaxed)
        _ = try? await consuming.value
        try? await client.shutdown()
        _ = try? await store.deleteConsumerGroup(group)
        await store.shutdown()
        let acknowledged = shared.acknowledged.load(ordering: .relaxed)
        if acknowledged < written { AppendBenchmark.log("(l) acknowledged \(acknowledged) of \(written) within a minute of the appends") }
        let delays = shared.delays.withLock { $0 }.sorted()
        return Result(
            appendedPerSecond: Double(written) / appendSeconds, acknowledgedPerSecond: Double(acknowledged) / elapsed,
            p50: AppendBenchmark.percentile(delays, 0.5), p99: AppendBenchmark.percentile(delays, 0.99))
    }

    /// (l″) The data set of the quadratic fetch (issue 23): 500 single-event streams and 500
    /// events of one stream, interleaved; a new group drains it, fetching 100 and acknowledging
    /// them. Returns the milliseconds of each fetch. Before the fix a fetch read every blocked
    /// event of the long stream (and could read them once per row handed out).
    static func backlog(url: String, maxPerStream: Int = 1) async throws -> [Double] {
        var configuration = EventStoreConfiguration(databaseURL: url)
        configuration.poolSize = 2
        let store = EventStore(configuration)
        let category = "bl\(UUID().uuidString.prefix(6).lowercased())"
        let head = try await store.headPosition()
        for index in 0..<500 {
            _ = try await store.append(to: "\(category)-s\(index)", events: [NewEvent(type: "Sold", data: Data("{}".utf8))])
            _ = try await store.append(to: "\(category)-big", events: [NewEvent(type: "Sold", data: Data("{}".utf8))])
        }
        let group = "bench-\(category)"
        _ = try await store.putConsumerGroup(
            group, ConsumerGroupSettings(filter: EventFilter(category: category), startAfter: head, maxPerStream: maxPerStream))
        var fetches: [Double] = []
        var acknowledged = 0
        while acknowledged < 1000 {
            let started = ContinuousClock.now
            let batch = try await store.fetch(group: group, consumer: "c", max: 100) ?? []
            fetches.append(AppendBenchmark.milliseconds(ContinuousClock.now - started))
            guard !batch.isEmpty else { throw AppendBenchmark.BenchError("(l″) the group stalled after \(acknowledged) events") }
            _ = try await store.acknowledge(group: group, deliveryIds: batch.map(\.deliveryId))
            acknowledged += batch.count
        }
        _ = try? await store.deleteConsumerGroup(group)
        await store.shutdown()
        return fetches
    }
}

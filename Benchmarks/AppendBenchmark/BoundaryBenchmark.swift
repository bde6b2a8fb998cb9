import EventStore
import Foundation

/// (n) appends to two streams at once and (o) appends with a DCB condition, against plain
/// single-stream appends in the same run.
enum BoundaryBenchmark {
    enum Kind {
        /// One event to each of two streams, all or nothing, both with expected versions.
        case twoStreams
        /// One untagged event with a condition over a tag that `history` events carry before `after`.
        case conditional(history: Int)
    }

    static func run(url: String, clients: Int, seconds: Int, kind: Kind) async throws -> AppendBenchmark.Sample {
        var configuration = EventStoreConfiguration(databaseURL: url)
        configuration.poolSize = 4
        let store = EventStore(configuration)
        let run = UUID().uuidString.prefix(8).lowercased()
        var after = 0
        switch kind {
        case .twoStreams:
            AppendBenchmark.log("(n) Eventline: \(clients) appenders, one event to each of two streams per append, \(seconds) s…")
        case .conditional(let history):
            AppendBenchmark.log("(o) Eventline: \(clients) appenders, conditional appends over a tag with \(history) events before after, \(seconds) s…")
            // Each client's tag gets its history first, a thousand events per append.
            for client in 0..<clients {
                var left = history
                while left > 0 {
                    let count = min(1000, left)
                    let events = (0..<count).map { _ in
                        NewEvent(type: "SeatBooked", data: Data(#"{"seat":1}"#.utf8), tags: ["course:\(run)-\(client)"])
                    }
                    try await store.append(to: "course-\(run)x\(client)", events: events)
                    left -= count
                }
            }
            after = try await store.headPosition()
        }
        let conditionAfter = after
        let payload = Data(#"{"amount":100}"#.utf8)
        return try await AppendBenchmark.measure(store: store, clients: clients, seconds: seconds) { client, versions in
            switch kind {
            case .twoStreams:
                let result = try await store.append([
                    StreamAppend(
                        stream: "from-\(run)c\(client)", expected: versions[0] == 0 ? .noStream : .exact(versions[0]),
                        events: [NewEvent(type: "StockMoved", data: payload)]),
                    StreamAppend(
                        stream: "to-\(run)c\(client)", expected: versions[1] == 0 ? .noStream : .exact(versions[1]),
                        events: [NewEvent(type: "StockMoved", data: payload)]),
                ])
                versions = [result.appends[0].version, result.appends[1].version]
                return 2
            case .conditional:
                let condition = AppendCondition(
                    failIfEventsMatch: EventQuery(EventQuery.Item(types: ["SeatBooked"], tags: ["course:\(run)-\(client)"])),
                    after: conditionAfter)
                try await store.append(
                    [StreamAppend(stream: "probe-\(run)c\(client)", events: [NewEvent(type: "SeatChecked", data: payload)])],
                    condition: condition)
                return 1
            }
        }
    }

    /// The (n) and (o) table: appends and events per second against plain appends and pgbench.
    static func print(pgbench a: [AppendBenchmark.Sample], plain: [AppendBenchmark.Sample], rows: [(String, [AppendBenchmark.Sample])], options: AppendBenchmark.Options) {
        let median = AppendBenchmark.median
        let format = AppendBenchmark.format
        guard let pg = median(a.map(\.eventsPerSecond)), let base = median(plain.map(\.eventsPerSecond)) else { return }
        Swift.print("")
        Swift.print("(n, o) Appends across streams: \(options.clients) appenders, \(options.seconds) s runs, \(options.rounds) interleaved rounds, medians:")
        Swift.print("")
        Swift.print("| run | appends/s | events/s | appends vs plain | events vs pgbench | p50 ms | p99 ms | appends per group | ms per group | appends/s per round |")
        Swift.print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        Swift.print("| pgbench, 1 INSERT per transaction | – | \(format(pg, "%.0f")) | – | 1.00 | – | – | – | – | \(a.map { String(format: "%.0f", $0.eventsPerSecond) }.joined(separator: ", ")) |")
        for (name, samples) in [("plain: 1 event per append, one stream", plain)] + rows {
            let appends = median(samples.map { $0.appendsPerSecond ?? $0.eventsPerSecond })!
            let events = median(samples.map(\.eventsPerSecond))!
            let rounds = samples.map { String(format: "%.0f", $0.appendsPerSecond ?? $0.eventsPerSecond) }.joined(separator: ", ")
            Swift.print("| \(name) | \(format(appends, "%.0f")) | \(format(events, "%.0f")) | \(format(appends / base, "%.2f")) | \(format(events / pg, "%.2f")) | \(format(median(samples.compactMap(\.p50)), "%.2f")) | \(format(median(samples.compactMap(\.p99)), "%.2f")) | \(format(median(samples.compactMap(\.groupSize)), "%.1f")) | \(format(median(samples.compactMap(\.groupMilliseconds)), "%.2f")) | \(rounds) |")
        }
        if rows.count >= 3, let small = median(rows[1].1.map { $0.appendsPerSecond ?? 0 }), let large = median(rows[2].1.map { $0.appendsPerSecond ?? 0 }) {
            let perRound = zip(rows[2].1, rows[1].1).map { String(format: "%.2f", ($0.appendsPerSecond ?? 0) / max(1, $1.appendsPerSecond ?? 1)) }.joined(separator: ", ")
            Swift.print("")
            Swift.print(String(format: "(o) 10,000 / 10 events before after = %.2f (per round: %@): the condition is an index probe, whatever the history.", large / small, perRound))
        }
    }
}

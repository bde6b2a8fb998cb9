import Cache
import EmbeddedServers
import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Projector
import Synchronization
import Testing
import ReadModels

@Suite("Read-model cache", .serialized)
struct ReadModelCacheTests {
    static func cache() async throws -> (ReadModelCache, RedisClient) {
        let client = try RedisClient(url: try await EmbeddedRedis.testServerURL())
        return (ReadModelCache(client: client, ttlSeconds: 30, prefix: "cachetest-\(UUID().uuidString)"), client)
    }

    @Test("a row read before an invalidation never lands in the cache after it; a row read after it does")
    func raceGuard() async throws {
        let (cache, client) = try await Self.cache()
        defer { client.shutdown() }
        let row = Array(#"{"id":"k","n":1}"#.utf8)
        // No invalidation yet: stored.
        #expect(try await cache.store(projection: "p", generation: 1, key: "k", row: row, checkpoint: 5))
        #expect(try await cache.get(projection: "p", generation: 1, key: "k") == row)
        #expect(try await client.ttl(cache.entryKey(projection: "p", generation: 1, key: "k")) > 0)

        // The batch that moved the checkpoint to 10 changed k: the entry goes.
        try await cache.invalidate(projection: "p", generation: 1, keys: ["k", "other"], position: 10)
        #expect(try await cache.get(projection: "p", generation: 1, key: "k") == nil)
        // A reader that read at checkpoint 7 (before that batch) is too late: refused.
        #expect(try await cache.store(projection: "p", generation: 1, key: "k", row: row, checkpoint: 7) == false)
        #expect(try await cache.get(projection: "p", generation: 1, key: "k") == nil)
        // An older invalidation arriving late does not move the marker back.
        try await cache.invalidate(projection: "p", generation: 1, keys: ["k"], position: 8)
        #expect(try await cache.store(projection: "p", generation: 1, key: "k", row: row, checkpoint: 9) == false)
        // A reader at (or past) the invalidating batch stores.
        let newer = Array(#"{"id":"k","n":2}"#.utf8)
        #expect(try await cache.store(projection: "p", generation: 1, key: "k", row: newer, checkpoint: 10))
        #expect(try await cache.get(projection: "p", generation: 1, key: "k") == newer)
        // Another generation is another key space.
        #expect(try await cache.get(projection: "p", generation: 2, key: "k") == nil)
        // Keys with separators and non-ASCII text are kept apart.
        #expect(try await cache.store(projection: "p", generation: 1, key: "2026-01-01/EUR:ü", row: row, checkpoint: 10))
        #expect(try await cache.get(projection: "p", generation: 1, key: "2026-01-01/EUR:ü") == row)
    }

    @Test("readers racing a projector: whatever the interleaving, the cache ends holding the last committed row")
    func concurrentReaders() async throws {
        let (cache, client) = try await Self.cache()
        defer { client.shutdown() }
        // A "table" with a checkpoint: the writer moves both, then invalidates; readers copy
        // (row, checkpoint) from one snapshot and store it, as the server does.
        let table = Table()
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for version in 1...200 {
                    table.write(version)
                    try? await cache.invalidate(projection: "race", generation: 1, keys: ["k"], position: version)
                }
            }
            for _ in 0..<4 {
                group.addTask {
                    for _ in 0..<150 {
                        let (value, checkpoint) = table.read()
                        _ = try? await cache.store(
                            projection: "race", generation: 1, key: "k", row: Array("\(value)".utf8), checkpoint: checkpoint)
                    }
                }
            }
        }
        // After the last invalidation, the cache holds nothing or the last row, never an old one.
        let cached = try await cache.get(projection: "race", generation: 1, key: "k").map { String(decoding: $0, as: UTF8.self) }
        #expect(cached == nil || cached == "200", "\(cached ?? "")")
    }

    @Test("a projector taking over from an owner that died starts a new cache generation; a clean handover does not")
    func generationOnTakeover() async throws {
        let test = try await TestStore.make("rmgeneration")
        let (cache, client) = try await Self.cache()
        defer { client.shutdown() }
        _ = try await test.store.append(to: "account-g1", events: [NewEvent(type: "AccountOpened", data: Data(#"{"owner":"G","currency":"EUR"}"#.utf8))])
        let projections = try ProjectionDirectory.load(Repository.root + "/Projections").filter { $0.name == "account_balances" }
        var configuration = ProjectorConfiguration(databaseURL: test.url)
        configuration.standbyInterval = .milliseconds(100)
        configuration.pollInterval = .milliseconds(100)
        func generation() async throws -> Int {
            try await test.sql { conn in
                try conn.query("SELECT generation FROM eventline.projections WHERE name = 'account_balances'").first?.decode(0, as: Int.self) ?? 0
            }
        }
        /// Runs a projector (owner `name`) until it holds the lease and has caught up.
        func runUntilCaughtUp(as name: String) async throws {
            var settings = configuration
            settings.ownerName = name
            let projector = Projector(projections: projections, configuration: settings, invalidations: RedisInvalidationSink(cache: cache))
            let task = Task { try? await projector.run() }
            try await eventually("\(name) holds the lease and caught up") {
                try await test.sql { conn in
                    let row = try conn.query("SELECT owner, checkpoint FROM eventline.checkpoints WHERE kind = 'projection' AND name = 'account_balances'").first
                    return try row?.decode(0, as: String?.self) == name && row?.decode(1, as: Int.self) ?? 0 >= 1
                }
            }
            task.cancel()
            await task.value
        }
        try await runUntilCaughtUp(as: "first:1")
        let first = try await generation()
        // A clean stop released the lease: the next owner keeps the generation.
        try await runUntilCaughtUp(as: "second:2")
        #expect(try await generation() == first)
        // An owner that died without releasing (its name is still recorded): a new generation.
        try await test.sql { conn in try conn.execute("UPDATE eventline.checkpoints SET owner = 'gone:1' WHERE kind = 'projection' AND name = 'account_balances'") }
        try await runUntilCaughtUp(as: "third:3")
        #expect(try await generation() == first + 1)
    }
}

/// One row and the checkpoint it was last written at, read together.
private final class Table: Sendable {
    private let state = Mutex((value: 0, checkpoint: 0))
    func write(_ version: Int) { state.withLock { $0 = (version, version) } }
    func read() -> (Int, Int) { state.withLock { ($0.value, $0.checkpoint) } }
}

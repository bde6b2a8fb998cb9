import Cache
import EventStore
import Foundation
import Logging

/// The Redis side of read models: cache-aside entries for rows, invalidated by the projector.
///
/// Keys are `<prefix>:rm:<projection>:<generation>:<key>`; a rebuild bumps the projection's
/// generation, which drops every cached row of it at once (old entries just expire).
///
/// **The race it guards.** A reader that missed the cache reads the row from PostgreSQL,
/// together with the projection's checkpoint C in the same statement (one snapshot), and then
/// stores the row. Meanwhile the projector may commit a batch that changes the row and moves
/// the checkpoint to P > C; its invalidation may run before the reader stores the stale row.
/// So each invalidation first records P in a marker `<prefix>:rm-inv:<projection>:<generation>:<key>`
/// (kept for `markerSeconds`) and then deletes the entry, and a reader stores its row only if no
/// marker is newer than its C, in one script (Redis runs scripts atomically). Either the
/// invalidation ran first (the marker refuses the stale row) or after (it deletes it).
public final class ReadModelCache: Sendable {
    public let client: RedisClient
    /// How long a cached row lives.
    public let ttlSeconds: Int
    /// How long an invalidation marker lives: longer than any read can take.
    public let markerSeconds: Int
    /// Starts every key and the channel, so that stores can share a Redis.
    public let prefix: String
    /// The channel on which invalidations are published, for other services to follow:
    /// `<prefix>:invalidations`.
    public var channel: String { "\(prefix):invalidations" }

    public init(client: RedisClient, ttlSeconds: Int = 300, markerSeconds: Int = 600, prefix: String = "eventline") {
        self.client = client
        self.ttlSeconds = max(1, ttlSeconds)
        self.markerSeconds = max(markerSeconds, self.ttlSeconds, 60)
        self.prefix = prefix
    }

    public func entryKey(projection: String, generation: Int, key: String) -> String {
        "\(prefix):rm:\(projection):\(generation):\(key)"
    }

    public func markerKey(projection: String, generation: Int, key: String) -> String {
        "\(prefix):rm-inv:\(projection):\(generation):\(key)"
    }

    /// The cached row (JSON), or nil.
    public func get(projection: String, generation: Int, key: String) async throws -> [UInt8]? {
        try await client.get(entryKey(projection: projection, generation: generation, key: key))
    }

    /// Stores `row`, read when the projection's checkpoint was `checkpoint`, unless an
    /// invalidation after that checkpoint has happened. Returns whether it was stored.
    @discardableResult
    public func store(projection: String, generation: Int, key: String, row: [UInt8], checkpoint: Int) async throws -> Bool {
        let reply = try await client.eval(
            Self.storeScript,
            keys: [
                entryKey(projection: projection, generation: generation, key: key),
                markerKey(projection: projection, generation: generation, key: key),
            ],
            args: [.int(checkpoint), .bytes(row), .int(ttlSeconds)])
        if let error = reply.serverError { throw error }
        return reply.int == 1
    }

    /// Drops `keys` of `projection` changed by the batch that moved its checkpoint to
    /// `position`, then publishes them on `channel` as
    /// `{"projection":…,"generation":…,"position":…,"keys":[…]}`.
    public func invalidate(projection: String, generation: Int, keys: [String], position: Int) async throws {
        guard !keys.isEmpty else { return }
        // Scripts take their keys in one request; chunks keep requests small.
        for start in stride(from: 0, to: keys.count, by: 500) {
            let chunk = keys[start..<min(start + 500, keys.count)]
            var redisKeys: [String] = []
            redisKeys.reserveCapacity(chunk.count * 2)
            for key in chunk {
                redisKeys.append(entryKey(projection: projection, generation: generation, key: key))
                redisKeys.append(markerKey(projection: projection, generation: generation, key: key))
            }
            let reply = try await client.eval(Self.invalidateScript, keys: redisKeys, args: [.int(position), .int(markerSeconds)])
            if let error = reply.serverError { throw error }
        }
        let message = #"{"projection":\#(JSONValue.quoted(projection)),"generation":\#(generation),"position":\#(position),"keys":[\#(keys.map(JSONValue.quoted).joined(separator: ","))]}"#
        _ = try await client.publish(channel, message)
    }

    /// Announces that every key of `projection` changed (a rebuild started `generation`;
    /// entries of older generations are never read again and expire).
    public func invalidateAll(projection: String, generation: Int, position: Int) async throws {
        let message = #"{"projection":\#(JSONValue.quoted(projection)),"generation":\#(generation),"position":\#(position),"all":true}"#
        _ = try await client.publish(channel, message)
    }

    // KEYS[1] entry, KEYS[2] marker; ARGV checkpoint, row, ttl.
    static let storeScript = """
        local marker = redis.call('GET', KEYS[2])
        if marker and tonumber(marker) > tonumber(ARGV[1]) then return 0 end
        redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
        return 1
        """

    // KEYS: entry, marker pairs; ARGV position, marker ttl. Markers only move forward.
    static let invalidateScript = """
        local position = tonumber(ARGV[1])
        for i = 1, #KEYS, 2 do
            local marker = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
            if marker < position then
                redis.call('SET', KEYS[i + 1], ARGV[1], 'EX', ARGV[2])
            else
                redis.call('EXPIRE', KEYS[i + 1], ARGV[2])
            end
            redis.call('DEL', KEYS[i])
        end
        return #KEYS / 2
        """
}

/// Invalidates the projector's changed keys in Redis after each committed batch.
public struct RedisInvalidationSink: InvalidationSink {
    public let cache: ReadModelCache

    public init(cache: ReadModelCache) {
        self.cache = cache
    }

    public func invalidate(projection: String, generation: Int, keys: [String], position: Int) async throws {
        try await cache.invalidate(projection: projection, generation: generation, keys: keys, position: position)
    }
}

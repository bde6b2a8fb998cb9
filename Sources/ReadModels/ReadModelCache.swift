import Cache
import EventStore
import Foundation
import Logging
import Synchronization

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
    /// The longest a read waits for Redis before the caller goes to PostgreSQL instead.
    public let readTimeout: Duration
    /// After this many failures in a row (connection errors, timeouts), Redis is not asked at
    /// all for `breakerCooldown`; then one call tries again (and one more failure reopens it).
    public let breakerThreshold: Int
    public let breakerCooldown: Duration
    private let breaker = Mutex((failures: 0, openUntil: ContinuousClock.Instant?.none))
    private let logger: Logger

    public init(
        client: RedisClient, ttlSeconds: Int = 300, markerSeconds: Int = 600, prefix: String = "eventline",
        readTimeout: Duration = .milliseconds(250), breakerThreshold: Int = 3, breakerCooldown: Duration = .seconds(5),
        logger: Logger = Logger(label: "eventline.cache")
    ) {
        self.client = client
        self.ttlSeconds = max(1, ttlSeconds)
        self.markerSeconds = max(markerSeconds, self.ttlSeconds, 60)
        self.prefix = prefix
        self.readTimeout = readTimeout
        self.breakerThreshold = max(1, breakerThreshold)
        self.breakerCooldown = breakerCooldown
        self.logger = logger
    }

    /// Whether Redis is not being asked now, after failing `breakerThreshold` times in a row.
    public var isCircuitOpen: Bool {
        breaker.withLock { state in state.openUntil.map { ContinuousClock.now < $0 } ?? false }
    }

    /// The error calls fail with while the circuit is open.
    public struct CircuitOpen: Error, CustomStringConvertible {
        public var description: String { "Redis kept failing; it is not asked again until the cool-down has passed" }
    }

    /// Runs one Redis call through the breaker: refused at once while it is open; a connection
    /// error or timeout counts towards opening it, anything else (a reply) closes it.
    private func guarded<T: Sendable>(_ call: () async throws -> T) async throws -> T {
        if isCircuitOpen { throw CircuitOpen() }
        do {
            let value = try await call()
            breaker.withLock { $0 = (0, nil) }
            return value
        } catch let error as RedisError where error.isConnectionError {
            tripped()
            throw error
        } catch is ReadTimeout {
            tripped()
            throw ReadTimeout()
        }
    }

    private func tripped() {
        let opened = breaker.withLock { state -> Bool in
            state.failures += 1
            guard state.failures >= breakerThreshold else { return false }
            let wasOpen = state.openUntil.map { ContinuousClock.now < $0 } ?? false
            state.openUntil = ContinuousClock.now + breakerCooldown
            return !wasOpen
        }
        if opened {
            logger.warning(
                "Redis keeps failing; not asking it for a while (reads go to PostgreSQL, invalidations start a new cache generation)",
                metadata: ["cache.cooldown": "\(breakerCooldown)"])
        }
    }

    /// A read that Redis did not answer within `readTimeout`.
    public struct ReadTimeout: Error, CustomStringConvertible {
        public var description: String { "Redis did not answer the read in time" }
    }

    public func entryKey(projection: String, generation: Int, key: String) -> String {
        "\(prefix):rm:\(projection):\(generation):\(key)"
    }

    public func markerKey(projection: String, generation: Int, key: String) -> String {
        "\(prefix):rm-inv:\(projection):\(generation):\(key)"
    }

    /// The cached row (JSON), or nil.
    /// Never waits more than `readTimeout`: a Redis that is slow or hung fails the read
    /// (`ReadTimeout`) and the caller reads PostgreSQL; the call itself finishes on its own.
    public func get(projection: String, generation: Int, key: String) async throws -> [UInt8]? {
        let client = self.client
        let entry = entryKey(projection: projection, generation: generation, key: key)
        return try await guarded {
            try await Self.within(readTimeout) { try await client.get(entry) }
        }
    }

    /// The value of `body`, or `ReadTimeout` once `limit` has passed. The body runs in a task
    /// of its own, which is left to finish (a blocked socket call cannot be interrupted).
    static func within<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let once = ResumeOnce(continuation)
            let timer = Task {
                try? await Task.sleep(for: limit)
                if !Task.isCancelled { once.resume(.failure(ReadTimeout())) }
            }
            Task {
                do {
                    once.resume(.success(try await body()))
                } catch {
                    once.resume(.failure(error))
                }
                timer.cancel()
            }
        }
    }

    /// Stores `row`, read when the projection's checkpoint was `checkpoint`, unless an
    /// invalidation after that checkpoint has happened. Returns whether it was stored.
    @discardableResult
    public func store(projection: String, generation: Int, key: String, row: [UInt8], checkpoint: Int) async throws -> Bool {
        let reply = try await guarded {
            try await client.eval(
                Self.storeScript,
                keys: [
                    entryKey(projection: projection, generation: generation, key: key),
                    markerKey(projection: projection, generation: generation, key: key),
                ],
                args: [.int(checkpoint), .bytes(row), .int(ttlSeconds)])
        }
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
            let keys = redisKeys
            let reply = try await guarded {
                try await client.eval(Self.invalidateScript, keys: keys, args: [.int(position), .int(markerSeconds)])
            }
            if let error = reply.serverError { throw error }
        }
        let message = #"{"projection":\#(JSONValue.quoted(projection)),"generation":\#(generation),"position":\#(position),"keys":[\#(keys.map(JSONValue.quoted).joined(separator: ","))]}"#
        _ = try await guarded { try await client.publish(channel, message) }
    }

    /// Announces that every key of `projection` changed (a rebuild started `generation`;
    /// entries of older generations are never read again and expire).
    public func invalidateAll(projection: String, generation: Int, position: Int) async throws {
        let message = #"{"projection":\#(JSONValue.quoted(projection)),"generation":\#(generation),"position":\#(position),"all":true}"#
        _ = try await guarded { try await client.publish(channel, message) }
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

/// A continuation resumed by whichever of several racers comes first.
private final class ResumeOnce<T: Sendable>: Sendable {
    private let continuation: Mutex<CheckedContinuation<T, any Error>?>
    init(_ continuation: CheckedContinuation<T, any Error>) { self.continuation = Mutex(continuation) }
    func resume(_ result: Result<T, any Error>) {
        continuation.withLock { $0.take() }?.resume(with: result)
    }
}

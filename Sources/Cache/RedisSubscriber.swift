import Foundation
import Logging
import Synchronization

/// A message received on a subscribed channel.
public struct RedisMessage: Sendable, Hashable {
    /// The channel it was published on.
    public var channel: String
    /// The published bytes, unchanged.
    public var payload: [UInt8]
    /// The payload decoded as UTF-8 (invalid sequences repaired).
    public var string: String { String(decoding: payload, as: UTF8.self) }

    /// A message as received on `channel`.
    public init(channel: String, payload: [UInt8]) {
        self.channel = channel
        self.payload = payload
    }
}

/// SUBSCRIBE to channels on a connection and thread of its own, delivering what arrives
/// through `events`.
///
/// ```swift
/// let subscriber = RedisSubscriber(configuration: configuration, channels: ["invalidate"], logger: logger)
/// for await event in subscriber.events {
///     switch event {
///     case .subscribed: cache.removeAll()          // anything may have been missed before
///     case .message(let message): cache.remove(message.string)
///     }
/// }
/// ```
/// The thread starts in `init` and connects at once. A dropped connection (or one that stops
/// answering the PING sent after `healthCheckInterval` of silence) is reopened with backoff
/// (50 ms doubling to 5 s) and the channels subscribed again; `.subscribed` follows every
/// (re)subscription, and messages published while disconnected are lost, as Redis pub/sub
/// always loses them. `close()`, cancelling the consuming task, or dropping both the
/// subscriber and its stream ends the thread within about 100 ms and finishes `events`.
public final class RedisSubscriber: Sendable {
    /// What the subscriber delivers.
    public enum Event: Sendable, Hashable {
        /// Every channel is subscribed (after the first connect and after each reconnect).
        case subscribed
        /// A message published on one of the channels.
        case message(RedisMessage)
    }

    /// Everything received, in order. Holds at most `bufferSize` undelivered events, dropping
    /// the oldest beyond that. Iterate it from one task only.
    public let events: AsyncStream<Event>
    /// The channels subscribed to.
    public let channels: [String]
    private let state: SubscriberState

    /// Starts subscribing to `channels` (at least one) on a connection made from `configuration`
    /// (its pool size is ignored).
    public init(
        configuration: RedisConfiguration, channels: [String], bufferSize: Int = 10_000,
        healthCheckInterval: Duration = .seconds(30), logger: Logger = Logger(label: "eventline.cache")
    ) {
        precondition(!channels.isEmpty, "RedisSubscriber needs at least one channel")
        var unique: [String] = []
        for channel in channels where !unique.contains(channel) { unique.append(channel) }
        self.channels = unique
        let state = SubscriberState()
        self.state = state
        let (stream, continuation) = AsyncStream<Event>.makeStream(bufferingPolicy: .bufferingNewest(max(1, bufferSize)))
        self.events = stream
        continuation.onTermination = { _ in state.stop.store(true, ordering: .releasing) }

        let loop = SubscribeLoop(
            configuration: configuration, channels: unique, healthCheckInterval: healthCheckInterval,
            state: state, continuation: continuation, logger: logger
        )
        let thread = Thread { loop.run() }
        thread.name = "\(configuration.name)-subscriber"
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Starts subscribing to `channels` on `redis://[user[:password]@]host[:port][/db]`; see
    /// `RedisConfiguration(url:)`.
    public convenience init(
        url: String, channels: [String], bufferSize: Int = 10_000, logger: Logger = Logger(label: "eventline.cache")
    ) throws {
        self.init(configuration: try RedisConfiguration(url: url), channels: channels, bufferSize: bufferSize, logger: logger)
    }

    /// Whether every channel is currently subscribed.
    public var isSubscribed: Bool { state.subscribed.load(ordering: .acquiring) }

    /// Unsubscribes by closing the connection and finishes `events`; calling it again does nothing.
    public func close() {
        state.stop.store(true, ordering: .releasing)
    }
}

private final class SubscriberState: Sendable {
    let stop = Atomic<Bool>(false)
    let subscribed = Atomic<Bool>(false)
}

/// The subscriber thread's work; everything in it stays on that thread.
private final class SubscribeLoop: @unchecked Sendable {
    private let configuration: RedisConfiguration
    private let channels: [String]
    private let healthCheckInterval: Duration
    private let state: SubscriberState
    private let continuation: AsyncStream<RedisSubscriber.Event>.Continuation
    private let logger: Logger
    private static let slice = Duration.milliseconds(100)

    init(
        configuration: RedisConfiguration, channels: [String], healthCheckInterval: Duration,
        state: SubscriberState, continuation: AsyncStream<RedisSubscriber.Event>.Continuation, logger: Logger
    ) {
        self.configuration = configuration
        self.channels = channels
        self.healthCheckInterval = healthCheckInterval
        self.state = state
        self.continuation = continuation
        var logger = logger
        logger[metadataKey: "redis.channels"] = "\(channels.joined(separator: ","))"
        self.logger = logger
    }

    private var stopping: Bool { state.stop.load(ordering: .acquiring) }

    func run() {
        var backoff = Duration.milliseconds(50)
        var failures = 0
        while !stopping {
            do {
                let connection = try subscribe()
                defer { connection.close() }
                backoff = .milliseconds(50)
                if failures > 0 { logger.info("Redis subscription restored") }
                failures = 0
                try receive(on: connection)
            } catch {
                state.subscribed.store(false, ordering: .releasing)
                guard !stopping else { break }
                failures += 1
                // Say it once per outage, not once per attempt.
                if failures == 1 {
                    logger.warning("Redis subscription lost; reconnecting", metadata: ["redis.error": "\(error)"])
                }
                pause(backoff)
                backoff = min(backoff * 2, .seconds(5))
            }
        }
        state.subscribed.store(false, ordering: .releasing)
        continuation.finish()
    }

    /// Connects, subscribes, and returns once every channel is confirmed.
    private func subscribe() throws -> RedisConnection {
        let connection = try RedisConnection(configuration)
        do {
            try connection.write([["SUBSCRIBE"] + channels.map(RedisArgument.string)])
            var confirmed = Set<String>()
            while confirmed.count < channels.count {
                try handle(try connection.readReply(), confirmed: &confirmed)
            }
            state.subscribed.store(true, ordering: .releasing)
            continuation.yield(.subscribed)
            return connection
        } catch {
            connection.close()
            throw error
        }
    }

    /// Delivers messages until the connection fails or the subscriber stops.
    private func receive(on connection: RedisConnection) throws {
        var confirmed = Set<String>()
        var lastHeard = ContinuousClock.now
        var pingSent: ContinuousClock.Instant?
        while !stopping {
            if try connection.waitForReply(timeout: Self.slice) {
                let reply = try connection.readReply()
                lastHeard = .now
                pingSent = nil
                try handle(reply, confirmed: &confirmed)
            } else if let sent = pingSent {
                if ContinuousClock.now - sent > configuration.commandTimeout {
                    throw RedisError(code: .timeout, message: "no answer to PING within \(configuration.commandTimeout)")
                }
            } else if ContinuousClock.now - lastHeard > healthCheckInterval {
                try connection.write([["PING"]])
                pingSent = .now
            }
        }
    }

    /// Yields a message, records a subscribe confirmation, ignores a PONG; an error reply
    /// (an ACL refusing a channel, say) fails the connection.
    private func handle(_ reply: RedisReply, confirmed: inout Set<String>) throws {
        if let error = reply.serverError { throw error }
        guard let parts = reply.array, let kind = parts.first?.string else {
            logger.debug("Ignoring an unexpected reply in subscriber mode")
            return
        }
        switch kind {
        case "message":
            guard parts.count == 3, let channel = parts[1].string, let payload = parts[2].bytes else {
                throw RedisError.protocolError("a malformed pub/sub message")
            }
            if case .terminated = continuation.yield(.message(RedisMessage(channel: channel, payload: payload))) {
                state.stop.store(true, ordering: .releasing)
            }
        case "subscribe":
            if parts.count >= 2, let channel = parts[1].string { confirmed.insert(channel) }
        default:
            break  // "pong", and anything later Redis versions add
        }
    }

    /// Sleeps in short slices, so that a stop request is honoured promptly.
    private func pause(_ duration: Duration) {
        let deadline = ContinuousClock.now + duration
        while !stopping && ContinuousClock.now < deadline {
            Thread.sleep(forTimeInterval: 0.02)
        }
    }
}

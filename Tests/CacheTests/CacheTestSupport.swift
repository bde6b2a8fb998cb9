import Cache
import EmbeddedServers
import Foundation
import Synchronization

/// A client for the shared test Redis (or `EVENTLINE_TEST_REDIS_URL`).
func sharedClient(
    poolSize: Int = 4, commandTimeout: Duration = .seconds(5), database: Int? = nil
) async throws -> RedisClient {
    var configuration = try RedisConfiguration(
        url: try await EmbeddedRedis.testServerURL(), commandTimeout: commandTimeout, poolSize: poolSize
    )
    if let database { configuration.database = database }
    return RedisClient(configuration: configuration)
}

/// A configuration for a private server.
func configuration(for server: EmbeddedRedis, poolSize: Int = 4, commandTimeout: Duration = .seconds(5)) -> RedisConfiguration {
    RedisConfiguration(host: server.host, port: server.port, commandTimeout: commandTimeout, poolSize: poolSize)
}

/// A key (or channel) no other test uses, on a server the tests share.
func uniqueKey(_ label: String = #function) -> String {
    "cache-tests:\(label.prefix { $0 != "(" }):\(UUID().uuidString)"
}

/// Polls `condition` until it holds or `timeout` passes.
func eventually(within timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// Collects a subscriber's events from a task of its own, so tests can wait on them with a timeout.
final class EventRecorder: Sendable {
    private let recorded = Mutex<[RedisSubscriber.Event]>([])
    private let ended = Atomic<Bool>(false)

    init(_ subscriber: RedisSubscriber) {
        let events = subscriber.events
        Task { [self] in
            for await event in events { recorded.withLock { $0.append(event) } }
            ended.store(true, ordering: .releasing)
        }
    }

    var events: [RedisSubscriber.Event] { recorded.withLock { $0 } }
    var hasEnded: Bool { ended.load(ordering: .acquiring) }

    var subscriptions: Int {
        events.filter { $0 == .subscribed }.count
    }

    var messages: [RedisMessage] {
        events.compactMap { event in
            if case .message(let message) = event { return message }
            return nil
        }
    }
}

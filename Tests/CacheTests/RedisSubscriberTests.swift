import Cache
import EmbeddedServers
import Foundation
import Testing

@Suite("RedisSubscriber")
struct RedisSubscriberTests {
    @Test("A subscriber receives, in order, what the client publishes on its channels, binary payloads included, and nothing else")
    func delivery() async throws {
        let client = try await sharedClient()
        defer { client.shutdown() }
        let (orders, accounts, other) = (uniqueKey(), uniqueKey(), uniqueKey())
        let subscriber = RedisSubscriber(configuration: client.configuration, channels: [orders, accounts, orders])
        defer { subscriber.close() }
        let recorder = EventRecorder(subscriber)
        #expect(await eventually { recorder.subscriptions == 1 })
        #expect(subscriber.isSubscribed)
        #expect(subscriber.channels == [orders, accounts])

        let binary: [UInt8] = [0, 13, 10, 255, 36, 42]
        #expect(try await client.publish(orders, "first") == 1)
        #expect(try await client.publish(other, "not for us") == 0)
        #expect(try await client.publish(accounts, binary) == 1)
        #expect(try await client.publish(orders, "second") == 1)
        for index in 0..<100 { try await client.publish(accounts, "bulk \(index)") }

        #expect(await eventually { recorder.messages.count == 103 })
        let messages = recorder.messages
        #expect(messages.prefix(3) == [
            RedisMessage(channel: orders, payload: Array("first".utf8)),
            RedisMessage(channel: accounts, payload: binary),
            RedisMessage(channel: orders, payload: Array("second".utf8)),
        ])
        #expect(messages.dropFirst(3).map(\.string) == (0..<100).map { "bulk \($0)" })
        #expect(!messages.contains { $0.channel == other })
    }

    @Test("close() unsubscribes and finishes the event stream")
    func closeFinishes() async throws {
        let client = try await sharedClient()
        defer { client.shutdown() }
        let channel = uniqueKey()
        let subscriber = RedisSubscriber(configuration: client.configuration, channels: [channel])
        let recorder = EventRecorder(subscriber)
        #expect(await eventually { subscriber.isSubscribed })

        subscriber.close()
        // The thread ends within its 100 ms slice; the bound only allows for a loaded machine.
        #expect(await eventually(within: .seconds(30)) { recorder.hasEnded })
        #expect(!subscriber.isSubscribed)
        #expect(try await eventually { try await client.publish(channel, "anyone?") == 0 })
    }

    @Test("After the server restarts on the same port the subscriber resubscribes by itself and delivers again")
    func resubscribesAfterRestart() async throws {
        let server = try await EmbeddedRedis.start()
        defer { server.stop() }
        let port = server.port
        let client = RedisClient(configuration: configuration(for: server))
        defer { client.shutdown() }
        let subscriber = RedisSubscriber(configuration: client.configuration, channels: ["invalidate"])
        defer { subscriber.close() }
        let recorder = EventRecorder(subscriber)
        #expect(await eventually { recorder.subscriptions == 1 })
        #expect(try await client.publish("invalidate", "before") == 1)
        #expect(await eventually { recorder.messages.count == 1 })

        server.stop()
        #expect(await eventually { !subscriber.isSubscribed })
        let restarted = try await EmbeddedRedis.start(.init(port: port))
        defer { restarted.stop() }

        #expect(await eventually(within: .seconds(15)) { recorder.subscriptions == 2 })
        #expect(try await client.publish("invalidate", "after") == 1)
        #expect(await eventually { recorder.messages.count == 2 })
        #expect(recorder.events == [
            .subscribed, .message(RedisMessage(channel: "invalidate", payload: Array("before".utf8))),
            .subscribed, .message(RedisMessage(channel: "invalidate", payload: Array("after".utf8))),
        ])
        subscriber.close()
        #expect(await eventually(within: .seconds(30)) { recorder.hasEnded })
    }

    @Test("A silent connection is checked with PING after the health-check interval and stays subscribed")
    func healthCheck() async throws {
        let client = try await sharedClient()
        defer { client.shutdown() }
        let channel = uniqueKey()
        let subscriber = RedisSubscriber(
            configuration: client.configuration, channels: [channel], healthCheckInterval: .milliseconds(200)
        )
        defer { subscriber.close() }
        let recorder = EventRecorder(subscriber)
        #expect(await eventually { subscriber.isSubscribed })

        try await Task.sleep(for: .seconds(1))
        #expect(recorder.subscriptions == 1)
        #expect(try await client.publish(channel, "still here") == 1)
        #expect(await eventually { recorder.messages.map(\.string) == ["still here"] })
    }
}

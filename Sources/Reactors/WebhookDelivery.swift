import AsyncHTTPClient
import EventStore
import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import Synchronization

/// How `deliver` runs.
public struct WebhookConfiguration: Sendable {
    /// How long a receiver has to answer a batch.
    public var requestTimeout: Duration = .seconds(10)
    /// The first retry's delay after a batch failed; doubles with each attempt up to `maxRetryDelay`.
    public var retryDelay: Duration = .seconds(1)
    public var maxRetryDelay: Duration = .seconds(60)
    /// How often the groups are looked up again (new webhooks, changed or deleted groups), and
    /// how often a standby process tries to take a group's lease.
    public var refreshInterval: Duration = .seconds(1)
    /// How often a caught-up group looks again without a NOTIFY (for redeliveries coming due).
    public var pollInterval: Duration = .seconds(1)
    /// Only these groups (nil: every group with a webhook).
    public var only: Set<String>? = nil
    /// `deliver@host:pid`: the consumer name a group shows for this process.
    public var ownerName = "deliver@\(ProcessInfo.processInfo.hostName):\(getpid())"

    public init() {}
}

/// Delivers consumer groups that have a webhook (`eventctl deliver`): each group's batches
/// are POSTed as JSON to its URL, signed with its secret:
///
/// ```
/// POST <url>
/// Content-Type: application/json
/// Eventline-Group: <group>
/// Eventline-Signature: sha256=<hex HMAC-SHA256 of the body, keyed with the secret>
///
/// {"group":"billing","messages":[{"deliveryId":"…","attempt":1,"position":3,"stream":"account-42",…}]}
/// ```
///
/// A 2xx answer acknowledges the batch. Anything else, or no answer within the request timeout,
/// gives it back to be delivered again after a backoff (1 s, doubling, up to a minute); after
/// the group's `maxDeliveries` attempts an event is parked. One process delivers a group at a
/// time (a session advisory lock); start several for failover. Redirects are not followed.
public final class WebhookDeliverer: Sendable {
    public let configuration: WebhookConfiguration
    private let store: EventStore
    private let logger: Logger
    /// Signalled at every commit (and poll tick) by one LISTEN session.
    private let commits = ChangeSignal()

    public init(store: EventStore, configuration: WebhookConfiguration = .init(), logger: Logger = Logger(label: "eventline.deliver")) {
        self.store = store
        self.configuration = configuration
        self.logger = logger
    }

    /// Delivers until the calling task is cancelled.
    public func run() async throws {
        var clientConfiguration = HTTPClient.Configuration(redirectConfiguration: .disallow)
        clientConfiguration.timeout = .init(connect: .seconds(5), read: TimeAmount(configuration.requestTimeout))
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await self.commits.signalCommits(conninfo: self.store.configuration.databaseURL, pollInterval: self.configuration.pollInterval)
            }
            group.addTask { await self.supervise(client: client) }
            await group.next()
            group.cancelAll()
        }
        try? await client.shutdown()
    }

    /// Starts a worker for every group with a webhook; the worker of a group that is gone (or
    /// lost its webhook) ends by itself, and starts again if the group comes back.
    private func supervise(client: HTTPClient) async {
        let running = RunningGroups()
        // A failed batch is given back to the group with its own backoff (it is due again
        // later), so the follower's retry delays only cover the database going away.
        let timing = FollowSchedule.Timing(
            pollInterval: configuration.pollInterval, standbyInterval: configuration.refreshInterval,
            retryDelay: configuration.retryDelay, maxRetryDelay: configuration.maxRetryDelay)
        await withDiscardingTaskGroup { workers in
            while !Task.isCancelled {
                do {
                    let groups = try await store.consumerGroupsWithWebhooks().filter { configuration.only?.contains($0) ?? true }
                    for group in groups {
                        guard running.names.withLock({ $0.insert(group).inserted }) else { continue }
                        let worker = WebhookWorker(group: group, store: store, client: client, configuration: configuration, logger: logger)
                        let follower = LogFollower(consumer: worker, wakeups: commits, timing: timing, logger: worker.logger)
                        workers.addTask {
                            await follower.run()
                            worker.shutdown()
                            running.names.withLock { _ = $0.remove(group) }
                        }
                    }
                } catch {
                    logger.warning("cannot read the consumer groups; retrying", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: configuration.refreshInterval)
            }
            workers.cancelAll()
        }
    }
}

/// The groups with a worker in this process.
private final class RunningGroups: Sendable {
    let names = Mutex<Set<String>>([])
}

/// One webhook group as a consumer of the log: its `LogFollower` delivers it while this
/// process holds the group's lease.
final class WebhookWorker: LogConsumer {
    let group: String
    let store: EventStore
    let client: HTTPClient
    let configuration: WebhookConfiguration
    let logger: Logger
    private let session: LeaseSession
    private let consumer: ConsumerID
    private let delivered: Counter
    private let failed: Counter

    init(group: String, store: EventStore, client: HTTPClient, configuration: WebhookConfiguration, logger: Logger) {
        self.group = group
        self.store = store
        self.client = client
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "consumer_group"] = "\(group)"
        self.logger = logger
        let dimensions = [("group", group)]
        delivered = Counter(label: "eventline_webhook_events_delivered_total", dimensions: dimensions)
        failed = Counter(label: "eventline_webhook_batches_failed_total", dimensions: dimensions)
        consumer = ConsumerID(.webhook, group)
        session = LeaseSession(databaseURL: store.configuration.databaseURL, application: "eventline-deliver", threadName: "eventline-deliver-\(group)")
    }

    /// The group's lease in the checkpoint store; it holds nothing else (the group's messages
    /// are its progress).
    struct Lease: Sendable {
        var held: HeldLease
    }

    func shutdown() { session.shutdown() }

    func acquire() async throws -> Lease? {
        guard let held = try await session.acquire(consumer, owner: configuration.ownerName) else { return nil }
        logger.info("webhook lease taken")
        return Lease(held: held)
    }

    func release() async {
        await session.release(consumer, owner: configuration.ownerName)
    }

    /// Fetches one batch and delivers it; finished when the group is gone or has no webhook any more.
    func step(_ lease: inout Lease) async throws -> FollowOutcome {
        // The lease session still answers (and so still holds the lock).
        try await session.verify(lease.held)
        guard case .some(.some(let webhook)) = try await store.consumerGroupWebhook(group) else { return finished() }
        let messages: [ConsumerGroupMessage]
        do {
            guard let fetched = try await store.fetch(group: group, consumer: configuration.ownerName, max: webhook.batchSize, byWebhook: true)
            else { return finished() }
            messages = fetched
        } catch is ConsumerGroupDeliveredByWebhook {
            return finished()
        }
        guard !messages.isEmpty else { return .caughtUp }
        let body = #"{"group":\#(JSONValue.quoted(group)),"messages":[\#(messages.map(\.json).joined(separator: ","))]}"#
        let outcome = await post(body, to: webhook)
        let ids = messages.map(\.deliveryId)
        switch outcome {
        case .success:
            _ = try await store.acknowledge(group: group, deliveryIds: ids)
            delivered.increment(by: messages.count)
        case .failure(let reason):
            failed.increment()
            let attempt = messages.map(\.attempt).max() ?? 1
            let delay = FollowSchedule.backoff(configuration.retryDelay, doublings: attempt - 1, max: configuration.maxRetryDelay)
            logger.warning(
                "webhook batch failed; it will be retried", metadata: ["reason": "\(reason)", "attempt": "\(attempt)", "retry_in": "\(delay)"])
            _ = try await store.refuse(group: group, deliveryIds: ids, retryAfter: delay, reason: reason)
        }
        return .progressed
    }

    private func finished() -> FollowOutcome {
        logger.info("the group is gone or has no webhook; its delivery stops")
        return .finished
    }

    enum Outcome {
        case success
        case failure(String)
    }

    /// POSTs `body`, signed; a 2xx is success, anything else (or no answer in time) a failure.
    private func post(_ body: String, to webhook: ConsumerGroupWebhook) async -> Outcome {
        var request = HTTPClientRequest(url: webhook.url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "eventline-deliver")
        request.headers.add(name: "Eventline-Group", value: group)
        request.headers.add(name: "Eventline-Signature", value: "sha256=" + HMACSHA256.hex(key: Array(webhook.secret.utf8), message: Array(body.utf8)))
        request.body = .bytes(ByteBuffer(string: body))
        do {
            let response = try await client.execute(request, timeout: TimeAmount(configuration.requestTimeout))
            // Read (and drop) what the receiver says, so the connection can be used again.
            _ = try? await response.body.collect(upTo: 1 << 20)
            guard (200..<300).contains(response.status.code) else { return .failure("HTTP \(response.status.code)") }
            return .success
        } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout {
            return .failure("no answer within \(configuration.requestTimeout)")
        } catch {
            return .failure("\(error)")
        }
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

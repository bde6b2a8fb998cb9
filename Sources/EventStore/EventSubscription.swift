import Foundation
import Logging
import PostgresClient

/// A catch-up-then-live subscription to the log: an `AsyncSequence` of `RecordedEvent` that
/// yields every event after its start position (matching its filter) exactly once, in position
/// order.
///
/// Because positions are dense and commit-ordered, "read after the last position seen" can never
/// pass an event that commits later. The sequence reads pages from the table until it is caught
/// up, then waits for the log writer's NOTIFY (or the poll interval, should a notification be
/// lost) and reads again. It pulls: it holds at most one page, so a slow consumer never makes
/// memory grow. A dropped connection is reopened with backoff; the sequence ends (returns nil)
/// when the consuming task is cancelled or the store shuts down, and throws on any other error.
public struct EventSubscription: AsyncSequence, Sendable {
    public typealias Element = RecordedEvent

    let store: EventStore
    let start: Int
    let filter: EventFilter

    init(store: EventStore, after position: Int, filter: EventFilter) {
        self.store = store
        self.start = position
        self.filter = filter
    }

    public func makeAsyncIterator() -> Iterator {
        Iterator(store: store, position: start, filter: filter)
    }

    /// Pulls events page by page.
    public struct Iterator: AsyncIteratorProtocol {
        let store: EventStore
        let filter: EventFilter
        /// The position of the last event handed out (or the start position).
        public private(set) var position: Int
        private var page: [RecordedEvent] = []
        private var index = 0
        private var wakeups: AsyncStream<PostgresListener.Event>.AsyncIterator?
        /// When to read, wait or back off: the schedule of every log follower (with no lease).
        private var schedule: FollowSchedule

        init(store: EventStore, position: Int, filter: EventFilter) {
            self.store = store
            self.position = position
            self.filter = filter
            schedule = FollowSchedule(timing: .init(
                pollInterval: store.configuration.subscriptionPollInterval, reconnectDelay: .milliseconds(50)))
        }

        public mutating func next() async throws -> RecordedEvent? {
            if index < page.count {
                defer { index += 1 }
                position = page[index].position
                return page[index]
            }
            if wakeups == nil {
                // Listen before the first read, so a commit between the read and the wait still wakes us.
                wakeups = PostgresListener.events(
                    conninfo: store.configuration.databaseURL, channels: [LogWriter.notificationChannel],
                    pollInterval: store.configuration.subscriptionPollInterval
                ).makeAsyncIterator()
            }
            while !Task.isCancelled {
                switch schedule.next {
                case .acquire:
                    schedule.record(.acquired)  // a subscription of its own: no lease to take
                case .read:
                    let events: [RecordedEvent]
                    do {
                        events = try await store.readAll(
                            after: position, limit: store.configuration.subscriptionBatchSize, filter: filter,
                            maxBytes: store.configuration.subscriptionPageBytes)
                    } catch is CancellationError {
                        return nil
                    } catch let error as EventStoreError where error.code == .shutdown {
                        return nil
                    } catch let error as EventStoreError where error.code == .unavailable {
                        store.logger.warning("subscription read failed; retrying", metadata: ["error": "\(error.message)"])
                        schedule.record(.interrupted)
                        continue
                    }
                    guard let first = events.first else {
                        schedule.record(.caughtUp)
                        continue
                    }
                    schedule.record(.progressed)
                    page = events
                    index = 1
                    position = first.position
                    return first
                case .wait:
                    // Caught up: a notification, a poll tick (the listener's own) or a reconnect.
                    guard await wakeups?.next() != nil else { return nil }
                    schedule.record(.done)
                case .sleep(let delay):
                    try? await Task.sleep(for: delay)
                    schedule.record(.done)
                case .release:
                    schedule.record(.done)
                case .stop:
                    return nil
                }
            }
            return nil
        }
    }
}

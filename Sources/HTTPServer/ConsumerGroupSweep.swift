import EventStore
import Logging
import ServiceLifecycle

/// Returns every consumer group's overdue deliveries to the queue, or parks them after their
/// last attempt, every `interval`, so that `…/parked`, a group's figures and its metrics are
/// true whether or not a consumer fetches; waiting fetches are woken when something came back.
/// Every server runs one; a group another server is sweeping or fetching from is skipped.
struct ConsumerGroupSweep: Service {
    let store: EventStore
    let interval: Duration
    let changes: ChangeSignal
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    if try await store.sweepConsumerGroups() > 0 { changes.signal() }
                } catch {
                    // The database away or not migrated: the next round tries again.
                    logger.debug("consumer group sweep failed", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: interval)
            }
        }
    }
}

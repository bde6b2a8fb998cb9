import EventStore
import Foundation

/// A reactor (process manager): a consumer of the log that turns events into commands.
///
/// `ReactorRunner` hands it every event of its `filter` after its checkpoint, in log order, one
/// at a time. Its effects are commands on other streams, which cannot commit in one transaction
/// with its checkpoint, so delivery is **at-least-once**: an event may be handed over again
/// after a crash, a lost lease or a failed attempt (the runner retries an event that throws, with
/// backoff; one that keeps failing parks its stream, per `onError`, and is never skipped unless
/// the policy or an operator says so, on the record). A reactor makes that effectively-once by being idempotent, most
/// simply by appending with deterministic event ids (the store recognises a retried append) and
/// by deciding from the current state of the streams it drives rather than from the event alone.
public protocol Reactor: Sendable {
    /// A stable name, `[a-z][a-z0-9_]*`: the key of its checkpoint and lease.
    var name: String { get }
    /// The events it is handed.
    var filter: EventFilter { get }
    /// Handles one event. Throwing retries the same event later; returning moves past it.
    func react(to event: RecordedEvent) async throws
    /// What an event that keeps failing does (nil: the runner's `ReactorConfiguration.onError`).
    /// The key parked is the event's stream. Failures of the store itself (unavailable, an
    /// unknown commit outcome) never count: they are retried for as long as they last.
    var onError: ErrorPolicy? { get }
}

extension Reactor {
    public var onError: ErrorPolicy? { nil }
}

/// A reactor that cannot run: a bad or duplicate name.
public struct ReactorError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Reactor runner settings; every field has a default.
public struct ReactorConfiguration: Sendable {
    /// Events read per page.
    public var batchSize = 100
    /// The first retry's delay after an event failed; doubles each attempt up to `maxRetryDelay`.
    public var retryDelay: Duration = .milliseconds(200)
    public var maxRetryDelay: Duration = .seconds(30)
    /// What an event that keeps failing does when its reactor does not say: retried 10 times
    /// with backoff (about two minutes), then its stream is parked.
    public var onError = ErrorPolicy(retries: 10, backoff: .milliseconds(200), then: .parkKey)
    /// How often a standby process tries to take over a reactor owned by another process.
    public var standbyInterval: Duration = .seconds(1)
    /// How often a caught-up reactor looks for new events without being woken by NOTIFY.
    public var pollInterval: Duration = .seconds(1)
    /// `host:pid`, shown as the owner of the reactors this process runs.
    public var ownerName = "\(ProcessInfo.processInfo.hostName):\(getpid())"

    public init() {}
}

import Foundation
import Logging
import PostgresClient

/// What a log follower does next.
public enum FollowAction: Sendable, Equatable {
    /// Try to take the lease.
    case acquire
    /// Process the next batch after the checkpoint.
    case read
    /// Caught up: wait for the log writer's NOTIFY, at most this long (the polling fallback).
    case wait(timeout: Duration)
    /// Wait this long (standing by, backing off, or paused).
    case sleep(Duration)
    /// Give the lease up.
    case release
    /// Stop following.
    case stop
}

/// What happened when a follower did what its schedule said.
public enum FollowOutcome: Sendable, Equatable {
    /// The lease was taken.
    case acquired
    /// Another process holds the lease.
    case heldElsewhere
    /// A batch was processed and the checkpoint moved; more may be waiting.
    case progressed
    /// Nothing after the checkpoint.
    case caughtUp
    /// The batch failed in the consumer's own code (a handler, a receiver): the same batch is
    /// tried again after a backoff, and the lease is kept.
    case failed
    /// The consumer stands aside for now (parked): it looks again after the standby interval,
    /// keeping the lease.
    case paused
    /// The consumer no longer holds its lease (lost it, or has no use for it): take it again.
    case released
    /// The database or the lease session failed: give the lease up and take it again after a
    /// backoff.
    case interrupted
    /// The consumer is done for good (its subject is gone).
    case finished
    /// A wait, a sleep or a release ended.
    case done
}

/// The scheduling of every log follower, decided from outcomes alone, with no database: when to
/// take the lease, read, wait for a NOTIFY, back off, or stand by.
///
/// ```
/// acquire ─acquired─▶ read ─progressed─▶ read
///    ▲                 │  ─caughtUp───▶ wait(poll) ─done─▶ read
///    │                 │  ─failed─────▶ sleep(retryDelay·2ⁿ) ─done─▶ read
///    │                 │  ─paused─────▶ sleep(standby) ─done─▶ read
///    │                 │  ─released───▶ release ─done─▶ acquire
///    │                 └─ interrupted─▶ release ─done─▶ sleep(backoff) ─done─▶ acquire
///    └─ heldElsewhere ─▶ sleep(standby) ─done─▶ acquire
/// ```
public struct FollowSchedule: Sendable, Equatable {
    public struct Timing: Sendable, Equatable {
        /// How long a caught-up follower waits for a NOTIFY before it reads anyway.
        public var pollInterval: Duration
        /// How often a standby follower tries to take the lease (and a paused one looks again).
        public var standbyInterval: Duration
        /// The first retry's delay after a failed batch; doubles with each failure in a row.
        public var retryDelay: Duration
        public var maxRetryDelay: Duration
        /// The first delay before taking the lease again after an interruption; doubles with
        /// each interruption in a row, up to `maxReconnectDelay`.
        public var reconnectDelay: Duration
        public var maxReconnectDelay: Duration

        public init(
            pollInterval: Duration = .seconds(1), standbyInterval: Duration = .seconds(1), retryDelay: Duration = .milliseconds(200),
            maxRetryDelay: Duration = .seconds(30), reconnectDelay: Duration? = nil, maxReconnectDelay: Duration = .seconds(5)
        ) {
            self.pollInterval = pollInterval
            self.standbyInterval = standbyInterval
            self.retryDelay = retryDelay
            self.maxRetryDelay = maxRetryDelay
            self.reconnectDelay = reconnectDelay ?? min(standbyInterval, maxReconnectDelay)
            self.maxReconnectDelay = maxReconnectDelay
        }
    }

    public let timing: Timing
    /// What to do now.
    public private(set) var next: FollowAction = .acquire
    /// Whether the lease is held (the follower must release it when it stops).
    public private(set) var holding = false
    /// Failed batches in a row.
    public private(set) var failures = 0
    /// Interruptions in a row (reset by the first batch that goes through).
    public private(set) var interruptions = 0
    /// What follows the sleep under way.
    private var afterSleep: FollowAction = .acquire
    /// What follows the release under way.
    private var afterRelease: FollowAction = .acquire

    public init(timing: Timing) {
        self.timing = timing
    }

    /// Records what happened and returns the next action.
    @discardableResult
    public mutating func record(_ outcome: FollowOutcome) -> FollowAction {
        switch outcome {
        case .acquired:
            holding = true
            failures = 0
            next = .read
        case .heldElsewhere:
            holding = false
            sleep(timing.standbyInterval, then: .acquire)
        case .progressed:
            failures = 0
            interruptions = 0
            next = .read
        case .caughtUp:
            failures = 0
            interruptions = 0
            next = .wait(timeout: timing.pollInterval)
        case .failed:
            failures += 1
            interruptions = 0
            sleep(Self.backoff(timing.retryDelay, doublings: failures - 1, max: timing.maxRetryDelay), then: .read)
        case .paused:
            failures = 0
            sleep(timing.standbyInterval, then: .read)
        case .released:
            release(then: .acquire)
        case .interrupted:
            interruptions += 1
            let delay = Self.backoff(timing.reconnectDelay, doublings: interruptions - 1, max: timing.maxReconnectDelay)
            if holding {
                release(then: .sleep(delay))
                afterSleep = .acquire
            } else {
                sleep(delay, then: .acquire)
            }
        case .finished:
            next = holding ? .release : .stop
            afterRelease = .stop
        case .done:
            switch next {
            case .release:
                holding = false
                next = afterRelease
            case .sleep:
                next = afterSleep
            case .wait:
                next = .read
            case .acquire, .read, .stop:
                break  // nothing was under way
            }
        }
        return next
    }

    private mutating func sleep(_ duration: Duration, then action: FollowAction) {
        next = .sleep(duration)
        afterSleep = action
    }

    private mutating func release(then action: FollowAction) {
        if holding {
            next = .release
            afterRelease = action
        } else {
            next = action
        }
    }

    /// `base` doubled `doublings` times, at most `max`.
    public static func backoff(_ base: Duration, doublings: Int, max: Duration) -> Duration {
        var delay = base
        for _ in 0..<Swift.max(0, Swift.min(doublings, 32)) {
            delay = delay * 2
            if delay >= max { return max }
        }
        return Swift.min(delay, max)
    }
}

/// The lease of a log consumer is gone (its session died, or another owner moved the
/// checkpoint): its follower takes the lease again.
public struct LogLeaseLost: Error, Sendable, CustomStringConvertible {
    public init() {}
    public var description: String { "the lease was lost" }
}

/// One consumer of the log, run by `LogFollower`: it takes a lease (a session advisory lock, or
/// nothing for a consumer of its own), processes batches after its checkpoint, and gives the
/// lease up. The follower decides when each happens.
public protocol LogConsumer: Sendable {
    /// What the consumer holds while it has the lease (its session, its checkpoint).
    associatedtype Lease: Sendable
    /// Takes the lease; nil when another process holds it.
    func acquire() async throws -> Lease?
    /// Processes the next batch after the checkpoint. Throwing `LogLeaseLost` takes the lease
    /// again at once; any other error gives it up and takes it again after a backoff.
    func step(_ lease: inout Lease) async throws -> FollowOutcome
    /// Gives the lease up; never fails (a lease whose session is gone is given up already).
    func release() async
}

/// Runs a `LogConsumer` until its task is cancelled or the consumer finishes: takes the lease
/// (standing by while another process holds it), catches up batch by batch, waits for the log
/// writer's NOTIFY with a polling fallback, retries a failed batch with backoff, and takes the
/// lease again after an interruption. The scheduling is `FollowSchedule`'s; this only carries
/// it out.
public struct LogFollower<Consumer: LogConsumer>: Sendable {
    public let consumer: Consumer
    /// Signalled at every commit, poll tick and reconnect (`LogFollower.listen`).
    public let wakeups: ChangeSignal
    public let timing: FollowSchedule.Timing
    public let logger: Logger

    public init(consumer: Consumer, wakeups: ChangeSignal, timing: FollowSchedule.Timing, logger: Logger) {
        self.consumer = consumer
        self.wakeups = wakeups
        self.timing = timing
        self.logger = logger
    }

    /// Follows until the task is cancelled or the consumer finishes; gives the lease up on the way out.
    public func run() async {
        var schedule = FollowSchedule(timing: timing)
        var lease: Consumer.Lease? = nil
        // Read before each batch, so that a commit during the batch ends the wait that follows.
        var generation = wakeups.generation
        following: while !Task.isCancelled {
            let outcome: FollowOutcome
            switch schedule.next {
            case .acquire:
                do {
                    lease = try await consumer.acquire()
                    outcome = lease == nil ? .heldElsewhere : .acquired
                } catch is CancellationError {
                    break following
                } catch {
                    logger.warning("cannot take the lease; trying again", metadata: ["error": "\(error)"])
                    outcome = .interrupted
                }
            case .read:
                guard var held = lease else {
                    outcome = .released
                    break
                }
                generation = wakeups.generation
                do {
                    outcome = try await consumer.step(&held)
                    lease = held
                } catch is CancellationError {
                    break following
                } catch is LogLeaseLost {
                    logger.notice("lease lost; taking it again")
                    outcome = .released
                } catch let error as EventStoreError where error.code == .shutdown {
                    break following
                } catch {
                    logger.warning("interrupted; taking the lease again", metadata: ["error": "\(error)"])
                    outcome = .interrupted
                }
            case .wait(let timeout):
                await wakeups.wait(after: generation, timeout: timeout)
                outcome = .done
            case .sleep(let duration):
                do {
                    try await Task.sleep(for: duration)
                } catch {
                    break following
                }
                outcome = .done
            case .release:
                await consumer.release()
                lease = nil
                outcome = .done
            case .stop:
                break following
            }
            schedule.record(outcome)
        }
        if schedule.holding || lease != nil { await consumer.release() }
    }
}

extension ChangeSignal {
    /// LISTENs for the log writer's NOTIFY on one session and signals at every commit, every
    /// `pollInterval` without one, and every reconnect, until the task is cancelled. One per
    /// process serves all of its followers.
    public func signalCommits(conninfo: String, pollInterval: Duration) async {
        let events = PostgresListener.events(conninfo: conninfo, channels: [LogWriter.notificationChannel], pollInterval: pollInterval)
        for await _ in events { signal() }
    }
}

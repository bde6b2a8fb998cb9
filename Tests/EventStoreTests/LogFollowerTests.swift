import EventStore
import Logging
import Synchronization
import Testing

/// The one log follower's scheduling, without a database: `FollowSchedule` from outcomes
/// alone, and `LogFollower` driving a consumer that keeps its log in memory.
@Suite("Log follower")
struct LogFollowerTests {
    static let timing = FollowSchedule.Timing(
        pollInterval: .seconds(7), standbyInterval: .seconds(3), retryDelay: .milliseconds(100), maxRetryDelay: .seconds(1),
        reconnectDelay: .milliseconds(50), maxReconnectDelay: .milliseconds(300))

    @Test("takes the lease, catches up, then waits for a NOTIFY at most one poll interval")
    func catchesUpThenWaits() {
        var schedule = FollowSchedule(timing: Self.timing)
        #expect(schedule.next == .acquire)
        #expect(!schedule.holding)
        #expect(schedule.record(.acquired) == .read)
        #expect(schedule.holding)
        #expect(schedule.record(.progressed) == .read)
        #expect(schedule.record(.progressed) == .read)
        #expect(schedule.record(.caughtUp) == .wait(timeout: .seconds(7)))
        #expect(schedule.record(.done) == .read)
        #expect(schedule.record(.caughtUp) == .wait(timeout: .seconds(7)))
        #expect(schedule.holding)
    }

    @Test("stands by while another process holds the lease")
    func standsBy() {
        var schedule = FollowSchedule(timing: Self.timing)
        #expect(schedule.record(.heldElsewhere) == .sleep(.seconds(3)))
        #expect(schedule.record(.done) == .acquire)
        #expect(schedule.record(.heldElsewhere) == .sleep(.seconds(3)))
        #expect(schedule.record(.done) == .acquire)
        #expect(!schedule.holding)
        #expect(schedule.record(.acquired) == .read)
    }

    @Test("a failing batch is retried with a doubling backoff up to the cap, keeping the lease; a batch that goes through resets it")
    func retriesWithBackoff() {
        var schedule = FollowSchedule(timing: Self.timing)
        schedule.record(.acquired)
        var delays: [Duration] = []
        for _ in 0..<6 {
            guard case .sleep(let delay) = schedule.record(.failed) else {
                Issue.record("a failure must back off, not \(schedule.next)")
                return
            }
            delays.append(delay)
            #expect(schedule.holding)
            #expect(schedule.record(.done) == .read)
        }
        #expect(delays == [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .seconds(1), .seconds(1)])
        #expect(schedule.failures == 6)
        #expect(schedule.record(.progressed) == .read)
        #expect(schedule.failures == 0)
        #expect(schedule.record(.failed) == .sleep(.milliseconds(100)))
    }

    @Test("an interruption gives the lease up and takes it again after a backoff that grows until a batch goes through")
    func interruptions() {
        var schedule = FollowSchedule(timing: Self.timing)
        schedule.record(.acquired)
        #expect(schedule.record(.interrupted) == .release)
        #expect(schedule.record(.done) == .sleep(.milliseconds(50)))
        #expect(!schedule.holding)
        #expect(schedule.record(.done) == .acquire)
        // The database is still away: taking the lease fails too, with no lease to give up.
        #expect(schedule.record(.interrupted) == .sleep(.milliseconds(100)))
        #expect(schedule.record(.done) == .acquire)
        #expect(schedule.record(.interrupted) == .sleep(.milliseconds(200)))
        #expect(schedule.record(.done) == .acquire)
        #expect(schedule.record(.interrupted) == .sleep(.milliseconds(300)))
        #expect(schedule.record(.done) == .acquire)
        #expect(schedule.record(.acquired) == .read)
        #expect(schedule.record(.caughtUp) == .wait(timeout: .seconds(7)))
        #expect(schedule.interruptions == 0)
        #expect(schedule.record(.done) == .read)
        #expect(schedule.record(.interrupted) == .release)
        #expect(schedule.record(.done) == .sleep(.milliseconds(50)))
    }

    @Test("a lost lease is taken again at once; a paused consumer looks again after the standby interval with its lease")
    func lostAndPaused() {
        var schedule = FollowSchedule(timing: Self.timing)
        schedule.record(.acquired)
        #expect(schedule.record(.released) == .release)
        #expect(schedule.record(.done) == .acquire)
        #expect(!schedule.holding)
        schedule.record(.acquired)
        #expect(schedule.record(.paused) == .sleep(.seconds(3)))
        #expect(schedule.holding)
        #expect(schedule.record(.done) == .read)
    }

    @Test("a finished consumer gives its lease up and stops")
    func finishes() {
        var holding = FollowSchedule(timing: Self.timing)
        holding.record(.acquired)
        #expect(holding.record(.finished) == .release)
        #expect(holding.record(.done) == .stop)
        var standing = FollowSchedule(timing: Self.timing)
        standing.record(.heldElsewhere)
        standing.record(.done)
        #expect(standing.record(.finished) == .stop)
    }

    @Test("backoff: the base, doubled, never past the cap, for any count")
    func backoff() {
        #expect(FollowSchedule.backoff(.milliseconds(10), doublings: 0, max: .seconds(1)) == .milliseconds(10))
        #expect(FollowSchedule.backoff(.milliseconds(10), doublings: 3, max: .seconds(1)) == .milliseconds(80))
        #expect(FollowSchedule.backoff(.milliseconds(10), doublings: 1_000_000, max: .seconds(1)) == .seconds(1))
        #expect(FollowSchedule.backoff(.seconds(2), doublings: 0, max: .seconds(1)) == .seconds(1))
        #expect(FollowSchedule.backoff(.milliseconds(10), doublings: -4, max: .seconds(1)) == .milliseconds(10))
    }

    @Test("the follower applies every event once and in order through held leases, failures, a lost lease and interruptions, waits for wake-ups, and gives the lease up when cancelled")
    func followerDrivesConsumer() async throws {
        let log = MemoryLog(events: 25)
        // Another process holds the lease twice; the event at 7 fails three times; the lease is
        // lost once at 12; the database goes away once at 18 and once while taking the lease.
        log.script { $0.heldElsewhere = 2; $0.failures[7] = 3; $0.loseLeaseAt = 12; $0.interruptAt = 18; $0.failAcquire = 1 }
        let wakeups = ChangeSignal()
        let timing = FollowSchedule.Timing(
            pollInterval: .seconds(3600), standbyInterval: .milliseconds(5), retryDelay: .milliseconds(5),
            maxRetryDelay: .milliseconds(20), reconnectDelay: .milliseconds(5))
        let follower = LogFollower(consumer: log, wakeups: wakeups, timing: timing, logger: Logger(label: "test"))
        let running = Task { await follower.run() }
        try await log.waitUntil { $0.applied.count == 25 && $0.caughtUp > 0 }
        // Caught up with a poll interval of an hour: no batch until woken.
        let idle = log.state { $0.steps }
        try await Task.sleep(for: .milliseconds(200))
        #expect(log.state { $0.steps } == idle)
        log.append(5)
        wakeups.signal()
        try await log.waitUntil { $0.applied.count == 30 }
        running.cancel()
        await running.value
        let final = log.state { $0 }
        #expect(final.applied == Array(1...30))
        #expect(final.attempts[7] == 4)
        #expect(final.acquisitions == 3)  // the first, after the lost lease, after the interruption
        #expect(final.releases == final.acquisitions)
        #expect(!final.holding)
    }

    @Test("a consumer that finishes ends its follower, which gives the lease up")
    func finishedConsumer() async throws {
        let log = MemoryLog(events: 3)
        log.script { $0.finishAt = 3 }
        let follower = LogFollower(consumer: log, wakeups: ChangeSignal(), timing: Self.timing, logger: Logger(label: "test"))
        await follower.run()
        let final = log.state { $0 }
        #expect(final.applied == [1, 2])
        #expect(final.releases == 1)
        #expect(!final.holding)
    }
}

/// A consumer whose log, checkpoint and lease live in memory, with scripted trouble.
final class MemoryLog: LogConsumer {
    struct State: Sendable {
        var events: [Int]
        var checkpoint = 0
        var applied: [Int] = []
        var attempts: [Int: Int] = [:]
        var holding = false
        var acquisitions = 0
        var releases = 0
        var steps = 0
        var caughtUp = 0
        // The script.
        var heldElsewhere = 0
        var failAcquire = 0
        var failures: [Int: Int] = [:]
        var loseLeaseAt: Int?
        var interruptAt: Int?
        var finishAt: Int?
    }
    struct Interrupted: Error {}

    private let shared: Mutex<State>

    init(events: Int) {
        shared = Mutex(State(events: Array(1...events)))
    }

    func script(_ change: (inout State) -> Void) { shared.withLock { change(&$0) } }
    func state<T>(_ read: (State) -> T) -> T { shared.withLock { read($0) } }
    func append(_ count: Int) {
        shared.withLock { state in
            let last = state.events.last ?? 0
            state.events += Array((last + 1)...(last + count))
        }
    }

    func waitUntil(_ condition: (State) -> Bool) async throws {
        while !state(condition) { try await Task.sleep(for: .milliseconds(5)) }
    }

    func acquire() async throws -> Int? {
        try shared.withLock { state -> Int? in
            #expect(!state.holding)
            if state.heldElsewhere > 0 {
                state.heldElsewhere -= 1
                return nil
            }
            if state.acquisitions > 0, state.failAcquire > 0 {
                state.failAcquire -= 1
                throw Interrupted()
            }
            state.holding = true
            state.acquisitions += 1
            return state.checkpoint
        }
    }

    /// Applies up to four events after the lease's checkpoint, one at a time.
    func step(_ checkpoint: inout Int) async throws -> FollowOutcome {
        try shared.withLock { state -> FollowOutcome in
            #expect(state.holding)
            state.steps += 1
            let next = state.events.filter { $0 > checkpoint }.prefix(4)
            guard !next.isEmpty else {
                state.caughtUp += 1
                return .caughtUp
            }
            for event in next {
                if state.finishAt == event { return .finished }
                if state.loseLeaseAt == event {
                    state.loseLeaseAt = nil
                    state.holding = false
                    state.releases += 1
                    throw LogLeaseLost()
                }
                if state.interruptAt == event {
                    state.interruptAt = nil
                    throw Interrupted()
                }
                state.attempts[event, default: 0] += 1
                if let left = state.failures[event], left > 0 {
                    state.failures[event] = left - 1
                    return .failed
                }
                // The checkpoint moves with each event, as a reactor's does.
                state.applied.append(event)
                state.checkpoint = event
                checkpoint = event
            }
            return .progressed
        }
    }

    func release() async {
        shared.withLock { state in
            if state.holding { state.releases += 1 }
            state.holding = false
        }
    }
}

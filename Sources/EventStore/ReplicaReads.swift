import Foundation
import PostgresClient
import Synchronization

/// Where one request's reads may go, and where they went. A read route sets it (as a task
/// local) around its reads: with no context, a read goes to the primary, as every read of a
/// command, a projector or a subscription does.
///
/// `minPosition` is the position the request must see (`atLeast`, `Eventline-Min-Position`).
/// A read at a position that a replica served raises it to that replica's head, so the later reads of the same
/// request never see less than the first did, whichever node serves them.
public final class ReadContext: Sendable {
    @TaskLocal public static var current: ReadContext?

    /// The node that served a read.
    public enum Node: String, Sendable {
        case replica, primary
    }

    private struct State {
        var minimum: Int
        var servedBy: Node?
    }
    private let state: Mutex<State>

    public init(minPosition: Int? = nil) {
        state = Mutex(State(minimum: max(0, minPosition ?? 0), servedBy: nil))
    }

    /// The position every read of the request must see (0: any).
    public var minPosition: Int { state.withLock { $0.minimum } }

    /// `primary` when any read of the request went to the primary, `replica` when all went to
    /// replicas, nil before the first read.
    public var servedBy: Node? { state.withLock { $0.servedBy } }

    /// Records a read served by `node` that saw the log up to `head` (when known).
    public func served(by node: Node, head: Int? = nil) {
        state.withLock { state in
            if state.servedBy != .primary { state.servedBy = node }
            if let head { state.minimum = max(state.minimum, head) }
        }
    }
}

/// Reads on standbys (`EVENTLINE_READ_DATABASE_URL`). A read runs on a pooled standby
/// connection; when the standby has not replayed what the read needs yet, it is tried again as
/// replay moves on, up to `waitTimeout`, and then left to the primary. No transaction is
/// needed to read at a position: a standby replays commits in order and its snapshots only
/// move forward, so a statement that follows one that saw position P on the same session sees
/// everything up to P too. A standby that cannot be reached, or that
/// cancels a read for a conflict with recovery, also leaves the read to the primary: a read is
/// never failed for a replica's sake.
public final class ReplicaReads: Sendable {
    /// What one attempt on a standby found.
    public enum Attempt<T: Sendable>: Sendable {
        /// The standby had what the read needs: the read's value.
        case served(T, head: Int?)
        /// The standby has not replayed far enough yet.
        case behind
    }

    /// Counters, for metrics: reads served by each node, reads that waited for a standby and
    /// how long, and reads a standby left to the primary (it stayed behind, or was unreachable).
    public struct Statistics: Sendable {
        public var servedByReplica = 0
        public var servedByPrimary = 0
        public var waits = 0
        public var waitSeconds = 0.0
        public var fallbacksBehind = 0
        public var fallbacksUnavailable = 0
    }

    public let pool: PostgresConnectionPool
    /// How long a read that needs a position waits for a standby before the primary serves it.
    public let waitTimeout: Duration
    private let counters = Mutex(Statistics())

    /// The first of the waits between attempts on a standby that is behind; each wait doubles,
    /// up to `longestPause`.
    static let firstPause: Duration = .milliseconds(1)
    static let longestPause: Duration = .milliseconds(20)

    public init(pool: PostgresConnectionPool, waitTimeout: Duration) {
        self.pool = pool
        self.waitTimeout = waitTimeout
    }

    /// Reads on the standbys of `url`, with the settings of the primary's pool (`like`: its
    /// timeouts and session settings), under another `name`, spread over the hosts.
    public convenience init(url: String, like primary: PostgresConnectionPool.Configuration, name: String, waitTimeout: Duration) {
        var configuration = primary
        configuration.conninfo = url
        configuration.name = name
        configuration.spreadOverHosts = true
        self.init(pool: PostgresConnectionPool(configuration), waitTimeout: waitTimeout)
    }

    public var statistics: Statistics { counters.withLock { $0 } }

    /// A read route's read (`ReadContext.current`) on `replicas`: the value a standby (or a
    /// primary the read URL reached) served, recorded in the context; nil when the primary must
    /// serve it, recorded too. Without a context (a command, a projector) nil, and nothing
    /// recorded. `attempt` gets the position the read must see (0: any).
    public static func serve<T: Sendable>(
        on replicas: ReplicaReads?, _ attempt: @escaping @Sendable (PostgresConnection, _ minimum: Int) throws -> Attempt<T>
    ) async throws -> T? {
        guard let context = ReadContext.current else { return nil }
        // Once the primary served a read of the request, its later reads go there at once.
        if let replicas, context.servedBy != .primary {
            let minimum = context.minPosition
            if let (value, head, node) = try await replicas.read({ conn in try attempt(conn, minimum) }) {
                context.served(by: node, head: head)
                return value
            }
            replicas.counters.withLock { $0.servedByPrimary += 1 }
        }
        context.served(by: .primary)
        return nil
    }

    /// Runs `attempt` on a standby until it is served or `waitTimeout` passes, and returns its
    /// value with the standby's head when the attempt gave it; nil leaves the read to the primary. Errors of the read itself (a deleted stream, a bad filter) are thrown.
    ///
    /// `node` says which served it: a read URL may reach a primary (one named by mistake, or a
    /// standby promoted since), and the read is then the primary's, as the server reports it.
    public func read<T: Sendable>(
        _ attempt: @escaping @Sendable (PostgresConnection) throws -> Attempt<T>
    ) async throws -> (value: T, head: Int?, node: ReadContext.Node)? {
        let started = ContinuousClock.now
        var pause = Self.firstPause
        while true {
            let outcome: Attempt<T>
            let node: ReadContext.Node
            do {
                (outcome, node) = try await pool.withConnection { conn in
                    (try attempt(conn), conn.isHotStandby == false ? .primary : .replica)
                }
            } catch let error as PostgresError where Self.leavesToPrimary(error) {
                counters.withLock { $0.fallbacksUnavailable += 1 }
                return nil
            }
            let waited = ContinuousClock.now - started
            switch outcome {
            case .served(let value, let head):
                counters.withLock { counters in
                    if node == .replica { counters.servedByReplica += 1 } else { counters.servedByPrimary += 1 }
                    if pause > Self.firstPause {
                        counters.waits += 1
                        counters.waitSeconds += waited.secondsValue
                    }
                }
                return (value, head, node)
            case .behind:
                let left = waitTimeout - waited
                guard left > .zero else {
                    counters.withLock { counters in
                        counters.fallbacksBehind += 1
                        counters.waits += 1
                        counters.waitSeconds += waited.secondsValue
                    }
                    return nil
                }
                // Waiting for replay is on purpose: the request's database deadline does not run.
                await DatabaseDeadline.excludingWait { try? await Task.sleep(for: min(pause, left)) }
                pause = min(pause * 2, Self.longestPause)
            }
        }
    }

    /// Whether a standby's failure leaves the read to the primary: the standby cannot be
    /// reached or gave up its connection, its pool has no connection free, or recovery
    /// cancelled the read (40001, 57P04 and their kin on a hot standby).
    static func leavesToPrimary(_ error: PostgresError) -> Bool {
        switch error.code {
        case .connectionFailed, .connectionClosed, .poolTimeout, .deadline: return true
        case .server:
            guard let state = error.sqlState else { return false }
            // Recovery conflicts (40001) and sessions a standby ended (57P01…57P05).
            return state == "40001" || state.hasPrefix("57P")
        default: return false
        }
    }
}

extension Duration {
    var secondsValue: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

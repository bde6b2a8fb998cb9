import EventStore
import Foundation
import Logging
import PostgresClient
import ServiceLifecycle
import Synchronization

/// What the server knows of PostgreSQL's replication, for `/health/ready` and `/metrics`: the
/// node it writes to, whether synchronous replication is configured and in force, and how far
/// each read node (each host of `EVENTLINE_READ_DATABASE_URL`) is behind, in positions and in
/// seconds. Read every `interval` on connections of its own (one to the primary, one per read
/// node), and on demand when older than that. (Failovers are the log writer's to count and log:
/// `EventStore.writerNode`.)
public final class ReplicationMonitor: Service, Sendable {
    /// A standby as the primary sees it (`pg_stat_replication`).
    public struct Standby: Sendable {
        public var name: String
        public var state: String
        /// async, potential, sync or quorum.
        public var syncState: String
        public var replayLagSeconds: Double?
    }

    /// A read node as it answers itself.
    public struct ReadNode: Sendable {
        /// `host:port`, as the read URL names it.
        public var node: String
        public var reachable: Bool
        /// Whether it is in recovery (a standby); a read URL that reaches a primary is served,
        /// and shown here.
        public var standby: Bool?
        public var head: Int?
        public var lagPositions: Int?
        /// How long ago the oldest event it has not replayed was committed (0 when it has all).
        public var lagSeconds: Double?
        public var replayPaused: Bool?
        public var error: String?
    }

    public struct Snapshot: Sendable {
        /// The primary's `host:port`, nil when it cannot be reached.
        public var writeNode: String?
        public var head: Int?
        public var synchronousStandbyNames = ""
        public var synchronousCommit = ""
        public var standbys: [Standby] = []
        public var readNodes: [ReadNode] = []
        public var error: String?
        var takenAt: ContinuousClock.Instant

        /// Whether the primary waits for a standby before a commit returns.
        public var synchronousConfigured: Bool {
            !synchronousStandbyNames.trimmingCharacters(in: .whitespaces).isEmpty && !["off", "local"].contains(synchronousCommit)
        }

        /// Standbys that a commit waits for now.
        public var synchronousConnected: Int {
            synchronousConfigured ? standbys.filter { ["sync", "quorum"].contains($0.syncState) }.count : 0
        }
    }

    private let primary: DedicatedConnection
    private let readNodes: [(node: String, connection: DedicatedConnection)]
    private let interval: Duration
    private let logger: Logger
    private let state = Mutex<Snapshot?>(nil)

    public init(
        databaseURL: String, readDatabaseURL: String?, interval: Duration = .seconds(1), connectTimeout: Duration = .milliseconds(1500),
        logger: Logger
    ) {
        primary = DedicatedConnection(
            conninfo: databaseURL, name: "eventline-replication", answerTimeout: .seconds(2), connectTimeout: connectTimeout)
        if let readDatabaseURL, let info = try? ConnectionInfo(readDatabaseURL) {
            readNodes = zip(info.nodes, info.nodeConnectionStrings).map { node, conninfo in
                (node, DedicatedConnection(conninfo: conninfo, name: "eventline-replica-monitor", answerTimeout: .seconds(2), connectTimeout: connectTimeout))
            }
        } else {
            readNodes = []
        }
        self.interval = interval
        self.logger = logger
    }

    /// The last snapshot if it is younger than `maxAge`, else a new one.
    public func snapshot(maxAge: Duration) async -> Snapshot {
        if let last = state.withLock({ $0 }), ContinuousClock.now - last.takenAt < maxAge { return last }
        return await refresh()
    }

    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    _ = await self.refresh()
                    try? await Task.sleep(for: self.interval)
                }
            }
            try? await gracefulShutdown()
            group.cancelAll()
        }
        close()
    }

    /// Reads the primary, then every read node, and keeps the result.
    @discardableResult
    public func refresh() async -> Snapshot {
        var snapshot = Snapshot(takenAt: .now)
        do {
            let answer = try await primary.run { conn -> (String?, Int?, String, String, String) in
                let row = try conn.query("""
                    SELECT (SELECT position FROM eventline.log_head),
                           current_setting('synchronous_standby_names'), current_setting('synchronous_commit'),
                           coalesce((SELECT json_agg(json_build_object(
                               'name', application_name, 'state', state, 'sync', sync_state,
                               'lag', extract(epoch FROM replay_lag)::float8))::text FROM pg_stat_replication), '[]')
                    """).first
                return (conn.node, try row?.decode(0, as: Int?.self), try row?.decode(1, as: String.self) ?? "",
                        try row?.decode(2, as: String.self) ?? "", try row?.decode(3, as: String.self) ?? "[]")
            }
            (snapshot.writeNode, snapshot.head, snapshot.synchronousStandbyNames, snapshot.synchronousCommit) = (answer.0, answer.1, answer.2, answer.3)
            let standbys = (try? JSONSerialization.jsonObject(with: Data(answer.4.utf8))) as? [[String: Any]] ?? []
            snapshot.standbys = standbys.map { entry in
                Standby(
                    name: entry["name"] as? String ?? "", state: entry["state"] as? String ?? "",
                    syncState: entry["sync"] as? String ?? "", replayLagSeconds: entry["lag"] as? Double)
            }
        } catch {
            snapshot.error = "\(error)"
        }
        for (node, connection) in readNodes {
            snapshot.readNodes.append(await read(node: node, connection, primaryHead: snapshot.head))
        }
        let previous = state.withLock { state -> Snapshot? in
            defer { state = snapshot }
            return state
        }
        for node in snapshot.readNodes where node.standby == false {
            // Documented behaviour: reads are served there, but they do not offload the primary.
            if previous?.readNodes.first(where: { $0.node == node.node })?.standby != false {
                logger.warning(
                    "a read node is not a standby: reads it serves take nothing off the primary", metadata: ["db.read_node": "\(node.node)"])
            }
        }
        return snapshot
    }

    private func read(node: String, _ connection: DedicatedConnection, primaryHead: Int?) async -> ReadNode {
        var result = ReadNode(node: node, reachable: false)
        do {
            let (standby, head, paused) = try await connection.run { conn -> (Bool, Int, Bool) in
                let row = try conn.query("""
                    SELECT pg_is_in_recovery(), (SELECT position FROM eventline.log_head),
                           CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END
                    """).first
                return (try row?.decode(0, as: Bool.self) ?? false, try row?.decode(1, as: Int.self) ?? 0, try row?.decode(2, as: Bool.self) ?? false)
            }
            (result.reachable, result.standby, result.head, result.replayPaused) = (true, standby, head, paused)
            if let primaryHead {
                let behind = max(0, primaryHead - head)
                result.lagPositions = behind
                result.lagSeconds = 0
                if behind > 0 {
                    // How long ago the first event it lacks was committed, on the primary's clock.
                    result.lagSeconds = try? await primary.run { conn in
                        try conn.query("""
                            SELECT greatest(0, extract(epoch FROM clock_timestamp() - recorded_at))::float8
                            FROM eventline.events WHERE position = \(head + 1)
                            """).first?.decode(0, as: Double.self)
                    } ?? nil
                }
            }
        } catch {
            result.error = "\(error)"
        }
        return result
    }

    /// Closes the monitor's connections.
    public func close() {
        primary.shutdown()
        for (_, connection) in readNodes { connection.shutdown() }
    }
}

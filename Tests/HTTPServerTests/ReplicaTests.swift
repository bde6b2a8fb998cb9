import EmbeddedServers
import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import PostgresClient
import Synchronization
import Testing

/// A private primary with two streaming standbys made by pg_basebackup (s1 synchronous), and
/// a migrated database on it whose store reads from the standbys.
struct ReplicatedCluster {
    let primary: EmbeddedPostgres
    let standbys: [EmbeddedPostgres]
    let server: TestServer
    let readURL: String

    static func start(_ label: String, readWaitTimeout: Duration = .seconds(5)) async throws -> ReplicatedCluster {
        let primary = try await EmbeddedPostgres.start(.init(settings: ["max_connections": "100"]))
        let standbys = [
            try await EmbeddedPostgres.startStandby(of: primary, name: "s1"),
            try await EmbeddedPostgres.startStandby(of: primary, name: "s2"),
        ]
        let admin = DedicatedConnection(conninfo: primary.url(), name: "eventline-test-admin")
        defer { admin.shutdown() }
        try await admin.run { conn in
            try conn.execute(unsafeSQL: "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (s1)'")
            try conn.execute(unsafeSQL: "SELECT pg_reload_conf()")
        }
        let hosts = standbys.map { "\($0.host):\($0.port)" }.joined(separator: ",")
        let test = try await TestStore.make(label, serverURL: primary.url()) { configuration in
            // The standbys' copy of the same database.
            let name = URLComponents(string: configuration.databaseURL)?.path ?? ""
            configuration.readDatabaseURL = "postgresql://\(primary.superuser)@\(hosts)\(name)?target_session_attrs=standby"
            configuration.readWaitTimeout = readWaitTimeout
        }
        var server = TestServer(test: test)
        server.configuration.port = 0
        server.readDatabaseURL = test.store.configuration.readDatabaseURL
        server.readWaitTimeout = readWaitTimeout
        return ReplicatedCluster(primary: primary, standbys: standbys, server: server, readURL: test.store.configuration.readDatabaseURL!)
    }

    func stop() {
        for standby in standbys { standby.stop() }
        primary.stop()
    }

    /// Runs SQL on `node`'s copy of the test database.
    func sql<T: Sendable>(on node: EmbeddedPostgres, _ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        let connection = DedicatedConnection(conninfo: node.url(database: server.test.database.name), name: "eventline-test-sql")
        defer { connection.shutdown() }
        return try await connection.run(body)
    }
}

extension TestClientProtocol {
    /// GETs `uri` until `done` holds for the answer, for at most `limit`; records an issue and
    /// returns the last answer when it never does.
    func until(_ limit: Duration, _ uri: String, _ done: (TestResponse) -> Bool) async throws -> TestResponse {
        let deadline = ContinuousClock.now + limit
        while true {
            let answer = try await send(.get, uri)
            if done(answer) { return answer }
            guard ContinuousClock.now < deadline else {
                Issue.record("\(uri) never showed what was awaited: \(answer.text)")
                return answer
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }
}

/// What the clients of a load test saw, shared by their tasks.
final class ReadTally: Sendable {
    let served = Mutex<[String: Int]>([:])
    let misses = Mutex<[String]>([])
}

@Suite("Reads on standbys", .timeLimit(.minutes(5)))
struct ReplicaTests {
    @Test("read-your-writes on two standbys under load: 8 clients write, then read streams, the log, a query and a read model at their position; none misses its write")
    func readYourWrites() async throws {
        let cluster = try await ReplicatedCluster.start("replicaryw")
        defer { cluster.stop() }
        let projector = try startProjector(cluster.server.test)
        defer { projector.cancel() }
        let tally = ReadTally()
        try await cluster.server.run { client in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for worker in 0..<8 {
                    group.addTask {
                        for round in 0..<12 {
                            let id = "w\(worker)r\(round)"
                            let opened = try await client.command(id, "OpenAccount", #"{"owner":"Owner \#(id)","currency":"EUR"}"#)
                            guard opened.status == .ok else {
                                tally.misses.withLock { $0.append("command \(id): \(opened.text)") }
                                continue
                            }
                            let position = client.position(of: opened)
                            let reads: [(String, HTTPRequest.Method, String, String?)] = [
                                ("stream", .get, "/v1/streams/account-\(id)?atLeast=\(position)", nil),
                                ("log", .get, "/v1/events?after=\(position - 1)&limit=1", nil),
                                ("query", .post, "/v1/events/query", #"{"query":{"items":[{"types":["AccountOpened"]}]},"after":\#(position - 1),"limit":1,"atLeast":\#(position)}"#),
                                ("read model", .get, "/v1/read-models/account_balances/\(id)?atLeast=\(position)", nil),
                            ]
                            for (kind, method, uri, body) in reads {
                                // The log read names its position in the header, as any read may.
                                let headers: HTTPFields = kind == "log" ? [HTTPField.Name("Eventline-Min-Position")!: String(position)] : [:]
                                let answer = try await client.send(method, uri, json: body, headers: headers)
                                let by = answer.headers[HTTPField.Name("Eventline-Served-By")!] ?? "none"
                                tally.served.withLock { $0["\(kind) \(by)", default: 0] += 1 }
                                let sawWrite: Bool
                                switch kind {
                                case "stream": sawWrite = answer.json["version"] as? Int == 1
                                case "read model": sawWrite = answer.json["owner"] as? String == "Owner \(id)"
                                default: sawWrite = ((answer.json["events"] as? [[String: Any]])?.first?["position"] as? Int) == position
                                }
                                if answer.status != .ok || !sawWrite || !["replica", "primary"].contains(by) {
                                    tally.misses.withLock { $0.append("\(kind) of \(id) at \(position) (\(by)): \(answer.status) \(answer.text)") }
                                }
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let metrics = try await client.send(.get, "/metrics").text
            #expect(metrics.contains("eventline_reads_served{by=\"replica\"}"), "\(metrics)")
        }
        let counts = tally.served.withLock { $0 }
        print("read-your-writes on 2 standbys, 8 clients x 12 writes x 4 reads: \(counts.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", "))")
        #expect(tally.misses.withLock { $0 }.isEmpty, "\(tally.misses.withLock { $0 }.prefix(5))")
        // Replication on loopback keeps up: most reads are the standbys'.
        let byReplica = counts.filter { $0.key.hasSuffix(" replica") }.map(\.value).reduce(0, +)
        #expect(byReplica > 0, "\(counts)")
    }

    @Test("a standby that stops replaying: reads at a position fall back to the primary within the read timeout; reads without one stay on the standby; /health/ready and /metrics show the lag")
    func pausedReplay() async throws {
        let cluster = try await ReplicatedCluster.start("replicapause", readWaitTimeout: .milliseconds(300))
        defer { cluster.stop() }
        try await cluster.server.run { client in
            let first = try await client.command("p1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#)
            let read = try await client.send(.get, "/v1/streams/account-p1?atLeast=\(client.position(of: first))")
            #expect(read.status == .ok && read.headers[HTTPField.Name("Eventline-Served-By")!] == "replica", "\(read.headers) \(read.text)")
            for standby in cluster.standbys {
                _ = try await cluster.sql(on: standby) { conn in try conn.execute(unsafeSQL: "SELECT pg_wal_replay_pause()") }
            }
            let second = try await client.command("p2", "OpenAccount", #"{"owner":"Bob","currency":"EUR"}"#)
            let position = client.position(of: second)
            let started = ContinuousClock.now
            let mine = try await client.send(.get, "/v1/streams/account-p2?atLeast=\(position)")
            let took = ContinuousClock.now - started
            #expect(mine.status == .ok && mine.json["version"] as? Int == 1, "\(mine.text)")
            #expect(mine.headers[HTTPField.Name("Eventline-Served-By")!] == "primary", "\(mine.headers)")
            print("a read at a position a paused standby lacks was served by the primary after \(took)")
            // Without a position: the standby's (stale) answer.
            let stale = try await client.send(.get, "/v1/streams/account-p2")
            #expect(stale.status == .notFound, "\(stale.text)")
            // The monitor reads the nodes every second: the lag shows within a few.
            let ready = try await client.until(.seconds(15), "/health/ready") { answer in
                let nodes = answer.json["readNodes"] as? [[String: Any]] ?? []
                return nodes.count == 2 && nodes.allSatisfy { $0["replayPaused"] as? Bool == true && ($0["lagPositions"] as? Int ?? 0) >= 1 }
            }
            #expect(ready.json["writeNode"] as? String == "127.0.0.1:\(cluster.primary.port)", "\(ready.text)")
            let metrics = try await client.until(.seconds(15), "/metrics") { answer in
                answer.text.contains("eventline_replica_lag_positions{node=\"127.0.0.1:\(cluster.standbys[0].port)\"} 1")
            }.text
            #expect(metrics.contains("eventline_replica_read_fallbacks{reason=\"behind\"} 1"), "\(metrics)")
            for standby in cluster.standbys {
                _ = try await cluster.sql(on: standby) { conn in try conn.execute(unsafeSQL: "SELECT pg_wal_replay_resume()") }
            }
            let caughtUp = try await client.send(.get, "/v1/streams/account-p2", headers: [HTTPField.Name("Eventline-Min-Position")!: String(position)])
            #expect(caughtUp.status == .ok && caughtUp.headers[HTTPField.Name("Eventline-Served-By")!] == "replica", "\(caughtUp.headers)")
        }
    }

    @Test("a read URL that reaches a primary (documented behaviour): reads are served, and say they were the primary's; /health/ready shows the read node's role")
    func readURLOnPrimary() async throws {
        let test = try await TestStore.make("replicaonprimary") { $0.readDatabaseURL = $0.databaseURL }
        var server = TestServer(test: test)
        server.configuration.port = 0
        server.readDatabaseURL = test.url
        try await server.run { client in
            let opened = try await client.command("x1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#)
            let read = try await client.send(.get, "/v1/streams/account-x1?atLeast=\(client.position(of: opened))")
            #expect(read.status == .ok && read.headers[HTTPField.Name("Eventline-Served-By")!] == "primary", "\(read.headers) \(read.text)")
            let ready = try await client.send(.get, "/health/ready")
            let nodes = ready.json["readNodes"] as? [[String: Any]] ?? []
            #expect(nodes.count == 1 && nodes.first?["role"] as? String == "primary", "\(ready.text)")
        }
    }

    @Test("/health/ready names the node written to and the synchronous standby in force; with synchronous replication required, a primary without it is 503")
    func synchronousReplication() async throws {
        let cluster = try await ReplicatedCluster.start("replicasync")
        defer { cluster.stop() }
        var server = cluster.server
        server.configuration.requireSynchronousReplication = true
        try await server.run { client in
            let ready = try await client.send(.get, "/health/ready")
            #expect(ready.status == .ok, "\(ready.text)")
            let sync = ready.json["synchronousReplication"] as? [String: Any] ?? [:]
            #expect(sync["configured"] as? Bool == true && sync["connected"] as? Int == 1 && sync["required"] as? Bool == true, "\(ready.text)")
            let standbys = ready.json["standbys"] as? [[String: Any]] ?? []
            #expect(Set(standbys.compactMap { $0["name"] as? String }) == ["s1", "s2"], "\(ready.text)")
            #expect(standbys.first { $0["name"] as? String == "s1" }?["syncState"] as? String == "quorum", "\(ready.text)")
        }
        // The shared test server has no standby at all.
        let alone = try await TestServer.make("replicaalone") { $0.requireSynchronousReplication = true }
        try await alone.run { client in
            let ready = try await client.send(.get, "/health/ready")
            #expect(ready.status == .serviceUnavailable && ready.isProblem, "\(ready.text)")
            #expect(ready.text.contains("synchronous replication is not configured"), "\(ready.text)")
        }
    }
}

import EmbeddedServers
import EventlineTestSupport
import Foundation
import PostgresClient
import Synchronization
import Testing

@Suite("libpq layer")
struct PostgresClientTests {
    static func connection() async throws -> (DedicatedConnection, TestDatabase) {
        let database = try await TestDatabase.create("pg")
        return (DedicatedConnection(conninfo: database.url), database)
    }

    @Test("interpolated values are bound as parameters and decode back to the same Swift values")
    func bindsRoundTrip() async throws {
        let (connection, _) = try await Self.connection()
        defer { connection.shutdown() }
        let id = UUID()
        let date = Date(timeIntervalSince1970: 1_700_000_000.123456)
        let bytes = Data([0, 1, 2, 255, 0])
        let hostile = "x'); DROP TABLE t; --"
        try await connection.run { conn in
            let row = try conn.query("""
                SELECT \(42)::bigint, \("héllo")::text, \(true)::bool, \(2.5)::float8, \(id)::uuid,
                       \(date)::timestamptz, \(bytes)::bytea, \(hostile)::text, \(nil as String?)::text,
                       \(["a", "b\"c", "d\\e"])::text[] = ARRAY['a', 'b"c', 'd\\e'], \(PostgresJSONB(Data(#"{"k":[1,2]}"#.utf8)))::jsonb
                """).first!
            #expect(try row.decode(0, as: Int.self) == 42)
            #expect(try row.decode(1, as: String.self) == "héllo")
            #expect(try row.decode(2, as: Bool.self))
            #expect(try row.decode(3, as: Double.self) == 2.5)
            #expect(try row.decode(4, as: UUID.self) == id)
            #expect(try row.decode(5, as: Date.self) == date)
            #expect(try row.decode(6, as: Data.self) == bytes)
            #expect(try row.decode(7, as: String.self) == hostile)
            #expect(try row.decode(8, as: String?.self) == nil)
            #expect(try row.decode(9, as: Bool.self))
            #expect(try row.decode(10, as: String.self) == #"{"k": [1, 2]}"#)
            // Decoding NULL into a non-optional and a type into the wrong Swift type are errors, not crashes.
            #expect(throws: PostgresError.self) { try row.decode(8, as: String.self) }
            #expect(throws: PostgresError.self) { try row.decode(1, as: Int.self) }
            #expect(throws: PostgresError.self) { try row.decode("nope", as: Int.self) }
        }
    }

    @Test("a string holding a NUL character is refused before it is sent")
    func nulRefused() async throws {
        let (connection, _) = try await Self.connection()
        defer { connection.shutdown() }
        let error = await #expect(throws: PostgresError.self) {
            try await connection.run { conn in try conn.query("SELECT \("a\u{0}b")::text") }
        }
        #expect(error?.code == .invalidParameter)
    }

    @Test("server errors carry SQLSTATE, message, detail, constraint and the query")
    func serverErrors() async throws {
        let (connection, _) = try await Self.connection()
        defer { connection.shutdown() }
        let error = await #expect(throws: PostgresError.self) {
            try await connection.run { conn in
                try conn.execute(unsafeSQL: "CREATE TABLE t (id int CONSTRAINT t_pk PRIMARY KEY)")
                try conn.execute("INSERT INTO t VALUES (\(1))")
                try conn.execute("INSERT INTO t VALUES (\(1))")
            }
        }
        #expect(error?.code == .server)
        #expect(error?.sqlState == SQLState.uniqueViolation)
        #expect(error?.detail?.contains("(id)=(1)") == true)
        #expect(error?.constraint == "t_pk")
        #expect(error?.query == "INSERT INTO t VALUES ($1)")
        // The connection is still usable after a statement error.
        #expect(try await connection.run { conn in try conn.query("SELECT count(*) FROM t").first!.decode(0, as: Int.self) } == 1)
    }

    @Test("transactions commit on return and roll back on throw")
    func transactions() async throws {
        let (connection, _) = try await Self.connection()
        defer { connection.shutdown() }
        struct Boom: Error {}
        try await connection.run { conn in
            try conn.execute(unsafeSQL: "CREATE TABLE t (id int)")
            try conn.transaction { conn in try conn.execute("INSERT INTO t VALUES (\(1))") }
            #expect(throws: Boom.self) {
                try conn.transaction { conn in
                    try conn.execute("INSERT INTO t VALUES (\(2))")
                    throw Boom()
                }
            }
            #expect(!conn.inTransaction)
            #expect(try conn.query("SELECT array_agg(id)::text FROM t").first!.decode(0, as: String.self) == "{1}")
        }
    }

    @Test("pipeline mode runs statements in one round trip; after a failure the rest are skipped and the transaction rolled back")
    func pipeline() async throws {
        let (connection, _) = try await Self.connection()
        defer { connection.shutdown() }
        try await connection.run { conn in
            try conn.execute(unsafeSQL: "CREATE TABLE t (id int PRIMARY KEY)")
            let ok = try conn.pipeline(["BEGIN", "INSERT INTO t VALUES (\(1))", "SELECT count(*) FROM t", "COMMIT"])
            #expect(try ok[2].get().first!.decode(0, as: Int.self) == 1)
            let failed = try conn.pipeline(["BEGIN", "INSERT INTO t VALUES (\(2))", "INSERT INTO t VALUES (\(1))", "INSERT INTO t VALUES (\(3))", "COMMIT"])
            #expect((try? failed[1].get()) != nil)
            guard case .failure(let duplicate) = failed[2] else { Issue.record("expected a failure"); return }
            #expect(duplicate.sqlState == SQLState.uniqueViolation)
            guard case .failure = failed[3] else { Issue.record("expected a skip"); return }
            #expect(!conn.inTransaction)
            #expect(try conn.query("SELECT count(*) FROM t").first!.decode(0, as: Int.self) == 1)
        }
    }

    @Test("COPY TO STDOUT streams rows, with interpolated values inlined as escaped literals")
    func copyOut() async throws {
        let (connection, _) = try await Self.connection()
        defer { connection.shutdown() }
        let lines = try await connection.run { conn in
            var lines: [String] = []
            let count = try conn.copyOut("COPY (SELECT g, \("it's") FROM generate_series(1, \(5)) g WHERE g > \(2)) TO STDOUT") { chunk in
                lines.append(String(decoding: chunk, as: UTF8.self))
            }
            #expect(count == 3)
            return lines
        }
        #expect(lines == ["3\tit's\n", "4\tit's\n", "5\tit's\n"])
    }

    @Test("LISTEN delivers notifications, and ticks when idle")
    func listenNotify() async throws {
        let (connection, database) = try await Self.connection()
        defer { connection.shutdown() }
        var events = PostgresListener.events(conninfo: database.url, channels: ["news"], pollInterval: .milliseconds(200), bufferSize: 16).makeAsyncIterator()
        #expect(await events.next() == .connected)
        try await connection.run { conn in _ = try conn.query("SELECT pg_notify('news', 'hello')") }
        var payloads: [String] = []
        for _ in 0..<20 {
            if case .notification(let notification)? = await events.next() {
                payloads.append(notification.payload)
                break
            }
        }
        #expect(payloads == ["hello"])
        #expect(await events.next() == .tick)
    }

    @Test("connection strings: URLs, key=value conninfo, and several hosts with target_session_attrs")
    func connectionStrings() async throws {
        let server = try await EmbeddedPostgres.shared()
        let database = try await TestDatabase.create("conninfo")
        let deadPort = 1
        for conninfo in [
            database.url,
            "host=127.0.0.1 port=\(server.port) user=\(server.superuser) dbname=\(database.name)",
            "postgresql://\(server.superuser)@127.0.0.1:\(deadPort),127.0.0.1:\(server.port)/\(database.name)?target_session_attrs=read-write&connect_timeout=2",
        ] {
            let connection = DedicatedConnection(conninfo: conninfo)
            let name = try await connection.run { conn in try conn.query("SELECT current_database()").first!.decode(0, as: String.self) }
            #expect(name == database.name, "\(conninfo)")
            connection.shutdown()
        }
        let bad = DedicatedConnection(conninfo: "postgresql://nobody@127.0.0.1:\(deadPort)/x?connect_timeout=1")
        let error = await #expect(throws: PostgresError.self) { try await bad.run { _ in 1 } }
        #expect(error?.code == .connectionFailed)
        bad.shutdown()
    }

    @Test("the pool never opens more than its size, and a caller waiting past the timeout gets poolTimeout")
    func poolLimits() async throws {
        let database = try await TestDatabase.create("pool")
        let pool = PostgresConnectionPool(.init(conninfo: database.url, size: 3, acquireTimeout: .seconds(30)))
        defer { pool.close() }
        let gauge = Gauge()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<12 {
                group.addTask {
                    try await pool.withConnection { conn in
                        gauge.enter()
                        // Holders stay until three have been in at once (bounded, in case the
                        // pool never lets three in): other suites running in parallel can
                        // delay the tasks, and a short fixed hold could then never overlap.
                        var rounds = 0
                        repeat {
                            _ = try conn.query("SELECT pg_sleep(0.02)")
                            rounds += 1
                        } while gauge.peak < 3 && rounds < 500
                        gauge.leave()
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(gauge.peak == 3)
        #expect(pool.statistics.open == 3)

        // Hold the only connection of a small pool; the next caller times out.
        let small = PostgresConnectionPool(.init(conninfo: database.url, size: 1, acquireTimeout: .milliseconds(200)))
        defer { small.close() }
        // The holder keeps it until the test is done (at most 30 s): a fixed hold could end
        // before a loaded machine gets to the second caller.
        let holding = Gauge()
        let done = Gauge()
        let holder = Task {
            try await small.withConnection { conn in
                holding.enter()
                var rounds = 0
                repeat {
                    _ = try conn.query("SELECT pg_sleep(0.05)")
                    rounds += 1
                } while done.peak == 0 && rounds < 600
            }
        }
        try await eventually("the holder has the connection") { holding.peak == 1 }
        let error = await #expect(throws: PostgresError.self) { try await small.withConnection { _ in 1 } }
        done.enter()
        #expect(error?.code == .poolTimeout)
        #expect(small.statistics.waiting == 0)
        try await holder.value
    }

    @Test("a deadline ends a wait for a statement and a wait for a free connection with .deadline; the busy connection goes back to the pool only once its statement ends")
    func deadline() async throws {
        let database = try await TestDatabase.create("pooldeadline")
        // No statement timeout, no short acquire timeout: only the deadline can end the waits.
        let pool = PostgresConnectionPool(.init(conninfo: database.url, size: 1, acquireTimeout: .seconds(60)))
        defer { pool.close() }
        let holder = try PostgresConnection(conninfo: database.url)
        defer { holder.close() }
        try holder.execute("CREATE TABLE held (n int)")
        try holder.execute("BEGIN")
        try holder.execute(unsafeSQL: "LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
        let statement = await #expect(throws: PostgresError.self) {
            try await DatabaseDeadline.$current.withValue(DatabaseDeadline(budget: .milliseconds(300))) {
                try await pool.withConnection { conn in try conn.query("SELECT count(*) FROM held").first!.decode(0, as: Int.self) }
            }
        }
        #expect(statement?.code == .deadline, "\(String(describing: statement))")
        // The pool's one connection still waits on the lock: the next caller waits for it, and
        // its own deadline ends that wait.
        #expect(pool.statistics.idle == 0)
        let acquire = await #expect(throws: PostgresError.self) {
            try await DatabaseDeadline.$current.withValue(DatabaseDeadline(budget: .milliseconds(300))) {
                try await pool.withConnection { _ in 1 }
            }
        }
        #expect(acquire?.code == .deadline, "\(String(describing: acquire))")
        try holder.execute("ROLLBACK")
        // The statement ends; its connection comes back and serves the next caller.
        try await eventually("the connection is back") { pool.statistics.idle == 1 }
        #expect(try await pool.withConnection { conn in try conn.query("SELECT 1").first!.decode(0, as: Int.self) } == 1)
        // A wait on purpose does not count: the deadline moves by its length.
        try await DatabaseDeadline.$current.withValue(DatabaseDeadline(budget: .seconds(2))) {
            #expect(try await pool.withConnection { conn in try conn.query("SELECT 1").first!.decode(0, as: Int.self) } == 1)
            try await DatabaseDeadline.excludingWait { try await Task.sleep(for: .seconds(3)) }
            #expect(try await pool.withConnection { conn in try conn.query("SELECT 2").first!.decode(0, as: Int.self) } == 2)
        }
    }

    @Test("a pooled connection whose session was killed is replaced transparently")
    func brokenConnectionReplaced() async throws {
        let database = try await TestDatabase.create("poolkill")
        let pool = PostgresConnectionPool(.init(conninfo: database.url, size: 1))
        defer { pool.close() }
        let firstPID = try await pool.withConnection { conn in conn.backendPID }
        let admin = DedicatedConnection(conninfo: database.url)
        defer { admin.shutdown() }
        _ = try await admin.run { conn in try conn.query("SELECT pg_terminate_backend(\(Int(firstPID))::int)") }
        try await Task.sleep(for: .milliseconds(100))
        let secondPID = try await pool.withConnection { conn in
            try conn.query("SELECT pg_backend_pid()").first!.decode(0, as: Int32.self)
        }
        #expect(secondPID != firstPID)
        #expect(secondPID != 0)
    }

    @Test("blocking libpq work runs on the connection's own thread, not the caller's")
    func dedicatedThreads() async throws {
        let (connection, _) = try await Self.connection()
        defer { connection.shutdown() }
        #expect(DedicatedConnection.currentThreadName == nil)
        let (name, thread) = try await connection.run { _ in
            (DedicatedConnection.currentThreadName, UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(Unmanaged.passUnretained(Thread.current).toOpaque()))))
        }
        #expect(name == "eventline-pg")
        let again = try await connection.run { _ in
            UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(Unmanaged.passUnretained(Thread.current).toOpaque())))
        }
        #expect(again == thread, "each connection keeps one thread")
    }
}

@Suite("libpq layer, failure paths")
struct PostgresClientFailureTests {
    @Test("a transaction whose body swallowed a statement error is rolled back and reported, not committed")
    func swallowedErrorIsNotCommitted() async throws {
        let (connection, _) = try await PostgresClientTests.connection()
        defer { connection.shutdown() }
        try await connection.run { conn in
            try conn.execute(unsafeSQL: "CREATE TABLE t (id int PRIMARY KEY)")
            #expect(throws: PostgresError.self) {
                try conn.transaction { conn in
                    try conn.execute("INSERT INTO t VALUES (\(1))")
                    _ = try? conn.execute("INSERT INTO t VALUES (\(1))")
                }
            }
            #expect(try conn.query("SELECT count(*) FROM t").first!.decode(0, as: Int.self) == 0)
        }
    }

    @Test("a pipeline with a value that cannot be sent fails before sending anything and leaves the connection usable")
    func pipelineRejectsBeforeSending() async throws {
        let (connection, _) = try await PostgresClientTests.connection()
        defer { connection.shutdown() }
        try await connection.run { conn in
            let error = #expect(throws: PostgresError.self) {
                try conn.pipeline(["BEGIN", "SELECT \("bad\u{0}")::text", "COMMIT"])
            }
            #expect(error?.code == .invalidParameter)
            #expect(!conn.inTransaction)
            let seven = try conn.query("SELECT \(7)::int8").first!.decode(0, as: Int.self)
            #expect(seven == 7)
        }
    }

    @Test("COPY inlining leaves quoted text that looks like a placeholder alone")
    func copyQuotedPlaceholders() async throws {
        let (connection, _) = try await PostgresClientTests.connection()
        defer { connection.shutdown() }
        let lines = try await connection.run { conn in
            var lines: [String] = []
            try conn.copyOut(#"COPY (SELECT '$1' AS "a$1", $q$ $1 $q$, \#("v'\"")) TO STDOUT"#) { chunk in
                lines.append(String(decoding: chunk, as: UTF8.self))
            }
            return lines
        }
        #expect(lines == ["$1\t $1 \tv'\"\n"])
    }

    @Test("a caller whose task is already cancelled does not wait for a busy pool")
    func cancelledWaiter() async throws {
        let database = try await TestDatabase.create("poolcancel")
        let pool = PostgresConnectionPool(.init(conninfo: database.url, size: 1, acquireTimeout: .seconds(30)))
        defer { pool.close() }
        let holding = Gauge()
        let released = Latch()
        // The holder keeps the only connection until the test lets it go.
        let holder = Task {
            try await pool.withConnection { conn in
                holding.enter()
                while !released.isOpen { _ = try conn.query("SELECT pg_sleep(0.02)") }
            }
        }
        try await eventually("the holder has the connection") { holding.peak == 1 }
        let waiter = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await pool.withConnection { _ in 1 }
        }
        // A waiter that waited would end only at the acquire timeout, with poolTimeout.
        await #expect(throws: CancellationError.self) { try await waiter.value }
        released.open()
        try await holder.value
    }
}

/// A flag one side opens and the other watches.
final class Latch: Sendable {
    private let state = Mutex(false)
    var isOpen: Bool { state.withLock { $0 } }
    func open() { state.withLock { $0 = true } }
}

/// Counts concurrent holders and remembers the most at once.
final class Gauge: Sendable {
    private let state = Mutex((current: 0, peak: 0))
    var peak: Int { state.withLock { $0.peak } }
    func enter() { state.withLock { $0.current += 1; $0.peak = max($0.peak, $0.current) } }
    func leave() { state.withLock { $0.current -= 1 } }
}

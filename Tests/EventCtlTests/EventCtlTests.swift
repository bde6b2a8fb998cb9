import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Testing

@Suite("eventctl end to end", .serialized)
struct EventCtlTests {
    static func eventctl(_ arguments: [String], url: String? = nil, timeout: TimeInterval = 60) async throws -> ProcessOutput {
        // No migrations directory: eventctl uses the migrations compiled into it.
        var environment: [String: String] = [:]
        if let url { environment["EVENTLINE_DATABASE_URL"] = url }
        return try await runProgram(try Repository.eventctl, arguments, environment: environment, timeout: timeout)
    }

    /// An error is exactly one line on stderr, never a stack trace.
    static func expectOneLineError(_ output: ProcessOutput, containing text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(output.status != 0, sourceLocation: sourceLocation)
        let lines = output.stderr.split(separator: "\n", omittingEmptySubsequences: true)
        #expect(lines.count == 1, "stderr: \(output.stderr)", sourceLocation: sourceLocation)
        #expect(output.stderr.contains(text), "stderr: \(output.stderr)", sourceLocation: sourceLocation)
    }

    @Test("migrate, append, read and status work against a database given by EVENTLINE_DATABASE_URL or --database-url")
    func happyPath() async throws {
        let database = try await TestDatabase.create("cli")
        var output = try await Self.eventctl(["migrate"], url: database.url)
        #expect(output.status == 0, "\(output.stderr)")
        #expect(output.stdout.contains("applied 0001_event_log.sql"))
        output = try await Self.eventctl(["migrate", "--database-url", database.url])
        #expect(output.stdout.contains("up to date"))

        output = try await Self.eventctl(["append", "account-1", "--type", "AccountOpened", "--data", #"{"owner":"Ada"}"#, "--expected-version", "no-stream", "--metadata", #"{"user":"ops"}"#], url: database.url)
        #expect(output.status == 0, "\(output.stderr)")
        #expect(output.stdout.contains("version 1, position 1"))
        output = try await Self.eventctl(["append", "account-1", "--type", "MoneyDeposited", "--data", #"{"amount":5}"#, "--expected-version", "1"], url: database.url)
        #expect(output.stdout.contains("version 2, position 2"))

        output = try await Self.eventctl(["append", "stock-1", "--type", "Moved", "--data", "{}", "--tag", "item:a", "--tag", "move:m1"], url: database.url)
        #expect(output.status == 0, "\(output.stderr)")
        output = try await Self.eventctl(["read", "stock-1", "--json"], url: database.url)
        #expect((try JSONSerialization.jsonObject(with: Data(output.stdout.utf8)) as? [String: Any])?["tags"] as? [String] == ["item:a", "move:m1"])
        Self.expectOneLineError(try await Self.eventctl(["append", "stock-1", "--type", "Moved", "--data", "{}", "--tag", "a,b"], url: database.url), containing: "comma")

        output = try await Self.eventctl(["read", "account-1"], url: database.url)
        #expect(output.status == 0)
        #expect(output.stdout.split(separator: "\n").count == 2)
        output = try await Self.eventctl(["read", "account-1", "--backward", "--limit", "1", "--json"], url: database.url)
        let json = try JSONSerialization.jsonObject(with: Data(output.stdout.utf8)) as? [String: Any]
        #expect(json?["version"] as? Int == 2)
        #expect(json?["type"] as? String == "MoneyDeposited")

        output = try await Self.eventctl(["status"], url: database.url)
        #expect(output.status == 0)
        #expect(output.stdout.contains("head         3"))
        #expect(output.stdout.contains("streams      2"))
        #expect(output.stdout.contains("0001_event_log.sql  applied"))
    }

    @Test("a version conflict exits 3 with one line naming the current version, and writes nothing")
    func conflict() async throws {
        let test = try await TestStore.make("cliconf")
        _ = try await test.store.append(to: "account-7", events: [NewEvent(type: "A", data: Data("{}".utf8)), NewEvent(type: "B", data: Data("{}".utf8))])
        let output = try await Self.eventctl(["append", "account-7", "--type", "C", "--data", "{}", "--expected-version", "1"], url: test.url)
        #expect(output.status == 3)
        Self.expectOneLineError(output, containing: "current version is 2")
        #expect(try await test.store.headPosition() == 2)
        await test.store.shutdown()
    }

    @Test("bad input and unreachable databases give one clear line and a non-zero exit")
    func errors() async throws {
        let test = try await TestStore.make("clierr")
        Self.expectOneLineError(try await Self.eventctl(["append", "x-1", "--type", "T", "--data", "{"], url: test.url), containing: "not valid JSON")
        Self.expectOneLineError(try await Self.eventctl(["append", "x-1", "--type", "T", "--data", "{}", "--expected-version", "soon"], url: test.url), containing: "--expected-version")
        Self.expectOneLineError(try await Self.eventctl(["append", "--type", "T", "--data", "{}", "--", "-x"], url: test.url), containing: "category")
        Self.expectOneLineError(try await Self.eventctl(["append", "--type", "T", "--data", "{}"], url: test.url), containing: "<stream>")
        Self.expectOneLineError(try await Self.eventctl(["append", "bad\u{1}name", "--type", "T", "--data", "{}"], url: test.url), containing: "control character")
        Self.expectOneLineError(try await Self.eventctl(["read", "x-1"]), containing: "EVENTLINE_DATABASE_URL")
        Self.expectOneLineError(try await Self.eventctl(["read", "nothing-1"], url: test.url), containing: "has no events")
        Self.expectOneLineError(try await Self.eventctl(["read", "x-1", "--limit", "0"], url: test.url), containing: "--limit")
        Self.expectOneLineError(try await Self.eventctl(["status"], url: "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"), containing: "connect")
        Self.expectOneLineError(try await Self.eventctl(["migrate", "--migrations-dir", "/nonexistent"], url: test.url), containing: "/nonexistent")
        #expect(try await test.store.headPosition() == 0)
        await test.store.shutdown()
    }

    @Test("tail prints events live as they are committed")
    func tail() async throws {
        let test = try await TestStore.make("clitail")
        _ = try await test.store.append(to: "old-1", events: [NewEvent(type: "Old", data: Data("{}".utf8))])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Repository.eventctl)
        // From position 1, however late the process starts; the first event printed shows it
        // is following, and the next two are committed only then.
        process.arguments = ["tail", "--database-url", test.url, "--after", "1"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        let collected = LinesCollector(out.fileHandleForReading)
        _ = try await test.store.append(to: "new-1", events: [NewEvent(type: "New", data: Data(#"{"i":1}"#.utf8))])
        try await eventually("the first event printed") { collected.lines.count >= 1 }
        for index in 2...3 {
            _ = try await test.store.append(to: "new-\(index)", events: [NewEvent(type: "New", data: Data(#"{"i":\#(index)}"#.utf8))])
        }
        try await eventually("three live events printed") { collected.lines.count >= 3 }
        let lines = collected.lines
        #expect(lines.count == 3)
        #expect(lines.allSatisfy { $0.contains("\tNew\t") })
        #expect(lines.first?.hasPrefix("2\t") == true)
        process.terminate()
        await test.store.shutdown()
    }

    @Test("appending processes killed with SIGKILL mid-load never lose an acknowledged append or leave a hole")
    func killedAppenders() async throws {
        let test = try await TestStore.make("clikill")
        let eventctl = try Repository.eventctl
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kill-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // Each loop appends to its own stream with exact versions and records what eventctl acknowledged.
        // Whatever happens below, the loops and the appends they started die with the test.
        let loops = ProcessList()
        defer { loops.killAll() }
        for worker in 0..<6 {
            // A failed or killed append is retried with the same id and expected version: idempotent.
            let script = """
                v=0
                id=$(cat /proc/sys/kernel/random/uuid)
                while true; do
                  if out=$("$EVENTCTL" append w-\(worker) --type Tick --data "{\\"v\\":$v}" --expected-version $v --id $id 2>/dev/null); then
                    echo "$id $out" >> "\(directory)/acked-\(worker)"
                    v=$((v+1))
                    id=$(cat /proc/sys/kernel/random/uuid)
                  fi
                done
                """
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", script]
            process.environment = ["EVENTCTL": eventctl, "EVENTLINE_DATABASE_URL": test.url, "PATH": "/usr/bin:/bin"]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            loops.append(process)
        }
        // Kill appending processes at random moments, mid-append, while the loops go on: the
        // eventctl processes below the loops, found by their parents' pids.
        var kills = 0
        for _ in 0..<16 {
            try await Task.sleep(for: .milliseconds(Int.random(in: 100...400)))
            for loop in loops.pids {
                for pid in descendants(of: loop) where commandLine(of: pid).hasPrefix("\(eventctl) append") {
                    if kill(pid, SIGKILL) == 0 { kills += 1 }
                }
            }
        }
        loops.killAll()
        #expect(kills > 0, "no appending process was killed")
        try await Task.sleep(for: .milliseconds(500))

        let rows = try await test.allRows()
        #expect(rows.map(\.position) == Array(stride(from: 1, through: rows.count, by: 1)))
        let stored = Dictionary(uniqueKeysWithValues: rows.map { ($0.id.uuidString.lowercased(), $0) })
        var acknowledged = 0
        for worker in 0..<6 {
            let text = (try? String(contentsOfFile: "\(directory)/acked-\(worker)", encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n") {
                let id = String(line.prefix(36))
                acknowledged += 1
                let row = stored[id]
                #expect(row != nil, "acknowledged event \(id) is missing")
                #expect(line.contains("position \(row?.position ?? -1)"))
            }
            // Each stream's versions are 1…n.
            let versions = rows.filter { $0.stream == "w-\(worker)" }.map(\.version)
            #expect(versions == Array(stride(from: 1, through: versions.count, by: 1)))
        }
        #expect(acknowledged > 10, "the load acknowledged too little to mean anything")
        #expect(rows.count >= acknowledged)
        await test.store.shutdown()
    }

    @Test("analyst-role lets eventline_analyst log in; it reads read_models and nothing else; projections resume names unknown projections")
    func analystRole() async throws {
        let test = try await TestStore.make("clianalyst")
        Self.expectOneLineError(try await Self.eventctl(["analyst-role", "--password", "short"], url: test.url), containing: "at least 8")
        Self.expectOneLineError(try await Self.eventctl(["projections", "resume", "nope"], url: test.url), containing: "no projection named nope")
        let output = try await Self.eventctl(["analyst-role", "--password", "s3cret-pass'; --"], url: test.url)
        #expect(output.status == 0, "\(output.stderr)")
        try await test.sql { conn in
            try conn.execute(unsafeSQL: "CREATE TABLE read_models.sample (id text PRIMARY KEY); INSERT INTO read_models.sample VALUES ('a')")
        }
        var components = URLComponents(string: test.url)!
        components.user = "eventline_analyst"
        components.password = "s3cret-pass'; --"
        let analyst = DedicatedConnection(conninfo: components.string!)
        defer { analyst.shutdown() }
        let count = try await analyst.run { conn in try conn.query("SELECT count(*) FROM read_models.sample").first!.decode(0, as: Int.self) }
        #expect(count == 1)
        for forbidden in ["INSERT INTO read_models.sample VALUES ('b')", "SELECT count(*) FROM eventline.events", "CREATE TABLE read_models.mine (x int)"] {
            await #expect(throws: PostgresError.self, "\(forbidden)") { try await analyst.run { conn in try conn.execute(unsafeSQL: forbidden) } }
        }
        #expect(try await Self.eventctl(["analyst-role", "--disable"], url: test.url).status == 0)
        await test.store.shutdown()
    }

    @Test("react refuses unknown reactors in one line; status lists reactors with checkpoint, lag, owner and the event being retried")
    func reactorsInStatus() async throws {
        let test = try await TestStore.make("clireact")
        Self.expectOneLineError(try await Self.eventctl(["react", "--reactor", "nope"], url: test.url), containing: "no reactor named nope")
        var output = try await Self.eventctl(["status"], url: test.url)
        #expect(output.stdout.contains("reactors     none yet"), "\(output.stdout)")
        _ = try await test.store.append(to: "transfer-1", events: [NewEvent(type: "Noted", data: Data("{}".utf8))])
        try await test.sql { conn in
            try conn.execute(unsafeSQL: """
                INSERT INTO eventline.checkpoints (kind, name, owner, error, error_position, failed_attempts)
                VALUES ('reactor', 'transfers', 'gone:1', 'refund refused', 1, 3)
                """)
        }
        output = try await Self.eventctl(["status"], url: test.url)
        #expect(output.stdout.contains("transfers  checkpoint 0  lag 1  owner none  failed attempts 3"), "\(output.stdout)")
        #expect(output.stdout.contains("retrying the event at position 1: refund refused"), "\(output.stdout)")
        await test.store.shutdown()
    }
}

/// Reads lines from a pipe on a thread of its own.
final class LinesCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var collected: [String] = []
    var lines: [String] { lock.withLock { collected } }

    init(_ handle: FileHandle) {
        Thread.detachNewThread { [self] in
            var buffer = Data()
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { return }
                buffer.append(chunk)
                while let newline = buffer.firstIndex(of: 10) {
                    let line = String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self)
                    buffer.removeSubrange(buffer.startIndex...newline)
                    lock.withLock { collected.append(line) }
                }
            }
        }
    }
}

@Suite("eventctl keys")
struct EventCtlKeysTests {
    @Test("keys create prints the key once and stores only its hash; list and revoke work")
    func keys() async throws {
        let test = try await TestStore.make("clikeys")
        let created = try await EventCtlTests.eventctl(["keys", "create", "--scope", "commands", "--name", "ci"], url: test.url)
        #expect(created.status == 0, "\(created.stderr)")
        let key = created.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(key.hasPrefix("el_"))
        let stored = try await test.sql { conn in
            try conn.query("SELECT id, key_hash FROM eventline.api_keys").rows.map { (try $0.decode(0, as: String.self), try $0.decode(1, as: String.self)) }
        }
        #expect(stored.count == 1)
        #expect(stored[0].1 == SHA256.hex(Array(key.utf8)))
        #expect(!stored[0].1.contains(key))
        let list = try await EventCtlTests.eventctl(["keys", "list"], url: test.url)
        #expect(list.stdout.contains(stored[0].0))
        #expect(!list.stdout.contains(key))
        let revoked = try await EventCtlTests.eventctl(["keys", "revoke", stored[0].0], url: test.url)
        #expect(revoked.status == 0)
        // The last key: the servers stay closed, and the command says so.
        #expect(revoked.stdout.contains("no key is in force now") && revoked.stdout.contains("EVENTLINE_AUTH=off"), "\(revoked.stdout)")
        EventCtlTests.expectOneLineError(try await EventCtlTests.eventctl(["keys", "revoke", stored[0].0], url: test.url), containing: "no key")
        EventCtlTests.expectOneLineError(try await EventCtlTests.eventctl(["keys", "create", "--scope", "root"], url: test.url), containing: "--scope")
        await test.store.shutdown()
    }
}

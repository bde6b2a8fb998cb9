import EmbeddedServers
import EventStore
import EventlineTestSupport
import Foundation
import Synchronization
import Testing

/// What a keyed client saw, for every request it sent until the request had its final answer.
final class KeyedLoad: Sendable {
    struct Request: Sendable {
        var key: String
        var account: String
        var amount: Int
        /// Every answer, in order: "200", "503 unavailable", "no answer", …
        var answers: [String] = []
        /// The attempts (1-based) answered 503 unavailable: none of them may have committed.
        var unavailableAttempts: Set<Int> = []
        /// The final 200's position and version; nil while unresolved.
        var position: Int? = nil
        var version: Int? = nil
        var resolvedAfter: Duration? = nil
    }

    private let state = Mutex((requests: [Request](), stopping: false, successes: [(sent: ContinuousClock.Instant, answered: ContinuousClock.Instant)]()))
    var stopping: Bool { state.withLock { $0.stopping } }
    var requests: [Request] { state.withLock { $0.requests } }
    func stop() { state.withLock { $0.stopping = true } }
    func record(_ request: Request) { state.withLock { $0.requests.append(request) } }
    /// A 200 arrived now, for an attempt sent at `sent`.
    func succeeded(sent: ContinuousClock.Instant) { state.withLock { $0.successes.append((sent, .now)) } }
    /// When the first 200 came to an attempt sent after `instant`, if one did.
    func firstSuccess(after instant: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        state.withLock { $0.successes.filter { $0.sent > instant }.map(\.answered).min() }
    }

    /// `workers` clients, each sending keyed deposits to `accounts` accounts (spread over
    /// `ports`) one after another until `stop()`, every one until its final answer.
    func drive(workers: Int, accounts: Int, ports: [Int]) -> Task<Void, Never> {
        Task {
            await withTaskGroup(of: Void.self) { group in
                for worker in 0..<workers {
                    group.addTask {
                        var index = 0
                        while !self.stopping {
                            index += 1
                            var request = KeyedLoad.Request(
                                key: "w\(worker)-\(index)", account: "\((worker + index) % accounts)", amount: worker * 1_000_000 + index)
                            await CrashFaultTests.resolve(&request, ports: ports.shifted(by: worker), load: self)
                            self.record(request)
                        }
                    }
                }
            }
        }
    }

    /// What the log says of the requests: each final 200 must be in it exactly once, where the
    /// answer said, and no 503 "unavailable" may belong to an attempt that committed. `lost`
    /// lists requests answered 200 that the log does not hold (none may be, but with
    /// asynchronous replication and a failover, where it is counted).
    struct Verdict {
        var violations: [String] = []
        var lost: [String] = []
        var strays: [Int] = []
        var resolvedFromEarlier = 0
        var unresolved = 0
    }

    func verify(_ events: [RecordedEvent]) throws -> Verdict {
        var deposits: [Int: [RecordedEvent]] = [:]
        for event in events where event.type == "MoneyDeposited" {
            let data = (try JSONSerialization.jsonObject(with: event.data)) as? [String: Any]
            deposits[(data?["amount"] as? Int) ?? -1, default: []].append(event)
        }
        var verdict = Verdict()
        for request in requests {
            let written = deposits[request.amount] ?? []
            guard let position = request.position else {
                verdict.unresolved += 1
                verdict.violations.append("\(request.key) never resolved: \(CrashFaultTests.summary(request.answers))")
                continue
            }
            if written.isEmpty {
                verdict.lost.append("\(request.key) answered 200 at \(position) but the log does not hold it")
                continue
            }
            guard written.count == 1, let event = written.first else {
                verdict.violations.append("\(request.key) answered 200 at \(position) but the log holds it \(written.count) times")
                continue
            }
            if event.position != position || event.version != request.version || event.stream != "account-\(request.account)" {
                verdict.violations.append("\(request.key) answered position \(position) version \(request.version ?? -1), the log has \(event.stream) \(event.position) v\(event.version)")
            }
            let metadata = (try JSONSerialization.jsonObject(with: event.metadata)) as? [String: Any]
            let correlation = metadata?["correlationId"] as? String ?? ""
            let attempt = Int(correlation.split(separator: "#").last ?? "") ?? 0
            if request.unavailableAttempts.contains(attempt) {
                verdict.violations.append("\(request.key): attempt \(attempt) was answered 503 unavailable, but it committed at \(event.position)")
            }
            // Written by an attempt that did not get the 200: a retry found it in the log.
            if attempt < request.answers.count { verdict.resolvedFromEarlier += 1 }
        }
        let requested = Set(requests.map(\.amount))
        verdict.strays = deposits.keys.filter { !requested.contains($0) }
        return verdict
    }

    /// Answers by kind, retries and resolution times, for the record.
    func figures() -> String {
        var byKind: [String: Int] = [:]
        for request in requests { for kind in request.answers { byKind[kind, default: 0] += 1 } }
        let retried = requests.filter { $0.answers.count > 1 }
        let times = retried.compactMap(\.resolvedAfter).sorted()
        let median = times.isEmpty ? .zero : times[times.count / 2]
        return """
              answers by kind: \(byKind.sorted { $0.value > $1.value }.map { "\($0.key): \($0.value)" }.joined(separator: ", "))
              requests retried: \(retried.count); time to resolution of retried requests: median \(median), max \(times.last ?? .zero)
            """
    }

    /// The whole log, read through a store of its own.
    static func log(url: String) async throws -> (events: [RecordedEvent], head: Int) {
        var configuration = EventStoreConfiguration(databaseURL: url)
        configuration.masterKey = TestMasterKey.key
        let store = EventStore(configuration)
        var events: [RecordedEvent] = []
        while true {
            let page = try await store.readAll(after: events.last?.position ?? 0, limit: 5000)
            events += page
            if page.count < 5000 { break }
        }
        let head = try await store.headPosition()
        await store.shutdown()
        return (events, head)
    }
}

extension Array {
    /// The array turned left by `offset`.
    func shifted(by offset: Int) -> [Element] {
        guard !isEmpty else { return self }
        let turn = offset % count
        return Array(self[turn...] + self[..<turn])
    }
}

@Suite("Crash faults under keyed HTTP load", .serialized)
struct CrashFaultTests {
    /// The kind of an answer: its status and, for a problem, the problem's code.
    static func kind(_ answer: LoopbackHTTP.Answer?) -> String {
        guard let answer else { return "no answer" }
        guard answer.status != 200,
            let object = try? JSONSerialization.jsonObject(with: Data(answer.body.utf8)) as? [String: Any],
            let type = object["type"] as? String
        else { return "\(answer.status)" }
        return "\(answer.status) \(type.split(separator: "/").last.map(String.init) ?? type)"
    }

    /// Answers as runs: ["503 unavailable ×8", "409 idempotency-key-in-progress ×19", …].
    static func summary(_ answers: [String]) -> [String] {
        var runs: [(String, Int)] = []
        for answer in answers {
            if runs.last?.0 == answer { runs[runs.count - 1].1 += 1 } else { runs.append((answer, 1)) }
        }
        return runs.map { $0.1 == 1 ? $0.0 : "\($0.0) ×\($0.1)" }
    }

    /// Sends one deposit with its key until it has a final answer, retrying what a client may
    /// retry (503, 409 in progress, no answer) with the same key and body.
    /// Attempts go to each of `ports` in turn.
    static func resolve(_ request: inout KeyedLoad.Request, ports: [Int], load: KeyedLoad? = nil) async {
        let started = ContinuousClock.now
        let body = #"{"type":"DepositMoney","data":{"amount":\#(request.amount)}}"#
        var attempt = 0
        while ContinuousClock.now - started < .seconds(120) {
            attempt += 1
            let sent = ContinuousClock.now
            let answer = try? await LoopbackHTTP.request(
                "POST", host: "127.0.0.1", port: ports[(attempt - 1) % ports.count], "/v1/commands/account/\(request.account)",
                headers: ["Idempotency-Key": request.key, "X-Correlation-Id": "\(request.key)#\(attempt)"], body: body, timeout: 30)
            let kind = kind(answer)
            request.answers.append(kind)
            if kind == "503 unavailable" { request.unavailableAttempts.insert(attempt) }
            if let answer, answer.status == 200 {
                load?.succeeded(sent: sent)
                let object = (try? JSONSerialization.jsonObject(with: Data(answer.body.utf8))) as? [String: Any] ?? [:]
                request.position = object["position"] as? Int
                request.version = object["version"] as? Int
                request.resolvedAfter = ContinuousClock.now - started
                return
            }
            if let answer, answer.status < 500, kind != "409 idempotency-key-in-progress" { return }  // final, and wrong
            try? await Task.sleep(for: .milliseconds(Int.random(in: 30...90)))
        }
    }

    @Test("PostgreSQL crashed (immediate stop, kill -9 of the postmaster) and the server killed under keyed load: every request's final answer matches the log, exactly once; no 'unavailable' belongs to a command that committed")
    func crashesUnderKeyedLoad() async throws {
        let postgres = try await EmbeddedPostgres.start()
        defer { postgres.stop() }
        let url = postgres.url()
        try await Migrator(databaseURL: url, migrations: Migration.embedded()).migrate()
        let port = try FreePort.pick()
        func startServer() async throws -> BackgroundProcess {
            let chosen = port
            let server = try BackgroundProcess(
                try Repository.eventctl, ["serve", "--port", "\(chosen)"],
                environment: ["EVENTLINE_DATABASE_URL": url, "EVENTLINE_LOG_LEVEL": "warning"])
            try await eventually("eventctl serve answers on \(chosen)") {
                guard server.isRunning else { throw TestFailure("eventctl serve exited: \(server.output)") }
                return await LoopbackHTTP.answers(port: chosen)
            }
            return server
        }
        let server = Mutex(try await startServer())
        defer { server.withLock { $0 }.process.terminate() }
        let accounts = 8
        for account in 0..<accounts {
            let opened = try await LoopbackHTTP.request(
                "POST", host: "127.0.0.1", port: port, "/v1/commands/account/\(account)",
                body: #"{"type":"OpenAccount","data":{"owner":"Ada","currency":"EUR"}}"#)
            #expect(opened.status == 200, "\(opened.body)")
        }

        let load = KeyedLoad()
        let workers = 12
        let clients = load.drive(workers: workers, accounts: accounts, ports: [port])

        // The faults: PostgreSQL crashed six times, alternately, and once the server killed.
        var crashes: [String] = []
        let faultsStarted = ContinuousClock.now
        for round in 0..<6 {
            // Time and a count of answered requests both, so that every fault hits a load
            // however slow the machine is.
            try await Task.sleep(for: .milliseconds(1500))
            try await eventually(timeout: .seconds(60), "20 more requests answered before fault \(round + 1)") {
                load.requests.count >= 20 * (round + 1)
            }
            let how: EmbeddedPostgres.Crash = round % 2 == 0 ? .immediateStop : .killPostmaster
            await postgres.crash(how)
            crashes.append("\(how)")
            try await Task.sleep(for: .milliseconds(300))
            try await postgres.resume()
            if round == 3 {
                try await Task.sleep(for: .milliseconds(500))
                let killed = server.withLock { $0 }
                await killed.stop(signal: SIGKILL)
                crashes.append("server SIGKILL")
                // The same port: clients keep retrying where they were.
                let restarted = try await startServer()
                server.withLock { $0 = restarted }
            }
        }
        try await Task.sleep(for: .seconds(1))
        load.stop()
        await clients.value
        let faultTime = ContinuousClock.now - faultsStarted

        let (events, head) = try await KeyedLoad.log(url: url)
        #expect(events.count == head && events.enumerated().allSatisfy { $0.offset + 1 == $0.element.position }, "the log is not dense")
        let verdict = try load.verify(events)
        let requests = load.requests
        #expect(verdict.strays.isEmpty, "deposits in the log that no request made: \(verdict.strays.prefix(5))")
        #expect(verdict.lost.isEmpty, "acknowledged and lost: \(verdict.lost.prefix(5))")
        #expect(verdict.violations.isEmpty, "\(verdict.violations.count) violations: \(verdict.violations.prefix(10))")
        #expect(requests.count > 100, "too little load: \(requests.count) requests")

        // The figures, for the record.
        print("""
            crash fault run: \(requests.count) keyed requests by \(workers) clients over \(faultTime); faults: \(crashes.joined(separator: ", "))
            \(load.figures())
              committed by an earlier attempt and answered to a retry from the log: \(verdict.resolvedFromEarlier); unresolved: \(verdict.unresolved)
              log: \(head) events, dense
            """)
    }
}

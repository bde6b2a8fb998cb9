import EmbeddedServers
import EventStore
import EventlineTestSupport
import Foundation
import Testing

/// A TCP port on loopback that completes handshakes (the kernel does, into the backlog) and
/// never answers: a database host that hangs.
final class BlackHole: @unchecked Sendable {
    let port: Int
    private let descriptor: Int32

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw TestFailure("socket failed") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(descriptor, 128) == 0 else { throw TestFailure("bind or listen failed") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        self.descriptor = descriptor
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    deinit { close(descriptor) }
}

@Suite("A hung database", .serialized)
struct HungDatabaseTests {
    /// How long an answer may take with the default timeouts (connect 1.5 s, statement 1.5 s,
    /// pool 1 s, and one resolution attempt for a commit in flight): a bound on waiting, far
    /// below what a hang (forever, or the old 10 s pool wait and 20 s start) took. Not a
    /// performance figure.
    static let bound: Duration = .seconds(8)

    static func timed(_ request: () async throws -> LoopbackHTTP.Answer) async throws -> (LoopbackHTTP.Answer, Duration) {
        let started = ContinuousClock.now
        let answer = try await request()
        return (answer, ContinuousClock.now - started)
    }

    static func expectUnavailable(_ answer: LoopbackHTTP.Answer, _ elapsed: Duration, _ what: String) {
        #expect(answer.status == 503, "\(what): \(answer.status) \(answer.body)")
        #expect(answer.headers["content-type"] == "application/problem+json", "\(what)")
        #expect(elapsed < bound, "\(what) took \(elapsed)")
        print("hung database: \(what): \(answer.status) after \(elapsed)")
    }

    @Test("a database host that never answers: the server listens at once, and every request is a 503 within seconds")
    func blackHole() async throws {
        let hole = try BlackHole()
        let url = "postgresql://eventline@127.0.0.1:\(hole.port)/eventline"
        let started = ContinuousClock.now
        let (server, port) = try await DeploymentTests.serve(try Repository.eventctl, url: url, defaultTimeouts: true)
        let listening = ContinuousClock.now - started
        // Starting a process is slow on a busy machine; waiting on the database took 20 s.
        #expect(listening < .seconds(18), "the server took \(listening) to listen")
        print("hung database: listening after \(listening)")
        var (answer, elapsed) = try await Self.timed { try await LoopbackHTTP.request(port: port, "/health/ready") }
        Self.expectUnavailable(answer, elapsed, "GET /health/ready")
        (answer, elapsed) = try await Self.timed {
            try await LoopbackHTTP.request(
                "POST", port: port, "/v1/commands/account/1", body: #"{"type":"OpenAccount","data":{"owner":"Ada","currency":"EUR"}}"#)
        }
        Self.expectUnavailable(answer, elapsed, "a command")
        (answer, elapsed) = try await Self.timed { try await LoopbackHTTP.request(port: port, "/v1/streams/account-1") }
        Self.expectUnavailable(answer, elapsed, "a stream read")
        #expect(await server.stop() == 0, "\(server.output)")
    }

    @Test("PostgreSQL stopped (SIGSTOP) under a running server: requests fail within seconds, and work again once it continues")
    func stoppedDatabase() async throws {
        let postgres = try await EmbeddedPostgres.start()
        defer { postgres.stop() }
        try await Migrator(databaseURL: postgres.url(), migrations: Migration.embedded()).migrate()
        let (server, port) = try await DeploymentTests.serve(try Repository.eventctl, url: postgres.url(), defaultTimeouts: true)
        let open = try await LoopbackHTTP.request(
            "POST", port: port, "/v1/commands/account/1", body: #"{"type":"OpenAccount","data":{"owner":"Ada","currency":"EUR"}}"#)
        #expect(open.status == 200, "\(open.body)")
        #expect(try await LoopbackHTTP.request(port: port, "/v1/streams/account-1").status == 200)
        let group = try await LoopbackHTTP.request("PUT", port: port, "/v1/consumer-groups/g", body: #"{"categories":["account"]}"#)
        #expect(group.status == 201, "\(group.body)")

        // Every PostgreSQL process stops: sessions, the postmaster and all.
        let processes = [postgres.processIdentifier] + descendants(of: postgres.processIdentifier)
        for pid in processes { kill(pid, SIGSTOP) }
        var resumed = false
        defer { if !resumed { for pid in processes { kill(pid, SIGCONT) } } }
        var (answer, elapsed) = try await Self.timed {
            try await LoopbackHTTP.request("POST", port: port, "/v1/commands/account/1", body: #"{"type":"DepositMoney","data":{"amount":5}}"#)
        }
        Self.expectUnavailable(answer, elapsed, "a command while the database is stopped")
        (answer, elapsed) = try await Self.timed {
            try await LoopbackHTTP.request("POST", port: port, "/v1/commands/account/2", body: #"{"type":"OpenAccount","data":{"owner":"Bo","currency":"EUR"}}"#)
        }
        Self.expectUnavailable(answer, elapsed, "a second command")
        (answer, elapsed) = try await Self.timed { try await LoopbackHTTP.request(port: port, "/v1/streams/account-1") }
        Self.expectUnavailable(answer, elapsed, "a stream read")
        (answer, elapsed) = try await Self.timed { try await LoopbackHTTP.request(port: port, "/v1/read-models/account_balances/1") }
        Self.expectUnavailable(answer, elapsed, "a read-model read")
        (answer, elapsed) = try await Self.timed {
            try await LoopbackHTTP.request("POST", port: port, "/v1/consumer-groups/g/fetch", body: #"{"consumer":"c"}"#)
        }
        Self.expectUnavailable(answer, elapsed, "a consumer-group fetch")
        (answer, elapsed) = try await Self.timed {
            try await LoopbackHTTP.request("POST", port: port, "/v1/commands/account/4", body: #"{"type":"OpenAccount","data":{"owner":"Di","currency":"EUR"}}"#)
        }
        Self.expectUnavailable(answer, elapsed, "a third command")
        (answer, elapsed) = try await Self.timed { try await LoopbackHTTP.request(port: port, "/health/ready") }
        Self.expectUnavailable(answer, elapsed, "GET /health/ready")

        for pid in processes { kill(pid, SIGCONT) }
        resumed = true
        try await eventually("commands work again") {
            try await LoopbackHTTP.request(
                "POST", port: port, "/v1/commands/account/3", body: #"{"type":"OpenAccount","data":{"owner":"Cy","currency":"EUR"}}"#
            ).status == 200
        }
        #expect(try await LoopbackHTTP.request(port: port, "/health/ready").status == 200)
        #expect(await server.stop() == 0, "\(server.output)")
    }
}

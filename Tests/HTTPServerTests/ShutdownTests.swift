import Aggregates
import BankDomain
import EmbeddedServers
import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import Hummingbird
import Logging
import ServiceLifecycle
import Testing

@Suite("Graceful shutdown")
struct ShutdownTests {
    /// A free TCP port on 127.0.0.1.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw TestFailure("cannot bind a port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func curl(_ arguments: [String]) async throws -> String {
        try await ServerTool.run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20"] + arguments, timeout: .seconds(30)).output
    }

    @Test("SIGTERM-style shutdown under requests: in-flight commands finish, every acknowledged one is committed, no 5xx")
    func shutdownUnderLoad() async throws {
        let server = try await TestServer.make("shutdown")
        let store = EventStore(server.test.store.configuration)
        var commands = CommandRegistry()
        commands.register(CommandHandler<BankAccount>(store: store))
        var configuration = ServerConfiguration()
        configuration.port = try Self.freePort()
        let app = buildApplication(configuration, store: store, commands: commands)
        let group = ServiceGroup(configuration: .init(services: [app], logger: Logger(label: "shutdown-test")))
        let running = Task { try await group.run() }
        let base = "http://127.0.0.1:\(configuration.port)"
        try await eventually("the server answers") { (try? await Self.curl(["\(base)/health/live"])) == "200" }
        #expect(try await Self.curl(["-X", "POST", "-H", "Content-Type: application/json", "-d", #"{"type":"OpenAccount","data":{"owner":"Ada","currency":"EUR"}}"#, "\(base)/v1/commands/account/1"]) == "200")

        // Eight clients send deposits one after another until the server stops answering; the
        // shutdown comes once some have committed, so that others are in flight.
        let codes = try await withThrowingTaskGroup(of: [(Int, String)].self) { tasks in
            for worker in 0..<8 {
                tasks.addTask {
                    var results: [(Int, String)] = []
                    var amount = worker * 1000
                    while true {
                        amount += 1
                        let code = try await Self.curl(["-X", "POST", "-H", "Content-Type: application/json", "-d", #"{"type":"DepositMoney","data":{"amount":\#(amount)}}"#, "\(base)/v1/commands/account/1"])
                        results.append((amount, code))
                        if code == "000" || results.count > 500 { return results }
                    }
                }
            }
            try await eventually("some deposits are committed") { try await server.test.store.headPosition() >= 11 }
            await group.triggerGracefulShutdown()
            return try await tasks.reduce(into: [(Int, String)]()) { $0 += $1 }
        }
        try await running.value  // the service group ends: server stopped, store flushed and closed

        let acknowledged = codes.filter { $0.1 == "200" }.map(\.0)
        #expect(codes.allSatisfy { $0.1 == "200" || $0.1 == "000" }, "\(codes.filter { $0.1 != "200" && $0.1 != "000" })")
        #expect(acknowledged.count >= 10, "too few requests finished before the shutdown")
        let stored = try await server.test.store.readStream("account-1", limit: 5000).dropFirst().map {
            ((try JSONSerialization.jsonObject(with: $0.data) as? [String: Any])?["amount"] as? Int) ?? -1
        }
        #expect(Set(acknowledged).isSubset(of: Set(stored)), "acknowledged but missing: \(Set(acknowledged).subtracting(stored))")
        await server.test.store.shutdown()
    }
}

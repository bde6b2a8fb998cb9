import Aggregates
import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import Testing

@Suite("HTTP commands", .serialized)
struct CommandRouteTests {
    @Test("every bank rule over HTTP: 200 with versions and positions, 422 with a stable type per rule")
    func bankRules() async throws {
        let server = try await TestServer.make("httpbank")
        try await server.run { client in
            var response = try await client.command("42", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#)
            #expect(response.status == .ok)
            #expect(response.json["stream"] as? String == "account-42")
            #expect(response.json["version"] as? Int == 1)
            #expect((response.json["events"] as? [[String: Any]])?.first?["type"] as? String == "AccountOpened")

            let refusals: [(String, String, String)] = [
                ("OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#, "account-already-opened"),
                ("WithdrawMoney", #"{"amount":1}"#, "insufficient-funds"),
                ("DepositMoney", #"{"amount":0}"#, "invalid-amount"),
                ("DepositMoney", #"{"amount":-3}"#, "invalid-amount"),
            ]
            for (type, data, code) in refusals {
                response = try await client.command("42", type, data)
                #expect(response.status == .unprocessableContent, "\(type) \(data)")
                #expect(response.isProblem)
                #expect(response.json["type"] as? String == "/problems/\(code)", "\(type) \(data): \(response.text)")
                #expect(response.json["requestId"] as? String == response.headers[HTTPField.Name("X-Request-Id")!])
            }
            #expect(try await client.command("42", "DepositMoney", #"{"amount":100}"#).status == .ok)
            response = try await client.command("42", "CloseAccount", "{}")
            #expect(response.json["type"] as? String == "/problems/balance-not-zero")
            #expect(try await client.command("42", "DepositMoney", #"{"amount":9223372036854775807}"#).json["type"] as? String == "/problems/balance-overflow")
            #expect(try await client.command("42", "WithdrawMoney", #"{"amount":100}"#).status == .ok)
            response = try await client.command("42", "CloseAccount", "{}")
            #expect(response.json["version"] as? Int == 4)
            #expect(try await client.command("42", "DepositMoney", #"{"amount":1}"#).json["type"] as? String == "/problems/account-not-open")
            #expect(try await client.command("43", "DepositMoney", #"{"amount":1}"#).json["type"] as? String == "/problems/account-not-open")
            #expect(try await client.command("44", "OpenAccount", #"{"owner":"","currency":"EUR"}"#).json["type"] as? String == "/problems/invalid-owner")
            #expect(try await client.command("44", "OpenAccount", #"{"owner":"Bo","currency":"eur"}"#).json["type"] as? String == "/problems/invalid-currency")
        }
        #expect(try await server.test.store.streamVersion("account-42") == 4)
        #expect(try await server.test.store.headPosition() == 4)
    }

    @Test("unknown categories are 404; unknown command types and invalid data are 422 naming the field")
    func unknowns() async throws {
        let server = try await TestServer.make("httpunknown")
        try await server.run { client in
            var response = try await client.send(.post, "/v1/commands/rocket/1", json: #"{"type":"Launch","data":{}}"#)
            #expect(response.status == .notFound)
            #expect(response.isProblem)
            response = try await client.command("1", "Teleport", "{}")
            #expect(response.status == .unprocessableContent)
            #expect(response.json["field"] as? String == "type")
            response = try await client.command("1", "DepositMoney", #"{"amount":"ten"}"#)
            #expect(response.status == .unprocessableContent)
            #expect(response.json["field"] as? String == "data.amount")
            response = try await client.command("1", "DepositMoney", #"{}"#)
            #expect(response.json["field"] as? String == "data.amount")
            response = try await client.command("1", "DepositMoney", #"{"amount":1,"bonus":2}"#)
            #expect(response.json["field"] as? String == "data.bonus", "\(response.text)")
            response = try await client.send(.post, "/v1/commands/account/1", json: #"{"type":"CloseAccount","data":{},"extra":1}"#)
            #expect(response.status == .badRequest)
            #expect(response.json["field"] as? String == "extra")
            response = try await client.send(.post, "/v1/commands/account/1", json: #"{"data":{}}"#)
            #expect(response.json["field"] as? String == "type")
        }
        #expect(try await server.test.store.headPosition() == 0)
    }

    @Test("50 concurrent deposits to one account without expected versions all succeed and sum up")
    func concurrentDeposits() async throws {
        let server = try await TestServer.make("httpconc")
        let statuses = try await server.run { client in
            _ = try await client.command("7", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#)
            return try await withThrowingTaskGroup(of: Int.self) { group in
                for amount in 1...50 {
                    group.addTask { try await client.commandAlone("7", "DepositMoney", #"{"amount":\#(amount)}"#).status }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
        }
        #expect(statuses.allSatisfy { $0 == 200 })
        let events = try await server.test.store.readStream("account-7", limit: 100)
        #expect(events.count == 51)
        let total = try events.dropFirst().map { ((try JSONSerialization.jsonObject(with: $0.data) as? [String: Any])?["amount"] as? Int) ?? -1_000_000 }.reduce(0, +)
        #expect(total == (1...50).reduce(0, +))
    }

    @Test("a named expected version that does not match is 409 with the current version")
    func expectedVersionConflict() async throws {
        let server = try await TestServer.make("httpconflict")
        try await server.run { client in
            _ = try await client.command("5", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#)
            #expect(try await client.command("5", "DepositMoney", #"{"amount":5}"#, expectedVersion: 1).status == .ok)
            let response = try await client.command("5", "DepositMoney", #"{"amount":5}"#, expectedVersion: 1)
            #expect(response.status == .conflict)
            #expect(response.json["currentVersion"] as? Int == 2)
            #expect(response.json["type"] as? String == "/problems/version-conflict")
        }
        #expect(try await server.test.store.streamVersion("account-5") == 2)
    }

    @Test("a command that loses every retry to other writers is 409 contention, and its idempotency key stays usable")
    func contentionReleasesTheKey() async throws {
        var configured = try await TestServer.make("httpcontention")
        configured.handlerConfiguration.maxAttempts = 1
        let server = configured
        let key: HTTPFields = [HTTPField.Name("Idempotency-Key")!: "busy-1"]
        try await server.run { client in
            #expect(try await client.command("9", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#).status == .ok)
            // Another process writes: the server's cached state (version 1) is now stale.
            _ = try await server.test.store.append(to: "account-9", events: [NewEvent(type: "MoneyDeposited", data: Data(#"{"amount":1}"#.utf8))])
            let busy = try await client.command("9", "DepositMoney", #"{"amount":5}"#, headers: key)
            #expect(busy.status == .conflict)
            #expect(busy.json["type"] as? String == "/problems/contention")
            #expect(busy.headers[.retryAfter] == "1")
            #expect(try await server.test.store.streamVersion("account-9") == 2)
            // Nothing was written, so the key was released: the retry runs the command.
            let retry = try await client.command("9", "DepositMoney", #"{"amount":5}"#, headers: key)
            #expect(retry.status == .ok, "\(retry.text)")
            #expect(retry.json["version"] as? Int == 3)
            #expect(retry.headers[HTTPField.Name("Idempotent-Replayed")!] == nil)
        }
    }

    @Test("an idempotency key replays the first response, also after a restart; another body under it is 422")
    func idempotencyKeys() async throws {
        let server = try await TestServer.make("httpidem")
        let key: HTTPFields = [HTTPField.Name("Idempotency-Key")!: "deposit-1"]
        let first = try await server.run { client in
            _ = try await client.command("8", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#)
            let first = try await client.command("8", "DepositMoney", #"{"amount":5}"#, headers: key)
            #expect(first.status == .ok)
            let again = try await client.command("8", "DepositMoney", #"{"amount":5}"#, headers: key)
            #expect(again.text == first.text)
            #expect(again.headers[HTTPField.Name("Idempotent-Replayed")!] == "true")
            let other = try await client.command("8", "DepositMoney", #"{"amount":6}"#, headers: key)
            #expect(other.status == .unprocessableContent)
            #expect(other.json["type"] as? String == "/problems/idempotency-key-reused")
            // A refusal is an answer too: replayed, not re-run.
            let refusedKey: HTTPFields = [HTTPField.Name("Idempotency-Key")!: "withdraw-big"]
            let refused = try await client.command("8", "WithdrawMoney", #"{"amount":500}"#, headers: refusedKey)
            #expect(refused.status == .unprocessableContent)
            let refusedAgain = try await client.command("8", "WithdrawMoney", #"{"amount":500}"#, headers: refusedKey)
            #expect(refusedAgain.status == .unprocessableContent)
            #expect(refusedAgain.isProblem)
            return first.text
        }
        // A new server process over the same database.
        try await server.run { client in
            let replay = try await client.command("8", "DepositMoney", #"{"amount":5}"#, headers: key)
            #expect(replay.text == first)
        }
        #expect(try await server.test.store.streamVersion("account-8") == 2)
    }

    @Test("POST /v1/commands/transfer/{id} starts a transfer; the outcome commands are unknown from outside; bad transfers are 422 by rule")
    func startTransferOverHTTP() async throws {
        let server = try await TestServer.make("httptransfer")
        try await server.run { client in
            func transfer(_ id: String, _ type: String, _ data: String) async throws -> TestResponse {
                try await client.send(.post, "/v1/commands/transfer/\(id)", json: #"{"type":"\#(type)","data":\#(data)}"#)
            }
            var response = try await transfer("t1", "StartTransfer", #"{"from":"1","to":"2","amount":300}"#)
            #expect(response.status == .ok, "\(response.text)")
            #expect(response.json["stream"] as? String == "transfer-t1")
            #expect((response.json["events"] as? [[String: Any]])?.first?["type"] as? String == "TransferStarted")
            response = try await transfer("t1", "StartTransfer", #"{"from":"1","to":"2","amount":300}"#)
            #expect(response.json["type"] as? String == "/problems/transfer-already-started")
            for type in ["RecordDebit", "RecordCredit", "RecordRefund"] {
                response = try await transfer("t1", type, "{}")
                #expect(response.status == .unprocessableContent)
                #expect(response.json["type"] as? String == "/problems/unknown-command-type", "\(type)")
                #expect(response.json["field"] as? String == "type")
            }
            #expect(try await transfer("t2", "StartTransfer", #"{"from":"1","to":"1","amount":3}"#).json["type"] as? String == "/problems/invalid-transfer")
            #expect(try await transfer("t2", "StartTransfer", #"{"from":"1","to":"2","amount":0}"#).json["type"] as? String == "/problems/invalid-amount")
            response = try await transfer("t2", "StartTransfer", #"{"from":"1","amount":3}"#)
            #expect(response.json["field"] as? String == "data.to", "\(response.text)")
        }
        #expect(try await server.test.store.headPosition() == 1)
        let stored = try await server.test.store.readStream("transfer-t1")
        #expect(stored.map(\.type) == ["TransferStarted"])
        #expect(String(decoding: stored[0].data, as: UTF8.self) == #"{"amount":300,"from":"1","to":"2"}"#)
    }
}

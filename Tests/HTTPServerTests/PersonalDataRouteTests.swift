import Aggregates
import BankDomain
import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import PostgresClient
import Testing

extension TestServer {
    /// A server whose store seals what the bank declares personal (the account owner).
    static func personal(_ label: String, masterKey: MasterKey? = TestMasterKey.key) async throws -> TestServer {
        let test = try await TestStore.make(label) { configuration in
            configuration.personalData = AggregateCodec<BankAccount>().personalData
            configuration.masterKey = masterKey
        }
        var server = TestServer(test: test)
        server.configuration.port = 0
        return server
    }
}

private let customer = #"{"type":"CustomerRegistered","data":{"email":"ada@example.com","address":{"street":"12 Analytical Row","city":"London"}},"subject":"customer-17","personal":["email","address.street"]}"#

/// Every stored byte of the log's data, as text.
private func storedData(_ test: TestStore) async throws -> String {
    try await test.sql { conn in
        try conn.query("SELECT data FROM eventline.events").rows.map { String(decoding: try $0.decode(0, as: Data.self), as: UTF8.self) }
            .joined(separator: "\n")
    }
}

@Suite("HTTP: personal data, forgetting subjects, deleting streams")
struct PersonalDataRouteTests {
    @Test("a raw append's personal fields and the bank's account owner are stored encrypted and read decrypted; DELETE /v1/subjects/{subject} erases them everywhere, once, and refuses them from then on")
    func forgetOverHTTP() async throws {
        let server = try await TestServer.personal("http-personal")
        try await server.run { client in
            let appended = try await client.send(.post, "/v1/streams/customer-17/events", json: #"{"events":[\#(customer)]}"#)
            #expect(appended.status == .created, "\(appended.text)")
            let opened = try await client.command("a1", "OpenAccount", #"{"owner":"Ada Lovelace","currency":"EUR"}"#)
            #expect(opened.status == .ok, "\(opened.text)")
            #expect(try await client.command("a1", "DepositMoney", #"{"amount":500}"#).status == .ok)
            let stored = try await storedData(server.test)
            #expect(!stored.contains("ada@example.com") && !stored.contains("Analytical") && !stored.contains("Lovelace"))
            #expect(stored.contains("London") && stored.contains("EUR"))

            let read = try await client.send(.get, "/v1/streams/customer-17")
            #expect(read.text.contains("ada@example.com") && read.text.contains("12 Analytical Row"), "\(read.text)")
            #expect(try await client.send(.get, "/v1/streams/account-a1").text.contains("Ada Lovelace"))
            #expect(try await client.send(.get, "/v1/events").text.contains("Ada Lovelace"))

            // A consumer group hands the fields out decrypted too.
            #expect(try await client.send(.put, "/v1/consumer-groups/people", json: #"{"categories":["customer"]}"#).status.code < 300)
            let fetched = try await client.send(.post, "/v1/consumer-groups/people/fetch", json: #"{"consumer":"c1","max":5}"#)
            #expect(fetched.text.contains("ada@example.com"), "\(fetched.text)")

            let forgotten = try await client.send(.delete, "/v1/subjects/account-a1")
            #expect(forgotten.status == .ok, "\(forgotten.text)")
            #expect(forgotten.json["forgotten"] as? Bool == true)
            #expect(forgotten.json["wasAlreadyForgotten"] as? Bool == false)
            let again = try await client.send(.delete, "/v1/subjects/account-a1")
            #expect(again.json["wasAlreadyForgotten"] as? Bool == true)
            #expect(again.json["position"] as? Int == forgotten.json["position"] as? Int)

            let account = try await client.send(.get, "/v1/streams/account-a1")
            #expect(!account.text.contains("Lovelace"))
            let events = account.json["events"] as? [[String: Any]] ?? []
            #expect((events.first?["data"] as? [String: Any])?["owner"] is NSNull, "\(account.text)")
            #expect(((events.first?["metadata"] as? [String: Any])?["personal"] as? [String: Any])?["erased"] as? [String] == ["owner"])
            #expect(try await client.send(.get, "/v1/streams/customer-17").text.contains("ada@example.com"))  // another subject
            // A redelivery after a forget carries the erased fields.
            let ids = (fetched.json["messages"] as? [[String: Any]] ?? []).compactMap { $0["deliveryId"] as? String }
            #expect(try await client.send(.post, "/v1/consumer-groups/people/nack", json: #"{"deliveryIds":["\#(ids.first ?? "")"],"retryAfter":0}"#).status == .ok)
            #expect(try await client.send(.delete, "/v1/subjects/customer-17").status == .ok)
            let redelivered = try await client.send(.post, "/v1/consumer-groups/people/fetch", json: #"{"consumer":"c1","max":5}"#)
            #expect(redelivered.text.contains(#""email":null"#) && !redelivered.text.contains("ada@example.com"), "\(redelivered.text)")
            // The account goes on (its decisions need no owner); a new owner's name is refused.
            #expect(try await client.command("a1", "DepositMoney", #"{"amount":1}"#).status == .ok)
            let reopen = try await client.send(.post, "/v1/streams/account-a1/events", json: #"{"events":[{"type":"AccountOpened","data":{"owner":"Ada","currency":"EUR"}}]}"#)
            #expect(reopen.status == .gone && reopen.isProblem, "\(reopen.text)")
            #expect(reopen.json["type"] as? String == "/problems/subject-forgotten")
            let forged = try await client.send(.post, "/v1/streams/x-1/events", json: #"{"events":[{"type":"SubjectForgotten","data":{"subject":"account-a9"}}]}"#)
            #expect(forged.status == .badRequest && forged.isProblem, "\(forged.text)")
            let log = try await client.send(.get, "/v1/events?type=SubjectForgotten")
            #expect((log.json["events"] as? [[String: Any]])?.count == 2, "\(log.text)")  // account-a1 and customer-17, once each
        }
    }

    @Test("a forgotten account takes commands after a restart: its owner reads null, and the state folds without it")
    func forgottenAccountAfterRestart() async throws {
        let server = try await TestServer.personal("http-personal-restart")
        try await server.run { (client: any TestClientProtocol) async throws -> Void in
            #expect(try await client.command("a1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#).status == .ok)
            #expect(try await client.send(.delete, "/v1/subjects/account-a1").status == .ok)
        }
        // A new server process: no state cached, the account is folded from the log.
        try await server.run { (client: any TestClientProtocol) async throws -> Void in
            let deposit = try await client.command("a1", "DepositMoney", #"{"amount":5}"#)
            #expect(deposit.status == .ok, "\(deposit.text)")
            let closed = try await client.command("a1", "CloseAccount", "{}")
            #expect(closed.status == .unprocessableContent || closed.status == .ok, "\(closed.text)")
        }
    }

    @Test("bad personal-data input is a clear 400 that writes nothing; without a master key it is a 503 that names the variable")
    func badInput() async throws {
        let server = try await TestServer.personal("http-personal-bad")
        try await server.run { client in
            let bodies: [(String, String)] = [
                (#"{"type":"T","data":{"email":"x"},"subject":"s-1"}"#, "events[0].personal"),
                (#"{"type":"T","data":{"email":"x"},"personal":["email"]}"#, "events[0].subject"),
                (#"{"type":"T","data":{"email":"x"},"subject":"s-1","personal":"email"}"#, "events[0].personal"),
                (#"{"type":"T","data":{"email":"x"},"subject":"s-1","personal":[1]}"#, "events[0].personal"),
                (#"{"type":"T","data":{"email":"x"},"subject":7,"personal":["email"]}"#, "events[0].subject"),
                (#"{"type":"T","data":{"email":"x"},"subject":"s-1","personal":["phone"]}"#, "phone is not in the event's data"),
                (#"{"type":"T","data":{"ok":true},"subject":"s-1","personal":["ok"]}"#, "must be a string, a number or an object"),
                (#"{"type":"T","data":{"email":"x"},"subject":"","personal":["email"]}"#, "the subject is empty"),
            ]
            for (event, says) in bodies {
                let response = try await client.send(.post, "/v1/streams/s-1/events", json: #"{"events":[\#(event)]}"#)
                #expect(response.status == .badRequest && response.isProblem, "\(event): \(response.text)")
                #expect(response.text.contains(says), "\(event): \(response.text)")
            }
            let log = try await client.send(.get, "/v1/events")
            #expect((log.json["events"] as? [Any] ?? []).isEmpty, "\(log.text)")
        }
        let keyless = try await TestServer.personal("http-personal-keyless", masterKey: nil)
        try await keyless.run { client in
            let refused = try await client.send(.post, "/v1/streams/customer-17/events", json: #"{"events":[\#(customer)]}"#)
            #expect(refused.status == .serviceUnavailable && refused.isProblem, "\(refused.text)")
            #expect(refused.json["type"] as? String == "/problems/master-key")
            #expect(refused.text.contains("EVENTLINE_MASTER_KEY"))
            let command = try await client.command("a1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#)
            #expect(command.status == .serviceUnavailable, "\(command.text)")
            // Forgetting needs no master key (customer-17 has no data: nothing could be stored).
            #expect(try await client.send(.delete, "/v1/subjects/customer-17").status == .notFound)
            #expect(try await client.send(.delete, "/v1/subjects/customer-17?evenIfUnknown=true").status == .ok)
        }
        #expect(try await keyless.test.store.headPosition() == 1)  // the SubjectForgotten event alone
    }

    @Test("DELETE /v1/streams/{stream}: a tombstone; its reads, appends and commands answer 410; the expected version is checked; deleting again is idempotent")
    func deleteStream() async throws {
        let server = try await TestServer.personal("http-tombstone")
        try await server.run { client in
            #expect(try await client.command("a1", "OpenAccount", #"{"owner":"Ada","currency":"EUR"}"#).status == .ok)
            let conflict = try await client.send(.delete, "/v1/streams/account-a1?expectedVersion=3")
            #expect(conflict.status == .conflict && conflict.json["currentVersion"] as? Int == 1, "\(conflict.text)")
            #expect(try await client.send(.delete, "/v1/streams/account-a1?expectedVersion=later").status == .badRequest)
            #expect(try await client.send(.delete, "/v1/streams/account-a1?version=1").status == .badRequest)
            let deleted = try await client.send(.delete, "/v1/streams/account-a1?expectedVersion=1")
            #expect(deleted.status == .ok, "\(deleted.text)")
            #expect(deleted.json["deleted"] as? Bool == true && deleted.json["version"] as? Int == 2)
            #expect(deleted.json["wasAlreadyDeleted"] as? Bool == false)
            #expect(try await client.send(.delete, "/v1/streams/account-a1").json["wasAlreadyDeleted"] as? Bool == true)
            for response in [
                try await client.send(.get, "/v1/streams/account-a1"),
                try await client.send(.get, "/v1/streams/account-a1?direction=backward&from=1"),
                try await client.send(.post, "/v1/streams/account-a1/events", json: #"{"events":[{"type":"MoneyDeposited","data":{"amount":1}}]}"#),
                try await client.command("a1", "DepositMoney", #"{"amount":1}"#),
            ] {
                #expect(response.status == .gone && response.isProblem, "\(response.text)")
                #expect(response.json["type"] as? String == "/problems/stream-deleted")
            }
            // The log keeps the stream's events and the tombstone.
            let log = try await client.send(.get, "/v1/events")
            #expect((log.json["events"] as? [[String: Any]])?.map { $0["type"] as? String } == ["AccountOpened", "$StreamDeleted"])
        }
    }

    @Test("deleting streams and forgetting subjects need the admin scope")
    func scopes() async throws {
        var server = try await TestServer.personal("http-personal-scope")
        server.configuration.apiKeyRefresh = .milliseconds(100)
        let writer = try await server.test.store.createAPIKey(scope: .commands).key
        let admin = try await server.test.store.createAPIKey(scope: .admin).key
        try await server.run { client in
            // Neither exists: an admin may still close the name, or forget ahead of any data.
            for path in ["/v1/streams/account-1?expectedVersion=noStream", "/v1/subjects/customer-17?evenIfUnknown=true"] {
                let refused = try await client.send(.delete, path, headers: [.authorization: "Bearer \(writer)"])
                #expect(refused.status == .forbidden && refused.isProblem, "\(path): \(refused.text)")
                #expect(try await client.send(.delete, path, headers: [.authorization: "Bearer \(admin)"]).status == .ok, "\(path)")
            }
        }
    }
}

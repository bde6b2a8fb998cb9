import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Testing

@Suite("eventctl: forget, delete-stream, master-key")
struct PersonalDataCommandTests {
    static func run(_ arguments: [String], url: String, key: String? = nil) async throws -> ProcessOutput {
        var environment = ["EVENTLINE_DATABASE_URL": url]
        if let key { environment["EVENTLINE_MASTER_KEY"] = key }
        return try await runProgram(try Repository.eventctl, arguments, environment: environment, timeout: 60)
    }

    @Test("the bank's account owner is sealed by eventctl append; forget erases it, once; delete-stream closes a stream; status counts both; bad input is one line")
    func forgetAndDelete() async throws {
        let test = try await TestStore.make("cli-forget")
        defer { Task { await test.store.shutdown() } }
        for account in ["a1", "a2"] {
            let appended = try await Self.run(
                ["append", "account-\(account)", "--type", "AccountOpened", "--data", #"{"owner":"Ada Lovelace","currency":"EUR"}"#], url: test.url)
            #expect(appended.status == 0, "\(appended.stderr)")
        }
        let stored = try await test.sql { conn in
            try conn.query("SELECT data FROM eventline.events").rows.map { String(decoding: try $0.decode(0, as: Data.self), as: UTF8.self) }
        }
        #expect(stored.count == 2 && stored.allSatisfy { !$0.contains("Lovelace") }, "\(stored)")
        #expect(try await Self.run(["read", "account-a1"], url: test.url).stdout.contains("Ada Lovelace"))

        let forgot = try await Self.run(["forget", "account-a1"], url: test.url)
        #expect(forgot.status == 0 && forgot.stdout.contains("forgot subject account-a1: SubjectForgotten at position 3"), "\(forgot.stdout)\(forgot.stderr)")
        #expect(try await Self.run(["forget", "account-a1"], url: test.url).stdout.contains("already forgotten"))
        let read = try await Self.run(["read", "account-a1"], url: test.url)
        #expect(!read.stdout.contains("Lovelace") && read.stdout.contains(#""owner":null"#), "\(read.stdout)")
        #expect(try await Self.run(["read", "account-a2"], url: test.url).stdout.contains("Ada Lovelace"))
        EventCtlTests.expectOneLineError(
            try await Self.run(["append", "account-a1", "--type", "AccountOpened", "--data", #"{"owner":"Ada","currency":"EUR"}"#], url: test.url),
            containing: "forgotten")
        EventCtlTests.expectOneLineError(try await Self.run(["forget", ""], url: test.url), containing: "the subject is empty")

        let deleted = try await Self.run(["delete-stream", "account-a2", "--expected-version", "1"], url: test.url)
        #expect(deleted.status == 0 && deleted.stdout.contains("deleted account-a2: tombstone at version 2"), "\(deleted.stdout)\(deleted.stderr)")
        EventCtlTests.expectOneLineError(try await Self.run(["read", "account-a2"], url: test.url), containing: "deleted")
        EventCtlTests.expectOneLineError(
            try await Self.run(["delete-stream", "account-a1", "--expected-version", "7"], url: test.url), containing: "version")
        let status = try await Self.run(["status"], url: test.url)
        #expect(status.stdout.contains("1 deleted"), "\(status.stdout)")
        #expect(status.stdout.contains("subjects     1 with a key, 1 forgotten"), "\(status.stdout)")
        // Without a master key, personal data is refused, and says how to fix it.
        EventCtlTests.expectOneLineError(
            try await Self.run(["append", "account-a3", "--type", "AccountOpened", "--data", #"{"owner":"Bo","currency":"EUR"}"#], url: test.url, key: ""),
            containing: "EVENTLINE_MASTER_KEY")
        EventCtlTests.expectOneLineError(try await Self.run(["status"], url: test.url, key: "short"), containing: "EVENTLINE_MASTER_KEY")
    }

    @Test("without a master key a domain with personal fields refuses to serve, project, react, deliver or replay, in one line; EVENTLINE_PERSONAL_DATA=off runs it without")
    func masterKeyRequired() async throws {
        let test = try await TestStore.make("cli-nokey")
        defer { Task { await test.store.shutdown() } }
        let projections = ["--projections-dir", Repository.root + "/Projections"]
        for command in [["serve", "--port", "0"], ["project"] + projections, ["react"], ["deliver"], ["replay", "account_balances"] + projections] {
            let output = try await Self.run(command, url: test.url, key: "")
            EventCtlTests.expectOneLineError(output, containing: "EVENTLINE_MASTER_KEY")
            #expect(output.stderr.contains("master-key generate") && output.stderr.contains("EVENTLINE_PERSONAL_DATA=off"), "\(command[0]): \(output.stderr)")
        }
        let told = try await runProgram(
            try Repository.eventctl, ["replay", "account_balances"] + projections,
            environment: ["EVENTLINE_DATABASE_URL": test.url, "EVENTLINE_MASTER_KEY": "", "EVENTLINE_PERSONAL_DATA": "off"], timeout: 60)
        #expect(told.status == 0, "\(told.stdout)\(told.stderr)")
        EventCtlTests.expectOneLineError(
            try await runProgram(
                try Repository.eventctl, ["replay", "account_balances", "--dry-run"] + projections,
                environment: ["EVENTLINE_DATABASE_URL": test.url, "EVENTLINE_MASTER_KEY": "", "EVENTLINE_PERSONAL_DATA": "maybe"], timeout: 60),
            containing: "EVENTLINE_PERSONAL_DATA")
    }

    @Test("forget and delete-stream of what never existed are refused in one line, unless asked")
    func nothingToForget() async throws {
        let test = try await TestStore.make("cli-nothing")
        defer { Task { await test.store.shutdown() } }
        EventCtlTests.expectOneLineError(try await Self.run(["forget", "account-x"], url: test.url), containing: "no personal data")
        EventCtlTests.expectOneLineError(try await Self.run(["delete-stream", "order-1"], url: test.url), containing: "no events")
        #expect(try await Self.run(["forget", "account-x", "--even-if-unknown"], url: test.url).status == 0)
        #expect(try await Self.run(["delete-stream", "order-1", "--expected-version", "no-stream"], url: test.url).status == 0)
        #expect(try await test.store.headPosition() == 2)
    }

    @Test("master-key rotate re-wraps every subject key under the new key: the data reads the same with it, not with the old; running it again re-wraps none")
    func rotate() async throws {
        let test = try await TestStore.make("cli-rotate")
        defer { Task { await test.store.shutdown() } }
        for account in ["r1", "r2", "r3"] {
            #expect(try await Self.run(
                ["append", "account-\(account)", "--type", "AccountOpened", "--data", #"{"owner":"Owner \#(account)","currency":"EUR"}"#],
                url: test.url).status == 0)
        }
        #expect(try await Self.run(["forget", "account-r3"], url: test.url).status == 0)
        let generated = try await Self.run(["master-key", "generate"], url: test.url)
        let newKey = generated.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(Data(base64Encoded: newKey)?.count == 32, "\(generated.stdout)")
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("master-\(UUID()).key").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        try Data(newKey.utf8).write(to: URL(fileURLWithPath: file))

        let rotated = try await Self.run(["master-key", "rotate", "--new-key-file", file], url: test.url)
        #expect(rotated.status == 0 && rotated.stdout.contains("re-wrapped 2 subject keys"), "\(rotated.stdout)\(rotated.stderr)")
        #expect(try await Self.run(["read", "account-r1"], url: test.url, key: newKey).stdout.contains("Owner r1"))
        EventCtlTests.expectOneLineError(try await Self.run(["read", "account-r2"], url: test.url), containing: "master key")
        let again = try await Self.run(["master-key", "rotate", "--new-key-file", file], url: test.url, key: newKey)
        #expect(again.stdout.contains("re-wrapped 0 subject keys"), "\(again.stdout)\(again.stderr)")
        EventCtlTests.expectOneLineError(
            try await Self.run(["master-key", "rotate", "--new-key-file", "/nonexistent"], url: test.url), containing: "cannot read")
    }
}

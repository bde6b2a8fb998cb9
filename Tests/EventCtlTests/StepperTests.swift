import EventlineTestSupport
import Foundation
import PostgresClient
import Testing

/// `eventctl replay NAME --stream S --step`: a projection replayed over one stream, each event's
/// changed rows before and after, nothing written.
@Suite("Projection stepper")
struct StepperTests {
    @Test("the stepper prints each handled event's rows before and after, writes nothing, and refuses bad input in one line")
    func stepsOneStream() async throws {
        let test = try await TestStore.make("stepper")
        let url = test.url
        for (type, data, expected) in [
            ("AccountOpened", #"{"owner":"Ada","currency":"EUR"}"#, "no-stream"), ("MoneyDeposited", #"{"amount":5}"#, "1"),
            ("MoneyDeposited", #"{"amount":7}"#, "2"),
        ] {
            let appended = try await EventCtlTests.eventctl(["append", "account-1", "--type", type, "--data", data, "--expected-version", expected], url: url)
            #expect(appended.status == 0, "\(appended.stderr)")
        }
        _ = try await EventCtlTests.eventctl(["append", "account-2", "--type", "AccountOpened", "--data", #"{"owner":"Bo","currency":"EUR"}"#], url: url)
        let projections = ["--projections-dir", Repository.root + "/Projections"]
        let stepped = try await EventCtlTests.eventctl(["replay", "account_balances", "--stream", "account-1", "--step"] + projections, url: url)
        #expect(stepped.status == 0, "\(stepped.stderr)")
        let lines = stepped.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first?.contains("account_balances over account-1: 3 events, 3 handled (dry run: nothing is written)") == true, "\(stepped.stdout)")
        #expect(lines.filter { $0.hasPrefix("position ") }.count == 3, "\(stepped.stdout)")
        #expect(stepped.stdout.contains("before: (none)"), "\(stepped.stdout)")
        // The deposits, one row changed each, before and after.
        #expect(stepped.stdout.contains(#""balance": 5"#) && stepped.stdout.contains(#""balance": 12"#), "\(stepped.stdout)")
        #expect(!stepped.stdout.contains("Bo"), "another stream's events were applied: \(stepped.stdout)")
        // Nothing written: no read model, no projection registered.
        let written = try await test.sql { conn in
            try conn.query("""
                SELECT to_regclass('read_models.account_balances') IS NULL AND NOT EXISTS (SELECT 1 FROM eventline.projections)
                """).first?.decode(0, as: Bool.self)
        }
        #expect(written == true)

        // A handler that fails: the steps before it are printed, then its error in one line.
        let broken = FileManager.default.temporaryDirectory.appendingPathComponent("eventline-step-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: broken, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: broken) }
        try """
            name: fragile
            version: 1
            key: account_id
            create: |
              CREATE TABLE $table (account_id text PRIMARY KEY, total bigint NOT NULL)
            handlers:
              AccountOpened: |
                INSERT INTO $table (account_id, total) VALUES (:id, 0) RETURNING account_id
              MoneyDeposited: |
                UPDATE $table SET total = total + :data.amount::bigint / (:data.amount::bigint - 7) WHERE account_id = :id RETURNING account_id
            """.write(to: broken.appendingPathComponent("fragile.yaml"), atomically: true, encoding: .utf8)
        let failing = try await EventCtlTests.eventctl(
            ["replay", "fragile", "--stream", "account-1", "--step", "--projections-dir", broken.path], url: url)
        #expect(failing.stdout.contains("position 2 · MoneyDeposited") && failing.stdout.contains(#""total": -2"#), "\(failing.stdout)")
        EventCtlTests.expectOneLineError(failing, containing: "fragile fails on position 3 (MoneyDeposited)")
        #expect(failing.stderr.contains("division by zero"), "\(failing.stderr)")

        for (arguments, text) in [
            (["replay", "account_balances", "--step"], "--step and --stream go together"),
            (["replay", "account_balances", "--stream", "account-1"], "--step and --stream go together"),
            (["replay", "account_balances", "transfers", "--stream", "account-1", "--step"], "--step replays one projection"),
            (["replay", "account_balances", "--stream", "account-9", "--step"], "stream account-9 has no events"),
            (["replay", "nonesuch", "--stream", "account-1", "--step"], "no projection named nonesuch"),
        ] {
            let refused = try await EventCtlTests.eventctl(arguments + projections, url: url)
            EventCtlTests.expectOneLineError(refused, containing: text)
        }
    }
}

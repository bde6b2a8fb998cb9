import EventStore
import Foundation
import EventlineTestSupport
import PostgresClient
import Projector
import Testing

@Suite("Handler SQL: named parameters, $table, quoting")
struct HandlerSQLTests {
    @Test("named parameters become $n binds; casts, strings, identifiers and comments are left alone")
    func rewriting() throws {
        let sql = try HandlerSQL(
            """
            UPDATE $table SET balance = balance + :data.amount::bigint, note = ':id is text', "we:ird" = E'it\\'s :id'
            -- :position in a comment
            /* :version /* nested :type */ */
            WHERE account_id = :id AND $body$ :stream $body$ IS NOT NULL AND id2 = :id RETURNING account_id
            """, table: #""read_models"."t""#)
        #expect(sql.parameters == [.data(["amount"]), .id])
        #expect(sql.sql.contains(#"UPDATE "read_models"."t" SET balance = balance + $1::bigint"#))
        #expect(sql.sql.contains("':id is text'"))
        #expect(sql.sql.contains(#"E'it\'s :id'"#))
        #expect(sql.sql.contains("-- :position in a comment"))
        #expect(sql.sql.contains("/* :version /* nested :type */ */"))
        #expect(sql.sql.contains("$body$ :stream $body$"))
        #expect(sql.sql.contains("account_id = $2 AND"))
        #expect(sql.sql.contains("id2 = $2 RETURNING"))
    }

    @Test("unknown parameters, positional parameters and unterminated quotes are refused with a reason")
    func refusals() {
        for (text, reason) in [
            ("SELECT :nope", "unknown parameter :nope"), ("SELECT :data", "unknown parameter :data"),
            ("SELECT $1", "positional parameters"), ("SELECT 'open", "unterminated string"),
            ("SELECT $other", "unknown placeholder $other"), ("SELECT $q$ never closed", "unterminated dollar-quoted"),
        ] {
            #expect(throws: HandlerSQLError.self, "\(text)") { try HandlerSQL(text, table: "t") }
            do {
                _ = try HandlerSQL(text, table: "t")
            } catch let error as HandlerSQLError {
                #expect(error.message.contains(reason), "\(text): \(error.message)")
            } catch {
                Issue.record("\(error)")
            }
        }
    }

    @Test("parameters bind from the event: ids, JSON paths (exact numbers, nested, arrays, escapes), NULL when missing")
    func binding() throws {
        let sql = try HandlerSQL(
            "SELECT :stream, :category, :id, :version, :position, :type, :event_id, :recorded_at, :data.amount, :data.owner.name, :data.items.1, :data.missing, :metadata.user, :data.flag, :data.obj",
            table: "t")
        let event = RecordedEvent(
            position: 42, stream: "account-7-b", version: 3, id: UUID(uuidString: "6BA7B810-9DAD-11D1-80B4-00C04FD430C8")!,
            type: "MoneyDeposited",
            data: Data(#"{"amount": 9223372036854775807, "owner": {"name": "A\"da \u00e9"}, "items": [1, "two"], "flag": true, "obj": {"a": [1, 2]}}"#.utf8),
            metadata: Data(#"{"user":"ops"}"#.utf8), recordedAt: Date(timeIntervalSince1970: 1_700_000_000.123456))
        let binds = sql.query(for: event).binds.map { $0.bytes.map { String(decoding: $0, as: UTF8.self) } }
        #expect(binds == [
            "account-7-b", "account", "7-b", "3", "42", "MoneyDeposited", "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
            "2023-11-14T22:13:20.123456Z", "9223372036854775807", "A\"da é", "two", nil, "ops", "true", #"{"a": [1, 2]}"#,
        ])
    }
}

@Suite("Projection definitions in YAML")
struct ProjectionDefinitionTests {
    static let valid = """
        name: things
        version: 2
        key: id
        create: |
          CREATE TABLE $table (id text PRIMARY KEY, n bigint NOT NULL)
        handlers:
          ThingMade: |
            INSERT INTO $table (id, n) VALUES (:id, :data.n::bigint) RETURNING id
        """

    @Test("a valid file loads; the shipped directory loads")
    func loads() throws {
        let projection = try ProjectionDirectory.parse(Self.valid, source: "things.yaml")
        #expect(projection.name == "things")
        #expect(projection.version == 2)
        #expect(projection.keyColumn == "id")
        #expect(projection.eventTypes == ["ThingMade"])
        let shipped = try ProjectionDirectory.load(Repository.root + "/Projections")
        #expect(shipped.map(\.name) == ["account_balances", "daily_totals", "transfers"])
    }

    @Test("every problem names the file, and the handler when there is one")
    func errors() {
        let cases: [(String, String)] = [
            (Self.valid.replacingOccurrences(of: "name: things", with: "name: Things"), "things.yaml: name"),
            (Self.valid.replacingOccurrences(of: "version: 2", with: "version: two"), "things.yaml: version must be an integer"),
            (Self.valid.replacingOccurrences(of: "version: 2", with: "version: 0"), "things.yaml: version must be a positive"),
            (Self.valid.replacingOccurrences(of: "key: id", with: "key: \"id; drop\""), "things.yaml: key"),
            (Self.valid + "\nextra: 1", "things.yaml: unknown field extra"),
            (Self.valid.replacingOccurrences(of: ":data.n", with: ":dta.n"), "things.yaml: handler ThingMade: unknown parameter :dta.n"),
            (Self.valid.replacingOccurrences(of: "CREATE TABLE $table", with: "CREATE TABLE x"), "things.yaml: create must create $table"),
            ("name: [", "things.yaml: is not valid YAML"),
            ("- a\n- b", "things.yaml: must be a mapping"),
        ]
        for (text, expected) in cases {
            do {
                _ = try ProjectionDirectory.parse(text, source: "things.yaml")
                Issue.record("accepted: \(expected)")
            } catch let error as ProjectionError {
                #expect(error.description.hasPrefix(expected), "\(error.description)")
            } catch {
                Issue.record("\(error)")
            }
        }
    }
}

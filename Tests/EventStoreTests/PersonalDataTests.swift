import EventStore
import EventlineTestSupport
import Foundation
import LZ4
import PostgresClient
import Synchronization
import Testing

private func hex(_ text: String) -> [UInt8] {
    var bytes: [UInt8] = []
    var index = text.startIndex
    while index < text.endIndex {
        let next = text.index(index, offsetBy: 2)
        bytes.append(UInt8(text[index..<next], radix: 16)!)
        index = next
    }
    return bytes
}

private let customer = #"{"email":"ada@example.com","address":{"street":"12 Analytical Row","city":"London"},"age":36,"profile":{"nick":"countess"},"plan":"gold"}"#

private func personalEvent(_ subject: String = "customer-17", data: String = customer, id: UUID? = nil) -> NewEvent {
    NewEvent(
        id: id, type: "CustomerRegistered", data: Data(data.utf8), metadata: Data(#"{"user":"clerk-1"}"#.utf8),
        personal: PersonalData(subject: subject, fields: ["email", "address.street", "age", "profile"]))
}

private func object(_ data: Data) throws -> [String: Any] {
    try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
}

/// Every stored byte of the log's data and metadata, as text.
private func storedText(_ test: TestStore) async throws -> String {
    try await test.sql { conn in
        try conn.query("SELECT data, metadata::text FROM eventline.events ORDER BY position").rows.map { row in
            String(decoding: try row.decode(0, as: Data.self), as: UTF8.self) + (try row.decode(1, as: String.self))
        }.joined(separator: "\n")
    }
}

@Suite("Personal data: encryption at rest and forgetting a subject")
struct PersonalDataTests {
    @Test("AES-256-GCM from libcrypto gives the GCM specification's test vectors, and refuses a changed box, key or additional data")
    func aesGCMVectors() throws {
        // Test cases 13, 14 and 16 of McGrew and Viega's GCM specification (AES-256).
        let zero = [UInt8](repeating: 0, count: 32)
        #expect(AESGCMVectors.seal([], key: zero, nonce: [UInt8](repeating: 0, count: 12), aad: []) == [UInt8](repeating: 0, count: 12) + hex("530f8afbc74536b9a963b4f1c4cb738b"))
        #expect(AESGCMVectors.seal([UInt8](repeating: 0, count: 16), key: zero, nonce: [UInt8](repeating: 0, count: 12), aad: [])
            == [UInt8](repeating: 0, count: 12) + hex("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"))
        let key = hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
        let nonce = hex("cafebabefacedbaddecaf888")
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
        let plaintext = hex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39")
        let box = AESGCMVectors.seal(plaintext, key: key, nonce: nonce, aad: aad)
        #expect(box == nonce + hex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662")
            + hex("76fc6ece0f4e1768cddf8853bb2d551b"))
        #expect(try AESGCM.open(box, key: key, authenticating: aad) == plaintext)
        var changed = box
        changed[20] ^= 1
        #expect(throws: AESGCM.AuthenticationFailure.self) { try AESGCM.open(changed, key: key, authenticating: aad) }
        #expect(throws: AESGCM.AuthenticationFailure.self) { try AESGCM.open(box, key: zero, authenticating: aad) }
        #expect(throws: AESGCM.AuthenticationFailure.self) { try AESGCM.open(box, key: key, authenticating: aad.dropLast()) }
        #expect(throws: AESGCM.AuthenticationFailure.self) { try AESGCM.open(box.prefix(20), key: key) }
        // A fresh nonce every time: one plaintext seals to two boxes.
        #expect(AESGCM.seal(plaintext, key: key) != AESGCM.seal(plaintext, key: key))
    }

    @Test("a master key is 32 bytes of base64; anything else is a clear error")
    func masterKeys() throws {
        let key = MasterKey.generate()
        #expect(try MasterKey(base64: " \(key.base64)\n").id == key.id)
        #expect(MasterKey.generate().id != key.id)
        #expect(throws: EventStoreError.self) { try MasterKey(base64: "not base64!") }
        #expect(throws: EventStoreError.self) { try MasterKey(base64: Data(count: 16).base64EncodedString()) }
    }

    @Test("personal fields are stored encrypted (the table's bytes hold none of them) and every reader sees them decrypted")
    func encryptedAtRest() async throws {
        let test = try await TestStore.make("personal-at-rest")
        let store = test.store
        defer { Task { await store.shutdown() } }
        let appended = try await store.append(to: "customer-17", expected: .noStream, events: [personalEvent()])
        try await store.append(to: "customer-17", events: [NewEvent(type: "Noted", data: Data(#"{"note":"plain"}"#.utf8))])

        let stored = try await storedText(test)
        // The age as the JSON member it was: "36" alone can turn up in any base64 ciphertext.
        for secret in ["ada@example.com", "Analytical", "countess", #""age":36"#] { #expect(!stored.contains(secret), "\(secret) is stored in plain text") }
        #expect(stored.contains("London") && stored.contains("gold") && stored.contains("plain"))  // what is not personal stays readable
        #expect(stored.contains("eventline:sealed:v1:"))
        let keys = try await test.sql { conn in
            try conn.query("SELECT subject, length(wrapped_key), master_key_id FROM eventline.subject_keys").rows.map {
                "\(try $0.decode(0, as: String.self)) \(try $0.decode(1, as: Int.self)) \(try $0.decode(2, as: String.self))"
            }
        }
        #expect(keys == ["customer-17 60 \(TestMasterKey.key.id)"])  // 12-byte nonce, 32-byte key, 16-byte tag

        func check(_ event: RecordedEvent?, _ reader: String) throws {
            let data = try object(event?.data ?? Data())
            #expect(data["email"] as? String == "ada@example.com", "\(reader)")
            #expect((data["address"] as? [String: Any])?["street"] as? String == "12 Analytical Row", "\(reader)")
            #expect((data["address"] as? [String: Any])?["city"] as? String == "London", "\(reader)")
            #expect(data["age"] as? Int == 36, "\(reader)")
            #expect((data["profile"] as? [String: Any])?["nick"] as? String == "countess", "\(reader)")
            let metadata = try object(event?.metadata ?? Data())
            #expect(metadata["user"] as? String == "clerk-1", "\(reader)")
            let personal = metadata["personal"] as? [String: Any]
            #expect(personal?["subject"] as? String == "customer-17", "\(reader)")
            #expect(personal?["fields"] as? [String] == ["email", "address.street", "age", "profile"], "\(reader)")
            #expect(personal?["erased"] == nil, "\(reader)")
        }
        try check(try await store.readStream("customer-17").first, "readStream")
        try check(try await store.readAll().first, "readAll")
        try check(try await store.event(id: appended.events[0].id), "event(id:)")
        try check(try await store.readForLoad("customer-17", stateVersion: 1, limit: 10).events.first, "readForLoad")
        var subscription = store.subscribe(after: 0).makeAsyncIterator()
        try check(try await subscription.next(), "subscribe")
        let other = test.secondStore()
        try check(try await other.readStream("customer-17").first, "a second store")
        await other.shutdown()

        // A snapshot (a state folded from the events, personal data and all) is sealed too.
        try await store.saveSnapshot("customer-17", Snapshot(version: 2, stateVersion: 1, data: Data(#"{"email":"ada@example.com"}"#.utf8)))
        let snapshot = try await test.sql { conn in
            try conn.query("SELECT data FROM eventline.snapshots WHERE stream = 'customer-17'").first!.decode(0, as: Data.self)
        }
        #expect(snapshot.starts(with: Data("eventline:sealed-snapshot:v1:".utf8)))
        #expect((try? LZ4Block.decompress(snapshot)) == nil && snapshot.range(of: Data("ada@".utf8)) == nil)
        #expect(try await store.loadSnapshot("customer-17")?.data == Data(#"{"email":"ada@example.com"}"#.utf8))
        #expect(try await store.readForLoad("customer-17", stateVersion: 1, limit: 10).snapshot?.version == 2)
        // Under another master key it is unusable, and the state is folded from the log instead.
        let rotated = EventStore({ var c = store.configuration; c.masterKey = MasterKey.generate(); return c }())
        #expect(try await rotated.loadSnapshot("customer-17") == nil)
        #expect(try await rotated.readForLoad("customer-17", stateVersion: 1, limit: 10).snapshotUnusable)
        await rotated.shutdown()
    }

    @Test("forgetting a subject: its fields read null, with the metadata naming them erased, through every reader; SubjectForgotten is in the log; other subjects are untouched; it is idempotent and the key never comes back")
    func forgetting() async throws {
        let test = try await TestStore.make("personal-forget")
        let store = test.store
        defer { Task { await store.shutdown() } }
        try await store.append(to: "customer-17", events: [personalEvent()])
        try await store.append(to: "customer-18", events: [personalEvent("customer-18")])
        try await store.saveSnapshot("customer-17", Snapshot(version: 1, stateVersion: 1, data: Data(#"{"email":"ada@example.com"}"#.utf8)))
        try await store.saveSnapshot("customer-18", Snapshot(version: 1, stateVersion: 1, data: Data(#"{"email":"x"}"#.utf8)))
        let other = test.secondStore()
        defer { Task { await other.shutdown() } }
        _ = try await other.readStream("customer-17")  // the second store has read it before the forget
        // And has sealed data of the subject: its key is in that store's memory.
        try await other.append(to: "customer-17b", events: [personalEvent()])

        let forgotten = try await store.forget(subject: "customer-17")
        #expect(!forgotten.wasAlreadyAppended)
        #expect(forgotten.position == 4)
        #expect(try await store.isForgotten(subject: "customer-17"))
        #expect(try await !store.isForgotten(subject: "customer-18"))
        func erased(_ event: RecordedEvent?, _ reader: String) throws {
            let data = try object(event?.data ?? Data())
            #expect(data["email"] is NSNull, "\(reader)")
            #expect((data["address"] as? [String: Any])?["street"] is NSNull, "\(reader)")
            #expect((data["address"] as? [String: Any])?["city"] as? String == "London", "\(reader)")
            #expect(data["age"] is NSNull && data["profile"] is NSNull && data["plan"] as? String == "gold", "\(reader)")
            let personal = try object(event?.metadata ?? Data())["personal"] as? [String: Any]
            #expect(personal?["erased"] as? [String] == ["email", "address.street", "age", "profile"], "\(reader)")
        }
        for reader in [store, other] {
            try erased(try await reader.readStream("customer-17").first, "readStream")
            try erased(try await reader.readAll(limit: 1).first, "readAll")
            try erased(try await reader.readForLoad("customer-17", stateVersion: 1, limit: 10).events.first, "readForLoad")
            let kept = try object(try await reader.readStream("customer-18").first?.data ?? Data())
            #expect(kept["email"] as? String == "ada@example.com")
        }
        // The audit event names the subject and nothing else.
        let audit = try #require(try await store.readAll(after: 3).first)
        #expect(audit.type == "SubjectForgotten")
        #expect(audit.stream == EventStore.forgottenStream)
        #expect(try object(audit.data) as NSDictionary == ["subject": "customer-17"] as NSDictionary)
        // The key is destroyed, and the snapshot of the stream that held the data is gone.
        let rows = try await test.sql { conn in
            (try conn.query("SELECT wrapped_key IS NULL, forgotten_at IS NOT NULL FROM eventline.subject_keys WHERE subject = 'customer-17'").first.map {
                [try $0.decode(0, as: Bool.self), try $0.decode(1, as: Bool.self)]
            }, try conn.query("SELECT stream FROM eventline.snapshots ORDER BY stream").rows.map { try $0.decode(0, as: String.self) })
        }
        #expect(rows.0 == [true, true])
        #expect(rows.1 == ["customer-18"])
        // Again: the same event, nothing new. Never had a key: not known, unless asked.
        let again = try await store.forget(subject: "customer-17")
        #expect(again.wasAlreadyAppended && again.position == 4)
        let unknown = await #expect(throws: EventStoreError.self) { try await store.forget(subject: "nobody") }
        #expect(unknown?.code == .subjectNotFound)
        #expect(try await !store.forget(subject: "nobody", evenIfUnknown: true).wasAlreadyAppended)
        // No personal data of a forgotten subject is stored again, by any store.
        for writer in [store, other] {
            let refused = await #expect(throws: EventStoreError.self) { try await writer.append(to: "customer-17", events: [personalEvent()]) }
            #expect(refused?.code == .subjectForgotten)
            let never = await #expect(throws: EventStoreError.self) { try await writer.append(to: "nobody-1", events: [personalEvent("nobody")]) }
            #expect(never?.code == .subjectForgotten)
        }
        // Events without its personal data still go to its stream.
        try await store.append(to: "customer-17", events: [NewEvent(type: "Noted", data: Data("{}".utf8))])
        #expect(try await store.headPosition() == 6)
        // No new snapshot of its streams is kept: a state folded before the forget may hold its data.
        try await other.saveSnapshot("customer-17b", Snapshot(version: 1, stateVersion: 1, data: Data(#"{"email":"ada@example.com"}"#.utf8)))
        #expect(try await store.loadSnapshot("customer-17b") == nil)
        try await store.saveSnapshot("customer-18", Snapshot(version: 2, stateVersion: 1, data: Data("{}".utf8)))
        #expect(try await store.loadSnapshot("customer-18")?.version == 2)
    }

    @Test("an archive carries ciphertext: exported before a forget and imported after it, the subject's fields read null, the others' whole")
    func archives() async throws {
        let source = try await TestStore.make("personal-export")
        defer { Task { await source.store.shutdown() } }
        try await source.store.append(to: "customer-17", events: [personalEvent()])
        try await source.store.append(to: "customer-18", events: [personalEvent("customer-18")])
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("personal-\(UUID()).lz4").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(try await EventArchive.export(databaseURL: source.url, to: file) == 2)
        let archived = String(decoding: try LZ4Frame.decompress(try Data(contentsOf: URL(fileURLWithPath: file))), as: UTF8.self)
        #expect(!archived.contains("ada@example.com") && archived.contains("eventline:sealed:v1:") && archived.contains("London"))
        try await source.store.forget(subject: "customer-17")

        // Restored elsewhere with the keys as the database holds them now.
        let target = try await TestStore.make("personal-import")
        defer { Task { await target.store.shutdown() } }
        #expect(try await EventArchive.import(databaseURL: target.url, from: file) == 2)
        let keys = try await source.sql { conn in
            try conn.query("SELECT subject, wrapped_key, master_key_id, forgotten_at IS NOT NULL FROM eventline.subject_keys ORDER BY subject").rows.map {
                (try $0.decode(0, as: String.self), try $0.decode(1, as: Data?.self), try $0.decode(2, as: String?.self))
            }
        }
        try await target.sql { conn in
            for (subject, wrapped, id) in keys {
                try conn.execute("""
                    INSERT INTO eventline.subject_keys (subject, wrapped_key, master_key_id, forgotten_at)
                    VALUES (\(subject), \(wrapped), \(id), CASE WHEN \(wrapped)::bytea IS NULL THEN now() END)
                    """)
            }
        }
        let events = try await target.store.readAll()
        #expect(try object(events[0].data)["email"] is NSNull)
        #expect(try object(events[1].data)["email"] as? String == "ada@example.com")
    }

    @Test("bad personal-data declarations, and personal data without a master key, are refused and write nothing")
    func badInput() async throws {
        let test = try await TestStore.make("personal-bad")
        let store = test.store
        defer { Task { await store.shutdown() } }
        let data = Data(#"{"email":"a@b.c","active":true,"tags":["x"],"none":null,"address":{"street":"s"}}"#.utf8)
        let cases: [(PersonalData, String)] = [
            (PersonalData(subject: "s-1", fields: ["phone"]), "phone is not in the event's data"),
            (PersonalData(subject: "s-1", fields: ["address.zip"]), "address.zip is not in the event's data"),
            (PersonalData(subject: "s-1", fields: []), "a subject needs personal fields"),
            (PersonalData(subject: "", fields: ["email"]), "the subject is empty"),
            (PersonalData(subject: "s\u{1}", fields: ["email"]), "control character"),
            (PersonalData(subject: "s-1", fields: ["active"]), "must be a string, a number or an object"),
            (PersonalData(subject: "s-1", fields: ["tags"]), "must be a string, a number or an object"),
            (PersonalData(subject: "s-1", fields: ["none"]), "must be a string, a number or an object"),
            (PersonalData(subject: "s-1", fields: ["email", "email"]), "named twice"),
            (PersonalData(subject: "s-1", fields: ["address", "address.street"]), "overlap"),
            (PersonalData(subject: "s-1", fields: ["address..street"]), "is not a path"),
        ]
        for (personal, message) in cases {
            let error = await #expect(throws: EventStoreError.self) {
                try await store.append(to: "s-1", events: [NewEvent(type: "T", data: data, personal: personal)])
            }
            #expect(error?.code == .invalidEvent, "\(personal)")
            #expect(error?.message.contains(message) == true, "\(personal): \(error?.message ?? "")")
        }
        let reserved = await #expect(throws: EventStoreError.self) {
            try await store.append(to: "s-1", events: [NewEvent(type: "T", data: data, metadata: Data(#"{"personal":{"subject":"x","fields":["email"]}}"#.utf8))])
        }
        #expect(reserved?.message.contains("reserved") == true)
        for (stream, type) in [("s-1", "$StreamDeleted"), ("$subjects-forgotten", "T"), ("s-1", "SubjectForgotten")] {
            let platform = await #expect(throws: EventStoreError.self) {
                try await store.append(to: stream, events: [NewEvent(type: type, data: Data("{}".utf8))])
            }
            #expect(platform?.code == .invalidEvent || platform?.code == .invalidStreamName)
        }
        // A type the domain declares is sealed as declared, whatever the append says.
        let declaring = EventStore({ var c = store.configuration; c.personalData.declare("AccountOpened", fields: ["owner"]); return c }())
        defer { Task { await declaring.shutdown() } }
        let other = await #expect(throws: EventStoreError.self) {
            try await declaring.append(to: "account-1", events: [NewEvent(
                type: "AccountOpened", data: Data(#"{"owner":"Ada","currency":"EUR"}"#.utf8),
                personal: PersonalData(subject: "x", fields: ["currency"]))])
        }
        #expect(other?.message.contains("the domain declares the personal data of AccountOpened") == true, "\(other?.message ?? "")")
        // Without a master key: refused, never stored in plain text.
        let keyless = EventStore({ var c = store.configuration; c.masterKey = nil; return c }())
        defer { Task { await keyless.shutdown() } }
        let noKey = await #expect(throws: EventStoreError.self) {
            try await keyless.append(to: "s-1", events: [NewEvent(type: "T", data: data, personal: PersonalData(subject: "s-1", fields: ["email"]))])
        }
        #expect(noKey?.code == .masterKey)
        #expect(noKey?.message.contains("EVENTLINE_MASTER_KEY") == true)
        #expect(try await store.headPosition() == 0)
        let keys = try await test.sql { conn in try conn.query("SELECT count(*) FROM eventline.subject_keys").first!.decode(0, as: Int.self) }
        #expect(keys == 0)
        // Events that hold personal data cannot be read without the key, nor with another one.
        try await store.append(to: "s-1", events: [NewEvent(type: "T", data: data, personal: PersonalData(subject: "s-1", fields: ["email"]))])
        let unreadable = await #expect(throws: EventStoreError.self) { try await keyless.readStream("s-1") }
        #expect(unreadable?.code == .masterKey)
        let wrong = EventStore({ var c = store.configuration; c.masterKey = MasterKey.generate(); return c }())
        defer { Task { await wrong.shutdown() } }
        let mismatch = await #expect(throws: EventStoreError.self) { try await wrong.readAll() }
        #expect(mismatch?.code == .masterKey)
        #expect(mismatch?.message.contains(TestMasterKey.key.id) == true)
    }

    @Test("two forgets at once, and a forget during concurrent appends for the same subject: no plaintext is left, nothing else is lost")
    func forgetUnderLoad() async throws {
        let test = try await TestStore.make("personal-race")
        let store = test.store
        let second = test.secondStore()
        defer { Task { await store.shutdown(); await second.shutdown() } }
        try await store.append(to: "customer-1", events: [personalEvent("customer-1")])
        let race = ForgetRace()
        try await withThrowingTaskGroup(of: Void.self) { group in
            // Eight appenders over two stores (two log writers): half for the subject being
            // forgotten, half for another.
            for appender in 0..<8 {
                let writer = appender % 2 == 0 ? store : second
                let subject = appender < 4 ? "customer-1" : "customer-2"
                group.addTask {
                    // The forgotten subject's appenders go on until they are refused; the
                    // other's until the forget has begun.
                    for sent in 1...2000 {
                        if subject == "customer-2", sent > 40, race.forgetting.load(ordering: .relaxed) { return }
                        do {
                            try await writer.append(to: "\(subject)-\(appender)", events: [personalEvent(subject)])
                            race.outcomes.withLock { $0.committed["\(subject)-\(appender)", default: 0] += 1 }
                        } catch let error as EventStoreError where error.code == .subjectForgotten {
                            race.outcomes.withLock { $0.refused += 1 }
                            return
                        }
                    }
                }
            }
            group.addTask {
                try await Task.sleep(for: .milliseconds(150))
                race.forgetting.store(true, ordering: .relaxed)
                // Two forgets at once, through both log writers.
                async let one = store.forget(subject: "customer-1")
                async let two = second.forget(subject: "customer-1")
                let results = try await [one, two]
                #expect(results.filter { !$0.wasAlreadyAppended }.count == 1)
                #expect(Set(results.map(\.position)).count == 1)
            }
            try await group.waitForAll()
        }
        let (committed, refused) = race.outcomes.withLock { ($0.committed, $0.refused) }
        #expect(refused == 4, "every appender of the forgotten subject was refused in the end")
        // Exactly one audit event; every event of the subject reads erased; every event of the
        // other reads whole, and none was lost.
        let log = try await store.readAll(limit: 10_000)
        #expect(log.filter { $0.type == "SubjectForgotten" }.count == 1)
        for (stream, count) in committed {
            #expect(log.filter { $0.stream == stream }.count == count, "\(stream)")
        }
        for event in log where event.type == "CustomerRegistered" {
            let email = try object(event.data)["email"]
            if event.stream.hasPrefix("customer-2") {
                #expect(email as? String == "ada@example.com")
            } else {
                #expect(email is NSNull, "\(event.stream) v\(event.version) at \(event.position)")
            }
        }
        let stored = try await storedText(test)
        #expect(!stored.contains("ada@example.com") && !stored.contains("Analytical"))
    }
}

/// What the appenders of a forget race share.
private final class ForgetRace: Sendable {
    let outcomes = Mutex<(committed: [String: Int], refused: Int)>(([:], 0))
    let forgetting = Atomic<Bool>(false)
}

/// Known-answer tests need a fixed nonce, which only the package may choose.
enum AESGCMVectors {
    static func seal(_ plaintext: [UInt8], key: [UInt8], nonce: [UInt8], aad: [UInt8]) -> [UInt8] {
        AESGCM.seal(plaintext, key: key, nonce: nonce, authenticating: aad)
    }
}

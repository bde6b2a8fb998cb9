import EventStore
import EventlineTestSupport
import Foundation
import LZ4
import PostgresClient
import Testing

/// A digest of every event of the log, in position order (data decompressed, times to the microsecond).
private func logDigest(_ store: EventStore) async throws -> (count: Int, digest: [UInt8]) {
    var bytes: [UInt8] = []
    var count = 0
    var after = 0
    while true {
        let page = try await store.readAll(after: after, limit: 1000)
        guard let last = page.last else { break }
        for event in page {
            let micros = Int64((event.recordedAt.timeIntervalSince1970 * 1_000_000).rounded())
            bytes += Array("\(event.position)|\(event.stream)|\(event.version)|\(event.id)|\(event.type)|\(micros)|".utf8)
            bytes += event.data
            bytes += Array("|".utf8) + event.metadata + [0x0A]
        }
        count += page.count
        after = last.position
    }
    return (count, SHA256.hash(bytes))
}

private func temporaryFile(_ name: String) -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("eventline-\(UUID().uuidString)-\(name)").path
}

private func archive(_ lines: [String]) throws -> Data {
    Data(try LZ4Frame.compress(Array((lines.joined(separator: "\n") + "\n").utf8)))
}

private func line(_ position: Int, stream: String = "acc-1", version: Int? = nil, data: String = #"{"n":1}"#) -> String {
    #"{"position":\#(position),"stream":"\#(stream)","version":\#(version ?? position),"id":"\#(UUID().uuidString)","type":"Noted","data":\#(data),"metadata":{},"recordedAt":"2026-01-02T03:04:05.123456Z"}"#
}

@Suite("Archives: export and import", .serialized)
struct ArchiveTests {
    @Test("100,000 events exported, then imported into a fresh database, give the same log; lz4 -dc reads the file")
    func roundTrip() async throws {
        let source = try await TestStore.make("archivesrc")
        // 1,000 appends of 100 events over 250 streams, some data large enough to be compressed.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    for round in 0..<125 {
                        let index = worker * 125 + round
                        let events = (0..<100).map { n in
                            NewEvent(
                                type: n % 10 == 0 ? "Big" : "Small",
                                data: Data((n % 10 == 0 ? #"{"text":"\#(String(repeating: "é-\(n) ", count: 120))"}"# : #"{"n":\#(n),"f":1.50,"big":9223372036854775807}"#).utf8),
                                metadata: Data(#"{"worker":\#(worker)}"#.utf8))
                        }
                        _ = try await source.store.append(to: "acct-\(index % 250)", events: events)
                    }
                }
            }
            try await group.waitForAll()
        }
        let file = temporaryFile("log.lz4")
        defer { try? FileManager.default.removeItem(atPath: file) }
        let exported = try await EventArchive.export(databaseURL: source.url, to: file)
        #expect(exported == 100_000)
        #expect(!FileManager.default.fileExists(atPath: file + ".partial"))

        // The lz4 command line tool reads it: one JSON object per line with every field.
        let decompressed = temporaryFile("log.ndjson")
        defer { try? FileManager.default.removeItem(atPath: decompressed) }
        let lz4 = try await runProgram("/usr/bin/env", ["lz4", "-d", "-f", "-q", file, decompressed], timeout: 120)
        #expect(lz4.status == 0, "\(lz4.stderr)")
        let text = try String(contentsOfFile: decompressed, encoding: .utf8)
        let lines = text.split(separator: "\n")
        #expect(lines.count == 100_000)
        let first = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any] ?? [:]
        #expect(Set(first.keys) == ["position", "stream", "version", "id", "type", "data", "metadata", "recordedAt"])
        #expect(first["position"] as? Int == 1)

        let target = try await TestStore.make("archivedst")
        let imported = try await EventArchive.import(databaseURL: target.url, from: file)
        #expect(imported == 100_000)
        let (sourceCount, sourceDigest) = try await logDigest(source.store)
        let (targetCount, targetDigest) = try await logDigest(target.store)
        #expect(sourceCount == 100_000 && targetCount == 100_000)
        #expect(sourceDigest == targetDigest)
        #expect(try await target.store.headPosition() == 100_000)
        // The imported store takes appends after the imported head.
        let next = try await target.store.append(to: "acct-0", expected: .exact(400), events: [NewEvent(type: "Small", data: Data("{}".utf8))])
        #expect(next.position == 100_001)

        // A file compressed by the lz4 tool imports too (here: the first 1,000 lines).
        let head = temporaryFile("head.ndjson")
        let headArchive = temporaryFile("head.lz4")
        defer {
            try? FileManager.default.removeItem(atPath: head)
            try? FileManager.default.removeItem(atPath: headArchive)
        }
        try (lines.prefix(1000).joined(separator: "\n") + "\n").write(toFile: head, atomically: true, encoding: .utf8)
        let compress = try await runProgram("/usr/bin/env", ["lz4", "-f", "-q", head, headArchive])
        #expect(compress.status == 0, "\(compress.stderr)")
        let third = try await TestStore.make("archivecli")
        #expect(try await EventArchive.import(databaseURL: third.url, from: headArchive) == 1000)
        #expect(try await third.store.headPosition() == 1000)
    }

    @Test("a range exports only its positions; importing it into a store whose head precedes it works")
    func ranges() async throws {
        let source = try await TestStore.make("archiverange")
        for n in 1...10 {
            _ = try await source.store.append(to: "acc-\(n % 3)", events: [NewEvent(type: "Noted", data: Data(#"{"n":\#(n)}"#.utf8))])
        }
        let first = temporaryFile("first.lz4")
        let second = temporaryFile("second.lz4")
        defer {
            try? FileManager.default.removeItem(atPath: first)
            try? FileManager.default.removeItem(atPath: second)
        }
        #expect(try await EventArchive.export(databaseURL: source.url, to: first, to: 4) == 4)
        #expect(try await EventArchive.export(databaseURL: source.url, to: second, from: 5) == 6)
        let target = try await TestStore.make("archiverange2")
        // The second part cannot come first: it leaves a gap.
        await #expect(throws: ArchiveError.self) { try await EventArchive.import(databaseURL: target.url, from: second) }
        #expect(try await EventArchive.import(databaseURL: target.url, from: first) == 4)
        // The first part again: its positions are in the store already.
        await #expect(throws: ArchiveError.self) { try await EventArchive.import(databaseURL: target.url, from: first) }
        #expect(try await EventArchive.import(databaseURL: target.url, from: second) == 6)
        #expect(try await logDigest(source.store).digest == logDigest(target.store).digest)
    }

    @Test("gaps, duplicates, bad lines, broken stream versions, corrupt and truncated frames are refused with nothing loaded")
    func refusals() async throws {
        let target = try await TestStore.make("archivebad")
        _ = try await target.store.append(to: "acc-1", events: [NewEvent(type: "Noted", data: Data("{}".utf8))])
        let good = try archive((2...3000).map { line($0) })
        var corrupt = good
        corrupt[corrupt.count / 2] ^= 0xFF
        let cases: [(String, Data, String)] = [
            ("gap", try archive([line(2), line(3), line(5, version: 4)]), "gap"),
            ("duplicate", try archive([line(2), line(3), line(3)]), "duplicate"),
            ("already there", try archive([line(1), line(2)]), "already in the store"),
            ("bad JSON", try archive([line(2), #"{"position":3,"#]), "line 2"),
            ("unknown field", try archive([line(2).replacingOccurrences(of: #""type""#, with: #""kind""#)]), "unknown field kind"),
            ("bad id", try archive([line(2).replacingOccurrences(of: #""id":""#, with: #""id":"x"#)]), "not a UUID"),
            ("zone-less time", try archive([line(2).replacingOccurrences(of: "123456Z", with: "123456")]), "recordedAt"),
            ("stream version gap", try archive([line(2, stream: "other-1", version: 2)]), "previous version"),
            ("repeated event id", try archive([
                #"{"position":2,"stream":"acc-1","version":2,"id":"00000000-0000-4000-8000-000000000001","type":"Noted","data":{},"metadata":{},"recordedAt":"2026-01-02T03:04:05Z"}"#,
                #"{"position":3,"stream":"acc-1","version":3,"id":"00000000-0000-4000-8000-000000000001","type":"Noted","data":{},"metadata":{},"recordedAt":"2026-01-02T03:04:05Z"}"#,
            ]), "event id"),
            ("corrupt frame", corrupt, "LZ4"),
            ("truncated frame", good.prefix(good.count / 2), "truncated"),
            ("not LZ4 at all", Data(line(2).utf8), "LZ4"),
        ]
        for (name, bytes, expected) in cases {
            let file = temporaryFile("bad.lz4")
            defer { try? FileManager.default.removeItem(atPath: file) }
            try bytes.write(to: URL(fileURLWithPath: file))
            let error = await #expect(throws: ArchiveError.self, "\(name)") { try await EventArchive.import(databaseURL: target.url, from: file) }
            #expect(error?.description.contains(expected) == true, "\(name): \(error?.description ?? "")")
            #expect(try await target.store.headPosition() == 1, "\(name)")
            let count = try await target.sql { conn in try conn.query("SELECT count(*) FROM eventline.events").first!.decode(0, as: Int.self) }
            #expect(count == 1, "\(name)")
        }
        // The good archive still loads afterwards.
        let file = temporaryFile("good.lz4")
        defer { try? FileManager.default.removeItem(atPath: file) }
        try good.write(to: URL(fileURLWithPath: file))
        #expect(try await EventArchive.import(databaseURL: target.url, from: file) == 2999)
    }
}

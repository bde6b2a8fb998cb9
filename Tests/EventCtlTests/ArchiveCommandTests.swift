import EventStore
import EventlineTestSupport
import Foundation
import Testing

@Suite("eventctl export and import", .serialized)
struct ArchiveCommandTests {
    @Test("export then import copies the log; a refused archive is one line, a non-zero exit, and loads nothing")
    func exportImport() async throws {
        let source = try await TestStore.make("cliexport")
        for n in 1...25 {
            _ = try await source.store.append(to: "account-\(n % 4)", events: [NewEvent(type: "Noted", data: Data(#"{"n":\#(n)}"#.utf8))])
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("eventline-cli-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/log.lz4"
        var output = try await EventCtlTests.eventctl(["export", file], url: source.url)
        #expect(output.status == 0, "\(output.stderr)")
        #expect(output.stdout.contains("exported 25 events"))

        let target = try await TestStore.make("cliimport")
        output = try await EventCtlTests.eventctl(["import", file], url: target.url)
        #expect(output.status == 0, "\(output.stderr)")
        #expect(output.stdout.contains("imported 25 events"))
        #expect(try await target.store.headPosition() == 25)
        #expect(try await target.store.readStream("account-1").map(\.data) == source.store.readStream("account-1").map(\.data))

        // The same archive again: its positions are in the store; nothing changes.
        output = try await EventCtlTests.eventctl(["import", file], url: target.url)
        EventCtlTests.expectOneLineError(output, containing: "nothing was loaded")
        #expect(try await target.store.headPosition() == 25)

        // A truncated copy into an empty store: refused, nothing loaded.
        let bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        let truncated = directory + "/truncated.lz4"
        try bytes.prefix(bytes.count - 9).write(to: URL(fileURLWithPath: truncated))
        let empty = try await TestStore.make("cliimport2")
        output = try await EventCtlTests.eventctl(["import", truncated], url: empty.url)
        EventCtlTests.expectOneLineError(output, containing: "truncated")
        #expect(try await empty.store.headPosition() == 0)

        EventCtlTests.expectOneLineError(try await EventCtlTests.eventctl(["import", directory + "/missing.lz4"], url: empty.url), containing: "cannot read")
        EventCtlTests.expectOneLineError(try await EventCtlTests.eventctl(["export", file, "--from", "0"], url: source.url), containing: "--from")
        EventCtlTests.expectOneLineError(try await EventCtlTests.eventctl(["export", file, "--from", "5", "--to", "2"], url: source.url), containing: "--to")
    }
}

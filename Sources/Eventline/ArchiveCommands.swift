import ArgumentParser
import EventStore
import Foundation
import Synchronization

struct Export: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write the log (or a range of it) to an LZ4 file of NDJSON, one event per line (lz4 -dc FILE reads it).")

    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The archive to write (replaced if it exists; written beside, then renamed).") var file: String
    @Option(help: "First position to export (default 1).") var from: Int = 1
    @Option(help: "Last position to export (default: the head when the export starts).") var to: Int?

    func validate() throws {
        guard from >= 1 else { throw ValidationError("--from must be a position ≥ 1") }
        if let to, to < from { throw ValidationError("--to must not be before --from") }
    }

    func run() async throws {
        try await CLI.run {
            let progress = ProgressLine(verb: "exported")
            let started = ContinuousClock.now
            let count = try await EventArchive.export(
                databaseURL: try database.databaseURL, to: file, from: from, to: to, progress: { progress.update($0) })
            progress.finish()
            print("exported \(count) events to \(file) in \(ProgressLine.took(ContinuousClock.now - started))")
        }
    }
}

struct Import: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load an archive written by export, keeping positions, in one transaction: all or nothing.",
        discussion: """
            The first event must follow the store's head, and each next one the one before. A gap, \
            a duplicate, an invalid line or a corrupt or truncated file loads nothing. Appends wait \
            while an import runs.
            """)

    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The archive to load.") var file: String

    func run() async throws {
        try await CLI.run {
            guard FileManager.default.isReadableFile(atPath: file) else { throw CLIError("cannot read \(file)") }
            let progress = ProgressLine(verb: "loaded")
            let started = ContinuousClock.now
            let count: Int
            do {
                count = try await EventArchive.import(databaseURL: try database.databaseURL, from: file, progress: { progress.update($0) })
            } catch let error as ArchiveError {
                progress.finish()
                throw CLIError("\(file): \(error.description); nothing was loaded")
            }
            progress.finish()
            print("imported \(count) events from \(file) in \(ProgressLine.took(ContinuousClock.now - started))")
        }
    }
}

/// Progress on stderr: on a terminal, one line redrawn in place with a bar (events, rate, time
/// left when the end is known); otherwise a JSON object per line every few seconds, for logs
/// and scripts (`{"progress":…,"events":…,"position":…,"target":…,"percent":…,"eventsPerSecond":…,"etaSeconds":…}`).
final class ProgressLine: Sendable {
    private struct State {
        var started = ContinuousClock.now
        var lastPrinted: ContinuousClock.Instant? = nil
        var drawn = false
    }

    let verb: String
    private let terminal = isatty(STDERR_FILENO) == 1
    private let state = Mutex(State())

    init(verb: String) {
        self.verb = verb
    }

    func update(_ progress: ArchiveProgress) {
        update(events: progress.events, position: progress.position, target: progress.target)
    }

    func update(events: Int, position: Int, target: Int?, note: String? = nil) {
        let now = ContinuousClock.now
        let line = state.withLock { state -> String? in
            let interval: Duration = terminal ? .milliseconds(200) : .seconds(2)
            if let last = state.lastPrinted, now - last < interval { return nil }
            state.lastPrinted = now
            state.drawn = true
            let elapsed = (now - state.started).inSeconds
            let rate = elapsed > 0 ? Double(events) / elapsed : 0
            var share: Double? = nil
            var eta: Int? = nil
            if let target, target > 0 {
                share = min(1, Double(position) / Double(target))
                if elapsed > 0, position > 0, share! < 1 {
                    // Positions advance at the rate events do, near enough.
                    eta = Int(Double(target - position) / (Double(position) / elapsed) + 0.5)
                }
            }
            guard terminal else {
                var fields: [String: JSONValue] = [
                    "progress": .string(verb.hasSuffix(":") ? String(verb.dropLast()) : verb), "events": .integer(events),
                    "position": .integer(position), "eventsPerSecond": .integer(Int(rate)),
                ]
                if let target { fields["target"] = .integer(target) }
                if let share { fields["percent"] = .integer(Int(share * 100)) }
                if let eta { fields["etaSeconds"] = .integer(eta) }
                if let note { fields["phase"] = .string(note) }
                return String(decoding: JSONValue.jsonData(fields), as: UTF8.self)
            }
            var text = "\(verb) "
            if let share {
                let filled = Int(share * 24)
                text += "[" + String(repeating: "#", count: filled) + String(repeating: "-", count: 24 - filled) + "] \(Int(share * 100))%  "
            }
            text += "\(events) events  \(Int(rate)) events/s"
            if let eta { text += "  \(eta) s left" }
            if let note { text += "  \(note)" }
            return text
        }
        guard let line else { return }
        FileHandle.standardError.write(Data((terminal ? "\r\u{1B}[K" + line : line + "\n").utf8))
    }

    /// Ends the redrawn line on a terminal.
    func finish() {
        let drawn = state.withLock { $0.drawn }
        if terminal && drawn { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
    }

    /// `1.23 s`.
    static func took(_ duration: Duration) -> String {
        String(format: "%.2f s", duration.inSeconds)
    }
}

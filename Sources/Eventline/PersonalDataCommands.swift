import ArgumentParser
import EventStore
import Foundation

/// `forget SUBJECT`: crypto-shredding from the command line.
struct Forget: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Forget a subject: destroy its key, so its personal data reads as null everywhere, for good.",
        discussion: """
            Appends SubjectForgotten (naming the subject, nothing else) in the same transaction. Projections \
            with a forget: handler drop what they hold of it. Backups taken before hold the key: see the README.
            """)
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The subject (for the bank, account-<id>).") var subject: String
    @Flag(name: .customLong("even-if-unknown"), help: "Forget a subject that has no personal data yet (its data will be refused).")
    var evenIfUnknown = false

    func validate() throws {
        if let problem = PersonalData.subjectProblem(subject) { throw ValidationError(problem) }
    }

    func run() async throws {
        try await CLI.run {
            let store = try database.openStore()
            let result: AppendResult
            do {
                result = try await store.forget(subject: subject, evenIfUnknown: evenIfUnknown)
            } catch {
                await store.shutdown()
                throw error
            }
            await store.shutdown()
            let note = result.wasAlreadyAppended ? " (it was already forgotten)" : ""
            print("forgot subject \(subject): SubjectForgotten at position \(result.position)\(note)")
        }
    }
}

/// `delete-stream STREAM`: a tombstone from the command line.
struct DeleteStream: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete-stream",
        abstract: "Delete a stream for good: a tombstone; its reads and appends are refused from then on.")
    @OptionGroup var database: DatabaseOptions
    @Argument(help: "The stream, category-id.") var stream: String
    @Option(name: .customLong("expected-version"), help: "any, no-stream, exists, or the stream's current version.")
    var expectedVersion: String = "any"

    func validate() throws {
        if ExpectedVersion(parsing: expectedVersion) == nil {
            throw ValidationError("--expected-version must be any, no-stream, exists or a number ≥ 0, not '\(expectedVersion)'")
        }
    }

    func run() async throws {
        try await CLI.run {
            let store = try database.openStore()
            let result: AppendResult
            do {
                result = try await store.deleteStream(stream, expected: ExpectedVersion(parsing: expectedVersion)!)
            } catch {
                await store.shutdown()
                throw error
            }
            await store.shutdown()
            let note = result.wasAlreadyAppended ? " (it was already deleted)" : ""
            print("deleted \(result.stream): tombstone at version \(result.version), position \(result.position)\(note)")
        }
    }
}

/// `master-key generate|rotate`.
struct MasterKeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "master-key", abstract: "Make a master key, or re-wrap every subject's key under a new one.",
        subcommands: [Generate.self, Rotate.self])

    struct Generate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a new random master key (base64), for EVENTLINE_MASTER_KEY.")

        func run() async throws {
            print(MasterKey.generate().base64)
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Re-wrap every subject's key under a new master key (the current one from EVENTLINE_MASTER_KEY or _FILE).",
            discussion: """
                A thousand keys per transaction; the encrypted data does not change. Then restart every process with the new key, and \
                run this again: it re-wraps any key a process still on the old key made meanwhile (and none twice).
                """)
        @OptionGroup var database: DatabaseOptions
        @Option(name: .customLong("new-key-file"), help: "A file holding the new master key (base64, or the 32 bytes).")
        var newKeyFile: String

        func run() async throws {
            try await CLI.run {
                guard let contents = FileManager.default.contents(atPath: newKeyFile) else { throw CLIError("cannot read \(newKeyFile)") }
                let newKey: MasterKey
                do {
                    newKey = contents.count == 32 ? try MasterKey(bytes: Array(contents)) : try MasterKey(base64: String(decoding: contents, as: UTF8.self))
                } catch {
                    throw CLIError("\(newKeyFile) holds neither 32 bytes nor their base64 (\(error))")
                }
                guard try EnvironmentVariables.masterKey() != nil else {
                    throw CLIError("the current master key is needed: set EVENTLINE_MASTER_KEY or EVENTLINE_MASTER_KEY_FILE")
                }
                let store = try database.openStore()
                let count: Int
                do {
                    count = try await store.rotateMasterKey(to: newKey)
                } catch {
                    await store.shutdown()
                    throw error
                }
                await store.shutdown()
                print("re-wrapped \(count) subject key\(count == 1 ? "" : "s") under master key \(newKey.id); restart every process with the new key, then run this again")
            }
        }
    }
}

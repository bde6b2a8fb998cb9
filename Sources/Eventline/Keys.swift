import ArgumentParser
import EventStore
import Foundation

struct Keys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage API keys (once any key exists, the HTTP API requires one).",
        subcommands: [Create.self, List.self, Revoke.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a key and print it once; only its hash is stored.")
        @OptionGroup var database: DatabaseOptions
        @Option(help: "read, commands (read + commands + appends) or admin (everything, metrics too).") var scope: String
        @Option(help: "A label for people.") var name: String = ""

        func validate() throws {
            if APIKeyScope(rawValue: scope) == nil { throw ValidationError("--scope must be read, commands or admin, not '\(scope)'") }
        }

        func run() async throws {
            try await CLI.run {
                let store = try database.openStore()
                let (key, record) = try await store.createAPIKey(scope: APIKeyScope(rawValue: scope)!, name: name)
                await store.shutdown()
                print(key)
                FileHandle.standardError.write(Data("created key \(record.id) with scope \(record.scope.rawValue); it is not shown again\n".utf8))
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List keys (never their secrets).")
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            try await CLI.run {
                let store = try database.openStore()
                let keys = try await store.listAPIKeys()
                await store.shutdown()
                print("id        scope     created                   revoked                   name")
                for key in keys {
                    let revoked = key.revokedAt.map(EventPrinter.timestamp) ?? "-"
                    print("\(key.id)  \(key.scope.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0))  \(EventPrinter.timestamp(key.createdAt))  \(revoked.padding(toLength: 24, withPad: " ", startingAt: 0))  \(key.name)")
                }
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a key by its id (servers stop accepting it within seconds).")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The key's id (the part after el_).") var id: String

        func run() async throws {
            try await CLI.run {
                let store = try database.openStore()
                let revoked = try await store.revokeAPIKey(id: id)
                let left = try? await store.apiKeyState().keys.count
                await store.shutdown()
                guard revoked else { throw CLIError("no key \(id) in force") }
                print("revoked \(id)")
                if left == 0 {
                    // The server stays closed; say what that means before someone finds out.
                    print("no key is in force now: servers refuse every request but /health/* until a key is created (\(CLI.name) keys create), or EVENTLINE_AUTH=off opens them")
                }
            }
        }
    }
}

import ArgumentParser
import Foundation

/// `eventctl`: the one executable of Eventline.
@main
struct EventCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eventctl",
        abstract: "Operate an Eventline event store.",
        discussion: """
            Every command that touches a database takes --database-url or EVENTLINE_DATABASE_URL \
            (any libpq connection string: postgres:// URL, key=value, several hosts).
            Exit codes: 0 success, 1 error, 3 version conflict, 64 bad arguments.
            """,
        subcommands: [
            Serve.self, Project.self, Projections.self, React.self, Replay.self, Migrate.self, Append.self, Read.self, Tail.self,
            Status.self, Keys.self, AnalystRole.self, Export.self, Import.self, Dev.self,
        ]
    )

    /// Parses and runs, printing any argument error as one line (not the usage text) on stderr.
    static func main() async {
        // Before any logger exists: a logger keeps the handler it was made with, so every line
        // of every command follows EVENTLINE_LOG_FORMAT.
        Logs.bootstrap()
        EnvironmentVariables.warnAboutUnknown(logger: Logs.logger("eventctl"))
        do {
            var command = try parseAsRoot()
            if var command = command as? any AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))  // --help and --version
                Foundation.exit(0)
            }
            let message = message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            FileHandle.standardError.write(Data("eventctl: error: \(message) (see eventctl --help)\n".utf8))
            Foundation.exit(code.rawValue)
        }
    }
}

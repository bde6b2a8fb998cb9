import ArgumentParser
import Foundation

/// The command set of a service built on Eventline (`eventctl` for the sample bank), named
/// after its domain.
struct EventlineCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
        commandName: Domain.current.name,
        abstract: Domain.current.abstract,
        discussion: """
            Every command that touches a database takes --database-url or EVENTLINE_DATABASE_URL \
            (any libpq connection string: postgres:// URL, key=value, several hosts).
            Exit codes: 0 success, 1 error, 3 version conflict, 64 bad arguments.
            """,
        subcommands: [
            Serve.self, Project.self, Projections.self, React.self, Reactors.self, Replay.self, Migrate.self, Append.self, Read.self, Tail.self,
            Status.self, Keys.self, ConsumerGroups.self, Deliver.self, AnalystRole.self, Export.self, Import.self, Dev.self,
            Forget.self, DeleteStream.self, MasterKeyCommand.self,
        ]
        )
    }

    /// Parses and runs, printing any argument error as one line (not the usage text) on stderr.
    static func main() async {
        // Before any logger exists: a logger keeps the handler it was made with, so every line
        // of every command follows EVENTLINE_LOG_FORMAT.
        Logs.bootstrap()
        EnvironmentVariables.warnAboutUnknown(logger: Logs.logger(CLI.name))
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
            FileHandle.standardError.write(Data("\(CLI.name): error: \(message) (see \(CLI.name) --help)\n".utf8))
            Foundation.exit(code.rawValue)
        }
    }
}

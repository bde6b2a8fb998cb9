import ArgumentParser

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
            Migrate.self, Append.self, Read.self, Tail.self, Status.self, Dev.self,
        ]
    )
}

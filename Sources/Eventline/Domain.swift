@_exported import Aggregates
@_exported import EventStore
import Foundation
@_exported import HTTPServer
import Logging
@_exported import Projector
@_exported import Reactors
import Synchronization

/// A domain served by Eventline: its aggregates, reactors, upcasters and projections
/// directory. A service's `@main` builds one and hands it to `Eventline.main`:
///
/// ```swift
/// import Eventline
///
/// @main
/// struct Warehouse {
///     static func main() async {
///         var domain = Domain(name: "warehouse")
///         domain.register(Item.self)
///         await Eventline.main(domain)
///     }
/// }
/// ```
public struct Domain: Sendable {
    /// The executable's name, as `--help` and error messages show it.
    public var name: String
    /// One line for `--help`.
    public var abstract: String
    /// Where the YAML projections are, relative to the working directory, unless
    /// `--projections` or `EVENTLINE_PROJECTIONS_DIR` says otherwise.
    public var projectionsDirectory: String
    /// Every registered aggregate's upcasters, plus any registered directly (for events no
    /// aggregate reads, such as those only projections follow).
    public private(set) var upcasters = EventUpcasters()

    private var aggregates: [@Sendable (EventStore, Logger, inout CommandRegistry) -> Void] = []
    private var reactorFactories: [@Sendable (EventStore, Logger) -> any Reactor] = []
    /// The registered aggregates' categories, in registration order.
    public private(set) var categories: [String] = []
    /// What `dev` prints under "Try:" once it serves, with `{base}` standing for the server's
    /// address (for example a curl command that sends one of the domain's commands).
    public var devExamples: [String] = []

    public init(name: String, abstract: String? = nil, projectionsDirectory: String = "Projections") {
        self.name = name
        self.abstract = abstract ?? "Run the \(name) service on Eventline: serve its commands, project, react, replay, operate the log."
        self.projectionsDirectory = projectionsDirectory
    }

    /// Accepts commands for `A` at `POST /v1/commands/<A.category>/{id}`, and reads its events
    /// through its upcasters everywhere.
    public mutating func register<A: Aggregate>(_ aggregate: A.Type) {
        precondition(!categories.contains(A.category), "two aggregates of category \(A.category)")
        _ = AggregateCodec<A>()  // traps now, at start-up, on duplicate type names
        categories.append(A.category)
        upcasters.merge(A.upcasters)
        aggregates.append { store, logger, registry in registry.register(CommandHandler<A>(store: store, logger: logger)) }
    }

    /// Runs the reactor `make` builds (over the store of the `react` command) in `react`.
    public mutating func reactor(_ make: @escaping @Sendable (EventStore, Logger) -> any Reactor) {
        reactorFactories.append(make)
    }

    /// Adds upcasters that no aggregate declares.
    public mutating func upcast(_ more: EventUpcasters) {
        upcasters.merge(more)
    }

    /// The command registry for a server over `store`.
    public func commandRegistry(store: EventStore, logger: Logger) -> CommandRegistry {
        var registry = CommandRegistry()
        for register in aggregates { register(store, logger, &registry) }
        return registry
    }

    /// The domain's reactors over `store`.
    public func reactors(store: EventStore, logger: Logger) -> [any Reactor] {
        reactorFactories.map { $0(store, logger) }
    }

    /// A store configuration that reads this domain's events in their current shape.
    public func storeConfiguration(databaseURL: String) -> EventStoreConfiguration {
        var configuration = EventStoreConfiguration(databaseURL: databaseURL)
        configuration.upcasters = upcasters
        return configuration
    }

    /// A projector configuration whose handlers bind this domain's events in their current shape.
    public func projectorConfiguration(databaseURL: String) -> ProjectorConfiguration {
        var configuration = ProjectorConfiguration(databaseURL: databaseURL)
        configuration.upcasters = upcasters
        return configuration
    }
}

extension Domain {
    /// The domain the running command serves: set once by `Eventline.main`.
    static var current: Domain {
        get { running.withLock { $0 } ?? Domain(name: "eventline") }
        set { running.withLock { $0 = newValue } }
    }
    private static let running = Mutex<Domain?>(nil)
}

/// The entry point of a service built on Eventline.
public enum Eventline {
    /// Parses the process's arguments and runs the command they name (`serve`, `project`,
    /// `react`, `replay`, `migrate`, `status`, …) for `domain`, then exits. Argument errors
    /// print one line on stderr and exit 64; other failures exit 1 (3 for a version conflict).
    public static func main(_ domain: Domain) async {
        Domain.current = domain
        await EventlineCommand.main()
    }
}

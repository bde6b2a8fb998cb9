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
///         domain.reactor("restock") { store, logger in Restock(store: store, logger: logger) }
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
    /// Every registered aggregate's personal-data declarations.
    public private(set) var personalData = PersonalDataDeclarations()

    private var aggregates: [@Sendable (EventStore, Logger, inout CommandRegistry) -> Void] = []
    private var reactorFactories: [(name: String, make: @Sendable (EventStore, Logger) -> any Reactor)] = []
    /// Each registered aggregate's event type names, to keep one event type to one aggregate.
    private var eventTypeNames: [String: String] = [:]
    /// Types whose upcasters came from `upcast(_:)`, not from an aggregate.
    private var extraUpcastTypes: Set<String> = []
    /// The registered aggregates' categories, in registration order.
    public private(set) var categories: [String] = []
    /// What `dev` prints under "Try:" once it serves, with `{base}` standing for the server's
    /// address (for example a curl command that sends one of the domain's commands).
    public var devExamples: [String] = []

    public init(name: String, abstract: String? = nil, projectionsDirectory: String = "Projections") {
        self.name = name
        self.abstract = abstract ?? "Run the \(name) service on Eventline: serve its commands, project, react, deliver webhooks, replay, operate the log."
        self.projectionsDirectory = projectionsDirectory
    }

    /// Accepts commands for `A` at `POST /v1/commands/<A.category>/{id}`, and reads its events
    /// through its upcasters everywhere.
    ///
    /// A domain is checked as it is built (a mistake traps at start-up, before anything is
    /// served): one aggregate per category, one aggregate per event type, and no upcasters for
    /// its events from elsewhere, so that the version an event is written at is the one its
    /// readers upcast from.
    public mutating func register<A: Aggregate>(_ aggregate: A.Type) {
        precondition(!categories.contains(A.category), "two aggregates of category \(A.category)")
        let codec = AggregateCodec<A>()  // traps on duplicate type names
        for name in codec.eventTypes.keys {
            if let other = eventTypeNames[name] { preconditionFailure("\(other) and \(A.self) both list the event \(name)") }
            precondition(!extraUpcastTypes.contains(name), "upcasters of \(name) belong in \(A.self).upcasters")
            eventTypeNames[name] = "\(A.self)"
        }
        categories.append(A.category)
        upcasters.merge(A.upcasters)
        personalData.merge(codec.personalData)
        aggregates.append { store, logger, registry in registry.register(CommandHandler<A>(store: store, logger: logger)) }
    }

    /// Runs the reactor `make` builds (over the store of the `react` command) in `react` and
    /// `dev`, under `name` (its `Reactor.name`: the key of its checkpoint and lease).
    public mutating func reactor(_ name: String, _ make: @escaping @Sendable (EventStore, Logger) -> any Reactor) {
        precondition(!reactorFactories.contains { $0.name == name }, "two reactors named \(name)")
        reactorFactories.append((name, make))
    }

    /// The declared reactors' names.
    public var reactorNames: [String] { reactorFactories.map(\.name) }

    /// Adds upcasters of events no aggregate lists (those only projections or reactors read).
    public mutating func upcast(_ more: EventUpcasters) {
        for name in more.typesWithSteps {
            if let owner = eventTypeNames[name] { preconditionFailure("upcasters of \(name) belong in \(owner).upcasters") }
            extraUpcastTypes.insert(name)
        }
        upcasters.merge(more)
    }

    /// The command registry for a server over `store`.
    public func commandRegistry(store: EventStore, logger: Logger) -> CommandRegistry {
        var registry = CommandRegistry()
        for register in aggregates { register(store, logger, &registry) }
        return registry
    }

    /// The domain's reactors (or those named in `only`) over `store`.
    public func reactors(store: EventStore, logger: Logger, only: [String] = []) -> [any Reactor] {
        reactorFactories.filter { only.isEmpty || only.contains($0.name) }.map { entry in
            let reactor = entry.make(store, logger)
            precondition(reactor.name == entry.name, "the reactor declared as \(entry.name) is named \(reactor.name)")
            return reactor
        }
    }

    /// A store configuration that reads this domain's events in their current shape.
    /// With `masterKey`, it stores personal fields encrypted and reads them decrypted.
    public func storeConfiguration(databaseURL: String, masterKey: MasterKey? = nil) -> EventStoreConfiguration {
        var configuration = EventStoreConfiguration(databaseURL: databaseURL)
        configuration.upcasters = upcasters
        configuration.personalData = personalData
        configuration.masterKey = masterKey
        return configuration
    }

    /// A projector configuration whose handlers bind this domain's events in their current shape
    /// (and, with `masterKey`, their personal fields decrypted).
    public func projectorConfiguration(databaseURL: String, masterKey: MasterKey? = nil) -> ProjectorConfiguration {
        var configuration = ProjectorConfiguration(databaseURL: databaseURL)
        configuration.upcasters = upcasters
        configuration.masterKey = masterKey
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

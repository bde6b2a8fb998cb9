import EventStore
import Foundation
import PostgresClient
import Synchronization
import ReadModels

/// A read model built from the log: a table in the `read_models` schema and, per event type,
/// the statements that apply an event to it. YAML projections (`Projections/*.yaml`) and
/// projections written in Swift implement the same protocol, and the projector treats them alike.
public protocol Projection: Sendable {
    /// `[a-z][a-z0-9_]*`, unique; the live table is `read_models.<name>`.
    var name: String { get }
    /// A change means the read model must be rebuilt from the log.
    var version: Int { get }
    /// The column `GET /v1/read-models/{name}/{key}` looks up (unique in the table).
    var keyColumn: String { get }
    /// The event types the projection handles; the projector reads only these.
    var eventTypes: [String] { get }
    /// Where the projection was declared, for error messages (a file path, a Swift type).
    var source: String { get }
    /// DDL creating the table `table` (already quoted and schema-qualified).
    func createStatements(table: String) throws -> String
    /// The statements applying `event` to `table`, in order. Rows they return name the read
    /// model's keys whose cache entries must be dropped (the first column of each row).
    func statements(for event: RecordedEvent, table: String) throws -> [SQLQuery]
    /// How many partitions apply the projection in parallel (1: one, the default). Events of
    /// one partition key are applied in log order, different keys in parallel.
    var partitions: Int { get }
    /// What an event's partition key is: `stream` (the default), or a parameter as handlers
    /// name it without its colon (`data.account.id`, `id`, `metadata.tenant`). Choose it so
    /// that every row's events share one key.
    var partitionBy: String { get }
    /// What an event that keeps failing does (nil: the projector's default: retry, then park
    /// the event's key, its partition key).
    var onError: ErrorPolicy? { get }
}

extension Projection {
    public var partitions: Int { 1 }
    public var partitionBy: String { "stream" }
    public var onError: ErrorPolicy? { nil }
}

/// Which partition applies an event: a stable hash (FNV-1a, the same in every process and
/// release) of its partition key, modulo the partition count.
public struct ProjectionPartitioner: Sendable {
    public let partitions: Int
    /// The key's parameter (`stream`, `data.account.id`).
    public let key: String
    private let parameter: HandlerParameter

    public init(partitions: Int, by key: String) throws {
        guard (1...256).contains(partitions) else { throw ProjectionError(source: "partitions", "must be between 1 and 256") }
        self.partitions = partitions
        self.key = key
        do {
            parameter = try HandlerSQL.parameter(named: key)
        } catch let error as HandlerSQLError {
            throw ProjectionError(source: "partitionBy", "\(key.debugDescription): \(error.message)")
        }
    }

    public init(_ projection: any Projection) throws {
        try self.init(partitions: projection.partitions, by: projection.partitionBy)
    }

    /// The partition that applies `event`; nil when every partition applies it (a forget,
    /// which may touch rows of any partition and is idempotent).
    public func partition(of event: RecordedEvent) -> Int? {
        guard partitions > 1 else { return 0 }
        guard let key = key(of: event) else { return nil }
        return Self.partition(ofKey: key, partitions: partitions)
    }

    /// The event's partition key (what is parked when it keeps failing); nil for a forget.
    public func key(of event: RecordedEvent) -> String? {
        if event.type == EventStore.subjectForgottenType, event.stream == EventStore.forgottenStream { return nil }
        return parameter.value(for: event) ?? ""
    }

    /// FNV-1a (64-bit) of the key's UTF-8 bytes, modulo `partitions`.
    public static func partition(ofKey key: String, partitions: Int) -> Int {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in key.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        return Int(hash % UInt64(max(1, partitions)))
    }
}

/// A definition that cannot be used, naming the file (or type) and the handler.
public struct ProjectionError: Error, CustomStringConvertible, Sendable {
    public var source: String
    public var handler: String?
    public var message: String

    public init(source: String, handler: String? = nil, _ message: String) {
        self.source = source
        self.handler = handler
        self.message = message
    }

    public var description: String {
        if let handler { return "\(source): handler \(handler): \(message)" }
        return "\(source): \(message)"
    }
}

/// A projection declared in YAML: DDL and one SQL statement per event type, with named
/// parameters bound from the event.
public struct YAMLProjection: Projection {
    public let name: String
    public let version: Int
    public let keyColumn: String
    public let source: String
    /// The DDL, with `$table` still in it.
    public let create: String
    /// Event type → the handler's SQL text as written.
    public let handlers: [String: String]
    /// What runs when a subject is forgotten (a `SubjectForgotten` event), with `:subject`
    /// bound: it drops or blanks the subject's personal data from the read model.
    public let forget: String?
    public let partitions: Int
    public let partitionBy: String
    public let onError: ErrorPolicy?
    public var eventTypes: [String] {
        (handlers.keys.sorted() + (forget == nil ? [] : [EventStore.subjectForgottenType])).sorted()
    }
    /// Compiled handlers per table name (the live table, and rebuild tables during a replay).
    private let compiled = CompiledHandlers()

    private final class CompiledHandlers: Sendable {
        let byTable = Mutex<[String: [String: HandlerSQL]]>([:])
    }

    /// Checks everything that can be checked without a database: names, parameters, quoting.
    public init(
        name: String, version: Int, key: String, create: String, handlers: [String: String], forget: String? = nil,
        partitions: Int = 1, partitionBy: String = "stream", onError: ErrorPolicy? = nil, source: String
    ) throws {
        func fail(_ message: String) -> ProjectionError { ProjectionError(source: source, message) }
        func fail(_ handler: String, _ message: String) -> ProjectionError { ProjectionError(source: source, handler: handler, message) }
        guard ReadModelNames.isValidName(name) else {
            throw fail("name \(name.debugDescription) must match [a-z][a-z0-9_]* and have at most 48 characters")
        }
        guard version > 0 else { throw fail("version must be a positive integer") }
        guard ReadModelNames.isValidColumn(key) else { throw fail("key \(key.debugDescription) must be a lower-case column name") }
        guard create.contains("$table") else { throw fail("create must create $table") }
        guard !handlers.isEmpty else { throw fail("handlers must name at least one event type") }
        self.name = name
        self.version = version
        self.keyColumn = key
        self.create = create
        self.handlers = handlers
        self.forget = forget
        self.source = source
        do {
            _ = try ProjectionPartitioner(partitions: partitions, by: partitionBy)
        } catch let error as ProjectionError {
            throw fail("\(error.source): \(error.message)")
        }
        self.partitions = partitions
        self.partitionBy = partitionBy
        self.onError = onError
        let ddl: HandlerSQL
        do {
            ddl = try HandlerSQL(create, table: "t")
        } catch let error as HandlerSQLError {
            throw fail("create: \(error.message)")
        }
        if let parameter = ddl.parameters.first { throw fail("create: create takes no parameters, found \(parameter)") }
        if let forget {
            guard handlers[EventStore.subjectForgottenType] == nil else {
                throw fail(EventStore.subjectForgottenType, "is handled by forget: (with :subject bound)")
            }
            do {
                _ = try HandlerSQL(forget, table: "t", forget: true)
            } catch let error as HandlerSQLError {
                throw fail("forget", error.message)
            }
        }
        for (type, sql) in handlers {
            if let problem = EventTypeName.problem(with: type) { throw fail(type, "not an event type: \(problem)") }
            do {
                _ = try HandlerSQL(sql, table: "t")
            } catch let error as HandlerSQLError {
                throw fail(type, error.message)
            }
        }
    }

    public func createStatements(table: String) throws -> String {
        try HandlerSQL(create, table: table).sql
    }

    public func statements(for event: RecordedEvent, table: String) throws -> [SQLQuery] {
        // Only the platform forgets: a SubjectForgotten anywhere else is not a forget.
        if event.type == EventStore.subjectForgottenType, event.stream != EventStore.forgottenStream { return [] }
        guard let handler = try handlersCompiled(for: table)[event.type] else { return [] }
        return [handler.query(for: event)]
    }

    /// Compiles the handlers for `table` once.
    func handlersCompiled(for table: String) throws -> [String: HandlerSQL] {
        if let done = compiled.byTable.withLock({ $0[table] }) { return done }
        var result: [String: HandlerSQL] = [:]
        for (type, sql) in handlers { result[type] = try HandlerSQL(sql, table: table) }
        if let forget { result[EventStore.subjectForgottenType] = try HandlerSQL(forget, table: table, forget: true) }
        compiled.byTable.withLock { $0[table] = result }
        return result
    }
}

extension YAMLProjection: Equatable {
    public static func == (lhs: YAMLProjection, rhs: YAMLProjection) -> Bool {
        lhs.name == rhs.name && lhs.version == rhs.version && lhs.keyColumn == rhs.keyColumn && lhs.create == rhs.create
            && lhs.handlers == rhs.handlers && lhs.forget == rhs.forget && lhs.partitions == rhs.partitions
            && lhs.partitionBy == rhs.partitionBy && lhs.onError == rhs.onError
    }
}

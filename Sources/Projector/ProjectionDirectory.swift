import EventStore
import Foundation
import Yams

/// Loads `Projections/*.yaml`. Every problem names the file (and the handler), and a directory
/// with any invalid file loads nothing.
public enum ProjectionDirectory {
    /// The projections declared in `directory`, sorted by name.
    public static func load(_ directory: String) throws -> [YAMLProjection] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ProjectionError(source: directory, "not a directory of projections")
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: directory)
            .filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") }
            .sorted()
        var projections: [YAMLProjection] = []
        var seen: [String: String] = [:]
        for file in files {
            let path = (directory as NSString).appendingPathComponent(file)
            let projection = try loadFile(path)
            if let other = seen[projection.name] {
                throw ProjectionError(source: path, "the name \(projection.name) is already used by \(other)")
            }
            seen[projection.name] = path
            projections.append(projection)
        }
        return projections.sorted { $0.name < $1.name }
    }

    /// One projection file.
    public static func loadFile(_ path: String) throws -> YAMLProjection {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ProjectionError(source: path, "cannot be read")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw ProjectionError(source: path, "is not UTF-8") }
        return try parse(text, source: path)
    }

    static let fields: Set<String> = [
        "name", "version", "key", "create", "handlers", "forget", "description", "partitions", "partitionBy", "onError",
    ]

    /// A projection from YAML text; `source` names it in errors.
    public static func parse(_ text: String, source: String) throws -> YAMLProjection {
        let node: Node
        do {
            guard let composed = try Yams.compose(yaml: text) else { throw ProjectionError(source: source, "is empty") }
            node = composed
        } catch let error as ProjectionError {
            throw error
        } catch {
            throw ProjectionError(source: source, "is not valid YAML: \(error)")
        }
        guard let mapping = node.mapping else { throw ProjectionError(source: source, "must be a mapping (name, version, key, create, handlers)") }
        var values: [String: Node] = [:]
        for (key, value) in mapping {
            guard let field = key.string else { throw ProjectionError(source: source, "keys must be strings") }
            guard fields.contains(field) else {
                throw ProjectionError(source: source, "unknown field \(field) (expected \(fields.sorted().joined(separator: ", ")))")
            }
            values[field] = value
        }
        func string(_ field: String) throws -> String {
            guard let node = values[field] else { throw ProjectionError(source: source, "\(field) is required") }
            guard let scalar = node.scalar else { throw ProjectionError(source: source, "\(field) must be a string") }
            return scalar.string
        }
        let name = try string("name")
        guard let versionNode = values["version"] else { throw ProjectionError(source: source, "version is required") }
        guard let version = versionNode.int else { throw ProjectionError(source: source, "version must be an integer") }
        guard let handlersNode = values["handlers"] else { throw ProjectionError(source: source, "handlers is required") }
        guard let handlerMapping = handlersNode.mapping else {
            throw ProjectionError(source: source, "handlers must map event types to SQL")
        }
        var handlers: [String: String] = [:]
        for (key, value) in handlerMapping {
            guard let type = key.string else { throw ProjectionError(source: source, "handler names must be event types") }
            guard let sql = value.scalar?.string, !sql.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
                throw ProjectionError(source: source, handler: type, "must be an SQL statement")
            }
            guard handlers[type] == nil else { throw ProjectionError(source: source, handler: type, "is declared twice") }
            handlers[type] = sql
        }
        var forget: String? = nil
        if let node = values["forget"] {
            guard let sql = node.scalar?.string, !sql.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
                throw ProjectionError(source: source, handler: "forget", "must be an SQL statement")
            }
            forget = sql
        }
        var partitions = 1
        if let node = values["partitions"] {
            guard let count = node.int, (1...256).contains(count) else {
                throw ProjectionError(source: source, "partitions must be an integer from 1 to 256")
            }
            partitions = count
        }
        var partitionBy = "stream"
        if let node = values["partitionBy"] {
            guard let text = node.scalar?.string, !text.isEmpty else {
                throw ProjectionError(source: source, "partitionBy must be stream or a parameter such as :data.account.id")
            }
            partitionBy = text.hasPrefix(":") ? String(text.dropFirst()) : text
        }
        var onError: ErrorPolicy? = nil
        if let node = values["onError"] { onError = try errorPolicy(node, source: source) }
        return try YAMLProjection(
            name: name, version: version, key: try string("key"), create: try string("create"), handlers: handlers, forget: forget,
            partitions: partitions, partitionBy: partitionBy, onError: onError, source: source)
    }

    /// `onError: {retries: N, backoff: 200ms, then: park-key | pause | skip}`; each field optional.
    public static func errorPolicy(_ node: Node, source: String) throws -> ErrorPolicy {
        let usage = "onError takes retries (0 to 100), backoff (200ms, 2s, 1m) and then (park-key, pause or skip)"
        guard let mapping = node.mapping else { throw ProjectionError(source: source, usage) }
        var policy = ErrorPolicy()
        for (key, value) in mapping {
            switch key.string {
            case "retries":
                guard let retries = value.int, (0...100).contains(retries) else { throw ProjectionError(source: source, "onError: retries must be an integer from 0 to 100") }
                policy.retries = retries
            case "backoff":
                guard let text = value.scalar?.string, let backoff = ErrorPolicy.duration(text) else {
                    throw ProjectionError(source: source, "onError: backoff must be a duration such as 200ms, 2s or 1m")
                }
                policy.backoff = backoff
            case "then":
                guard let text = value.scalar?.string, let then = ErrorPolicy.Then(rawValue: text) else {
                    throw ProjectionError(source: source, "onError: then must be park-key, pause or skip, not \(value.scalar?.string ?? "that")")
                }
                policy.then = then
            default:
                throw ProjectionError(source: source, "onError: unknown field \(key.string ?? "?") (\(usage))")
            }
        }
        return policy
    }
}

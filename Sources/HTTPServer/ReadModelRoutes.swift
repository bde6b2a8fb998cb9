import EventStore
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import PostgresClient
import Projector
import ReadModels

/// `GET /v1/read-models…`: the projections' status, one row by key, and pages of rows.
struct ReadModelRoutes: Sendable {
    let readModels: ReadModelService
    let configuration: ServerConfiguration

    func register(on router: Endpoints) {
        router.get("/v1/read-models") { request, context in try await list(request) }
        router.get("/v1/read-models/:name") { request, context in try await page(request, context) }
        router.get("/v1/read-models/:name/:key") { request, context in try await row(request, context) }
    }

    func list(_ request: Request) async throws -> Response {
        try JSONIO.rejectUnknownQuery(JSONIO.queryParameters(request), allowed: [])
        let items = try await readModels.status().map { status -> String in
            var fields: [String: JSONValue] = [
                "name": .string(status.name), "version": .integer(status.version),
                "checkpoint": .integer(status.checkpoint), "head": .integer(status.head),
                "lag": .integer(status.lag), "state": .string(status.state),
                "owner": status.owner.map(JSONValue.string) ?? .null, "key": .string(status.keyColumn),
                "partitionBy": .string(status.partitionBy), "parkedKeys": .integer(status.parkedKeys), "stalled": .bool(status.stalled),
                "partitions": .array(status.partitions.map { partition in
                    var fields: [String: JSONValue] = [
                        "partition": .integer(partition.consumer.partition), "checkpoint": .integer(partition.checkpoint),
                        "lag": .integer(partition.lag), "state": .string(partition.state),
                        "owner": partition.owner.map(JSONValue.string) ?? .null,
                    ]
                    if let error = partition.error {
                        fields["error"] = .object([
                            "message": .string(error), "position": partition.errorPosition.map { .integer($0) } ?? .null,
                            "handler": partition.errorHandler.map(JSONValue.string) ?? .null,
                            "attempts": .integer(partition.failedAttempts),
                        ])
                    }
                    return .object(fields)
                }),
            ]
            if let error = status.error {
                fields["error"] = .object([
                    "message": .string(error), "position": status.errorPosition.map { .integer($0) } ?? .null,
                    "handler": status.errorHandler.map(JSONValue.string) ?? .null,
                    "attempts": .integer(status.failedAttempts),
                ])
            }
            return String(decoding: JSONValue.jsonData(fields), as: UTF8.self)
        }
        return JSONIO.response(.ok, Data(#"{"items":[\#(items.joined(separator: ","))]}"#.utf8))
    }

    func row(_ request: Request, _ context: EventlineRequestContext) async throws -> Response {
        let name = try JSONIO.pathParameter(context, "name")
        let key = try JSONIO.pathParameter(context, "key")
        let query = JSONIO.queryParameters(request)
        try JSONIO.rejectUnknownQuery(query, allowed: ["atLeast"])
        let atLeast = try self.atLeast(request)
        return try await ReadPlacement.serve(minPosition: atLeast) { try await row(request, name: name, key: key, atLeast: atLeast) }
    }

    private func row(_ request: Request, name: String, key: String, atLeast: Int?) async throws -> Response {
        let found = try await withCatalog(name, atLeast: atLeast) { info in
            do {
                return try await readModels.row(info, key: key, atLeast: atLeast)
            } catch let error as PostgresError where error.sqlState?.hasPrefix(SQLState.dataExceptionClass) == true {
                // The key cannot be a value of the key column's type: no row has it.
                return ReadModelService.Row(json: nil, cached: false)
            }
        }
        guard let found else { throw Problem.notFound("no read model named \(name)") }
        guard let json = found.json else { throw Problem.notFound("read model \(name) has no row with key \(key)") }
        let etag = Self.etag(json)
        var headers: HTTPFields = [.eTag: etag, .cacheStatus: found.cached ? "hit" : "miss"]
        if let match = request.headers[.ifNoneMatch], Self.matches(match, etag: etag) {
            return Response(status: .notModified, headers: headers)
        }
        headers[.contentType] = JSONIO.contentType
        return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: json)))
    }

    func page(_ request: Request, _ context: EventlineRequestContext) async throws -> Response {
        let name = try JSONIO.pathParameter(context, "name")
        let query = JSONIO.queryParameters(request)
        let limit = try JSONIO.queryInteger(query, "limit", range: 1...configuration.maxReadLimit) ?? 100
        let atLeast = try self.atLeast(request)
        var after: String? = nil
        if let cursor = query["after"] {
            guard let key = Self.decodeCursor(String(cursor)) else {
                throw Problem.badRequest("after must be a cursor returned as next by an earlier page", field: "after")
            }
            after = key
        }
        var filters: [(column: String, value: String)] = []
        for (column, value) in query where !["limit", "after", "atLeast"].contains(String(column)) {
            try JSONIO.rejectControlCharacters(String(column), field: "a filter's column")
            try JSONIO.rejectControlCharacters(String(value), field: String(column))
            filters.append((String(column), String(value)))
        }
        return try await ReadPlacement.serve(minPosition: atLeast) {
            try await page(name: name, filters: filters, after: after, limit: limit, atLeast: atLeast)
        }
    }

    private func page(
        name: String, filters: [(column: String, value: String)], after: String?, limit: Int, atLeast: Int?
    ) async throws -> Response {
        let page = try await withCatalog(name, atLeast: atLeast) { info -> ReadModelPage? in
            for filter in filters where info.type(of: filter.column) == nil {
                throw Problem(
                    .badRequest, "unknown-column", "The filter names no column of the read model",
                    detail: "\(filter.column) is not a column of read model \(name) (its columns: \(info.columns.map(\.name).joined(separator: ", ")))",
                    extensions: ["field": .string(filter.column)])
            }
            do {
                return try await readModels.page(info, filters: filters, after: after, limit: limit + 1, atLeast: atLeast)
            } catch let error as PostgresError where error.sqlState?.hasPrefix(SQLState.dataExceptionClass) == true || error.sqlState == SQLState.undefinedFunction {
                // Which value did not fit is asked value by value, so that the answer names the
                // column and its type (never PostgreSQL's message, which quotes the value back).
                for filter in filters {
                    if let type = info.type(of: filter.column), try await !readModels.fits(filter.value, type: type) {
                        throw Problem(
                            .badRequest, "invalid-filter", "A filter value does not fit its column",
                            detail: "the filter on \(filter.column) must be a value of type \(type)",
                            extensions: ["field": .string(filter.column), "expectedType": .string(type)])
                    }
                }
                throw Problem(
                    .badRequest, "invalid-filter", "A filter value does not fit its column",
                    detail: "the cursor does not fit the type of the key column \(info.keyColumn) (\(info.type(of: info.keyColumn) ?? "text"))",
                    extensions: ["field": .string("after")])
            }
        }
        guard let page else { throw Problem.notFound("no read model named \(name)") }
        let items = page.items.prefix(limit)
        let next = page.items.count > limit ? items.last.map { JSONValue.quoted(Self.encodeCursor($0.key)) } ?? "null" : "null"
        let body = #"{"items":[\#(items.map(\.json).joined(separator: ","))],"next":\#(next)}"#
        return JSONIO.response(.ok, Data(body.utf8))
    }

    /// Runs `body` with the projection's catalog entry. When a read waits for a position
    /// (`atLeast`) and the projection is declared to this server or registered but not built
    /// yet, waits for it to appear within the read timeout (read-your-writes right after a
    /// projector starts), then answers as a read that is behind. Returns nil when there is no
    /// such projection.
    func withCatalog<T: Sendable>(_ name: String, atLeast: Int?, _ body: (ReadModelInfo) async throws -> T?) async throws -> T? {
        let deadline = ContinuousClock.now + readModels.configuration.waitTimeout
        while true {
            let seen = readModels.changes.generation
            if let found = try await withCatalog(name, body) { return found }
            guard let atLeast, ReadModelNames.isValidName(name), try await readModels.mayAppear(name) else { return nil }
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { throw ReadModelService.Behind(checkpoint: 0, atLeast: atLeast) }
            await DatabaseDeadline.excludingWait { await readModels.changes.wait(after: seen, timeout: min(remaining, .milliseconds(500))) }
        }
    }

    /// Runs `body` with the projection's catalog entry; when the table changed under the
    /// catalog (a rebuild, a new projection), reloads the catalog and runs it once more.
    /// Returns nil when there is no such projection (or its table does not exist yet).
    func withCatalog<T: Sendable>(_ name: String, _ body: (ReadModelInfo) async throws -> T?) async throws -> T? {
        guard ReadModelNames.isValidName(name) else { return nil }
        for refresh in [false, true] {
            guard let info = try await readModels.info(name, refresh: refresh) else {
                if refresh { return nil }
                continue
            }
            if info.columns.isEmpty {
                if refresh { return nil }
                continue
            }
            do {
                return try await body(info)
            } catch let error as PostgresError where !refresh && (error.sqlState == SQLState.undefinedTable || error.sqlState == SQLState.undefinedColumn || error.sqlState == SQLState.datatypeMismatch) {
                continue  // the table was rebuilt or dropped since the catalog was read
            } catch let error as PostgresError where error.sqlState == SQLState.undefinedTable {
                return nil
            }
        }
        return nil
    }

    /// `?atLeast=P`, `Eventline-At-Least: P` or `Eventline-Min-Position: P` (the larger).
    func atLeast(_ request: Request) throws -> Int? {
        var atLeast: Int? = nil
        if let text = JSONIO.queryParameters(request)["atLeast"].map(String.init) ?? request.headers[.atLeast] {
            guard let value = Int(text), value >= 0 else {
                throw Problem.badRequest("atLeast (or Eventline-At-Least) must be a log position, an integer ≥ 0", field: "atLeast")
            }
            atLeast = value
        }
        return try ReadPlacement.minPosition(request, atLeast: atLeast)
    }

    /// A strong validator: a hash of the row's JSON.
    static func etag(_ json: [UInt8]) -> String {
        let digest = SHA256.hash(json).prefix(16)
        return "\"" + digest.map { String(format: "%02x", $0) }.joined() + "\""
    }

    /// Whether an `If-None-Match` value names `etag` (weak comparison, as RFC 9110 asks for GET).
    static func matches(_ header: String, etag: String) -> Bool {
        header.split(separator: ",").contains { candidate in
            var tag = candidate.trimmingCharacters(in: .whitespaces)
            if tag == "*" { return true }
            if tag.hasPrefix("W/") { tag.removeFirst(2) }
            return tag == etag
        }
    }

    /// Cursors are the last key seen, base64url-encoded (opaque to clients).
    static func encodeCursor(_ key: String) -> String {
        Data(key.utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func decodeCursor(_ cursor: String) -> String? {
        guard !cursor.isEmpty, cursor.count <= 4096 else { return nil }
        var text = cursor.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while text.count % 4 != 0 { text += "=" }
        guard let data = Data(base64Encoded: text), let key = String(data: data, encoding: .utf8) else { return nil }
        return key
    }
}

extension HTTPField.Name {
    static let atLeast = Self("Eventline-At-Least")!
    static let cacheStatus = Self("X-Cache")!
}

import EventStore
import Foundation
import PostgresClient

/// How events are printed by `read` and `tail`.
enum EventPrinter {
    static func timestamp(_ date: Date) -> String {
        date.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
    }

    static func line(_ event: RecordedEvent, json: Bool) -> String {
        let data = String(decoding: event.data, as: UTF8.self)
        if json {
            let metadata = String(decoding: event.metadata, as: UTF8.self)
            let id = event.id.uuidString.lowercased()
            let tags = event.tags.isEmpty ? "" : #","tags":[\#(event.tags.map(JSONValue.quoted).joined(separator: ","))]"#
            return #"{"position":\#(event.position),"stream":\#(JSONValue.quoted(event.stream)),"version":\#(event.version),"id":"\#(id)","type":\#(JSONValue.quoted(event.type)),"data":\#(data),"metadata":\#(metadata),"recordedAt":"\#(timestamp(event.recordedAt))"\#(tags)}"#
        }
        return "\(event.position)\t\(event.stream)@\(event.version)\t\(event.type)\t\(data)"
    }

}

/// What `status` says about the server.
struct ServerInfo: Sendable {
    var database: String
    var user: String
    var server: String
    var version: String
    var hasEventLog: Bool

    static func fetch(_ url: String) async throws -> ServerInfo {
        let connection = DedicatedConnection(conninfo: url, name: "eventctl-status")
        defer { connection.shutdown() }
        do {
            return try await connection.run { conn in
                let row = try conn.query("""
                    SELECT current_database(), current_user,
                           coalesce(host(inet_server_addr()), 'local socket') || ':' || coalesce(inet_server_port(), 5432)::text,
                           current_setting('server_version'),
                           to_regclass('eventline.log_head') IS NOT NULL
                    """).first!
                return ServerInfo(
                    database: try row.decode(0), user: try row.decode(1), server: try row.decode(2), version: "PostgreSQL " + (try row.decode(3, as: String.self)),
                    hasEventLog: try row.decode(4))
            }
        } catch let error as PostgresError {
            throw CLIError(error.message)
        }
    }
}

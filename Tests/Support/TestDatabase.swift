import EmbeddedServers
import Foundation
import PostgresClient

/// A fresh, empty database on the test server (the private PostgreSQL, or the one named by
/// `EVENTLINE_TEST_DATABASE_URL`), so that parallel tests never see each other's data.
public struct TestDatabase: Sendable {
    /// The libpq URL of the new database.
    public let url: String
    /// The database's name.
    public let name: String

    /// Creates a database with a unique name, on `serverURL` (default: the test server).
    public static func create(_ label: String = "t", serverURL given: String? = nil) async throws -> TestDatabase {
        let serverURL: String
        if let given { serverURL = given } else { serverURL = try await EmbeddedPostgres.testServerURL() }
        let name = "eventline_\(label.lowercased().filter { $0.isLetter || $0.isNumber })_\(UUID().uuidString.prefix(8).lowercased())"
        let admin = DedicatedConnection(conninfo: serverURL, name: "eventline-test-admin")
        defer { admin.shutdown() }
        try await admin.run { conn in
            try conn.execute(unsafeSQL: "CREATE DATABASE \(quoteIdentifier(name))")
        }
        return TestDatabase(url: Self.url(serverURL, database: name), name: name)
    }

    /// `serverURL` with its database replaced by `database`.
    static func url(_ serverURL: String, database: String) -> String {
        guard var components = URLComponents(string: serverURL), components.scheme?.hasPrefix("postgres") == true else {
            return serverURL + " dbname=\(database)"
        }
        components.path = "/" + database
        return components.string ?? serverURL
    }
}

import Foundation

/// The files of `Schemas/` as they were when this binary was built: the numbered SQL
/// migrations and the OpenAPI document. The EmbedSchemas build plugin generates their contents.
public enum EmbeddedSchemaFiles {
    /// `Schemas/openapi.yaml`.
    public static let openAPI: Data = decode(openAPIBase64)

    /// `Schemas/migrations/*.sql` as (file name, contents), ordered by file name.
    public static let migrations: [(name: String, contents: Data)] = migrationsBase64.map { ($0.name, decode($0.base64)) }

    private static func decode(_ base64: String) -> Data {
        // The build wrote this text with Foundation's own encoder: it always decodes.
        Data(base64Encoded: base64)!
    }
}

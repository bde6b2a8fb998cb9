import Foundation
import PackagePlugin

/// Compiles `Schemas/migrations/*.sql` and `Schemas/openapi.yaml` into the target that uses
/// this plugin, so that a binary carries its schema and API document: nothing beside it on disk
/// is needed to migrate a database or serve `/openapi.yaml`. The files in `Schemas/` stay the
/// one source; the generated file is rebuilt whenever one of them changes.
@main
struct EmbedSchemas: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: any Target) throws -> [Command] {
        let schemas = context.package.directoryURL.appending(path: "Schemas")
        let migrationsDirectory = schemas.appending(path: "migrations")
        let migrations = try FileManager.default.contentsOfDirectory(atPath: migrationsDirectory.path)
            .filter { $0.hasSuffix(".sql") }
            .sorted()
            .map { migrationsDirectory.appending(path: $0) }
        let openAPI = schemas.appending(path: "openapi.yaml")
        let output = context.pluginWorkDirectoryURL.appending(path: "GeneratedSchemaFiles.swift")
        return [
            .buildCommand(
                displayName: "Embedding Schemas/ (\(migrations.count) migrations, openapi.yaml)",
                executable: try context.tool(named: "eventline-embed").url,
                arguments: [output.path, openAPI.path] + migrations.map(\.path),
                inputFiles: [openAPI] + migrations,
                outputFiles: [output]
            )
        ]
    }
}

import Aggregates
import EventStore
import BankDomain
import EventlineTestSupport
import Foundation
import Testing
import Yams

/// The command schemas of Schemas/openapi.yaml against the domain the server registers: a
/// client (or a schema-driven fuzzer) that builds commands from the document builds ones the
/// domain decodes, and the document refuses what the domain refuses.
@Suite("Command schemas in the API document")
struct CommandSchemaTests {
    /// Every command type the sample server registers, with its decoder.
    static let decoders: [String: @Sendable (Data) throws -> Bool] = {
        var decoders: [String: @Sendable (Data) throws -> Bool] = [:]
        let accounts = AggregateCodec<BankAccount>()
        for type in accounts.commandTypes.keys {
            decoders[type] = { try accounts.command(type, JSONValue(parsing: $0)) != nil }
        }
        let transfers = AggregateCodec<Transfer>()
        for type in transfers.commandTypes.keys {
            decoders[type] = { try transfers.command(type, JSONValue(parsing: $0)) != nil }
        }
        return decoders
    }()

    @Test("CommandRequest is a oneOf by type covering exactly the registered command types, and each type's data decodes as the document says")
    func schemasMatchTheDomain() throws {
        let text = try String(contentsOfFile: Repository.root + "/Schemas/openapi.yaml", encoding: .utf8)
        let spec = try #require(try Yams.load(yaml: text) as? [String: Any])
        let schemas = try #require((spec["components"] as? [String: Any])?["schemas"] as? [String: Any])
        func resolve(_ node: Any?) -> [String: Any] {
            guard let object = node as? [String: Any] else { return [:] }
            if let reference = object["$ref"] as? String, let name = reference.split(separator: "/").last {
                return resolve(schemas[String(name)])
            }
            return object
        }
        let request = resolve(schemas["CommandRequest"])
        let variants = try #require(request["oneOf"] as? [Any])
        var dataSchemas: [String: [String: Any]] = [:]
        for variant in variants.map(resolve) {
            let properties = variant["properties"] as? [String: Any] ?? [:]
            let types = resolve(properties["type"])["enum"] as? [String] ?? []
            #expect(types.count == 1, "a variant names \(types)")
            #expect(variant["additionalProperties"] as? Bool == false)
            #expect(Set(variant["required"] as? [String] ?? []) == ["type", "data"])
            if let type = types.first { dataSchemas[type] = resolve(properties["data"]) }
        }
        #expect(Set(dataSchemas.keys) == Set(Self.decoders.keys), "the document describes \(dataSchemas.keys.sorted()), the domain registers \(Self.decoders.keys.sorted())")
        let mapping = (request["discriminator"] as? [String: Any])?["mapping"] as? [String: String] ?? [:]
        #expect(Set(mapping.keys) == Set(Self.decoders.keys))

        for (type, data) in dataSchemas.sorted(by: { $0.key < $1.key }) {
            guard let decode = Self.decoders[type] else { continue }
            #expect(data["type"] as? String == "object" && data["additionalProperties"] as? Bool == false, "\(type).data")
            let properties = data["properties"] as? [String: Any] ?? [:]
            let required = data["required"] as? [String] ?? []
            // A valid instance, from each property's example.
            var instance: [String: Any] = [:]
            for (name, property) in properties {
                let example = resolve(property)["example"]
                #expect(example != nil, "\(type).data.\(name) has no example")
                instance[name] = example
            }
            func decodes(_ object: [String: Any]) -> Bool {
                guard let json = try? JSONSerialization.data(withJSONObject: object) else { return false }
                return (try? decode(json)) == true
            }
            #expect(decodes(instance), "\(type): the document's example \(instance) does not decode")
            for name in required {
                var missing = instance
                missing.removeValue(forKey: name)
                #expect(!decodes(missing), "\(type): decodes without the required \(name)")
            }
            for name in properties.keys where !required.contains(name) {
                var without = instance
                without.removeValue(forKey: name)
                #expect(decodes(without), "\(type): \(name) is optional in the document, not in the domain")
            }
            var extra = instance
            extra["unexpected"] = 1
            #expect(!decodes(extra), "\(type): decodes with a field the document does not allow")
            for (name, property) in properties where resolve(property)["type"] as? String == "integer" {
                var wrong = instance
                wrong[name] = "1"
                #expect(!decodes(wrong), "\(type): \(name) decodes from a string")
            }
        }
    }
}

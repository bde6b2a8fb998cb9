import EventlineTesting
import Foundation
import Testing
import WarehouseDomain

/// The warehouse as it runs: real HTTP, a real PostgreSQL, the item_stock projection.
@Suite("Warehouse service", .timeLimit(.minutes(3)))
struct WarehouseServiceTests {
    /// The package's projections directory, wherever the tests run from.
    static let projections = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../Projections").standardized.path

    @Test("commands over HTTP follow the rules, with a stable problem type per rule")
    func commands() async throws {
        let server = try await DomainTestServer.make(Warehouse.domain, projections: Self.projections)
        try await server.run { client in
            var response = try await client.command("item", "7", "RegisterItem", #"{"sku":"BOLT-M8","name":"Bolt M8"}"#)
            #expect(response.status == .ok, "\(response.text)")
            #expect(response.object["version"] as? Int == 1)
            response = try await client.command("item", "7", "RegisterItem", #"{"sku":"BOLT-M8","name":"Bolt M8"}"#)
            #expect(response.status == .unprocessableContent)
            #expect(response.object["type"] as? String == "/problems/item-already-registered")
            response = try await client.command("item", "8", "ReceiveStock", #"{"quantity":3}"#)
            #expect(response.object["type"] as? String == "/problems/item-not-registered")
            response = try await client.command("item", "7", "ReceiveStock", #"{"quantity":0}"#)
            #expect(response.object["type"] as? String == "/problems/invalid-quantity")
            response = try await client.command("item", "7", "ReceiveStock", #"{"quantity":"3"}"#)
            #expect(response.object["field"] as? String == "data.quantity", "\(response.text)")
            response = try await client.command("item", "7", "ReceiveStock", #"{"quantity":3,"qty":3}"#)
            #expect(response.object["field"] as? String == "data.qty", "\(response.text)")
            response = try await client.command("item", "7", "ReserveStock", #"{"quantity":1,"order":"o-1"}"#)
            #expect(response.object["type"] as? String == "/problems/insufficient-stock")
            response = try await client.command("item", "7", "ReleaseReservation", #"{"order":"o-1"}"#)
            #expect(response.object["type"] as? String == "/problems/unknown-reservation")
            #expect(response.headers[.contentType] == "application/problem+json")
        }
        #expect(try await server.test.store.streamVersion("item-7") == 1)
        await server.test.store.shutdown()
    }

    @Test("an old StockReceived {\"qty\": 5} counts as 5 received for commands, the projection and a replay")
    func mixedShapes() async throws {
        let server = try await DomainTestServer.make(Warehouse.domain, projections: Self.projections)
        try await server.run { client in
            #expect(try await client.command("item", "7", "RegisterItem", #"{"sku":"BOLT-M8","name":"Bolt M8"}"#).status == .ok)
            // Written as version 1 would have been: no schema version named.
            var response = try await client.json(.post, "/v1/streams/item-7/events", #"{"events":[{"type":"StockReceived","data":{"qty":5}}]}"#)
            #expect(response.status == .created, "\(response.text)")
            // And the current shape, through a command.
            #expect(try await client.command("item", "7", "ReceiveStock", #"{"quantity":2}"#).status == .ok)
            // 7 received: a reservation of 7 fits, one more does not.
            response = try await client.command("item", "7", "ReserveStock", #"{"quantity":7,"order":"o-1"}"#)
            #expect(response.status == .ok, "\(response.text)")
            let position = try #require(response.object["position"] as? Int)
            response = try await client.command("item", "7", "ReserveStock", #"{"quantity":1,"order":"o-2"}"#)
            #expect(response.object["type"] as? String == "/problems/insufficient-stock")
            // The read model, once the projector has passed the reservation.
            response = try await client.json(.get, "/v1/read-models/item_stock/7?atLeast=\(position)")
            #expect(response.status == .ok, "\(response.text)")
            let row = response.object
            #expect(row["sku"] as? String == "BOLT-M8")
            #expect(row["on_hand"] as? Int == 7, "\(row)")
            #expect(row["reserved"] as? Int == 7, "\(row)")
            // Readers see the current shape; the log keeps what was written.
            response = try await client.json(.get, "/v1/streams/item-7")
            let events = try #require(response.object["events"] as? [[String: Any]])
            #expect(events[1]["data"] as? [String: Int] == ["quantity": 5])
            #expect(events.map { $0["schemaVersion"] as? Int } == [1, 2, 2, 1])
        }
        let stored = try await server.test.sql { conn in
            try conn.query("SELECT convert_from(data, 'UTF8'), schema_version FROM eventline.events WHERE type = 'StockReceived' ORDER BY position")
                .rows.map { (try $0.decode(0, as: String.self), try $0.decode(1, as: Int?.self)) }
        }
        #expect(stored.map(\.0) == [#"{"qty":5}"#, #"{"quantity":2}"#])
        #expect(stored.map(\.1) == [nil, 2])
        // A fresh handler folds the mixed stream to the same state.
        let items = CommandHandler<Item>(store: server.test.store)
        let (state, version) = try await items.load(try items.stream(for: "7"))
        #expect(state.received == 7 && state.reserved == 7 && version == 4)
        // A replay of the projection builds the same row from the mixed log.
        let projection = try #require(try ProjectionDirectory.load(Self.projections).first { $0.name == "item_stock" })
        let replay = try await ProjectionReplay.run(
            projection, databaseURL: server.test.url, dryRun: true, reading: EventReading(upcasters: Warehouse.domain.upcasters))
        #expect(replay.matches == true, "\(replay)")
        await server.test.store.shutdown()
    }
}

import EventlineTesting
import Testing
import WarehouseDomain

/// The item's rules, decided with no database: given these events, when this command, then
/// these events or this rule.
@Suite("Item rules")
struct ItemRuleTests {
    typealias Spec = AggregateSpec<Item>
    typealias Rule = Item.Rule
    static let registered = ItemRegistered(sku: "BOLT-M8", name: "Bolt M8")

    @Test("an item is registered once, with a 1–64 character sku and a 1–200 character name")
    func registering() throws {
        try Spec.given().when(RegisterItem(sku: "BOLT-M8", name: "Bolt M8")).then(Self.registered)
        try Spec.given(Self.registered).when(RegisterItem(sku: "BOLT-M8", name: "Bolt M8")).thenRefused(Rule.alreadyRegistered)
        try Spec.given().when(RegisterItem(sku: "", name: "Bolt")).thenRefused(Rule.invalidSKU)
        try Spec.given().when(RegisterItem(sku: String(repeating: "S", count: 65), name: "Bolt")).thenRefused(Rule.invalidSKU)
        try Spec.given().when(RegisterItem(sku: "B", name: "")).thenRefused(Rule.invalidName)
        try Spec.given().when(RegisterItem(sku: "B", name: String(repeating: "n", count: 201))).thenRefused(Rule.invalidName)
        let longest = RegisterItem(sku: String(repeating: "S", count: 64), name: String(repeating: "ü", count: 200))
        try Spec.given().when(longest).then(ItemRegistered(sku: longest.sku, name: longest.name))
    }

    @Test("stock is received by registered items only, in quantities above zero")
    func receiving() throws {
        try Spec.given(Self.registered).when(ReceiveStock(quantity: 5)).then(StockReceived(quantity: 5))
        try Spec.given().when(ReceiveStock(quantity: 5)).thenRefused(Rule.notRegistered)
        try Spec.given(Self.registered).when(ReceiveStock(quantity: 0)).thenRefused(Rule.invalidQuantity)
        try Spec.given(Self.registered).when(ReceiveStock(quantity: -1)).thenRefused(Rule.invalidQuantity)
        try Spec.given(Self.registered, StockReceived(quantity: .max)).when(ReceiveStock(quantity: 1)).thenRefused(Rule.invalidQuantity)
    }

    @Test("a reservation needs the stock that is received and not reserved, once per order")
    func reserving() throws {
        let stocked = try Spec.given(Self.registered, StockReceived(quantity: 10), StockReserved(quantity: 4, order: "o-1"))
        try stocked.when(ReserveStock(quantity: 6, order: "o-2")).then(StockReserved(quantity: 6, order: "o-2"))
        try stocked.when(ReserveStock(quantity: 7, order: "o-2")).thenRefused(Rule.insufficientStock)
        try stocked.when(ReserveStock(quantity: 1, order: "o-1")).thenRefused(Rule.reservationExists)
        try stocked.when(ReserveStock(quantity: 0, order: "o-2")).thenRefused(Rule.invalidQuantity)
        try stocked.when(ReserveStock(quantity: 1, order: "")).thenRefused(Rule.invalidOrder)
        try Spec.given().when(ReserveStock(quantity: 1, order: "o-1")).thenRefused(Rule.notRegistered)
        #expect(stocked.state.available == 6)
    }

    @Test("releasing gives back what the order reserved; an order without a reservation is refused")
    func releasing() throws {
        let reserved = try Spec.given(Self.registered, StockReceived(quantity: 10), StockReserved(quantity: 4, order: "o-1"))
        try reserved.when(ReleaseReservation(order: "o-1")).then(ReservationReleased(order: "o-1", quantity: 4))
        try reserved.when(ReleaseReservation(order: "o-9")).thenRefused(Rule.unknownReservation)
        let released = try Spec.given(Self.registered, StockReceived(quantity: 10), StockReserved(quantity: 4, order: "o-1"),
                                      ReservationReleased(order: "o-1", quantity: 4))
        #expect(released.state.available == 10)
        try released.when(ReserveStock(quantity: 10, order: "o-1")).then(StockReserved(quantity: 10, order: "o-1"))
    }

    @Test("StockReceived of version 1 ({\"qty\": N}) reads as the current {\"quantity\": N}")
    func upcasting() throws {
        try UpcasterCheck.expect(Item.self, type: "StockReceived", version: 1, data: #"{"qty":5}"#, reads: StockReceived(quantity: 5))
        try UpcasterCheck.expect(Item.self, type: "StockReceived", version: 2, data: #"{"quantity":7}"#, reads: StockReceived(quantity: 7))
        #expect(Item.upcasters.currentVersion(of: "StockReceived") == 2)
        // Version 1 data without qty does not read: the check says so.
        #expect(throws: (any Error).self) {
            try UpcasterCheck.expect(Item.self, type: "StockReceived", version: 1, data: #"{"amount":5}"#, reads: StockReceived(quantity: 5))
        }
    }
}

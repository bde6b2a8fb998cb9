import Eventline

/// A stock item of the warehouse, in stream category `item` (`item-7` is item `7`): it is
/// registered once, receives stock, and holds reservations of its stock for orders.
public enum Item: Aggregate {
    public static let category = "item"

    public static let commands: [any DomainCommand.Type] = [
        RegisterItem.self, ReceiveStock.self, ReserveStock.self, ReleaseReservation.self,
    ]
    public static let events: [any DomainEvent.Type] = [
        ItemRegistered.self, StockReceived.self, StockReserved.self, ReservationReleased.self,
    ]

    /// How the events changed: version 1 of `StockReceived` carried `{"qty": N}`.
    public static let upcasters: EventUpcasters = {
        var upcasters = EventUpcasters()
        upcasters.register(StockReceived.typeName, from: 1) { data in try data.renamingMember("qty", to: "quantity") }
        return upcasters
    }()

    /// An item's state.
    public struct State: Codable, Sendable, Hashable {
        public var registered = false
        public var sku = ""
        public var name = ""
        /// Everything received.
        public var received: Int64 = 0
        /// The quantity reserved per order.
        public var reservations: [String: Int64] = [:]

        /// Saturating, like the folds: `decide` keeps the numbers in range, and a log written
        /// around it (raw appends) must not crash a command.
        public var reserved: Int64 {
            reservations.values.reduce(0) { sum, quantity in
                let (total, overflow) = sum.addingReportingOverflow(quantity)
                return overflow ? .max : total
            }
        }
        /// What can still be reserved.
        public var available: Int64 {
            let (difference, overflow) = received.subtractingReportingOverflow(reserved)
            return overflow ? .min : difference
        }
    }

    public static let initialState = State()

    /// Stable rule codes: each is the problem `type` (`/problems/<code>`) of a refused command.
    public enum Rule {
        public static let alreadyRegistered = "item-already-registered"
        public static let notRegistered = "item-not-registered"
        public static let invalidSKU = "invalid-sku"
        public static let invalidName = "invalid-name"
        public static let invalidQuantity = "invalid-quantity"
        public static let invalidOrder = "invalid-order"
        public static let insufficientStock = "insufficient-stock"
        public static let reservationExists = "reservation-exists"
        public static let unknownReservation = "unknown-reservation"
    }

    public static func decide(_ command: any DomainCommand, _ state: State) throws(RuleViolation) -> [any DomainEvent] {
        switch command {
        case let register as RegisterItem:
            guard !state.registered else { throw RuleViolation(Rule.alreadyRegistered, "the item is already registered") }
            guard (1...64).contains(register.sku.count) else { throw RuleViolation(Rule.invalidSKU, "the sku must be 1 to 64 characters") }
            guard (1...200).contains(register.name.count) else {
                throw RuleViolation(Rule.invalidName, "the name must be 1 to 200 characters")
            }
            return [ItemRegistered(sku: register.sku, name: register.name)]
        case let receive as ReceiveStock:
            guard receive.quantity > 0 else { throw RuleViolation(Rule.invalidQuantity, "the quantity must be greater than zero") }
            guard state.registered else { throw RuleViolation(Rule.notRegistered, "the item is not registered") }
            guard !state.received.addingReportingOverflow(receive.quantity).overflow else {
                throw RuleViolation(Rule.invalidQuantity, "the quantity would overflow the stock")
            }
            return [StockReceived(quantity: receive.quantity)]
        case let reserve as ReserveStock:
            guard reserve.quantity > 0 else { throw RuleViolation(Rule.invalidQuantity, "the quantity must be greater than zero") }
            guard (1...200).contains(reserve.order.count) else { throw RuleViolation(Rule.invalidOrder, "the order must be 1 to 200 characters") }
            guard state.registered else { throw RuleViolation(Rule.notRegistered, "the item is not registered") }
            guard state.reservations[reserve.order] == nil else {
                throw RuleViolation(Rule.reservationExists, "order \(reserve.order) already holds a reservation of this item")
            }
            guard state.available >= reserve.quantity else {
                throw RuleViolation(Rule.insufficientStock, "\(state.available) available, \(reserve.quantity) asked for")
            }
            return [StockReserved(quantity: reserve.quantity, order: reserve.order)]
        case let release as ReleaseReservation:
            guard let quantity = state.reservations[release.order] else {
                throw RuleViolation(Rule.unknownReservation, "order \(release.order) holds no reservation of this item")
            }
            return [ReservationReleased(order: release.order, quantity: quantity)]
        default:
            throw .unhandled(command)
        }
    }

    public static func evolve(_ state: State, _ event: any DomainEvent) -> State {
        var state = state
        switch event {
        case let registered as ItemRegistered:
            state.registered = true
            state.sku = registered.sku
            state.name = registered.name
        case let received as StockReceived:
            let (sum, overflow) = state.received.addingReportingOverflow(received.quantity)
            state.received = overflow ? .max : sum
        case let reserved as StockReserved:
            state.reservations[reserved.order] = reserved.quantity
        case let released as ReservationReleased:
            state.reservations[released.order] = nil
        default:
            break
        }
        return state
    }
}

// MARK: - Commands

public struct RegisterItem: DomainCommand, Hashable {
    public static let typeName = "RegisterItem"
    public var sku: String
    public var name: String
    public init(sku: String, name: String) {
        self.sku = sku
        self.name = name
    }
}

public struct ReceiveStock: DomainCommand, Hashable {
    public static let typeName = "ReceiveStock"
    public var quantity: Int64
    public init(quantity: Int64) { self.quantity = quantity }
}

public struct ReserveStock: DomainCommand, Hashable {
    public static let typeName = "ReserveStock"
    public var quantity: Int64
    public var order: String
    public init(quantity: Int64, order: String) {
        self.quantity = quantity
        self.order = order
    }
}

public struct ReleaseReservation: DomainCommand, Hashable {
    public static let typeName = "ReleaseReservation"
    public var order: String
    public init(order: String) { self.order = order }
}

// MARK: - Events

public struct ItemRegistered: DomainEvent, Hashable {
    public static let typeName = "ItemRegistered"
    public var sku: String
    public var name: String
    public init(sku: String, name: String) {
        self.sku = sku
        self.name = name
    }
}

/// Version 2: `quantity` (version 1 called it `qty`; the upcaster renames it).
public struct StockReceived: DomainEvent, Hashable {
    public static let typeName = "StockReceived"
    public var quantity: Int64
    public init(quantity: Int64) { self.quantity = quantity }
}

public struct StockReserved: DomainEvent, Hashable {
    public static let typeName = "StockReserved"
    public var quantity: Int64
    public var order: String
    public init(quantity: Int64, order: String) {
        self.quantity = quantity
        self.order = order
    }
}

public struct ReservationReleased: DomainEvent, Hashable {
    public static let typeName = "ReservationReleased"
    public var order: String
    public var quantity: Int64
    public init(order: String, quantity: Int64) {
        self.order = order
        self.quantity = quantity
    }
}

/// The warehouse as a domain for `Eventline.main` or a test.
public enum Warehouse {
    public static var domain: Domain {
        var domain = Domain(name: "warehouse", abstract: "The warehouse service: items, stock and reservations, on Eventline.")
        domain.register(Item.self)
        domain.devExamples = [
            #"curl -s -X POST {base}/v1/commands/item/7 -H 'Content-Type: application/json' -d '{"type":"RegisterItem","data":{"sku":"BOLT-M8","name":"Bolt M8"}}'"#,
            #"curl -s -X POST {base}/v1/commands/item/7 -H 'Content-Type: application/json' -d '{"type":"ReceiveStock","data":{"quantity":10}}'"#,
            "curl -s {base}/v1/read-models/item_stock/7",
        ]
        return domain
    }
}

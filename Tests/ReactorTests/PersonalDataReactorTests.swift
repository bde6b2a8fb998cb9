import EventStore
import EventlineTestSupport
import Foundation
import Reactors
import Synchronization
import Testing

/// What a reactor saw of each event's personal field.
private final class SeenOwners: Sendable {
    let owners = Mutex<[String]>([])
}

private struct OwnerReactor: Reactor {
    let seen: SeenOwners
    var name = "owners"
    var filter: EventFilter { EventFilter(category: "account") }

    func react(to event: RecordedEvent) async throws {
        let data = try JSONSerialization.jsonObject(with: event.data) as? [String: Any] ?? [:]
        let owner = data["owner"] as? String ?? "null"
        seen.owners.withLock { $0.append("\(event.stream)=\(owner)") }
    }
}

@Suite("Reactors and personal data")
struct PersonalDataReactorTests {
    @Test("a reactor is handed personal fields decrypted, and null once their subject is forgotten")
    func reactorsSeeWhatReadersSee() async throws {
        let test = try await TestStore.make("reactor-personal") { $0.personalData.declare("AccountOpened", fields: ["owner"]) }
        let store = test.store
        defer { Task { await store.shutdown() } }
        try await store.append(to: "account-1", events: [NewEvent(type: "AccountOpened", data: Data(#"{"owner":"Ada","currency":"EUR"}"#.utf8))])
        let seen = SeenOwners()
        let runner = ReactorRunner(reactors: [OwnerReactor(seen: seen)], store: store, configuration: reactorConfiguration())
        let running = Task { try? await runner.run() }
        try await eventually("the reactor saw account-1") { seen.owners.withLock { $0 } == ["account-1=Ada"] }
        running.cancel()
        await running.value
        // Forgotten before the reactor reaches the next account of the subject: it sees null.
        try await store.append(to: "account-2", events: [NewEvent(type: "AccountOpened", data: Data(#"{"owner":"Bo","currency":"EUR"}"#.utf8))])
        try await store.forget(subject: "account-2")
        let again = Task { try? await runner.run() }
        defer { again.cancel() }
        try await eventually("the reactor saw account-2") { seen.owners.withLock { $0 }.count == 2 }
        #expect(seen.owners.withLock { $0 } == ["account-1=Ada", "account-2=null"])
    }
}

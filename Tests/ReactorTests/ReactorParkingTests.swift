import EventStore
import EventlineTestSupport
import Foundation
import Reactors
import Synchronization
import Testing

/// Handles `job-…` events, refusing those marked `"poison":true` while `broken` is set, and
/// records what it handled (stream/version), in order.
private final class Jobs: Reactor {
    let name = "jobs"
    let filter = EventFilter(categories: ["job"])
    let broken = Mutex(true)
    let handled = Mutex<[String]>([])
    let onError: ErrorPolicy?

    init(onError: ErrorPolicy) { self.onError = onError }

    struct Refused: Error, CustomStringConvertible { var description: String { "poison refused" } }

    func react(to event: RecordedEvent) async throws {
        if broken.withLock({ $0 }), String(decoding: event.data, as: UTF8.self).contains(#""poison":true"#) { throw Refused() }
        handled.withLock { $0.append("\(event.stream)/\(event.version)") }
    }
}

@Suite("Reactors: per-key parking")
struct ReactorParkingTests {
    @Test("a reactor's poison event parks its stream only; the stream's later events wait in order; retry after the fix reacts to them in order; skip records the event")
    func parkedStreams() async throws {
        let test = try await TestStore.make("reactpark")
        let store = test.store
        func job(_ poison: Bool = false) -> NewEvent { NewEvent(type: "Job", data: Data(#"{"poison":\#(poison)}"#.utf8)) }
        _ = try await store.append(to: "job-1", events: [job()])
        _ = try await store.append(to: "job-2", events: [job(true), job(), job()])
        _ = try await store.append(to: "job-3", events: [job()])
        let jobs = Jobs(onError: ErrorPolicy(retries: 2, backoff: .milliseconds(10), then: .parkKey))
        let runner = ReactorRunner(reactors: [jobs], store: store, configuration: reactorConfiguration())
        let task = start(runner)
        defer { task.cancel() }
        @Sendable func parked() async throws -> [ParkedKey] { try await test.sql { conn in try CheckpointStore.parked(.reactor, name: "jobs", on: conn) } }
        let head = try await store.headPosition()
        try await eventually("job-2 parked, the others handled") {
            let keys = try await parked().map(\.key)
            let checkpoint = try await reactorStatus(test).first?.checkpoint
            return keys == ["job-2"] && checkpoint == head
        }
        #expect(jobs.handled.withLock { $0 } == ["job-1/1", "job-3/1"])
        var key = try #require(try await parked().first)
        #expect(key.held == 3 && key.attempts == 3 && key.error == "poison refused" && key.position == 2, "\(key)")
        #expect(try await reactorStatus(test).first?.parkedKeys == 1)
        // Later events of the parked stream wait too; others go on.
        _ = try await store.append(to: "job-2", events: [job()])
        _ = try await store.append(to: "job-4", events: [job(true)])
        try await eventually("job-4 parked as well") { try await parked().map(\.key) == ["job-2", "job-4"] }
        key = try #require(try await parked().first)
        #expect(key.held == 4)
        // The cause is fixed; job-2 is retried: its events in order, once.
        jobs.broken.withLock { $0 = false }
        try await test.sql { conn in try CheckpointStore.request("retry", .reactor, name: "jobs", keys: ["job-2"], on: conn) }
        try await eventually("job-2 released") { try await parked().map(\.key) == ["job-4"] }
        #expect(jobs.handled.withLock { $0 } == ["job-1/1", "job-3/1", "job-2/1", "job-2/2", "job-2/3", "job-2/4"])
        // job-4's poison is skipped (recorded), not retried.
        try await test.sql { conn in try CheckpointStore.request("skip", .reactor, name: "jobs", keys: ["job-4"], on: conn) }
        try await eventually("job-4 released") { try await parked().isEmpty }
        #expect(!jobs.handled.withLock { $0 }.contains("job-4/1"))
        let skipped = try await test.sql { conn in try CheckpointStore.skipped(.reactor, name: "jobs", on: conn) }
        #expect(skipped.map { "\($0.key)@\($0.position) \($0.skippedBy): \($0.error)" } == ["job-4@7 operator: poison refused"])
        task.cancel()
        await task.value
        await store.shutdown()
    }

    @Test("onError then: skip records the failing event and goes on; then: pause stops the reactor with the error shown")
    func skipAndPause() async throws {
        let test = try await TestStore.make("reactskip")
        let store = test.store
        _ = try await store.append(to: "job-1", events: [NewEvent(type: "Job", data: Data(#"{"poison":true}"#.utf8)), NewEvent(type: "Job", data: Data("{}".utf8))])
        let skipping = Jobs(onError: ErrorPolicy(retries: 0, backoff: .milliseconds(10), then: .skip))
        var task = start(ReactorRunner(reactors: [skipping], store: store, configuration: reactorConfiguration()))
        let head = try await store.headPosition()
        try await eventually("skipped and went on") { try await reactorStatus(test).first?.checkpoint == head }
        task.cancel()
        await task.value
        #expect(skipping.handled.withLock { $0 } == ["job-1/2"])
        let skipped = try await test.sql { conn in try CheckpointStore.skipped(.reactor, name: "jobs", on: conn) }
        #expect(skipped.map { "\($0.position) \($0.skippedBy)" } == ["1 policy"])

        _ = try await store.append(to: "job-2", events: [NewEvent(type: "Job", data: Data(#"{"poison":true}"#.utf8))])
        _ = try await store.append(to: "job-3", events: [NewEvent(type: "Job", data: Data("{}".utf8))])
        let pausing = Jobs(onError: ErrorPolicy(retries: 1, backoff: .milliseconds(10), then: .pause))
        task = start(ReactorRunner(reactors: [pausing], store: store, configuration: reactorConfiguration()))
        defer { task.cancel() }
        try await eventually("paused at job-2") { try await reactorStatus(test).first?.state == "parked" }
        let status = try #require(try await reactorStatus(test).first)
        #expect(status.error == "poison refused" && status.errorPosition == 3 && status.checkpoint == 2, "\(status)")
        try await Task.sleep(for: .milliseconds(300))
        #expect(pausing.handled.withLock { $0 }.isEmpty, "nothing after the failing event while paused")
        pausing.broken.withLock { $0 = false }
        _ = try await test.sql { conn in try CheckpointStore.resume(.reactor, name: "jobs", on: conn) }
        let end = try await store.headPosition()
        try await eventually("resumed and caught up") { try await reactorStatus(test).first?.checkpoint == end }
        #expect(pausing.handled.withLock { $0 } == ["job-2/1", "job-3/1"])
        task.cancel()
        await task.value
        await store.shutdown()
    }
}

import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Testing

/// The log writer appends in one round trip when it knows the head and the streams' versions
/// from its own last commits. These tests make that knowledge stale in every way another
/// writer can, and check that each append still gets the answer a fresh read would give.
@Suite("The log writer's knowledge of the log")
struct WriterKnowledgeTests {
    static func event(_ type: String = "Noted", id: UUID = UUID()) -> NewEvent {
        NewEvent(id: id, type: type, data: Data(#"{"n":1}"#.utf8))
    }

    @Test("after another writer appends, versions, conflicts and positions are what the log says")
    func anotherWriterMakesKnowledgeStale() async throws {
        let test = try await TestStore.make("known")
        let mine = test.store
        let theirs = test.secondStore()
        // This writer learns the head and the stream "a" (version 2).
        _ = try await mine.append(to: "a", expected: .noStream, events: [Self.event(), Self.event()])
        _ = try await mine.append(to: "a", expected: .exact(2), events: [Self.event()])
        // Another writer extends "a" and creates "b".
        _ = try await theirs.append(to: "a", expected: .exact(3), events: [Self.event()])
        _ = try await theirs.append(to: "b", expected: .noStream, events: [Self.event()])

        // `any` goes after the other writer's event, not onto the version this writer knew.
        let any = try await mine.append(to: "a", expected: .any, events: [Self.event()])
        #expect(any.version == 5)
        #expect(any.position == 6)
        // The version this writer last wrote is no longer current.
        await #expect(throws: EventStoreError.self) {
            try await mine.append(to: "a", expected: .exact(3), events: [Self.event()])
        }
        do {
            _ = try await mine.append(to: "a", expected: .exact(4), events: [Self.event()])
            Issue.record("a stale expected version was accepted")
        } catch let error as EventStoreError {
            #expect(error.code == .wrongExpectedVersion)
            #expect(error.currentVersion == 5)
        }
        // A stream this writer never saw, created by the other: `noStream` conflicts.
        do {
            _ = try await mine.append(to: "b", expected: .noStream, events: [Self.event()])
            Issue.record("noStream was accepted on a stream that exists")
        } catch let error as EventStoreError {
            #expect(error.code == .wrongExpectedVersion)
            #expect(error.currentVersion == 1)
        }
        // And then both writers keep going, alternating, on the same stream.
        for round in 0..<20 {
            let writer = round % 2 == 0 ? mine : theirs
            let result = try await writer.append(to: "b", expected: .exact(1 + round), events: [Self.event()])
            #expect(result.version == 2 + round)
        }
        let rows = try await test.allRows()
        #expect(rows.map(\.position) == Array(1...rows.count))
        #expect(rows.filter { $0.stream == "b" }.map(\.version) == Array(1...21))
        #expect(try await mine.headPosition() == rows.count)
        await theirs.shutdown()
        await mine.shutdown()
    }

    @Test("the time an append reports is the time stored with its events")
    func reportedTimeIsStored() async throws {
        let test = try await TestStore.make("known-time")
        let store = test.store
        var results: [AppendResult] = []
        for index in 0..<5 {
            results.append(try await store.append(to: "t", expected: index == 0 ? .noStream : .exact(index), events: [Self.event()]))
        }
        let stored = try await store.readStream("t", from: 1, limit: 10)
        #expect(stored.map(\.recordedAt) == results.map(\.recordedAt))
        // Later appends never report an earlier time.
        #expect(zip(results, results.dropFirst()).allSatisfy { $0.recordedAt <= $1.recordedAt })
        await store.shutdown()
    }

    @Test("an id already in the log is answered as a retry or refused, also when the writer knows the stream")
    func knownStreamWithKnownIds() async throws {
        let test = try await TestStore.make("known-ids")
        let store = test.store
        let id = UUID()
        let first = try await store.append(to: "k", expected: .noStream, events: [Self.event(id: id)])
        _ = try await store.append(to: "k", expected: .exact(1), events: [Self.event()])
        // The writer knows "k" at version 2; the same event again with `any` is the first append.
        let retry = try await store.append(to: "k", expected: .any, events: [Self.event(id: id)])
        #expect(retry.wasAlreadyAppended)
        #expect(retry.position == first.position)
        // The same id for another stream is refused, and nothing is written.
        await #expect(throws: EventStoreError.self) {
            try await store.append(to: "other", expected: .any, events: [Self.event(id: id)])
        }
        // Fresh appends keep going right after.
        let next = try await store.append(to: "k", expected: .exact(2), events: [Self.event()])
        #expect(next.position == 3)
        #expect(try await test.allRows().count == 3)
        await store.shutdown()
    }
}

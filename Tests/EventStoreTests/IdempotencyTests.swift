import EventStore
import EventlineTestSupport
import Foundation
import Testing

@Suite("Idempotency keys in the store")
struct IdempotencyTests {
    @Test("a taken-over reservation can no longer be completed or released by its first holder")
    func takeoverOwnership() async throws {
        let test = try await TestStore.make("idemkeys")
        let body = Data(#"{"x":1}"#.utf8)
        guard case .reserved(let first, false) = try await test.store.reserveIdempotencyKey(scope: "s", key: "k", body: body) else {
            Issue.record("the first reservation failed")
            return
        }
        #expect(try await test.store.reserveIdempotencyKey(scope: "s", key: "k", body: body) == .inProgress)
        #expect(try await test.store.reserveIdempotencyKey(scope: "s", key: "k", body: Data("{}".utf8)) == .mismatch)
        // The first holder is presumed dead: a retry takes over at once.
        guard case .reserved(let second, true) = try await test.store.reserveIdempotencyKey(scope: "s", key: "k", body: body, abandonAfter: .zero) else {
            Issue.record("the takeover failed")
            return
        }
        #expect(first != second)
        try await test.store.releaseIdempotencyKey(scope: "s", key: "k", token: first)
        try await test.store.completeIdempotencyKey(scope: "s", key: "k", token: first, status: 500, body: Data("stale".utf8))
        #expect(try await test.store.reserveIdempotencyKey(scope: "s", key: "k", body: body) == .inProgress)
        try await test.store.completeIdempotencyKey(scope: "s", key: "k", token: second, status: 200, body: Data("done".utf8))
        #expect(try await test.store.reserveIdempotencyKey(scope: "s", key: "k", body: body) == .replay(status: 200, body: Data("done".utf8)))
        await test.store.shutdown()
    }

    @Test("a reservation whose server is gone is taken over at once, as resumed; one abandoned after an unknown outcome too")
    func ownerDeath() async throws {
        let test = try await TestStore.make("idemowner")
        let other = EventStore(.init(databaseURL: test.store.configuration.databaseURL))
        let body = Data(#"{"x":1}"#.utf8)
        guard case .reserved(_, false) = try await other.reserveIdempotencyKey(scope: "s", key: "k", body: body) else {
            Issue.record("the first reservation failed")
            return
        }
        // Its owner is alive: the key is in progress, whatever the takeover time says.
        #expect(try await test.store.reserveIdempotencyKey(scope: "s", key: "k", body: body, abandonAfter: .seconds(3600)) == .inProgress)
        // The owner's process ends (its presence session with it): the next retry takes over at once.
        await other.shutdown()
        var taken: IdempotencyReservation = .inProgress
        for _ in 0..<100 {
            taken = try await test.store.reserveIdempotencyKey(scope: "s", key: "k", body: body, abandonAfter: .seconds(3600))
            if taken != .inProgress { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        guard case .reserved(let token, true) = taken else {
            Issue.record("the reservation of a dead owner was not taken over: \(taken)")
            return
        }
        // This owner is alive; abandoning after an unknown outcome frees the key for the next retry at once.
        #expect(try await test.store.reserveIdempotencyKey(scope: "s", key: "k", body: body, abandonAfter: .seconds(3600)) == .inProgress)
        try await test.store.abandonIdempotencyKey(scope: "s", key: "k", token: token)
        guard case .reserved(_, true) = try await test.store.reserveIdempotencyKey(scope: "s", key: "k", body: body, abandonAfter: .seconds(3600)) else {
            Issue.record("an abandoned reservation was not taken over")
            return
        }
        await test.store.shutdown()
    }

    @Test("an append's events are found again by their derived ids, and only the run of ids that continues")
    func appendedEarlier() async throws {
        let test = try await TestStore.make("idemearlier")
        let base = UUID()
        let ids: @Sendable (Int) -> UUID = { index in
            var bytes = base.uuid
            bytes.15 = UInt8(index)
            return UUID(uuid: bytes)
        }
        #expect(try await test.store.appendedEarlier(withIDs: ids) == nil)
        _ = try await test.store.append(to: "acct-1", events: [NewEvent(type: "Other", data: Data("{}".utf8))])
        let written = try await test.store.append(to: "acct-1", events: (0..<3).map { NewEvent(id: ids($0), type: "Mine", data: Data("{}".utf8)) })
        _ = try await test.store.append(to: "acct-1", events: [NewEvent(type: "Later", data: Data("{}".utf8))])
        let found = try #require(try await test.store.appendedEarlier(withIDs: ids))
        #expect(found.events == written.events)
        #expect(found.stream == "acct-1" && found.version == 4 && found.position == written.position && found.wasAlreadyAppended)
        await test.store.shutdown()
    }
}

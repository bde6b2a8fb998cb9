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
        guard case .reserved(let first) = try await test.store.reserveIdempotencyKey(scope: "s", key: "k", body: body) else {
            Issue.record("the first reservation failed")
            return
        }
        #expect(try await test.store.reserveIdempotencyKey(scope: "s", key: "k", body: body) == .inProgress)
        #expect(try await test.store.reserveIdempotencyKey(scope: "s", key: "k", body: Data("{}".utf8)) == .mismatch)
        // The first holder is presumed dead: a retry takes over at once.
        guard case .reserved(let second) = try await test.store.reserveIdempotencyKey(scope: "s", key: "k", body: body, abandonAfter: .zero) else {
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
}

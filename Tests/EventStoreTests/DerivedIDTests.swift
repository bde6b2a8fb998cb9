import EventStore
import Foundation
import Testing

@Suite("Derived event ids")
struct DerivedIDTests {
    /// Ids already in logs (idempotency keys, transfer steps) must keep deriving the same way:
    /// these values were computed independently (Python's hashlib) from the names.
    @Test("a name gives the id it always gave: SHA-256's first 16 bytes with version nibble 5 and the RFC 9562 variant")
    func stable() {
        #expect(UUID.sha256Derived(from: "POST /v1/commands/account/42\nkey-1\n0").uuidString.lowercased()
            == "24bd07cb-67c2-5f23-8ba2-e0517d5df5ff")
        #expect(UUID.sha256Derived(from: "eventline.transfer\nt-1\ndebit\n0").uuidString.lowercased()
            == "958c86a1-8170-51b1-a101-64983385b0b8")
        #expect(UUID.sha256Derived(from: "a") != UUID.sha256Derived(from: "b"))
    }

    @Test("SHA-256 from libcrypto matches the FIPS 180-4 vectors")
    func vectors() {
        #expect(SHA256.hex([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hex(Array(repeating: UInt8(ascii: "a"), count: 1_000_000))
            == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }
}

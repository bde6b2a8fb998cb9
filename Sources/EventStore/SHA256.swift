import CCrypto
import Foundation

/// SHA-256 (FIPS 180-4) from OpenSSL's libcrypto (which libpq links already), for hashing API
/// keys, request bodies and names where no round trip to the database is wanted.
public enum SHA256 {
    /// The 32-byte digest of `message`.
    public static func hash(_ message: some Sequence<UInt8>) -> [UInt8] {
        let bytes = Array(message)
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        let ok = bytes.withUnsafeBytes { input in
            EVP_Digest(input.baseAddress, input.count, &digest, &length, EVP_sha256(), nil)
        }
        // EVP_Digest fails only when libcrypto cannot allocate its context: nothing to recover.
        precondition(ok == 1 && length == 32, "libcrypto's SHA-256 failed")
        return Array(digest.prefix(32))
    }

    /// The digest as 64 lowercase hex digits.
    public static func hex(_ message: some Sequence<UInt8>) -> String {
        hexDigits(hash(message))
    }

    /// Bytes as lowercase hex digits.
    static func hexDigits(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes { out += [digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]] }
        return String(decoding: out, as: UTF8.self)
    }
}

/// HMAC-SHA256 (RFC 2104) from libcrypto: what signs a webhook's batches.
public enum HMACSHA256 {
    /// The 32-byte MAC of `message` under `key`.
    public static func mac(key: some Sequence<UInt8>, message: some Sequence<UInt8>) -> [UInt8] {
        let key = Array(key)
        let message = Array(message)
        var mac = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        let result = key.withUnsafeBytes { key in
            message.withUnsafeBytes { message in
                HMAC(EVP_sha256(), key.baseAddress, Int32(key.count), message.baseAddress?.assumingMemoryBound(to: UInt8.self), message.count, &mac, &length)
            }
        }
        precondition(result != nil && length == 32, "libcrypto's HMAC-SHA256 failed")
        return Array(mac.prefix(32))
    }

    /// The MAC as 64 lowercase hex digits.
    public static func hex(key: some Sequence<UInt8>, message: some Sequence<UInt8>) -> String {
        SHA256.hexDigits(mac(key: key, message: message))
    }
}

extension UUID {
    /// A UUID derived from `name`: the first 16 bytes of its SHA-256 with the variant bits of
    /// RFC 9562 set, so that one name always gives one id (the log recognises a retried append
    /// by its ids). RFC 9562 calls a name-based UUID from SHA-256 a version 8 UUID (its
    /// appendix B.2); these carry version nibble 5, as the ids Eventline derived before this
    /// function did, and changing the nibble would give every name a second id.
    public static func sha256Derived(from name: String) -> UUID {
        var bytes = SHA256.hash(Array(name.utf8))
        bytes[6] = (bytes[6] & 0x0F) | 0x50
        bytes[8] = (bytes[8] & 0x3F) | 0x80
        return UUID(uuid: (bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
                           bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15]))
    }
}

import CCrypto
import Foundation

/// AES-256-GCM (NIST SP 800-38D) from OpenSSL's libcrypto (EVP): what encrypts personal data
/// and wraps the keys that encrypt it. A sealed box is `nonce (12 bytes) ‖ ciphertext ‖ tag
/// (16 bytes)`; the nonce is random for every seal, and the additional data is authenticated
/// but not stored.
public enum AESGCM {
    public static let keySize = 32
    public static let nonceSize = 12
    public static let tagSize = 16

    /// The cipher, fetched from the default provider once: OpenSSL 3 looks a cipher up on every
    /// initialisation otherwise (its "implicit fetch"), which costs more than sealing a field.
    /// A fetched cipher is immutable and may be used from any thread (OpenSSL's threading rules).
    nonisolated(unsafe) private static let cipher: OpaquePointer = {
        guard let fetched = EVP_CIPHER_fetch(nil, "AES-256-GCM", nil) else { fatalError("libcrypto has no AES-256-GCM") }
        return fetched
    }()

    /// The box cannot be opened: a wrong key, wrong additional data, or bytes that were changed.
    public struct AuthenticationFailure: Error, Sendable, CustomStringConvertible {
        public var description: String { "the sealed data does not authenticate under this key" }
    }

    /// Encrypts `plaintext` under the 32-byte `key`, with a fresh random nonce.
    public static func seal(_ plaintext: some Collection<UInt8>, key: [UInt8], authenticating aad: some Collection<UInt8> = [UInt8]()) -> [UInt8] {
        seal(plaintext, key: key, nonce: randomBytes(nonceSize), authenticating: aad)
    }

    /// Encrypts with a given nonce (tests with known vectors; a nonce must never repeat under one key).
    package static func seal(_ plaintext: some Collection<UInt8>, key: [UInt8], nonce: [UInt8], authenticating aad: some Collection<UInt8>) -> [UInt8] {
        precondition(key.count == keySize && nonce.count == nonceSize, "AES-256-GCM takes a 32-byte key and a 12-byte nonce")
        let input = Array(plaintext)
        let aad = Array(aad)
        guard let context = EVP_CIPHER_CTX_new() else { fatalError("libcrypto cannot allocate a cipher context") }
        defer { EVP_CIPHER_CTX_free(context) }
        var output = [UInt8](repeating: 0, count: input.count + 16)
        var tag = [UInt8](repeating: 0, count: tagSize)
        var length: Int32 = 0
        var total = 0
        var ok = EVP_EncryptInit_ex(context, cipher, nil, nil, nil) == 1
        ok = ok && EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_SET_IVLEN, Int32(nonceSize), nil) == 1
        ok = ok && EVP_EncryptInit_ex(context, nil, nil, key, nonce) == 1
        if ok, !aad.isEmpty { ok = EVP_EncryptUpdate(context, nil, &length, aad, Int32(aad.count)) == 1 }
        if ok, !input.isEmpty {
            ok = output.withUnsafeMutableBufferPointer { out in
                EVP_EncryptUpdate(context, out.baseAddress, &length, input, Int32(input.count)) == 1
            }
            total = Int(length)
        }
        if ok {
            ok = output.withUnsafeMutableBufferPointer { out in
                EVP_EncryptFinal_ex(context, out.baseAddress! + total, &length) == 1
            }
            total += Int(length)
        }
        ok = ok && EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_GET_TAG, Int32(tagSize), &tag) == 1
        // These fail only when libcrypto is broken or out of memory: nothing to recover.
        precondition(ok, "libcrypto's AES-256-GCM failed")
        return nonce + output.prefix(total) + tag
    }

    /// Decrypts a box made by `seal` under `key` with the same additional data.
    public static func open(_ box: some Collection<UInt8>, key: [UInt8], authenticating aad: some Collection<UInt8> = [UInt8]()) throws(AuthenticationFailure) -> [UInt8] {
        let box = Array(box)
        guard key.count == keySize, box.count >= nonceSize + tagSize else { throw AuthenticationFailure() }
        let aad = Array(aad)
        let nonce = Array(box[..<nonceSize])
        let ciphertext = Array(box[nonceSize..<(box.count - tagSize)])
        var tag = Array(box[(box.count - tagSize)...])
        guard let context = EVP_CIPHER_CTX_new() else { fatalError("libcrypto cannot allocate a cipher context") }
        defer { EVP_CIPHER_CTX_free(context) }
        var output = [UInt8](repeating: 0, count: ciphertext.count + 16)
        var length: Int32 = 0
        var total = 0
        var ok = EVP_DecryptInit_ex(context, cipher, nil, nil, nil) == 1
        ok = ok && EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_SET_IVLEN, Int32(nonceSize), nil) == 1
        ok = ok && EVP_DecryptInit_ex(context, nil, nil, key, nonce) == 1
        if ok, !aad.isEmpty { ok = EVP_DecryptUpdate(context, nil, &length, aad, Int32(aad.count)) == 1 }
        if ok, !ciphertext.isEmpty {
            ok = output.withUnsafeMutableBufferPointer { out in
                EVP_DecryptUpdate(context, out.baseAddress, &length, ciphertext, Int32(ciphertext.count)) == 1
            }
            total = Int(length)
        }
        ok = ok && EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_SET_TAG, Int32(tagSize), &tag) == 1
        // The tag is checked here: a wrong key or changed bytes fail.
        if ok {
            ok = output.withUnsafeMutableBufferPointer { out in
                EVP_DecryptFinal_ex(context, out.baseAddress! + total, &length) == 1
            }
            total += Int(length)
        }
        guard ok else { throw AuthenticationFailure() }
        return Array(output.prefix(total))
    }

    /// `count` bytes from libcrypto's CSPRNG.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        precondition(RAND_bytes(&bytes, Int32(count)) == 1, "libcrypto's random generator failed")
        return bytes
    }
}

import CLZ4
import Foundation

/// LZ4 block compression with the uncompressed length stored in front:
/// `[UInt32 little-endian uncompressed length][raw LZ4 block]`.
///
/// The raw block format carries no length of its own, so the header is what lets `decompress`
/// allocate exactly once and reject a block whose length does not add up. Every function is
/// thread-safe and throws only `LZ4Error`.
public enum LZ4Block {
    /// Bytes of the little-endian length header in front of every compressed block.
    public static let headerSize = 4

    /// Largest input one block can hold (`LZ4_MAX_INPUT_SIZE`, 2,113,929,216 bytes).
    public static let maxInputSize = Int(LZ4_MAX_INPUT_SIZE)

    /// Default ceiling on the length a header may declare: 256 MiB.
    public static let defaultMaxDecompressedSize = 256 << 20

    // An LZ4 byte can expand to at most 255 output bytes (a match-length extension byte); every
    // other construct expands less. A header declaring more than this is lying, and rejecting it
    // early avoids allocating the declared size first.
    private static let maxExpansionRatio = 255

    /// Compresses `input` into a header plus LZ4 block; empty input yields a valid 5-byte block.
    ///
    /// - Throws: `.inputTooLarge` if `input` exceeds `maxInputSize`, `.compressionFailed` if LZ4 refuses.
    public static func compress(_ input: some ContiguousBytes) throws -> [UInt8] {
        try input.withUnsafeBytes { source in
            let (sourceSize, bound) = try compressionSizes(source.count)
            var written: Int32 = 0
            let output = [UInt8](unsafeUninitializedCapacity: headerSize + Int(bound)) { buffer, count in
                written = encode(source, sourceSize, into: UnsafeMutableRawBufferPointer(buffer))
                count = written > 0 ? headerSize + Int(written) : 0
            }
            guard written > 0 else { throw failedCompression(source.count) }
            return output
        }
    }

    /// Compresses `input` into a header plus LZ4 block, as `Data`; same guarantees as the `[UInt8]` form.
    public static func compress(_ input: Data) throws -> Data {
        try input.withUnsafeBytes { source in
            let (sourceSize, bound) = try compressionSizes(source.count)
            var output = Data(count: headerSize + Int(bound))
            let written = output.withUnsafeMutableBytes { encode(source, sourceSize, into: $0) }
            guard written > 0 else { throw failedCompression(source.count) }
            output.count = headerSize + Int(written)
            return output
        }
    }

    /// Decompresses a header plus LZ4 block, returning exactly the bytes that were compressed.
    ///
    /// Never allocates more than `maxDecompressedSize` bytes, whatever the header claims, and
    /// never reads or writes outside the buffers.
    /// - Throws: `.truncatedInput` if `input` is shorter than the header;
    ///   `.declaredSizeTooLarge` if the header declares more than `maxDecompressedSize` (or than
    ///   `maxInputSize`); `.corruptInput` if the block is malformed, too short to expand to the
    ///   declared length, or would decode to more than declared; `.lengthMismatch` if it decodes
    ///   cleanly to fewer bytes than declared (a lying header, or a cut at a sequence boundary).
    public static func decompress(
        _ input: some ContiguousBytes,
        maxDecompressedSize: Int = defaultMaxDecompressedSize
    ) throws -> [UInt8] {
        try input.withUnsafeBytes { source in
            let length = try declaredLength(of: source, limit: maxDecompressedSize)
            var outcome: Result<Void, LZ4Error> = .success(())
            let output = [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
                outcome = decode(source, declared: length, into: UnsafeMutableRawBufferPointer(buffer))
                // On failure the buffer may be partly written; exposing none of it is always safe.
                if case .success = outcome { count = length } else { count = 0 }
            }
            try outcome.get()
            return output
        }
    }

    /// Decompresses a header plus LZ4 block into `Data`; same guarantees as the `[UInt8]` form.
    public static func decompress(
        _ input: Data,
        maxDecompressedSize: Int = defaultMaxDecompressedSize
    ) throws -> Data {
        try input.withUnsafeBytes { source in
            let length = try declaredLength(of: source, limit: maxDecompressedSize)
            var output = Data(count: length)
            try output.withUnsafeMutableBytes { decode(source, declared: length, into: $0) }.get()
            return output
        }
    }

    // MARK: - Internals

    /// Validates the size before any narrowing to `Int32`, which would trap past 2 GiB.
    private static func compressionSizes(_ count: Int) throws -> (source: Int32, bound: Int32) {
        guard count <= maxInputSize else {
            throw LZ4Error.inputTooLarge.with("\(count) bytes exceeds the LZ4 block limit of \(maxInputSize)")
        }
        let sourceSize = Int32(count)
        let bound = LZ4_compressBound(sourceSize)
        // LZ4_compressBound signals an unsupported size with 0 rather than an error code.
        guard bound > 0 else {
            throw LZ4Error.inputTooLarge.with("LZ4_compressBound rejected an input of \(count) bytes")
        }
        return (sourceSize, bound)
    }

    private static func failedCompression(_ count: Int) -> LZ4Error {
        LZ4Error.compressionFailed.with("LZ4_compress_default returned 0 for \(count) bytes")
    }

    /// Writes header and block into `destination` (sized for the bound); returns the block size, 0 on failure.
    private static func encode(
        _ source: UnsafeRawBufferPointer,
        _ sourceSize: Int32,
        into destination: UnsafeMutableRawBufferPointer
    ) -> Int32 {
        let length = UInt32(sourceSize)
        for index in 0..<headerSize {
            destination[index] = UInt8(truncatingIfNeeded: length >> (8 * UInt32(index)))
        }
        let block = UnsafeMutableRawBufferPointer(rebasing: destination[headerSize...])
        return withBaseAddress(source) { src in
            withBaseAddress(block) { dst in
                LZ4_compress_default(
                    src.assumingMemoryBound(to: CChar.self),
                    dst.assumingMemoryBound(to: CChar.self),
                    sourceSize,
                    Int32(block.count)
                )
            }
        }
    }

    /// Reads the header and rejects impossible or over-limit lengths before anything is allocated.
    private static func declaredLength(of source: UnsafeRawBufferPointer, limit: Int) throws -> Int {
        guard source.count >= headerSize else {
            throw LZ4Error.truncatedInput.with(
                "\(source.count) bytes is shorter than the \(headerSize)-byte length header"
            )
        }
        var declared: UInt64 = 0
        for index in 0..<headerSize {
            declared |= UInt64(source[index]) << (8 * UInt64(index))
        }
        let ceiling = min(max(limit, 0), maxInputSize)
        guard declared <= UInt64(ceiling) else {
            throw LZ4Error.declaredSizeTooLarge.with(
                "header declares \(declared) bytes; the limit is \(ceiling)"
            )
        }
        let length = Int(declared)
        let compressed = source.count - headerSize
        // The largest valid block (for maxInputSize bytes) is below Int32.max, so anything
        // longer cannot be a block and must not reach the Int32 conversion.
        guard compressed <= Int(Int32.max) else {
            throw LZ4Error.inputTooLarge.with("\(compressed) compressed bytes cannot be one LZ4 block")
        }
        guard length <= compressed * maxExpansionRatio else {
            throw LZ4Error.corruptInput.with(
                "header declares \(length) bytes, but \(compressed) compressed bytes decode to at most "
                    + "\(compressed * maxExpansionRatio)"
            )
        }
        return length
    }

    private static func decode(
        _ source: UnsafeRawBufferPointer,
        declared length: Int,
        into destination: UnsafeMutableRawBufferPointer
    ) -> Result<Void, LZ4Error> {
        let block = UnsafeRawBufferPointer(rebasing: source[headerSize...])
        let result = withBaseAddress(block) { src in
            withBaseAddress(destination) { dst in
                LZ4_decompress_safe(
                    src.assumingMemoryBound(to: CChar.self),
                    dst.assumingMemoryBound(to: CChar.self),
                    Int32(block.count),
                    Int32(length)
                )
            }
        }
        if result < 0 {
            return .failure(LZ4Error.corruptInput.with(
                "LZ4_decompress_safe failed (\(result)) on a \(block.count)-byte block declaring \(length) bytes"
            ))
        }
        if Int(result) != length {
            return .failure(LZ4Error.lengthMismatch.with(
                "header declares \(length) bytes but the block decodes to \(result)"
            ))
        }
        return .success(())
    }
}

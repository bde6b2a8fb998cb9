import CLZ4
import Foundation

/// The LZ4 frame format (magic number, header, blocks, optional checksums), byte-compatible with
/// the `lz4` command-line tool in both directions. Every function is thread-safe and throws only `LZ4Error`.
///
/// Use `LZ4FrameEncoder`/`LZ4FrameDecoder` to stream; these one-shot helpers hold everything in memory.
public enum LZ4Frame {
    /// Maximum uncompressed size of one block inside a frame; larger blocks compress slightly
    /// better but make both sides buffer more.
    public enum BlockSize: Sendable, CaseIterable {
        /// 64 KiB blocks.
        case max64KB
        /// 256 KiB blocks.
        case max256KB
        /// 1 MiB blocks.
        case max1MB
        /// 4 MiB blocks (what the `lz4` tool writes by default).
        case max4MB

        /// The block size in bytes.
        public var byteCount: Int {
            switch self {
            case .max64KB: 64 << 10
            case .max256KB: 256 << 10
            case .max1MB: 1 << 20
            case .max4MB: 4 << 20
            }
        }

        internal var id: LZ4F_blockSizeID_t {
            switch self {
            case .max64KB: LZ4F_max64KB
            case .max256KB: LZ4F_max256KB
            case .max1MB: LZ4F_max1MB
            case .max4MB: LZ4F_max4MB
            }
        }
    }

    /// Default ceiling on what `decompress` will produce: 256 MiB.
    public static let defaultMaxDecompressedSize = 256 << 20

    /// Compresses `input` into one complete frame that records its content size and, by default,
    /// a checksum of the content; empty input yields a valid frame that decodes to nothing.
    public static func compress(
        _ input: some ContiguousBytes,
        blockSize: BlockSize = .max64KB,
        contentChecksum: Bool = true
    ) throws -> [UInt8] {
        try input.withUnsafeBytes { source in
            var preferences = framePreferences(
                blockSize: blockSize, contentChecksum: contentChecksum,
                compressionLevel: 0, contentSize: UInt64(source.count)
            )
            let bound = LZ4F_compressFrameBound(source.count, &preferences)
            var outcome: Result<Int, LZ4Error> = .success(0)
            let output = [UInt8](unsafeUninitializedCapacity: bound) { buffer, count in
                outcome = compressFrame(source, into: UnsafeMutableRawBufferPointer(buffer), &preferences)
                count = (try? outcome.get()) ?? 0
            }
            _ = try outcome.get()
            return output
        }
    }

    /// Compresses `input` into one complete frame, as `Data`; same guarantees as the `[UInt8]` form.
    public static func compress(
        _ input: Data,
        blockSize: BlockSize = .max64KB,
        contentChecksum: Bool = true
    ) throws -> Data {
        try input.withUnsafeBytes { source in
            var preferences = framePreferences(
                blockSize: blockSize, contentChecksum: contentChecksum,
                compressionLevel: 0, contentSize: UInt64(source.count)
            )
            var output = Data(count: LZ4F_compressFrameBound(source.count, &preferences))
            let written = try output.withUnsafeMutableBytes {
                compressFrame(source, into: $0, &preferences)
            }.get()
            output.count = written
            return output
        }
    }

    /// Decompresses one or more concatenated frames (skippable frames are skipped), as `lz4 -d` does.
    ///
    /// Empty input decodes to empty output, as with the `lz4` tool.
    /// - Throws: `.frameError` for anything LZ4F rejects (bad magic, checksum mismatch, corrupt block,
    ///   trailing garbage); `.truncatedInput` if the input stops inside a frame;
    ///   `.outputLimitExceeded` once output would pass `maxDecompressedSize`.
    public static func decompress(
        _ input: some ContiguousBytes,
        maxDecompressedSize: Int = defaultMaxDecompressedSize
    ) throws -> [UInt8] {
        let decoder = try LZ4FrameDecoder(maxDecompressedSize: maxDecompressedSize)
        let output = try decoder.decode(input)
        try decoder.finish()
        return output
    }

    /// Decompresses one or more concatenated frames into `Data`; same guarantees as the `[UInt8]` form.
    public static func decompress(
        _ input: Data,
        maxDecompressedSize: Int = defaultMaxDecompressedSize
    ) throws -> Data {
        let decoder = try LZ4FrameDecoder(maxDecompressedSize: maxDecompressedSize)
        var output = Data()
        try input.withUnsafeBytes { source in
            try decoder.decode(bytes: source) { piece in
                output.append(contentsOf: piece)
                return true
            }
        }
        try decoder.finish()
        return output
    }

    // MARK: - Internals

    internal static func framePreferences(
        blockSize: BlockSize,
        contentChecksum: Bool,
        compressionLevel: Int,
        contentSize: UInt64
    ) -> LZ4F_preferences_t {
        // Imported C structs start zeroed, which is LZ4F_INIT_PREFERENCES (reserved fields must stay 0).
        var preferences = LZ4F_preferences_t()
        preferences.frameInfo.blockSizeID = blockSize.id
        preferences.frameInfo.contentChecksumFlag =
            contentChecksum ? LZ4F_contentChecksumEnabled : LZ4F_noContentChecksum
        // 0 means "unknown" to LZ4F; a known size lets LZ4F verify it on both ends.
        preferences.frameInfo.contentSize = contentSize
        preferences.compressionLevel = Int32(clamping: compressionLevel)
        return preferences
    }

    private static func compressFrame(
        _ source: UnsafeRawBufferPointer,
        into destination: UnsafeMutableRawBufferPointer,
        _ preferences: inout LZ4F_preferences_t
    ) -> Result<Int, LZ4Error> {
        let result = withBaseAddress(source) { src in
            withBaseAddress(destination) { dst in
                LZ4F_compressFrame(dst, destination.count, src, source.count, &preferences)
            }
        }
        if let failure = lz4fFailure(result, "LZ4F_compressFrame") { return .failure(failure) }
        return .success(result)
    }
}

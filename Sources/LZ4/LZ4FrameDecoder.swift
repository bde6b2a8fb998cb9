import CLZ4
import Foundation

/// Streaming decoder for LZ4 frames: accepts input in chunks split anywhere, decodes any number of
/// concatenated frames (skipping skippable ones) like `lz4 -d`, and reports truncation at `finish()`.
///
/// Output is produced in pieces of at most `pieceSize` bytes, so memory stays bounded with the
/// `decode(_:into:)` form however compressible the input is, and total output never passes
/// `maxDecompressedSize`. After any error every later call throws that same error.
/// Not `Sendable`: it owns a mutable C context; use it from one task at a time.
public final class LZ4FrameDecoder {
    /// Default size of the output pieces handed out while decoding: 64 KiB.
    public static let defaultPieceSize = 64 << 10

    private var context: OpaquePointer?
    private let piece: UnsafeMutableRawBufferPointer
    private let limit: Int
    private var failure: LZ4Error?
    private var finished = false
    // True once bytes of a frame have been consumed and that frame has not ended yet; this is
    // what `finish()` reports as truncation.
    private var insideFrame = false

    /// Largest piece of output handed to a sink at once.
    public var pieceSize: Int { piece.count }

    /// Total bytes decoded so far.
    public private(set) var decompressedByteCount = 0

    /// Creates a decoder that throws `.outputLimitExceeded` rather than produce more than
    /// `maxDecompressedSize` bytes in total (unlimited by default, since output is streamed).
    public init(maxDecompressedSize: Int = .max, pieceSize: Int = defaultPieceSize) throws {
        var context: OpaquePointer?
        let status = LZ4F_createDecompressionContext(&context, UInt32(LZ4F_VERSION))
        _ = try checkLZ4F(status, "LZ4F_createDecompressionContext")
        guard let context else {
            throw LZ4Error.frameError.with("LZ4F_createDecompressionContext returned no context")
        }
        self.context = context
        self.limit = max(maxDecompressedSize, 0)
        self.piece = .allocate(byteCount: max(pieceSize, 1), alignment: 16)
    }

    deinit {
        close()
        piece.deallocate()
    }

    /// Decodes `chunk` and returns every byte it completes; bytes of an unfinished block are kept
    /// inside the decoder until the rest arrives.
    /// - Throws: `.frameError` if LZ4F rejects the data (bad magic, checksum mismatch, corrupt block),
    ///   `.outputLimitExceeded`, or `.invalidState` after `finish()`/`close()`.
    public func decode(_ chunk: some ContiguousBytes) throws -> [UInt8] {
        var output: [UInt8] = []
        try chunk.withUnsafeBytes { source in
            try decode(bytes: source) { piece in
                output.append(contentsOf: piece)
                return true
            }
        }
        return output
    }

    /// Decodes `chunk`, handing output to `sink` in pieces of at most `pieceSize` bytes; a piece's
    /// memory is only valid during the call. An error thrown by `sink` is rethrown as-is and
    /// leaves the decoder failed (`.invalidState`), since the rest of the chunk was not consumed.
    public func decode(
        _ chunk: some ContiguousBytes,
        into sink: (UnsafeRawBufferPointer) throws -> Void
    ) throws {
        var sinkError: (any Error)?
        try chunk.withUnsafeBytes { source in
            try decode(bytes: source) { piece in
                do {
                    try sink(piece)
                    return true
                } catch {
                    sinkError = error
                    return false
                }
            }
        }
        if let sinkError { throw sinkError }
    }

    /// Declares the end of input; throws `.truncatedInput` if it stopped inside a frame.
    ///
    /// Input that ended exactly between frames is complete, including no input at all (as with `lz4 -d`).
    /// Releases the C context; later calls other than `close()` throw `.invalidState`.
    public func finish() throws {
        try checkUsable()
        finished = true
        close()
        if insideFrame {
            let error = LZ4Error.truncatedInput.with(
                "input ended inside an LZ4 frame after \(decompressedByteCount) decoded bytes"
            )
            failure = error
            throw error
        }
    }

    /// Releases the C context now rather than at deinit; safe to call more than once.
    public func close() {
        if let context {
            LZ4F_freeDecompressionContext(context)
            self.context = nil
        }
    }

    // MARK: - Internals

    private func checkUsable() throws {
        if let failure { throw failure }
        if finished { throw LZ4Error.invalidState.with("decoder already finished") }
        if context == nil { throw LZ4Error.invalidState.with("decoder closed") }
    }

    private func fail(_ error: LZ4Error) -> LZ4Error {
        failure = error
        close()
        return error
    }

    /// Feeds `source` through LZ4F until all of it is consumed and no decoded bytes are pending.
    /// `emit` returns false to abandon decoding (the decoder is then failed).
    internal func decode(
        bytes source: UnsafeRawBufferPointer,
        emit: (UnsafeRawBufferPointer) -> Bool
    ) throws {
        try checkUsable()
        guard let context else { return }
        var offset = 0
        var idleCalls = 0
        while true {
            // One byte beyond the limit is enough to detect overflow without producing more.
            let allowance = limit - decompressedByteCount
            let room = allowance < piece.count ? allowance + 1 : piece.count
            var consumed = source.count - offset
            var produced = room
            let hint = withBaseAddress(source) { base in
                LZ4F_decompress(context, piece.baseAddress, &produced, base + offset, &consumed, nil)
            }
            if let error = lz4fFailure(hint, "LZ4F_decompress (chunk offset \(offset))") {
                throw fail(error)
            }
            offset += consumed
            // A zero-input call at a frame boundary returns a nonzero "header size" hint,
            // so only calls that consumed input (or just completed a frame) update the state.
            if consumed > 0 || hint == 0 {
                insideFrame = hint != 0
            }
            if produced > 0 {
                decompressedByteCount += produced
                if decompressedByteCount > limit {
                    throw fail(LZ4Error.outputLimitExceeded.with(
                        "frame output exceeds the limit of \(limit) bytes"
                    ))
                }
                guard emit(UnsafeRawBufferPointer(start: piece.baseAddress, count: produced)) else {
                    _ = fail(LZ4Error.invalidState.with("output sink threw; the decoder cannot resume"))
                    return
                }
            }
            if offset == source.count && produced < room {
                return
            }
            if consumed == 0 && produced == 0 {
                // LZ4F always makes progress when given input and room; guard against a spin anyway.
                idleCalls += 1
                if idleCalls > 1 {
                    throw fail(LZ4Error.frameError.with("LZ4F_decompress made no progress"))
                }
            } else {
                idleCalls = 0
            }
        }
    }
}

@available(*, unavailable, message: "LZ4FrameDecoder owns a mutable C context")
extension LZ4FrameDecoder: Sendable {}

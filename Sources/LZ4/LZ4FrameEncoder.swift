import CLZ4
import Foundation

/// Streaming encoder for one LZ4 frame, readable by `lz4 -d` and `LZ4FrameDecoder`.
///
/// The frame header is emitted with the first output (so an encoder that is only `finish()`ed
/// still yields a valid empty frame); concatenating everything returned by `update`, `flush` and
/// `finish` gives the complete frame. Working memory is bounded by the block size whatever the
/// chunk sizes. After any error every later call throws that same error.
/// Not `Sendable`: it owns a mutable C context; use it from one task at a time.
public final class LZ4FrameEncoder {
    private enum State {
        case headerPending
        case open
        case finished
        case failed(LZ4Error)
        case closed
    }

    private var context: OpaquePointer?
    private var preferences: LZ4F_preferences_t
    private let blockBytes: Int
    private let scratch: UnsafeMutableRawBufferPointer
    private var state = State.headerPending

    /// Creates an encoder; `contentChecksum` makes decoders verify the whole content,
    /// `compressionLevel` 0 is LZ4's fast mode (3 and above select LZ4 HC), and a non-nil
    /// `contentSize` is written to the header and checked by `finish()`.
    public init(
        blockSize: LZ4Frame.BlockSize = .max64KB,
        contentChecksum: Bool = true,
        compressionLevel: Int = 0,
        contentSize: UInt64? = nil
    ) throws {
        var context: OpaquePointer?
        let status = LZ4F_createCompressionContext(&context, UInt32(LZ4F_VERSION))
        _ = try checkLZ4F(status, "LZ4F_createCompressionContext")
        guard let context else {
            throw LZ4Error.frameError.with("LZ4F_createCompressionContext returned no context")
        }
        self.context = context
        self.preferences = LZ4Frame.framePreferences(
            blockSize: blockSize, contentChecksum: contentChecksum,
            compressionLevel: compressionLevel, contentSize: contentSize ?? 0
        )
        self.blockBytes = blockSize.byteCount
        // Input is fed to LZ4F at most one block at a time, so one bound covers header plus any
        // update, flush or end; LZ4F_compressBound already accounts for data it buffers internally.
        let capacity = Int(LZ4F_HEADER_SIZE_MAX) + LZ4F_compressBound(blockBytes, &preferences)
        self.scratch = .allocate(byteCount: capacity, alignment: 16)
    }

    deinit {
        close()
        scratch.deallocate()
    }

    /// Compresses `chunk` and returns whatever frame bytes are ready (the header on the first
    /// call); may return nothing while LZ4F buffers a partial block.
    /// - Throws: `.frameError` if LZ4F fails, `.invalidState` after `finish()`/`close()`.
    public func update(_ chunk: some ContiguousBytes) throws -> [UInt8] {
        try chunk.withUnsafeBytes { source in
            var output = try beginIfNeeded()
            var offset = 0
            while offset < source.count {
                let length = min(blockBytes, source.count - offset)
                let written = try call("LZ4F_compressUpdate") { context, destination in
                    LZ4F_compressUpdate(
                        context, destination.baseAddress, destination.count,
                        source.baseAddress! + offset, length, nil
                    )
                }
                output.append(contentsOf: scratch[..<written])
                offset += length
            }
            return output
        }
    }

    /// Forces out everything buffered so far as complete blocks, so a reader can decode all input
    /// given up to now; costs some compression ratio if used often.
    public func flush() throws -> [UInt8] {
        var output = try beginIfNeeded()
        let written = try call("LZ4F_flush") { context, destination in
            LZ4F_flush(context, destination.baseAddress, destination.count, nil)
        }
        output.append(contentsOf: scratch[..<written])
        return output
    }

    /// Ends the frame (remaining data, end mark, content checksum) and releases the C context.
    /// - Throws: `.frameError` if LZ4F fails, e.g. when a declared `contentSize` does not match
    ///   the bytes given; `.invalidState` if already finished or closed.
    public func finish() throws -> [UInt8] {
        var output = try beginIfNeeded()
        let written = try call("LZ4F_compressEnd") { context, destination in
            LZ4F_compressEnd(context, destination.baseAddress, destination.count, nil)
        }
        output.append(contentsOf: scratch[..<written])
        state = .finished
        close()
        return output
    }

    /// Releases the C context now rather than at deinit; safe to call more than once.
    /// An unfinished frame is abandoned.
    public func close() {
        if let context {
            LZ4F_freeCompressionContext(context)
            self.context = nil
        }
        if case .open = state { state = .closed }
        if case .headerPending = state { state = .closed }
    }

    // MARK: - Internals

    private func beginIfNeeded() throws -> [UInt8] {
        switch state {
        case .open:
            return []
        case .headerPending:
            let written = try call("LZ4F_compressBegin") { context, destination in
                LZ4F_compressBegin(context, destination.baseAddress, destination.count, &preferences)
            }
            state = .open
            return Array(scratch[..<written])
        case .finished:
            throw LZ4Error.invalidState.with("encoder already finished")
        case .closed:
            throw LZ4Error.invalidState.with("encoder closed")
        case .failed(let error):
            throw error
        }
    }

    /// Runs one LZ4F call into the scratch buffer; on error the context is unusable, so the encoder fails.
    private func call(
        _ operation: String,
        _ body: (OpaquePointer, UnsafeMutableRawBufferPointer) -> Int
    ) throws -> Int {
        guard let context else { throw LZ4Error.invalidState.with("encoder closed") }
        let result = body(context, scratch)
        if let error = lz4fFailure(result, operation) {
            state = .failed(error)
            close()
            throw error
        }
        return result
    }
}

@available(*, unavailable, message: "LZ4FrameEncoder owns a mutable C context")
extension LZ4FrameEncoder: Sendable {}

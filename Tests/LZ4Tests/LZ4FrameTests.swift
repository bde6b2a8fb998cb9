import EventlineTestSupport
import Foundation
import LZ4
import Testing

@Suite("LZ4 frame format")
struct LZ4FrameTests {
    /// Encodes with the streaming encoder, feeding `chunks` one by one.
    private func encode(
        _ chunks: [ArraySlice<UInt8>],
        blockSize: LZ4Frame.BlockSize = .max64KB,
        contentChecksum: Bool = true
    ) throws -> [UInt8] {
        let encoder = try LZ4FrameEncoder(blockSize: blockSize, contentChecksum: contentChecksum)
        var frame: [UInt8] = []
        for chunk in chunks {
            frame += try encoder.update(chunk)
        }
        frame += try encoder.finish()
        return frame
    }

    /// Decodes `chunks` one by one with a fresh decoder and finishes it.
    private func decode(_ chunks: [ArraySlice<UInt8>]) throws -> [UInt8] {
        let decoder = try LZ4FrameDecoder()
        var output: [UInt8] = []
        for chunk in chunks {
            output += try decoder.decode(chunk)
        }
        try decoder.finish()
        return output
    }

    @Test("Frame compress then decompress returns the original bytes", arguments: Payload.allCases)
    func roundTrip(payload: Payload) throws {
        let original = payload.bytes
        let frame = try LZ4Frame.compress(original)
        expectSameBytes(try LZ4Frame.decompress(frame), original)
    }

    @Test("Frame Data overloads round trip")
    func dataRoundTrip() throws {
        let original = Data(Payload.mixed8MiB.bytes.prefix(500_000))
        let frame: Data = try LZ4Frame.compress(original)
        let restored: Data = try LZ4Frame.decompress(frame)
        expectSameBytes(restored, original)
        expectSameBytes(try LZ4Frame.decompress([UInt8](frame)), [UInt8](original))
        expectSameBytes(try LZ4Frame.decompress(Data()), Data())
    }

    @Test("Frame compression shrinks compressible input")
    func compressionRatio() throws {
        let text = Payload.compressible1MiB.bytes
        #expect(try LZ4Frame.compress(text).count < text.count / 2)
        let zeros = [UInt8](repeating: 0, count: 8 << 20)
        let frame = try LZ4Frame.compress(zeros, blockSize: .max4MB)
        #expect(frame.count < zeros.count / 200)
        expectSameBytes(try LZ4Frame.decompress(frame), zeros)
    }

    @Test("Streaming encoder round trips with random chunk sizes", arguments: LZ4Frame.BlockSize.allCases)
    func streamingRoundTrip(blockSize: LZ4Frame.BlockSize) throws {
        let original = Payload.mixed8MiB.bytes
        let frame = try encode(randomChunks(of: original, sizes: 1...200_000, seed: 7), blockSize: blockSize)
        expectSameBytes(try decode(randomChunks(of: frame, sizes: 1...300_000, seed: 8)), original)
        expectSameBytes(try LZ4Frame.decompress(frame), original)
    }

    @Test("Encoder that is only finished yields a valid empty frame")
    func emptyFrame() throws {
        let encoder = try LZ4FrameEncoder()
        let frame = try encoder.finish()
        expectSameBytes(Array(frame.prefix(4)), [0x04, 0x22, 0x4D, 0x18])
        #expect(try LZ4Frame.decompress(frame).isEmpty)
    }

    @Test("Decoder accepts input split at arbitrary small chunk boundaries")
    func smallChunks() throws {
        let original = Payload.compressible1MiB.bytes
        let frame = try LZ4Frame.compress(original)
        for seed: UInt64 in 1...3 {
            expectSameBytes(try decode(randomChunks(of: frame, sizes: 1...64, seed: seed)), original)
        }
        let small = Payload.text4KiB.bytes
        let smallFrame = try LZ4Frame.compress(small, blockSize: .max64KB, contentChecksum: true)
        expectSameBytes(try decode(randomChunks(of: smallFrame, sizes: 1...1, seed: 0)), small)
    }

    @Test("Decoder hands output to the sink in pieces no larger than pieceSize")
    func boundedPieces() throws {
        let original = [UInt8](repeating: 0x61, count: 8 << 20)
        let frame = try LZ4Frame.compress(original, blockSize: .max4MB)
        let decoder = try LZ4FrameDecoder(pieceSize: 4096)
        var largest = 0
        var output: [UInt8] = []
        try decoder.decode(frame) { piece in
            largest = max(largest, piece.count)
            output.append(contentsOf: piece)
        }
        try decoder.finish()
        #expect(largest == 4096)
        expectSameBytes(output, original)
        #expect(decoder.decompressedByteCount == original.count)
    }

    @Test("Decoder reads concatenated frames and skips skippable frames, as lz4 -d does")
    func concatenatedFrames() throws {
        let first = Payload.text4KiB.bytes
        let second = Payload.random64KiB.bytes
        let skippable: [UInt8] = [0x50, 0x2A, 0x4D, 0x18, 0x03, 0x00, 0x00, 0x00, 0xDE, 0xAD, 0xBE]
        let stream = try LZ4Frame.compress(first) + skippable + (try LZ4Frame.compress(second))
            + (try encode([[]]))
        expectSameBytes(try LZ4Frame.decompress(stream), first + second)
        expectSameBytes(try decode(randomChunks(of: stream, sizes: 1...5000, seed: 11)), first + second)
    }

    @Test("Empty input decodes to nothing, as with the lz4 tool")
    func emptyInput() throws {
        #expect(try LZ4Frame.decompress([UInt8]()).isEmpty)
        let decoder = try LZ4FrameDecoder()
        #expect(try decoder.decode([UInt8]()).isEmpty)
        try decoder.finish()
    }

    @Test("Input that stops inside a frame makes finish() throw truncatedInput")
    func truncatedFrame() throws {
        let original = Payload.text4KiB.bytes
        let frame = try LZ4Frame.compress(original)
        for cut in 1..<frame.count {
            let decoder = try LZ4FrameDecoder()
            let partial = try decoder.decode(frame.prefix(cut))
            #expect(original.starts(with: partial))
            #expect(throws: LZ4Error.truncatedInput, "cut at \(cut) of \(frame.count)") {
                try decoder.finish()
            }
        }
        #expect(throws: LZ4Error.truncatedInput) { _ = try LZ4Frame.decompress(frame.dropLast()) }
    }

    @Test("A byte flipped in a stored block is caught by the content checksum")
    func corruptStoredBlock() throws {
        // Random bytes are stored raw, so any flip in the block data changes the content and
        // only the content checksum can notice.
        let original = Payload.random64KiB.bytes
        var frame = try encode([original[...]])
        let headerAndBlockSize = 7 + 4
        frame[headerAndBlockSize + original.count / 2] ^= 0x01
        #expect(throws: LZ4Error.frameError) { _ = try LZ4Frame.decompress(frame) }
    }

    @Test("Bytes overwritten in the middle of a compressed frame are rejected")
    func corruptCompressedBlock() throws {
        let original = Payload.compressible1MiB.bytes
        var frame = try LZ4Frame.compress(original)
        let middle = frame.count / 2
        for index in middle..<(middle + 16) {
            frame[index] ^= 0xA5
        }
        #expect(throws: LZ4Error.frameError) { _ = try LZ4Frame.decompress(frame) }
        #expect(throws: LZ4Error.frameError) { _ = try decode(randomChunks(of: frame, sizes: 1...4096, seed: 3)) }
    }

    @Test("Any single corrupted byte is rejected or decodes to the original, never to wrong data")
    func corruptionFuzz() throws {
        var generator = SplitMix64(seed: 2024)
        let original = Payload.text4KiB.bytes
        let frame = try LZ4Frame.compress(original)
        for round in 0..<2000 {
            var damaged = frame
            let index = Int.random(in: 0..<damaged.count, using: &generator)
            damaged[index] ^= UInt8.random(in: 1...255, using: &generator)
            do {
                let output = try LZ4Frame.decompress(damaged)
                expectSameBytes(output, original, "round \(round): byte \(index) decoded to different data")
            } catch {
                let code = (error as? LZ4Error)?.code
                #expect(
                    code == LZ4Error.frameError.code || code == LZ4Error.truncatedInput.code,
                    "round \(round): byte \(index): \(error)"
                )
            }
        }
    }

    @Test("Data that is not an LZ4 frame throws frameError")
    func notAFrame() throws {
        #expect(throws: LZ4Error.frameError) { _ = try LZ4Frame.decompress(Array("hello, world".utf8)) }
        let trailingGarbage = try LZ4Frame.compress(Payload.text4KiB.bytes) + Array("garbage!".utf8)
        #expect(throws: LZ4Error.frameError) { _ = try LZ4Frame.decompress(trailingGarbage) }
    }

    @Test("Decoder stops with outputLimitExceeded once output passes the limit")
    func outputLimit() throws {
        let original = Payload.compressible1MiB.bytes
        let frame = try LZ4Frame.compress(original)
        #expect(throws: LZ4Error.outputLimitExceeded) {
            _ = try LZ4Frame.decompress(frame, maxDecompressedSize: original.count - 1)
        }
        expectSameBytes(try LZ4Frame.decompress(frame, maxDecompressedSize: original.count), original)

        let decoder = try LZ4FrameDecoder(maxDecompressedSize: 1000, pieceSize: 512)
        var produced = 0
        #expect(throws: LZ4Error.outputLimitExceeded) {
            try decoder.decode(frame) { produced += $0.count }
        }
        #expect(produced <= 1000)
    }

    @Test("A declared content size that does not match the input fails at finish()")
    func contentSizeMismatch() throws {
        let encoder = try LZ4FrameEncoder(contentSize: 10)
        _ = try encoder.update([1, 2, 3, 4, 5])
        #expect(throws: LZ4Error.frameError) { _ = try encoder.finish() }

        let exact = try LZ4FrameEncoder(contentSize: 5)
        let frame = try exact.update([1, 2, 3, 4, 5]) + (try exact.finish())
        expectSameBytes(try LZ4Frame.decompress(frame), [1, 2, 3, 4, 5])
    }

    @Test("flush() makes everything written so far decodable before the frame ends")
    func flushMidStream() throws {
        let encoder = try LZ4FrameEncoder(blockSize: .max4MB)
        let decoder = try LZ4FrameDecoder()
        let first = Payload.text4KiB.bytes
        let buffered = try encoder.update(first)
        #expect(try decoder.decode(buffered).isEmpty)
        expectSameBytes(try decoder.decode(try encoder.flush()), first)
        let second = Payload.random64KiB.bytes
        let rest = try encoder.update(second) + (try encoder.finish())
        expectSameBytes(try decoder.decode(rest), second)
        try decoder.finish()
    }

    @Test("Encoder and decoder throw invalidState after finish or close, and errors are sticky")
    func lifecycle() throws {
        let encoder = try LZ4FrameEncoder()
        _ = try encoder.finish()
        #expect(throws: LZ4Error.invalidState) { _ = try encoder.update([1]) }
        #expect(throws: LZ4Error.invalidState) { _ = try encoder.finish() }
        encoder.close()
        encoder.close()

        let closed = try LZ4FrameEncoder()
        closed.close()
        #expect(throws: LZ4Error.invalidState) { _ = try closed.update([1]) }

        let decoder = try LZ4FrameDecoder()
        try decoder.finish()
        #expect(throws: LZ4Error.invalidState) { _ = try decoder.decode([1]) }
        #expect(throws: LZ4Error.invalidState) { _ = try decoder.finish() }

        let failed = try LZ4FrameDecoder()
        #expect(throws: LZ4Error.frameError) { _ = try failed.decode(Array("not lz4".utf8)) }
        #expect(throws: LZ4Error.frameError) { _ = try failed.decode(try LZ4Frame.compress([1, 2, 3])) }
        #expect(throws: LZ4Error.frameError) { _ = try failed.finish() }
    }

    @Test("An error thrown by the output sink is rethrown and leaves the decoder unusable")
    func sinkError() throws {
        struct Stop: Error {}
        let decoder = try LZ4FrameDecoder()
        let frame = try LZ4Frame.compress(Payload.compressible1MiB.bytes)
        #expect(throws: Stop.self) { _ = try decoder.decode(frame) { _ in throw Stop() } }
        #expect(throws: LZ4Error.invalidState) { _ = try decoder.decode(frame) }
    }
}

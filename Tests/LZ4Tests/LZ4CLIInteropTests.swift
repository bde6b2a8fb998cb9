import Foundation
import LZ4
import Testing

/// Proves byte-level compatibility with the reference `lz4` tool; fails (never skips) if it is missing.
@Suite("LZ4 frame interoperability with the lz4 command-line tool")
struct LZ4CLIInteropTests {
    static let cliPayloads: [Payload] = [.empty, .oneByte, .text4KiB, .incompressible1MiB, .mixed8MiB]

    @Test("The lz4 command-line tool is installed and on PATH")
    func toolIsInstalled() throws {
        _ = try LZ4Tool.locate()
    }

    @Test("lz4 -d decodes frames from LZ4Frame.compress", arguments: cliPayloads)
    func cliDecodesOneShotFrames(payload: Payload) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let original = payload.bytes
        let file = try directory.write(try LZ4Frame.compress(original), named: "ours.lz4")
        expectSameBytes(try LZ4Tool.run(["-d", "-c", file.path]), original)
    }

    @Test("lz4 -d decodes streamed frames for every block size", arguments: LZ4Frame.BlockSize.allCases)
    func cliDecodesStreamedFrames(blockSize: LZ4Frame.BlockSize) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let original = Payload.mixed8MiB.bytes.prefix(3 << 20)
        let encoder = try LZ4FrameEncoder(blockSize: blockSize, contentChecksum: true, compressionLevel: 0)
        var frame: [UInt8] = []
        for chunk in randomChunks(of: Array(original), sizes: 1...100_000, seed: 17) {
            frame += try encoder.update(chunk)
        }
        frame += try encoder.flush()
        frame += try encoder.finish()
        let file = try directory.write(frame, named: "streamed.lz4")
        expectSameBytes(try LZ4Tool.run(["-d", "-c", file.path]), Array(original))
    }

    @Test("lz4 -d decodes an LZ4 HC frame without a content checksum and concatenated frames")
    func cliDecodesVariants() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let original = Payload.compressible1MiB.bytes
        let encoder = try LZ4FrameEncoder(
            blockSize: .max256KB, contentChecksum: false, compressionLevel: 9, contentSize: UInt64(original.count)
        )
        let hcFrame = try encoder.update(original) + (try encoder.finish())
        let file = try directory.write(hcFrame + (try LZ4Frame.compress(Payload.text4KiB.bytes)), named: "two.lz4")
        expectSameBytes(try LZ4Tool.run(["-d", "-c", file.path]), original + Payload.text4KiB.bytes)
    }

    /// `lz4` option sets covering its frame features: block sizes, independent blocks,
    /// block checksums, content size, no content checksum, HC levels.
    static let cliOptions: [[String]] = [
        [],
        ["-B4"],
        ["-B5", "-BD"],
        ["-B6", "-BX", "--content-size"],
        ["-B7", "--no-frame-crc"],
        ["-9"],
        ["-12", "-B4", "--content-size"],
        ["--fast=5"],
    ]

    @Test("LZ4FrameDecoder reads frames written by lz4 -c in random chunk sizes", arguments: cliOptions)
    func decoderReadsCLIFrames(options: [String]) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let original = Payload.mixed8MiB.bytes.prefix(2 << 20)
        let file = try directory.write(Array(original), named: "plain.bin")
        let frame = try LZ4Tool.run(["-c"] + options + [file.path])

        let decoder = try LZ4FrameDecoder()
        var output: [UInt8] = []
        for chunk in randomChunks(of: frame, sizes: 1...70_000, seed: 23) {
            output += try decoder.decode(chunk)
        }
        try decoder.finish()
        expectSameBytes(output, Array(original))
        expectSameBytes(try LZ4Frame.decompress(frame), Array(original))
    }

    @Test("LZ4Frame.decompress reads empty, tiny and 8 MiB files compressed by lz4 -c", arguments: cliPayloads)
    func decompressReadsCLIFrames(payload: Payload) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let file = try directory.write(payload.bytes, named: "plain.bin")
        let frame = try LZ4Tool.run(["-c", file.path])
        expectSameBytes(try LZ4Frame.decompress(frame), payload.bytes)
        expectSameBytes(try LZ4Frame.decompress(Data(frame)), Data(payload.bytes))
    }

    @Test("LZ4FrameDecoder reads several lz4 -c outputs concatenated, as lz4 -d does")
    func decoderReadsConcatenatedCLIFrames() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let first = Payload.text4KiB.bytes
        let second = Payload.random64KiB.bytes
        let firstFrame = try LZ4Tool.run(["-c", try directory.write(first, named: "a.bin").path])
        let secondFrame = try LZ4Tool.run(["-c", "-B4", try directory.write(second, named: "b.bin").path])
        let stream = firstFrame + secondFrame
        let streamFile = try directory.write(stream, named: "ab.lz4")
        expectSameBytes(try LZ4Tool.run(["-d", "-c", streamFile.path]), first + second)
        expectSameBytes(try LZ4Frame.decompress(stream), first + second)
    }

    @Test("lz4 -d and LZ4FrameDecoder both reject the same truncated frame")
    func truncatedFrameRejectedByBoth() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let frame = try LZ4Frame.compress(Payload.random64KiB.bytes)
        let truncated = Array(frame.dropLast(10))
        let file = try directory.write(truncated, named: "truncated.lz4")
        #expect(throws: LZ4Tool.Failure.self) { _ = try LZ4Tool.run(["-d", "-c", file.path]) }
        #expect(throws: LZ4Error.truncatedInput) { _ = try LZ4Frame.decompress(truncated) }
    }
}

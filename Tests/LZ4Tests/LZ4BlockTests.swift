import EventlineTestSupport
import Foundation
import LZ4
import Testing

@Suite("LZ4 block format")
struct LZ4BlockTests {
    private func header(_ length: UInt32) -> [UInt8] {
        (0..<4).map { UInt8(truncatingIfNeeded: length >> (8 * UInt32($0))) }
    }

    @Test("Block compress then decompress returns the original bytes", arguments: Payload.allCases)
    func roundTrip(payload: Payload) throws {
        let original = payload.bytes
        let compressed = try LZ4Block.compress(original)
        let restored = try LZ4Block.decompress(compressed)
        expectSameBytes(restored, original)
    }

    @Test("Block Data overloads round trip, including a Data slice not starting at index 0")
    func dataRoundTrip() throws {
        let original = Data(Payload.mixed8MiB.bytes.prefix(300_000))
        let compressed: Data = try LZ4Block.compress(original)
        expectSameBytes([UInt8](compressed), (try LZ4Block.compress([UInt8](original))))
        let restored: Data = try LZ4Block.decompress(compressed)
        expectSameBytes(restored, original)

        let slice = original[1000..<5000]
        let sliceCompressed: Data = try LZ4Block.compress(slice)
        expectSameBytes(try LZ4Block.decompress(sliceCompressed), Data(slice))

        let prefixed = Data([0xAA, 0xBB]) + compressed
        expectSameBytes(try LZ4Block.decompress(prefixed[2...]), original)
    }

    @Test("Block header is the uncompressed length, little-endian, in front of the raw block")
    func headerLayout() throws {
        let original = Payload.text4KiB.bytes
        let compressed = try LZ4Block.compress(original)
        expectSameBytes(Array(compressed.prefix(LZ4Block.headerSize)), header(UInt32(original.count)))
    }

    @Test("Empty input compresses to a header and a one-byte block and round trips")
    func emptyInput() throws {
        let compressed = try LZ4Block.compress([UInt8]())
        expectSameBytes(compressed, header(0) + [0])
        #expect(try LZ4Block.decompress(compressed).isEmpty)
        #expect(try LZ4Block.decompress(Data(compressed)).isEmpty)
    }

    @Test("Compressible input shrinks and incompressible input grows only by the bound")
    func compressionRatio() throws {
        let text = Payload.compressible1MiB.bytes
        let compressedText = try LZ4Block.compress(text)
        #expect(compressedText.count < text.count / 2)

        let zeros = [UInt8](repeating: 0, count: 8 << 20)
        let compressedZeros = try LZ4Block.compress(zeros)
        #expect(compressedZeros.count < zeros.count / 200)
        expectSameBytes(try LZ4Block.decompress(compressedZeros), zeros)

        let noise = Payload.incompressible1MiB.bytes
        let compressedNoise = try LZ4Block.compress(noise)
        #expect(compressedNoise.count <= LZ4Block.headerSize + noise.count + noise.count / 255 + 16)
    }

    @Test("Block decompress of input shorter than the 4-byte header throws truncatedInput")
    func shorterThanHeader() {
        for length in 0..<LZ4Block.headerSize {
            let input = [UInt8](repeating: 0, count: length)
            #expect(throws: LZ4Error.truncatedInput) { _ = try LZ4Block.decompress(input) }
        }
    }

    @Test("A header declaring more than the limit throws declaredSizeTooLarge before allocating")
    func declaredSizeAboveLimit() throws {
        let body = Array(try LZ4Block.compress(Payload.text4KiB.bytes).dropFirst(LZ4Block.headerSize))
        // 4 GiB - 1: would be a huge allocation if trusted.
        #expect(throws: LZ4Error.declaredSizeTooLarge) {
            _ = try LZ4Block.decompress(header(.max) + body)
        }
        // Above a caller-chosen limit but well within LZ4's range.
        #expect(throws: LZ4Error.declaredSizeTooLarge) {
            _ = try LZ4Block.decompress(header(2 << 20) + body, maxDecompressedSize: 1 << 20)
        }
        // A genuine block that is simply larger than the caller allows.
        let genuine = try LZ4Block.compress(Payload.text4KiB.bytes)
        #expect(throws: LZ4Error.declaredSizeTooLarge) {
            _ = try LZ4Block.decompress(genuine, maxDecompressedSize: 4095)
        }
        expectSameBytes(try LZ4Block.decompress(genuine, maxDecompressedSize: 4096), Payload.text4KiB.bytes)
    }

    @Test("A header declaring slightly more than the block holds throws lengthMismatch")
    func headerClaimsMore() throws {
        let original = Payload.text4KiB.bytes
        let body = Array(try LZ4Block.compress(original).dropFirst(LZ4Block.headerSize))
        for extra in [1, 7, 1000] {
            #expect(throws: LZ4Error.lengthMismatch) {
                _ = try LZ4Block.decompress(header(UInt32(original.count + extra)) + body)
            }
        }
    }

    @Test("A header declaring more than LZ4 can expand the block to throws corruptInput")
    func headerClaimsImpossibleExpansion() {
        // Five compressed bytes can never decode to a megabyte, so this is rejected unallocated.
        #expect(throws: LZ4Error.corruptInput) {
            _ = try LZ4Block.decompress(header(1 << 20) + [0x10, 0x41, 0x00, 0x00, 0x00])
        }
    }

    @Test("A header declaring less than the block holds throws corruptInput")
    func headerClaimsLess() throws {
        let original = Payload.text4KiB.bytes
        let body = Array(try LZ4Block.compress(original).dropFirst(LZ4Block.headerSize))
        for shortfall in [1, 100, original.count] {
            #expect(throws: LZ4Error.corruptInput) {
                _ = try LZ4Block.decompress(header(UInt32(original.count - shortfall)) + body)
            }
        }
    }

    @Test("A block cut short at any point throws corruptInput or lengthMismatch, never succeeds")
    func truncatedBlock() throws {
        let original = Payload.text4KiB.bytes
        let compressed = try LZ4Block.compress(original)
        var codes: Set<LZ4Error.Code> = []
        for cut in LZ4Block.headerSize..<compressed.count {
            // A cut right after a sequence's literals decodes cleanly to fewer bytes, which only
            // the stored length can catch; any other cut is malformed LZ4.
            let error = #expect(throws: LZ4Error.self, "cut at \(cut) of \(compressed.count)") {
                _ = try LZ4Block.decompress(Array(compressed.prefix(cut)))
            }
            if let error { codes.insert(error.code) }
        }
        #expect(codes.isSubset(of: [LZ4Error.corruptInput.code, LZ4Error.lengthMismatch.code]))
        #expect(codes.contains(LZ4Error.corruptInput.code))
    }

    @Test("Random garbage and bit flips never crash and never return a wrong length")
    func corruptBytes() throws {
        var generator = SplitMix64(seed: 99)
        let original = Payload.text4KiB.bytes
        let compressed = try LZ4Block.compress(original)

        for round in 0..<2000 {
            var input: [UInt8]
            if round.isMultiple(of: 2) {
                input = header(UInt32.random(in: 0...8192, using: &generator))
                    + randomBytes(Int.random(in: 0...300, using: &generator), seed: UInt64(round))
            } else {
                input = compressed
                let index = Int.random(in: LZ4Block.headerSize..<input.count, using: &generator)
                input[index] ^= UInt8.random(in: 1...255, using: &generator)
            }
            do {
                let output = try LZ4Block.decompress(input)
                // Garbage that happens to be a valid block must still honour the header.
                #expect(output.count == Int(input[0]) | Int(input[1]) << 8 | Int(input[2]) << 16 | Int(input[3]) << 24)
            } catch {
                let code = (error as? LZ4Error)?.code
                #expect(
                    code == LZ4Error.corruptInput.code || code == LZ4Error.lengthMismatch.code,
                    "round \(round): \(error)"
                )
            }
        }
    }

    @Test("Errors compare by code, never by message, and match in catch patterns")
    func errorsCompareByCode() throws {
        let error = try #require(throws: LZ4Error.self) { _ = try LZ4Block.decompress([1, 2]) }
        #expect(error == .truncatedInput)
        #expect(error.code == LZ4Error.truncatedInput.code)
        #expect(error != .corruptInput)
        #expect(error.message != LZ4Error.truncatedInput.message)
        #expect(error.description.contains("truncatedInput"))
        #expect(LZ4Error.truncatedInput.code.description == "truncatedInput")

        var matched = false
        do {
            _ = try LZ4Block.decompress([1, 2])
        } catch LZ4Error.corruptInput {
            Issue.record("matched the wrong code")
        } catch LZ4Error.truncatedInput {
            matched = true
        }
        #expect(matched)
    }
}

import EventlineTestSupport
import Foundation
import Testing

func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var generator = SplitMix64(seed: seed)
    return [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
        var index = 0
        while index < count {
            var word = generator.next()
            for _ in 0..<min(8, count - index) {
                buffer[index] = UInt8(truncatingIfNeeded: word)
                word >>= 8
                index += 1
            }
        }
        initialized = count
    }
}

/// Text-like bytes: few distinct symbols and many repeats, so LZ4 compresses them well.
func compressibleBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var generator = SplitMix64(seed: seed)
    let words = ["event", "stream", "append", "version", "payload", "snapshot", "{\"id\":", "42,", "\n"]
    var output: [UInt8] = []
    output.reserveCapacity(count + 16)
    while output.count < count {
        output.append(contentsOf: words.randomElement(using: &generator)!.utf8)
        output.append(0x20)
    }
    return Array(output.prefix(count))
}

/// Alternating compressible and random runs of varying length, so block boundaries fall in both.
func mixedBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var generator = SplitMix64(seed: seed)
    var output: [UInt8] = []
    output.reserveCapacity(count)
    var run: UInt64 = 0
    while output.count < count {
        let length = min(Int.random(in: 1...200_000, using: &generator), count - output.count)
        run += 1
        output += run.isMultiple(of: 2)
            ? randomBytes(length, seed: seed &+ run)
            : compressibleBytes(length, seed: seed &+ run)
    }
    return output
}

/// Compares byte sequences, reporting sizes and the first differing offset instead of
/// dumping megabytes of array literal on failure.
func expectSameBytes(
    _ actual: some Collection<UInt8>,
    _ expected: some Collection<UInt8>,
    _ context: String? = nil,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    // Array's == is the optimized path; generic elementsEqual is slow on megabytes in debug builds.
    guard Array(actual) != Array(expected) else { return }
    let firstDifference = zip(actual, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        ?? min(actual.count, expected.count)
    let detail = "got \(actual.count) bytes, expected \(expected.count); first difference at offset \(firstDifference)"
    Issue.record(Comment(rawValue: context.map { "\($0): \(detail)" } ?? detail), sourceLocation: sourceLocation)
}

/// Splits `bytes` at random points into chunks of `sizes` bytes.
func randomChunks(of bytes: [UInt8], sizes: ClosedRange<Int>, seed: UInt64) -> [ArraySlice<UInt8>] {
    var generator = SplitMix64(seed: seed)
    var chunks: [ArraySlice<UInt8>] = []
    var offset = 0
    while offset < bytes.count {
        let length = min(Int.random(in: sizes, using: &generator), bytes.count - offset)
        chunks.append(bytes[offset..<(offset + length)])
        offset += length
    }
    return chunks
}

/// Named payloads shared by block, frame and CLI tests; each is generated once.
enum Payload: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case empty
    case oneByte
    case text4KiB
    case random64KiB
    case incompressible1MiB
    case compressible1MiB
    case mixed8MiB

    var testDescription: String { rawValue }

    var bytes: [UInt8] {
        switch self {
        case .empty: []
        case .oneByte: [0x5A]
        case .text4KiB: Cache.text4KiB
        case .random64KiB: Cache.random64KiB
        case .incompressible1MiB: Cache.incompressible1MiB
        case .compressible1MiB: Cache.compressible1MiB
        case .mixed8MiB: Cache.mixed8MiB
        }
    }

    // Static lets are generated lazily and once, however many tests use them.
    private enum Cache {
        static let text4KiB = compressibleBytes(4 << 10, seed: 1)
        static let random64KiB = randomBytes(64 << 10, seed: 2)
        static let incompressible1MiB = randomBytes(1 << 20, seed: 3)
        static let compressible1MiB = compressibleBytes(1 << 20, seed: 4)
        static let mixed8MiB = mixedBytes(8 << 20, seed: 5)
    }
}

/// The `lz4` command-line tool, located through PATH like `/usr/bin/env lz4` would.
enum LZ4Tool {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Records a test failure naming the Debian package when the tool is missing; interoperability
    /// must be proven, so a missing tool is never a skip.
    static func locate() throws -> URL {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        let found = path.split(separator: ":").lazy
            .map { URL(fileURLWithPath: String($0)).appendingPathComponent("lz4") }
            .first { FileManager.default.isExecutableFile(atPath: $0.path) }
        return try #require(
            found,
            """
            The `lz4` command-line tool was not found on PATH (\(path)). \
            Install the Debian package `lz4` (apt-get install lz4); the LZ4 interoperability tests need it.
            """
        )
    }

    /// Runs `lz4` with `arguments` and returns its standard output; throws if it exits non-zero.
    static func run(_ arguments: [String]) throws -> [UInt8] {
        let tool = try locate()
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let errorFile = directory.url.appendingPathComponent("stderr.txt")
        try Data().write(to: errorFile)
        let errorHandle = try FileHandle(forWritingTo: errorFile)
        defer { try? errorHandle.close() }

        let process = Process()
        let output = Pipe()
        process.executableURL = tool
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = output
        process.standardError = errorHandle
        try process.run()
        // Drain stdout before waiting, or a large output would block the child on a full pipe.
        let stdout = try output.fileHandleForReading.readToEnd() ?? Data()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let stderr = (try? String(contentsOf: errorFile, encoding: .utf8)) ?? ""
            throw Failure(description: "lz4 \(arguments) exited \(process.terminationStatus): \(stderr)")
        }
        return [UInt8](stdout)
    }
}

/// A fresh directory under the system temporary directory; callers `defer { remove() }`, because
/// ARC may release an object before its last lexical use, which rules out cleanup in deinit.
struct TemporaryDirectory {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory
            .appendingPathComponent("LZ4Tests-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func write(_ bytes: [UInt8], named name: String) throws -> URL {
        let file = url.appendingPathComponent(name)
        try Data(bytes).write(to: file)
        return file
    }

    func remove() {
        try? FileManager.default.removeItem(at: url)
    }
}

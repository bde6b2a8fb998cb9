/// RESP2 framing: commands out, replies in.
enum RESP {
    /// The largest bulk string accepted, Redis's own `proto-max-bulk-len` default.
    static let maxBulkLength = 512 * 1024 * 1024
    /// The deepest nesting of arrays accepted; real replies nest a handful of levels.
    static let maxDepth = 32
    /// The most elements one array may announce.
    static let maxArrayCount = Int(Int32.max)
    /// The longest header or simple-string line accepted, CRLF included.
    static let maxLineLength = 64 * 1024

    /// Appends `command` as an array of bulk strings, the only form Redis takes binary-safely.
    static func encode(_ command: [RedisArgument], into buffer: inout [UInt8]) {
        appendHeader(UInt8(ascii: "*"), command.count, into: &buffer)
        for argument in command {
            appendHeader(UInt8(ascii: "$"), argument.bytes.count, into: &buffer)
            buffer.append(contentsOf: argument.bytes)
            buffer.append(contentsOf: crlf)
        }
    }

    /// The bytes of `commands`, one after the other (a pipeline).
    static func encode(_ commands: [[RedisArgument]]) -> [UInt8] {
        var size = 0
        for command in commands {
            size += 16
            for argument in command { size += argument.bytes.count + 16 }
        }
        var buffer: [UInt8] = []
        buffer.reserveCapacity(size)
        for command in commands { encode(command, into: &buffer) }
        return buffer
    }

    private static let crlf: [UInt8] = [13, 10]

    private static func appendHeader(_ type: UInt8, _ count: Int, into buffer: inout [UInt8]) {
        buffer.append(type)
        buffer.append(contentsOf: String(count).utf8)
        buffer.append(contentsOf: crlf)
    }
}

/// Bytes received and not yet parsed. Consumed from the front; compacted lazily so that a large
/// reply is not shifted once per read.
struct ReadBuffer {
    private(set) var storage: [UInt8] = []
    private(set) var start = 0

    var readableCount: Int { storage.count - start }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if start > 0 && (start == storage.count || start >= 64 * 1024 && start >= storage.count / 2) {
            storage.removeFirst(start)
            start = 0
        }
        storage.append(contentsOf: bytes)
    }

    /// The index of the LF ending the line that starts at `start`, if it has arrived.
    func lineEnd() -> Int? {
        storage[start...].firstIndex(of: 10)
    }

    mutating func consume(_ count: Int) {
        start += count
        if start == storage.count {
            // Keep small capacity for the next reply; give back what one huge reply needed.
            storage.removeAll(keepingCapacity: storage.capacity <= 1024 * 1024)
            start = 0
        }
    }

    subscript(index: Int) -> UInt8 { storage[index] }
    subscript(range: Range<Int>) -> ArraySlice<UInt8> { storage[range] }
}

/// An incremental RESP2 reply parser: it takes what has arrived, keeps its place inside a
/// partially received reply (open arrays, a bulk string's announced length), and never
/// re-parses bytes it has consumed. Lengths are checked against the limits in `RESP` before
/// anything is allocated for them.
struct RESPParser {
    private struct Frame {
        var remaining: Int
        var elements: [RedisReply]
    }

    private var stack: [Frame] = []
    private var pendingBulkLength: Int?

    /// Whether the parser is between replies (nothing half-parsed).
    var isIdle: Bool { stack.isEmpty && pendingBulkLength == nil }

    /// The next complete reply, consuming its bytes from `buffer`, or nil when more bytes are
    /// needed. Throws `.protocolError` on malformed input; the stream cannot be resynchronised
    /// after that, so the connection must be closed.
    mutating func next(from buffer: inout ReadBuffer) throws -> RedisReply? {
        while true {
            var value: RedisReply
            if let length = pendingBulkLength {
                guard buffer.readableCount >= length + 2 else { return nil }
                let start = buffer.start
                guard buffer[start + length] == 13, buffer[start + length + 1] == 10 else {
                    throw RedisError.protocolError("a bulk string is not followed by CRLF")
                }
                value = .bulk(Array(buffer[start..<start + length]))
                buffer.consume(length + 2)
                pendingBulkLength = nil
            } else {
                guard let end = buffer.lineEnd() else {
                    if buffer.readableCount > RESP.maxLineLength {
                        throw RedisError.protocolError("a reply line is longer than \(RESP.maxLineLength) bytes")
                    }
                    return nil
                }
                let start = buffer.start
                guard end - start + 1 <= RESP.maxLineLength else {
                    throw RedisError.protocolError("a reply line is longer than \(RESP.maxLineLength) bytes")
                }
                guard end > start, buffer[end - 1] == 13 else {
                    throw RedisError.protocolError("a reply line does not end with CRLF")
                }
                let type = buffer[start]
                let body = buffer[start + 1..<end - 1]
                buffer.consume(end - start + 1)
                switch type {
                case UInt8(ascii: "+"):
                    value = .status(String(decoding: body, as: UTF8.self))
                case UInt8(ascii: "-"):
                    value = .error(String(decoding: body, as: UTF8.self))
                case UInt8(ascii: ":"):
                    value = .integer(try Self.integer(body, what: "integer reply"))
                case UInt8(ascii: "$"):
                    let length = try Self.integer(body, what: "bulk length")
                    if length == -1 {
                        value = .bulk(nil)
                    } else {
                        guard length >= 0 else { throw RedisError.protocolError("negative bulk length \(length)") }
                        guard length <= RESP.maxBulkLength else {
                            throw RedisError.protocolError(
                                "a bulk string of \(length) bytes exceeds the limit of \(RESP.maxBulkLength)")
                        }
                        pendingBulkLength = length
                        continue
                    }
                case UInt8(ascii: "*"):
                    let count = try Self.integer(body, what: "array length")
                    if count == -1 {
                        value = .array(nil)
                    } else if count == 0 {
                        value = .array([])
                    } else {
                        guard count > 0 else { throw RedisError.protocolError("negative array length \(count)") }
                        guard count <= RESP.maxArrayCount else {
                            throw RedisError.protocolError("an array of \(count) elements exceeds the limit")
                        }
                        guard stack.count < RESP.maxDepth else {
                            throw RedisError.protocolError("arrays nest deeper than \(RESP.maxDepth) levels")
                        }
                        var elements: [RedisReply] = []
                        elements.reserveCapacity(min(count, 1024))
                        stack.append(Frame(remaining: count, elements: elements))
                        continue
                    }
                default:
                    throw RedisError.protocolError("unexpected reply type byte \(type)")
                }
            }

            // Attach the value to the open arrays, closing every one it completes.
            while !stack.isEmpty {
                let top = stack.count - 1
                stack[top].elements.append(value)
                stack[top].remaining -= 1
                guard stack[top].remaining == 0 else { break }
                value = .array(stack.removeLast().elements)
            }
            if stack.isEmpty { return value }
        }
    }

    /// A decimal integer with an optional minus sign; anything else, or overflow, is refused.
    private static func integer(_ digits: ArraySlice<UInt8>, what: String) throws -> Int {
        var index = digits.startIndex
        var negative = false
        if index < digits.endIndex && digits[index] == UInt8(ascii: "-") {
            negative = true
            index += 1
        }
        guard index < digits.endIndex else { throw RedisError.protocolError("an empty \(what)") }
        var value = 0
        while index < digits.endIndex {
            let digit = digits[index]
            guard digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "9") else {
                throw RedisError.protocolError("a malformed \(what)")
            }
            // Accumulated with the final sign, so that Int.min parses too.
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let unit = Int(digit - UInt8(ascii: "0"))
            let (next, overflow2) =
                negative ? times10.subtractingReportingOverflow(unit) : times10.addingReportingOverflow(unit)
            guard !overflow1, !overflow2 else { throw RedisError.protocolError("an out-of-range \(what)") }
            value = next
            index += 1
        }
        return value
    }
}

@testable import Cache
import Testing

@Suite("RESP framing")
struct RESPTests {
    private func parseAll(_ text: String) throws -> [RedisReply] {
        try parseAll(Array(text.utf8))
    }

    private func parseAll(_ bytes: [UInt8]) throws -> [RedisReply] {
        var buffer = ReadBuffer()
        var parser = RESPParser()
        bytes.withUnsafeBytes { buffer.append($0) }
        var replies: [RedisReply] = []
        while let reply = try parser.next(from: &buffer) { replies.append(reply) }
        return replies
    }

    @Test("Commands are encoded as arrays of binary-safe bulk strings")
    func encoding() {
        var bytes: [UInt8] = []
        RESP.encode(["SET", .bytes([0, 13, 10, 255]), ""], into: &bytes)
        #expect(bytes == Array("*3\r\n$3\r\nSET\r\n$4\r\n".utf8) + [0, 13, 10, 255] + Array("\r\n$0\r\n\r\n".utf8))
    }

    @Test("Every reply type parses, including nulls, empty values and nested arrays")
    func everyType() throws {
        let replies = try parseAll(
            "+OK\r\n-ERR wrong\r\n:-42\r\n$5\r\nhe\r\nl\r\n$0\r\n\r\n$-1\r\n*-1\r\n*0\r\n*2\r\n*1\r\n:1\r\n$1\r\nx\r\n"
                + ":-9223372036854775808\r\n"
        )
        #expect(replies == [
            .status("OK"), .error("ERR wrong"), .integer(-42), .bulk(Array("he\r\nl".utf8)), .bulk([]),
            .bulk(nil), .array(nil), .array([]), .array([.array([.integer(1)]), .bulk([120])]),
            .integer(Int.min),
        ])
    }

    @Test("A reply fed one byte at a time completes only with its last byte")
    func incremental() throws {
        let bytes = Array("*3\r\n$3\r\nfoo\r\n*2\r\n:1\r\n$-1\r\n+OK\r\n".utf8)
        var buffer = ReadBuffer()
        var parser = RESPParser()
        for (index, byte) in bytes.enumerated() {
            [byte].withUnsafeBytes { buffer.append($0) }
            let reply = try parser.next(from: &buffer)
            if index < bytes.count - 1 {
                #expect(reply == nil)
            } else {
                #expect(reply == .array([.bulk(Array("foo".utf8)), .array([.integer(1), .bulk(nil)]), .status("OK")]))
            }
        }
        #expect(parser.isIdle)
        #expect(buffer.readableCount == 0)
    }

    @Test("A bulk string announced within the limit waits for its bytes; one past 512 MiB is refused")
    func bulkLimit() throws {
        #expect(try parseAll("$536870912\r\n").isEmpty)
        let error = #expect(throws: RedisError.self) { try parseAll("$536870913\r\n") }
        #expect(error?.code == .protocolError)
    }

    @Test("Arrays nest at most 32 deep")
    func depthLimit() throws {
        #expect(try parseAll(String(repeating: "*1\r\n", count: 32) + ":1\r\n").count == 1)
        let error = #expect(throws: RedisError.self) { try parseAll(String(repeating: "*1\r\n", count: 33)) }
        #expect(error?.code == .protocolError)
    }

    @Test(
        "Malformed input is a protocol error",
        arguments: [
            "?what\r\n", ":12a\r\n", ":\r\n", ":9223372036854775808\r\n", "$-2\r\n", "*-5\r\n", "$3\r\nabcd\r\n",
            "+OK\n", "$x\r\n",
        ]
    )
    func malformed(input: String) throws {
        let error = #expect(throws: RedisError.self) { try parseAll(input) }
        #expect(error?.code == .protocolError)
    }

    @Test("A header line longer than 64 KiB without CRLF is refused instead of buffered forever")
    func longLine() throws {
        let error = #expect(throws: RedisError.self) { try parseAll("+" + String(repeating: "a", count: 70_000)) }
        #expect(error?.code == .protocolError)
    }
}

import Cache
import EmbeddedServers
import Foundation
import Synchronization
import Testing

@Suite("RedisClient")
struct RedisClientTests {
    @Test("SET then GET returns the value, a missing key is nil, and DEL counts what it removed")
    func setGetDel() async throws {
        let client = try await sharedClient()
        defer { client.shutdown() }
        let (first, second) = (uniqueKey(), uniqueKey())

        try await client.ping()
        #expect(try await client.get(first) == nil)
        try await client.set(first, "one")
        try await client.set(second, [1, 2, 3])
        #expect(try await client.get(first) == Array("one".utf8))
        #expect(try await client.get(second) == [1, 2, 3])
        #expect(try await client.send(["GET", first]).string == "one")

        #expect(try await client.del([first, second, uniqueKey()]) == 2)
        #expect(try await client.get(first) == nil)
        #expect(try await client.del(first) == 0)
        #expect(try await client.del([]) == 0)
    }

    @Test("SET with expireSeconds gives the key a TTL, EXPIRE adds one, and TTL says -1 without one and -2 when missing")
    func expiry() async throws {
        let client = try await sharedClient()
        defer { client.shutdown() }
        let (expiring, plain) = (uniqueKey(), uniqueKey())

        try await client.set(expiring, "soon gone", expireSeconds: 100)
        let ttl = try await client.ttl(expiring)
        #expect((90...100).contains(ttl))
        #expect((90...100).contains(try await client.send(["TTL", expiring]).int ?? -1))

        try await client.set(plain, "stays")
        #expect(try await client.ttl(plain) == -1)
        #expect(try await client.expire(plain, seconds: 50))
        #expect((40...50).contains(try await client.ttl(plain)))
        // SET without EX replaces the TTL too.
        try await client.set(expiring, "kept")
        #expect(try await client.ttl(expiring) == -1)

        #expect(try await client.ttl(uniqueKey()) == -2)
        #expect(try await client.expire(uniqueKey(), seconds: 5) == false)

        try await client.set(expiring, "short", expireSeconds: 1)
        #expect(try await eventually(within: .seconds(5)) { try await client.get(expiring) == nil })

        let error = await #expect(throws: RedisError.self) { try await client.set(plain, "x", expireSeconds: 0) }
        #expect(error?.code == .server)
        try await client.del([expiring, plain])
    }

    @Test("Values and keys are binary-safe: every byte 0...255 and CR LF sequences round-trip")
    func binarySafe() async throws {
        let client = try await sharedClient()
        defer { client.shutdown() }
        let value = (0...255).map(UInt8.init) + Array("\r\n$3\r\n*1\r\n\r\n".utf8) + [0, 0, 13, 10, 13]
        let key = uniqueKey()
        let binaryKey: [UInt8] = Array(key.utf8) + [0, 13, 10, 255]

        try await client.set(key, value)
        #expect(try await client.get(key) == value)
        #expect(try await client.send(["STRLEN", key]) == .integer(value.count))

        #expect(try await client.send(["SET", .bytes(binaryKey), .bytes(value)]) == .status("OK"))
        #expect(try await client.send(["GET", .bytes(binaryKey)]) == .bulk(value))
        #expect(try await client.send(["GET", .string(key + "\0\r\n\u{FF}")]) == .bulk(nil))
        #expect(try await client.send(["DEL", .bytes(binaryKey), .string(key)]) == .integer(2))

        try await client.set(key, "")
        #expect(try await client.get(key) == [])
        try await client.del(key)
    }

    @Test("A 1 MB value round-trips intact, alone and as 16 replies in one pipeline")
    func largeValues() async throws {
        let client = try await sharedClient()
        defer { client.shutdown() }
        let key = uniqueKey()
        var generator = SystemRandomNumberGenerator()
        let value = (0..<1_048_576).map { _ in UInt8.random(in: 0...255, using: &generator) }

        try await client.set(key, value)
        #expect(try await client.get(key) == value)
        let replies = try await client.pipeline(Array(repeating: ["GET", key], count: 16))
        #expect(replies.count == 16)
        #expect(replies.allSatisfy { $0 == .bulk(value) })
        try await client.del(key)
    }

    @Test("A pipeline's replies come back in command order, with error replies in their places")
    func pipelineOrder() async throws {
        let client = try await sharedClient(poolSize: 1)
        defer { client.shutdown() }
        let (counter, text) = (uniqueKey(), uniqueKey())

        var commands: [[String]] = [["SET", text, "hello"]]
        for index in 0..<100 {
            commands.append(["INCR", counter])
            if index == 50 { commands.append(["INCR", text]) }
            if index % 10 == 0 { commands.append(["ECHO", "echo-\(index)"]) }
        }
        commands.append(["GET", counter])
        let replies = try await client.pipeline(commands)
        #expect(replies.count == commands.count)

        var expectedIncrement = 1
        for (command, reply) in zip(commands, replies) {
            switch (command[0], command[1]) {
            case ("SET", _): #expect(reply == .status("OK"))
            case ("INCR", text): #expect(reply.serverError?.serverCode == "ERR")
            case ("INCR", _):
                #expect(reply == .integer(expectedIncrement))
                expectedIncrement += 1
            case ("ECHO", let word): #expect(reply == .bulk(Array(word.utf8)))
            default: #expect(reply == .bulk(Array("100".utf8)))
            }
        }
        #expect(try await client.pipeline([] as [[String]]).isEmpty)
        try await client.del([counter, text])
    }

    @Test("An error reply is thrown as .server with its code and leaves the connection open")
    func serverErrors() async throws {
        let client = try await sharedClient(poolSize: 1)
        defer { client.shutdown() }
        let key = uniqueKey()
        let connectionID = try await client.send(["CLIENT", "ID"]).int

        try await client.set(key, "not a number")
        let notInteger = await #expect(throws: RedisError.self) { try await client.incr(key) }
        #expect(notInteger?.code == .server)
        #expect(notInteger?.serverCode == "ERR")
        let wrongType = await #expect(throws: RedisError.self) { try await client.send(["LPUSH", key, "x"]) }
        #expect(wrongType?.serverCode == "WRONGTYPE")
        let unknown = await #expect(throws: RedisError.self) { try await client.send(["NO-SUCH-COMMAND"]) }
        #expect(unknown?.code == .server)
        let empty = await #expect(throws: RedisError.self) { try await client.send([] as [String]) }
        #expect(empty?.code == .invalidArgument)

        // The same connection answers afterwards: nothing was closed or reopened.
        #expect(try await client.send(["CLIENT", "ID"]).int == connectionID)
        #expect(try await client.get(key) == Array("not a number".utf8))
        try await client.del(key)
    }

    @Test("INCR counts up from a missing key")
    func incr() async throws {
        let client = try await sharedClient()
        defer { client.shutdown() }
        let key = uniqueKey()
        #expect(try await client.incr(key) == 1)
        #expect(try await client.incr(key) == 2)
        try await client.set(key, "41")
        #expect(try await client.incr(key) == 42)
        try await client.del(key)
    }

    @Test("eval runs a script with KEYS and ARGV by the digest Redis gives it, and loads it again after SCRIPT FLUSH")
    func eval() async throws {
        let client = try await sharedClient(poolSize: 1)
        defer { client.shutdown() }
        let key = uniqueKey()
        // A script no server has seen: the first call loads it (SCRIPT LOAD) and runs it by its digest.
        let script = "-- \(UUID())\nreturn {KEYS[1], ARGV[1], ARGV[2], redis.call('INCRBY', KEYS[1], ARGV[2])}"

        let first = try await client.eval(script, keys: [key], args: ["label", "5"])
        #expect(first == .array([.bulk(Array(key.utf8)), .bulk(Array("label".utf8)), .bulk(Array("5".utf8)), .integer(5)]))
        let second = try await client.eval(script, keys: [key], args: [.string("binary"), .int(2)])
        #expect(second.array?.last == .integer(7))

        // The script is cached under its SHA-1, as Redis computes it.
        let sha = try #require(try await client.send(["SCRIPT", "LOAD", script]).string)
        #expect(sha.count == 40)
        #expect(try await client.send(["SCRIPT", "EXISTS", sha]) == .array([.integer(1)]))
        #expect(try await client.send(["EVALSHA", sha, "1", key, "x", "1"]).array?.last == .integer(8))
        // A server that forgot it (a restart, SCRIPT FLUSH) answers NOSCRIPT: loaded again, it runs.
        _ = try await client.send(["SCRIPT", "FLUSH"])
        #expect(try await client.eval(script, keys: [key], args: ["again", "1"]).array?.last == .integer(9))

        #expect(try await client.eval("return 'no keys'") == .bulk(Array("no keys".utf8)))
        let error = await #expect(throws: RedisError.self) { try await client.eval("return redis.call('NOPE')") }
        #expect(error?.code == .server)
        try await client.del(key)
    }

    @Test("The database from the URL is selected on every connection")
    func database() async throws {
        let selected = try await sharedClient(database: 3)
        let defaultDatabase = try await sharedClient()
        defer {
            selected.shutdown()
            defaultDatabase.shutdown()
        }
        let key = uniqueKey()
        try await selected.set(key, "in db 3")
        #expect(try await selected.get(key) == Array("in db 3".utf8))
        #expect(try await defaultDatabase.get(key) == nil)
        #expect(try await selected.send(["CLIENT", "INFO"]).string?.contains(" db=3 ") == true)
        try await selected.del(key)
    }

    @Test("Fifty concurrent tasks each read back only their own writes, and every acknowledged INCR is counted exactly once")
    func concurrentUse() async throws {
        let client = try await sharedClient(poolSize: 4)
        defer { client.shutdown() }
        let counter = uniqueKey()
        let prefix = uniqueKey()

        let acknowledged = try await withThrowingTaskGroup(of: [Int].self) { group in
            for task in 0..<50 {
                group.addTask {
                    var increments: [Int] = []
                    for round in 0..<20 {
                        let key = "\(prefix):\(task)"
                        let value = "task \(task) round \(round)"
                        try await client.set(key, value)
                        let read = try await client.get(key)
                        #expect(read == Array(value.utf8), "task \(task) read another task's reply")
                        increments.append(try await client.incr(counter))
                    }
                    return increments
                }
            }
            return try await group.reduce(into: [Int]()) { $0 += $1 }
        }

        // Each INCR a caller saw acknowledged is a distinct step of the counter, and the counter
        // moved by exactly the acknowledged ones.
        #expect(acknowledged.sorted() == Array(1...1000))
        #expect(try await client.get(counter) == Array("1000".utf8))
        try await client.del([counter] + (0..<50).map { "\(prefix):\($0)" })
    }

    @Test("Blocking commands run on the client's own threads and do not hold the cooperative pool")
    func blockingOffThePool() async throws {
        // A database of its own, so that the server's client list tells this test's blocked
        // connections apart from any other test's.
        let client = try await sharedClient(poolSize: 8, commandTimeout: .seconds(120), database: 7)
        defer { client.shutdown() }
        let observer = try await sharedClient(poolSize: 1, database: 7)
        defer { observer.shutdown() }
        let keys = (0..<8).map { uniqueKey("blocking-\($0)") }
        func blockedHere() async throws -> Int {
            let list = try await observer.send(["CLIENT", "LIST"]).string ?? ""
            return list.split(separator: "\n").filter { $0.contains(" db=7 ") && $0.contains(" cmd=blpop") }.count
        }
        // Eight BLPOPs that wait for ever. On the 2-core cooperative pool at most two could be
        // blocked at once; on the client's own threads all eight are.
        let pops = Task {
            try await withThrowingTaskGroup(of: RedisReply.self) { group in
                for key in keys { group.addTask { try await client.send(["BLPOP", key, "0"]) } }
                return try await group.reduce(into: [RedisReply]()) { $0.append($1) }
            }
        }
        #expect(try await eventually(within: .seconds(60)) { try await blockedHere() == 8 }, "eight BLPOPs blocked at once")
        // Meanwhile the cooperative pool does other work.
        try await observer.ping()
        for key in keys { _ = try await observer.send(["RPUSH", key, "v"]) }
        let replies = try await pops.value
        #expect(replies.count == 8)
        #expect(replies.allSatisfy { if case .array(let items?) = $0 { items.count == 2 } else { false } })
    }

    @Test("After shutdown(), calls fail with .closed")
    func shutdown() async throws {
        let client = try await sharedClient()
        try await client.ping()
        client.shutdown()
        let error = await #expect(throws: RedisError.self) { try await client.ping() }
        #expect(error?.code == .closed)
        client.shutdown()
    }
}

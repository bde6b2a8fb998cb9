import EventStore
import EventlineTestSupport
import Foundation
import HTTPServer
import HTTPTypes
import HummingbirdTesting
import NIOCore
import Testing

/// Seeded, reproducible random input against a live server: valid requests of every route,
/// mutated at the byte, JSON, path, query and header level. Whatever arrives, the answer is
/// never a 5xx, every error is problem+json with the RFC 9457 members, and a request that is
/// refused writes nothing to the log.
@Suite("Fuzzing the HTTP routes", .serialized)
struct FuzzTests {
    struct Case: CustomStringConvertible {
        var method: HTTPRequest.Method
        var path: String
        var headers: HTTPFields = [:]
        var body: [UInt8]?
        var description: String {
            let shown = body.map { String(decoding: $0.prefix(120), as: UTF8.self).debugDescription } ?? "no body"
            return "\(method) \(path.prefix(160)) \(headers.map { "\($0.name)=\($0.value.prefix(40))" }) \(shown)"
        }
    }

    /// Valid requests of every route, the seeds of the mutations.
    static let seeds: [Case] = {
        func post(_ path: String, _ json: String) -> Case {
            Case(method: .post, path: path, headers: [.contentType: "application/json"], body: Array(json.utf8))
        }
        return [
            post("/v1/commands/account/f1", #"{"type":"OpenAccount","data":{"owner":"Ada","currency":"EUR"}}"#),
            post("/v1/commands/account/f1", #"{"type":"DepositMoney","data":{"amount":500},"expectedVersion":1}"#),
            post("/v1/commands/account/f1", #"{"type":"WithdrawMoney","data":{"amount":200},"metadata":{"user":"ada"}}"#),
            post("/v1/commands/account/f2", #"{"type":"CloseAccount","data":{}}"#),
            post("/v1/commands/transfer/t1", #"{"type":"StartTransfer","data":{"from":"f1","to":"f2","amount":100}}"#),
            post("/v1/streams/fuzz-1/events", #"{"expectedVersion":"any","events":[{"type":"Noted","data":{"n":1,"s":"x"},"metadata":{"k":"v"}}]}"#),
            post(
                "/v1/streams/fuzz-2/events",
                #"{"expectedVersion":0,"events":[{"id":"6f1c2b1e-9a4d-4c59-8f4e-2d3c1b0a9e87","type":"A","data":{}},{"type":"B","data":{"list":[1,2.5,true,null]}}]}"#),
            Case(method: .get, path: "/v1/streams/fuzz-1?from=1&limit=10&direction=forward"),
            Case(method: .get, path: "/v1/streams/account-f1?direction=backward&limit=2"),
            Case(method: .get, path: "/v1/events?after=0&limit=5&category=account&type=MoneyDeposited"),
            Case(method: .get, path: "/v1/read-models"),
            Case(method: .get, path: "/v1/read-models/accounts?limit=5&owner=Ada"),
            Case(method: .get, path: "/v1/read-models/accounts/f1"),
            Case(method: .get, path: "/health/ready"),
            Case(method: .get, path: "/metrics"),
            Case(
                method: .put, path: "/v1/consumer-groups/fz", headers: [.contentType: "application/json"],
                body: Array(#"{"categories":["account","fuzz"],"types":null,"startAfter":0,"maxDeliveries":2,"ackTimeout":5}"#.utf8)),
            Case(method: .get, path: "/v1/consumer-groups"),
            Case(method: .get, path: "/v1/consumer-groups/fz"),
            post("/v1/consumer-groups/fz/fetch", #"{"consumer":"c1","max":2,"wait":0}"#),
            post("/v1/consumer-groups/fz/ack", #"{"deliveryIds":["6f1c2b1e-9a4d-4c59-8f4e-2d3c1b0a9e87"]}"#),
            post("/v1/consumer-groups/fz/nack", #"{"deliveryIds":["6f1c2b1e-9a4d-4c59-8f4e-2d3c1b0a9e87"],"retryAfter":1}"#),
            Case(method: .get, path: "/v1/consumer-groups/fz/parked?after=0&limit=5"),
            post("/v1/consumer-groups/fz/parked/retry", #"{"positions":[1,2]}"#),
            post(
                "/v1/streams/customer-9/events",
                #"{"events":[{"type":"CustomerRegistered","data":{"email":"a@b.c","address":{"street":"s","city":"c"}},"subject":"customer-9","personal":["email","address.street"]}]}"#),
            Case(method: .delete, path: "/v1/subjects/customer-8"),
            Case(method: .delete, path: "/v1/streams/fuzz-3?expectedVersion=any"),
            post(
                "/v1/events",
                #"{"appends":[{"stream":"fuzz-4","expectedVersion":"noStream","events":[{"type":"Moved","data":{"n":1},"tags":["item:x"]}]},{"stream":"fuzz-5","events":[{"type":"Moved","data":{}}]}],"conditions":[{"stream":"fuzz-1","expectedVersion":"exists"}]}"#),
            post(
                "/v1/events",
                #"{"events":[{"type":"Claimed","data":{"u":"a"},"tags":["user:a","team:t"]}],"condition":{"failIfEventsMatch":{"items":[{"types":["Claimed"],"tags":["user:a"]}]},"after":0}}"#),
            post("/v1/events/query", #"{"query":{"items":[{"types":["Claimed","Moved"],"tags":["user:a"]},{"tags":["item:x"]}]},"after":0,"limit":10}"#),
            Case(method: .get, path: "/v1/events?query=%7B%22items%22%3A%5B%7B%22tags%22%3A%5B%22item%3Ax%22%5D%7D%5D%7D&limit=5"),
            post("/v1/commands/account/f3", #"{"type":"OpenAccount","data":{"owner":"Bo","currency":"EUR","number":"DE4412345678"}}"#),
        ]
    }()

    /// Values that have broken JSON handlers elsewhere: huge and odd numbers, escapes of every
    /// kind, lone surrogates, deep nesting, long strings, and every JSON type in every place.
    static let oddValues: [String] = [
        "null", "true", "false", "0", "-0", "1e400", "-1e400", "1.5", "9223372036854775807", "9223372036854775808",
        "-9223372036854775809", "18446744073709551616", "1e-400", "0.0000001", "123456789012345678901234567890",
        #""""#, #""\u0000""#, #""\ud800""#, #""\udc00\ud800""#, #""\uD83D\uDE00""#, #""é\n\t\"\\/""#, #""\u0041""#,
        "\"" + String(repeating: "x", count: 300) + "\"", "[]", "{}", "[[[[[[[[[[]]]]]]]]]]",
        String(repeating: "[", count: 200) + String(repeating: "]", count: 200),
        #"{"a":{"b":{"c":[1,{"d":null}]}}}"#, #""EUR""#, #""eur""#, #""E U""#, "-1", "1", "2147483648",
    ]

    /// Path segments and query values outside what any route accepts.
    static let oddSegments: [String] = [
        "", "%00", "%zz", "%2F", "%2e%2e", "..", "a%20b", "%C3%A9", "%FF%FE", "-", "x-", "-x", "a-b-c", "%F0%9F%99%82", "%F0%9F",
        String(repeating: "s", count: 600), "%0A", "%0D%0A", "1e3", "-5", "99999999999999999999999", "%25", "a%3Fb=c",
    ]

    static let idempotencyKey = HTTPField.Name("Idempotency-Key")!
    static let oddHeaders: [(HTTPField.Name, String)] = [
        (.contentType, "text/plain"), (.contentType, "application/json; charset=latin1"), (.contentType, ""),
        (.contentType, "application/problem+json"), (.contentType, "multipart/form-data; boundary=x"),
        (idempotencyKey, ""), (idempotencyKey, String(repeating: "k", count: 300)), (idempotencyKey, "key-1"),
        (.authorization, "Bearer "), (.authorization, "Basic YWRhOmFkYQ=="), (.authorization, "Bearer el_x_y"),
        (HTTPField.Name("Eventline-At-Least")!, "-1"), (HTTPField.Name("Eventline-At-Least")!, "abc"),
        (HTTPField.Name("Eventline-At-Least")!, "99999999999999999999"), (.accept, "application/xml"),
        (.ifNoneMatch, "\"nope\""), (.ifNoneMatch, "*"), (.contentEncoding, "gzip"),
    ]

    @Test("2,000 mutated requests over every route: never a 5xx, errors are problem+json, refusals write nothing")
    func mutatedRequests() async throws {
        let server = try await TestServer.make("httpfuzz") { $0.maxBodySize = 64 * 1024 }
        let store = server.test.store
        try await server.run { client in
            // Some state for the mutations to hit: an open account with a deposit, and two streams.
            let group = Self.seeds.first { $0.method == .put }!
            for seed in [Self.seeds[0], Self.seeds[1], Self.seeds[5], Self.seeds[6], group] {
                let response = try await client.execute(
                    uri: seed.path, method: seed.method, headers: seed.headers, body: seed.body.map { ByteBuffer(bytes: $0) })
                #expect(response.status.code < 300, "\(seed): \(response.status) \(String(buffer: response.body))")
            }
            var random = SplitMix64(seed: 0xE7E7_11AE)
            var refusals = 0
            var statuses: [Int: Int] = [:]
            for index in 0..<2_000 {
                let request = Self.mutate(Self.seeds.randomElement(using: &random)!, using: &random)
                let head = try await store.headPosition()
                let response = try await client.execute(
                    uri: request.path, method: request.method, headers: request.headers,
                    body: request.body.map { ByteBuffer(bytes: $0) })
                let text = String(buffer: response.body)
                statuses[Int(response.status.code), default: 0] += 1
                let what = "case \(index): \(request) -> \(response.status) \(text.prefix(200))"
                #expect(response.status.code < 500, "\(what)")
                guard response.status.code >= 400 else { continue }
                refusals += 1
                #expect(response.headers[.contentType] == "application/problem+json", "\(what)")
                #expect(try await store.headPosition() == head, "a refused request wrote to the log: \(what)")
                // A HEAD answer has the headers of the GET answer and no body.
                if request.method == .head { continue }
                let problem = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
                #expect(problem?["type"] is String && problem?["title"] is String && problem?["detail"] is String, "\(what)")
                #expect(problem?["status"] as? Int == Int(response.status.code), "\(what)")
            }
            // The mutations are meant to be mostly refused, but not all: both sides are exercised.
            #expect(refusals > 1_000 && refusals < 2_000, "\(refusals) of 2,000 refused; statuses: \(statuses.sorted { $0.key < $1.key })")
            // And the server still serves.
            let live = try await client.send(.get, "/health/ready")
            #expect(live.status == .ok)
        }
    }

    static func mutate(_ seed: Case, using random: inout SplitMix64) -> Case {
        var request = seed
        // One to three mutations, of any kind that fits the request.
        for _ in 0..<Int.random(in: 1...3, using: &random) {
            switch Int.random(in: 0..<10, using: &random) {
            case 0...3 where request.body != nil: request.body = mutateJSON(request.body!, using: &random)
            case 4 where request.body != nil: request.body = mutateBytes(request.body!, using: &random)
            case 5: request.path = mutatePath(request.path, using: &random)
            case 6: request.path = mutateQuery(request.path, using: &random)
            case 7:
                let (name, value) = oddHeaders.randomElement(using: &random)!
                request.headers[name] = value
            case 8:
                request.method = [.get, .post, .put, .delete, .patch, .head, .options].randomElement(using: &random)!
            default:
                // A body where none belongs, or none where one does.
                request.body = request.body == nil ? Array(oddValues.randomElement(using: &random)!.utf8) : nil
                if request.headers[.contentType] == nil { request.headers[.contentType] = "application/json" }
            }
        }
        return request
    }

    /// Replaces one value of the JSON text (found by its delimiters) with an odd one, or drops,
    /// duplicates or renames a key.
    static func mutateJSON(_ body: [UInt8], using random: inout SplitMix64) -> [UInt8] {
        var text = String(decoding: body, as: UTF8.self)
        let colons = text.indices.filter { text[$0] == ":" }
        guard let colon = colons.randomElement(using: &random) else { return body }
        // The value after the colon runs to the next ',' or '}' at the same depth.
        var end = text.index(after: colon)
        var depth = 0
        var inString = false
        while end < text.endIndex {
            let character = text[end]
            if inString {
                if character == "\\" { end = text.index(after: end) } else if character == "\"" { inString = false }
            } else if character == "\"" {
                inString = true
            } else if character == "{" || character == "[" {
                depth += 1
            } else if character == "}" || character == "]" {
                if depth == 0 { break }
                depth -= 1
            } else if character == "," && depth == 0 {
                break
            }
            if end < text.endIndex { end = text.index(after: end) }
        }
        switch Int.random(in: 0..<4, using: &random) {
        case 0, 1:
            text.replaceSubrange(text.index(after: colon)..<end, with: oddValues.randomElement(using: &random)!)
        case 2:
            // Rename the key before the colon.
            if let quote = text[..<colon].lastIndex(of: "\""), let open = text[..<quote].lastIndex(of: "\"") {
                let names = ["type", "data", "amount", "owner", "currency", "events", "id", "metadata", "expectedVersion", "x", "", "Type"]
                text.replaceSubrange(text.index(after: open)..<quote, with: names.randomElement(using: &random)!)
            }
        default:
            // Repeat the key and value (a duplicate key).
            if let quote = text[..<colon].lastIndex(of: "\""), let open = text[..<quote].lastIndex(of: "\""), end < text.endIndex {
                text.insert(contentsOf: "," + text[open..<end], at: end)
            }
        }
        return Array(text.utf8)
    }

    static func mutateBytes(_ body: [UInt8], using random: inout SplitMix64) -> [UInt8] {
        var bytes = body
        guard !bytes.isEmpty else { return [0xFF] }
        let at = Int.random(in: 0..<bytes.count, using: &random)
        switch Int.random(in: 0..<5, using: &random) {
        case 0: bytes[at] = UInt8.random(in: 0...255, using: &random)
        case 1: bytes.insert(contentsOf: [[0x00], [0xFF], [0xC3], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80]].randomElement(using: &random)!, at: at)
        case 2: bytes.removeSubrange(at..<min(bytes.count, at + Int.random(in: 1...8, using: &random)))
        case 3: bytes = Array(bytes.prefix(at))
        default: bytes.insert(contentsOf: bytes[at...].prefix(16), at: at)
        }
        return bytes
    }

    /// Replaces one path segment (after the first) with an odd one.
    static func mutatePath(_ uri: String, using random: inout SplitMix64) -> String {
        let parts = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        var segments = parts[0].split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard segments.count > 2 else { return uri + "/" + oddSegments.randomElement(using: &random)! }
        segments[Int.random(in: 2..<segments.count, using: &random)] = oddSegments.randomElement(using: &random)!
        return segments.joined(separator: "/") + (parts.count > 1 ? "?" + parts[1] : "")
    }

    /// Adds a query parameter, known or not, with an odd value.
    static func mutateQuery(_ uri: String, using random: inout SplitMix64) -> String {
        let names = ["from", "limit", "direction", "after", "category", "type", "atLeast", "cursor", "owner", "bogus", ""]
        let name = names.randomElement(using: &random)!
        let value = (oddSegments + ["0", "-1", "backward", "1e2", "5", "%22"]).randomElement(using: &random)!
        return uri + (uri.contains("?") ? "&" : "?") + name + "=" + value
    }
}

@testable import EventStore
import Foundation
import Testing

@Suite("JSON validation of event data")
struct JSONValidatorTests {
    @Test("valid JSON documents of every kind are accepted", arguments: [
        #"{}"#, #"[]"#, #"{"a":1,"b":[true,false,null],"c":{"d":"e"}}"#, #"  {"x" : -0.5e+10 }  "#, #""just a string""#,
        #"0"#, #"-12.5E3"#, #"["\u00e9\n\"\\/", "é😀"]"#, "true", "null",
    ])
    func valid(_ text: String) {
        #expect(JSONValidator.isValid(Data(text.utf8)))
    }

    @Test("malformed JSON is refused", arguments: [
        "", " ", "{", #"{"a"}"#, #"{"a":}"#, #"{"a":1,}"#, "[1,]", "[1 2]", "01", "1.", ".5", "-", "1e", "+1", "NaN",
        "Infinity", "tru", "nulll", #""unterminated"#, #""bad \x escape""#, #""\u12G4""#, "\"tab\there\"", "{} {}",
        "{'a':1}", "[1]x",
    ])
    func invalid(_ text: String) {
        #expect(!JSONValidator.isValid(Data(text.utf8)))
    }

    @Test("invalid UTF-8 inside strings is refused")
    func invalidUTF8() {
        for bytes: [UInt8] in [[0x22, 0xFF, 0x22], [0x22, 0xC0, 0xAF, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22], [0x22, 0xE2, 0x82, 0x22]] {
            #expect(!JSONValidator.isValid(Data(bytes)))
        }
    }

    @Test("nesting deeper than the limit is refused without exhausting the stack")
    func deepNesting() {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(!JSONValidator.isValid(Data(deep.utf8)))
        let fine = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect(JSONValidator.isValid(Data(fine.utf8)))
    }

    @Test("metadata must be an object")
    func objects() {
        #expect(JSONValidator.isObject(Data(#"{"correlationId":"x"}"#.utf8)))
        #expect(!JSONValidator.isObject(Data("[1]".utf8)))
        #expect(!JSONValidator.isObject(Data(#""s""#.utf8)))
    }

    @Test("the validator agrees with Foundation on random mutations of a document")
    func agreesWithFoundation() {
        let base = Array(#"{"a":[1,2.5,-3e2,"x\"y",true,null],"b":{"c":"é"}}"#.utf8)
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            var bytes = base
            let position = Int.random(in: 0..<bytes.count, using: &generator)
            bytes[position] = [UInt8(ascii: "{"), UInt8(ascii: "]"), UInt8(ascii: ","), UInt8(ascii: "\""), UInt8(ascii: "1"), 0x20, UInt8(ascii: ":")].randomElement(using: &generator)!
            let ours = JSONValidator.isValid(Data(bytes))
            let foundation = (try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])) != nil
            #expect(ours == foundation, "\(String(decoding: bytes, as: UTF8.self))")
        }
    }
}

@Suite("JSONValue text")
struct JSONValueTextTests {
    @Test("hand-written JSON round-trips through Foundation's parser")
    func roundTrip() throws {
        let value: JSONValue = ["s": "a\"b\\c\n\u{1}é😀", "n": 42, "f": 2.5, "neg": -7, "b": true, "z": nil, "a": [1, "x", ["k": false]]]
        let text = value.jsonText
        #expect(JSONValidator.isValid(Data(text.utf8)))
        let parsed = try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
        #expect(parsed == value)
        #expect(JSONValue.object(["b": 1, "a": 2]).jsonText == #"{"a":2,"b":1}"#)
    }
}

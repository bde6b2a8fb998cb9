import EventStore
import Foundation
import Testing

@Suite("The platform's JSON decoder")
struct JSONValueDecoderTests {
    struct Line: Codable, Equatable {
        var sku: String
        var quantity: Int32
    }

    struct Order: Codable, Equatable {
        var id: String
        var lines: [Line]
        var note: String?
        var link: URL
        var blob: Data
        var price: Decimal
        var when: Date
        var extra: JSONValue?
    }

    /// Reads its kind through one container and its fields through another, as a discriminated
    /// type does.
    struct Shape: Decodable, Equatable {
        var kind: String
        var size: Int
        private enum KindKey: String, CodingKey { case kind }
        private enum FieldKey: String, CodingKey { case size }
        init(from decoder: any Decoder) throws {
            kind = try decoder.container(keyedBy: KindKey.self).decode(String.self, forKey: .kind)
            size = try decoder.container(keyedBy: FieldKey.self).decode(Int.self, forKey: .size)
        }
        init(kind: String, size: Int) {
            self.kind = kind
            self.size = size
        }
    }

    static func value(_ text: String) throws -> JSONValue { try JSONValue(parsing: Data(text.utf8)) }

    static func path(_ error: any Error) -> String {
        guard let error = error as? DecodingError else { return "not a DecodingError: \(error)" }
        switch error {
        case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context):
            return context.codingPath.map(\.stringValue).joined(separator: ".")
        case .keyNotFound(let key, let context):
            return (context.codingPath + [key]).map(\.stringValue).joined(separator: ".")
        @unknown default: return ""
        }
    }

    @Test("what JSONEncoder writes (URL, Data, Decimal, Date, nested arrays, free JSON) reads back, strictly")
    func roundTrip() throws {
        let order = Order(
            id: "o-1", lines: [Line(sku: "A", quantity: 2), Line(sku: "B", quantity: 3)], note: nil,
            link: URL(string: "https://example.com/o/1?x=y")!, blob: Data([0, 1, 2, 255]), price: Decimal(string: "12.34")!,
            when: Date(timeIntervalSince1970: 1_700_000_000), extra: ["any": ["thing": [1, 2]]])
        let encoded = try JSONEncoder().encode(order)
        #expect(try JSONValueDecoder(strict: true).decode(Order.self, from: Self.value(String(decoding: encoded, as: UTF8.self))) == order)
    }

    @Test("strict decoding names an unknown member at any depth, and the wrong type or range of a field")
    func strictErrors() throws {
        let base = #""id":"o","link":"https://e.com","blob":"AA==","price":1,"when":0"#
        let cases: [(String, String)] = [
            (#"{\#(base),"lines":[{"sku":"A","quantity":1},{"sku":"B","quantity":1,"qty":2}]}"#, "lines.1.qty"),
            (#"{\#(base),"lines":[],"unknown":true}"#, "unknown"),
            (#"{\#(base),"lines":[{"sku":"A","quantity":3000000000}]}"#, "lines.0.quantity"),
            (#"{\#(base),"lines":[{"sku":"A","quantity":1.5}]}"#, "lines.0.quantity"),
            (#"{\#(base),"lines":[{"sku":7,"quantity":1}]}"#, "lines.0.sku"),
            (#"{\#(base),"lines":[{"quantity":1}]}"#, "lines.0.sku"),
            (#"{\#(base),"lines":"none"}"#, "lines"),
            (#"{"id":"o","link":"https://e.com","blob":"not base64!","price":1,"when":0,"lines":[]}"#, "blob"),
        ]
        for (text, field) in cases {
            do {
                _ = try JSONValueDecoder(strict: true).decode(Order.self, from: Self.value(text))
                Issue.record("\(text) was accepted")
            } catch {
                #expect(Self.path(error) == field, "\(text): \(error)")
            }
        }
        // Lenient decoding (events) ignores members it does not know.
        let lenient = try JSONValueDecoder().decode(Line.self, from: Self.value(#"{"sku":"A","quantity":1,"later":true}"#))
        #expect(lenient == Line(sku: "A", quantity: 1))
    }

    @Test("an object read through two containers counts every member either asked for; free JSON is not checked inside")
    func sharedContainers() throws {
        #expect(try JSONValueDecoder(strict: true).decode(Shape.self, from: Self.value(#"{"kind":"box","size":3}"#)) == Shape(kind: "box", size: 3))
        #expect(throws: DecodingError.self) {
            try JSONValueDecoder(strict: true).decode(Shape.self, from: Self.value(#"{"kind":"box","size":3,"colour":"red"}"#))
        }
        #expect(try JSONValueDecoder(strict: true).decode(JSONValue.self, from: Self.value(#"{"a":{"b":1}}"#)) == ["a": ["b": 1]])
    }
}

import EventStore
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// Reading JSON requests and writing JSON responses.
enum JSONIO {
    static let contentType = "application/json"

    /// The body of a JSON request: checks the content type (415), the size (413), the syntax
    /// and nesting depth (400) before anything looks inside.
    static func readObject(_ request: Request, context: EventlineRequestContext) async throws -> (raw: Data, object: [String: Any]) {
        let mediaType = request.headers[.contentType].map(mediaTypeName)
        guard mediaType == contentType else {
            throw Problem(
                .unsupportedMediaType, "unsupported-media-type", "Unsupported media type",
                detail: "send the body as application/json (got \(mediaType ?? "no content type"))")
        }
        var request = request
        let buffer = try await request.collectBody(upTo: context.maxUploadSize)
        let raw = Data(buffer.readableBytesView)
        guard JSONValidator.isObject(raw), let object = try? JSONSerialization.jsonObject(with: raw) as? [String: Any] else {
            throw Problem.badRequest("the body is not a JSON object (malformed JSON, invalid UTF-8, or nested too deeply)")
        }
        try rejectNUL(raw, object)
        return (raw, object)
    }

    /// Refuses a body with U+0000 in any string or member name. PostgreSQL's text and jsonb
    /// cannot hold it, so such a value would be accepted here and fail later, where nobody can
    /// answer for it (a projection binding it as text, a cache key, a tag). Only a body that
    /// holds the character is walked, to name the field.
    static func rejectNUL(_ raw: Data, _ object: [String: Any]) throws {
        guard JSONValidator.containsNUL(raw), let path = firstNULPath(object, at: "") else { return }
        throw Problem.badRequest("\(path) contains a NUL character (U+0000), which cannot be stored", field: path)
    }

    /// The path (`events[0].data.owner`) of the first string or member name holding U+0000.
    static func firstNULPath(_ value: Any, at path: String) -> String? {
        switch value {
        case let string as String:
            return string.utf8.contains(0) ? (path.isEmpty ? "body" : path) : nil
        case let object as [String: Any]:
            for key in object.keys.sorted() {
                let member = path.isEmpty ? key : "\(path).\(key)"
                if key.utf8.contains(0) { return member }
                if let found = firstNULPath(object[key]!, at: member) { return found }
            }
            return nil
        case let array as [Any]:
            for (index, item) in array.enumerated() {
                if let found = firstNULPath(item, at: "\(path)[\(index)]") { return found }
            }
            return nil
        default:
            return nil
        }
    }

    /// The media type of a Content-Type value, lowercased, without parameters or spaces
    /// (without Foundation, whose trimming bridges through NSString).
    static func mediaTypeName(_ value: String) -> String {
        if value == contentType { return value }
        let type = value.utf8.prefix { $0 != UInt8(ascii: ";") }
        let isSpace = { (byte: UInt8) in byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        let trimmed = type.drop(while: isSpace).reversed().drop(while: isSpace).reversed()
        return String(decoding: trimmed, as: UTF8.self).lowercased()
    }

    /// Refuses members other than `allowed`.
    static func rejectUnknown(_ object: [String: Any], allowed: Set<String>, in place: String = "body") throws {
        if let unknown = object.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw Problem.badRequest("unknown field \(unknown) in the \(place)", field: unknown)
        }
    }

    /// A JSON number that is an integer within range, or nil when absent; throws naming `field`.
    static func integer(_ object: [String: Any], _ field: String, range: ClosedRange<Int>) throws -> Int? {
        guard let value = object[field] else { return nil }
        guard let number = value as? NSNumber, !isBool(number), let integer = Int(exactly: number.doubleValue),
            number.doubleValue.rounded() == number.doubleValue, range.contains(integer)
        else {
            throw Problem.badRequest("\(field) must be an integer from \(range.lowerBound) to \(range.upperBound)", field: field)
        }
        return integer
    }

    /// Whether a parsed JSON number is really `true`/`false` (Foundation parses both as NSNumber,
    /// and bridging would let 0 and 1 pass as Bool).
    static func isBool(_ number: NSNumber) -> Bool {
        String(cString: number.objCType) == "c"
    }

    /// A path parameter, percent-decoded.
    static func pathParameter(_ context: EventlineRequestContext, _ name: String) throws -> String {
        let raw = try context.parameters.require(name)
        // Foundation's decoding bridges through NSString: only pay for it when there is a '%'.
        guard let decoded = raw.utf8.contains(UInt8(ascii: "%")) ? raw.removingPercentEncoding : raw else {
            throw Problem.badRequest("the \(name) in the path is not valid percent-encoding", field: name)
        }
        try rejectControlCharacters(decoded, field: name)
        return decoded
    }

    /// Control characters (NUL above all) never belong in names, ids or filters.
    static func rejectControlCharacters(_ value: String, field: String) throws {
        if value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            throw Problem.badRequest("\(field) contains a control character", field: field)
        }
    }

    static func string(_ object: [String: Any], _ field: String) throws -> String? {
        guard let value = object[field] else { return nil }
        guard let string = value as? String else { throw Problem.badRequest("\(field) must be a string", field: field) }
        return string
    }

    /// Re-encodes a parsed JSON member (object, array or scalar) as bytes.
    static func encode(_ value: Any) throws -> Data {
        try JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .withoutEscapingSlashes])
    }

    /// A JSON response.
    static func response(_ status: HTTPResponse.Status = .ok, _ body: Data) -> Response {
        Response(
            status: status, headers: [.contentType: contentType],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: body)))
    }

    /// A JSON response from an Encodable value.
    static func response(_ status: HTTPResponse.Status = .ok, encoding value: some Encodable) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return response(status, try encoder.encode(value))
    }


    static let timestampStyle = ConsumerGroupMessage.timestampStyle

    /// An event as the API shows it (see `RecordedEvent.json(includeStream:)`).
    static func event(_ event: RecordedEvent, includeStream: Bool) -> String {
        event.json(includeStream: includeStream)
    }

    /// The request's query parameters with their names percent-decoded as well as their values
    /// (Hummingbird decodes only the values): `?curr%65ncy=EUR` names `currency`. A name that is
    /// not valid percent-encoding stays as sent, and is refused as unknown.
    static func queryParameters(_ request: Request) -> Hummingbird.Parameters {
        let parameters = request.uri.queryParameters
        guard parameters.contains(where: { $0.key.utf8.contains(UInt8(ascii: "%")) }) else { return parameters }
        return Hummingbird.Parameters(parameters.map { pair in
            guard pair.key.utf8.contains(UInt8(ascii: "%")), let decoded = String(pair.key).removingPercentEncoding else { return pair }
            return (key: decoded[...], value: pair.value)
        })
    }

    /// Refuses query parameters not in `allowed`, and control characters in names and values.
    static func rejectUnknownQuery(_ query: Hummingbird.Parameters, allowed: Set<String>) throws {
        for (key, value) in query {
            try JSONIO.rejectControlCharacters(String(key), field: "a query parameter's name")
            guard allowed.contains(String(key)) else { throw Problem.badRequest("unknown query parameter \(key)", field: String(key)) }
            try JSONIO.rejectControlCharacters(String(value), field: String(key))
        }
    }

    /// The integer query parameter `name` in `range`, or nil when absent.
    static func queryInteger(_ query: Hummingbird.Parameters, _ name: String, range: ClosedRange<Int>) throws -> Int? {
        guard let text = query[name[...]] else { return nil }
        guard let value = Int(text), range.contains(value) else {
            throw Problem.badRequest("\(name) must be an integer from \(range.lowerBound) to \(range.upperBound)", field: name)
        }
        return value
    }
}

import EventStore
import Foundation
import PostgresClient

/// A named parameter of a handler statement, bound from the event being applied.
public enum HandlerParameter: Hashable, Sendable, CustomStringConvertible {
    case stream, category, id, version, position, type, eventID, recordedAt
    /// `:subject`: the subject a `SubjectForgotten` event forgets (only in `forget:`).
    case subject
    /// `:data.a.b`: a value inside the event's data (a missing value binds NULL).
    case data([String])
    /// `:metadata.a.b`: a value inside the event's metadata.
    case metadata([String])

    public var description: String {
        switch self {
        case .stream: ":stream"
        case .category: ":category"
        case .id: ":id"
        case .version: ":version"
        case .position: ":position"
        case .type: ":type"
        case .eventID: ":event_id"
        case .recordedAt: ":recorded_at"
        case .subject: ":subject"
        case .data(let path): ":data." + path.joined(separator: ".")
        case .metadata(let path): ":metadata." + path.joined(separator: ".")
        }
    }

    static let simple: [String: HandlerParameter] = [
        "stream": .stream, "category": .category, "id": .id, "version": .version, "position": .position,
        "type": .type, "event_id": .eventID, "recorded_at": .recordedAt,
    ]

    /// The text bound for this parameter from `event`; nil binds SQL NULL.
    func value(for event: RecordedEvent) -> String? {
        switch self {
        case .stream: return event.stream
        case .category: return StreamName.category(of: event.stream)
        case .id:
            guard let dash = event.stream.firstIndex(of: "-") else { return "" }
            return String(event.stream[event.stream.index(after: dash)...])
        case .version: return String(event.version)
        case .position: return String(event.position)
        case .type: return event.type
        case .eventID: return event.id.uuidString.lowercased()
        case .recordedAt: return HandlerSQL.timestamp(event.recordedAt)
        case .subject: return JSONPathScanner.value(at: ["subject"], in: event.data)?.bindText
        case .data(let path): return JSONPathScanner.value(at: path, in: event.data)?.bindText
        case .metadata(let path): return JSONPathScanner.value(at: path, in: event.metadata)?.bindText
        }
    }
}

/// Why a handler's SQL text was refused.
public struct HandlerSQLError: Error, Equatable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

/// A handler's SQL with its named parameters (`:id`, `:data.amount`) turned into `$n` binds and
/// `$table` into the quoted table name. Parameters are always bound, never spliced into the text.
///
/// The scanner knows SQL's quoting: nothing inside '…', E'…', "…", $tag$…$tag$, -- and /* */
/// comments is touched, and `::type` casts are casts.
public struct HandlerSQL: Sendable, Hashable {
    /// The statement with `$1…$n` placeholders, for the table it was compiled for.
    public let sql: String
    /// The parameter of each placeholder, in order.
    public let parameters: [HandlerParameter]

    /// With `forget`, the text is a `forget:` handler, and `:subject` is bound.
    public init(_ text: String, table: String, forget: Bool = false) throws {
        var out = ""
        var parameters: [HandlerParameter] = []
        let scalars = Array(text.unicodeScalars)
        var index = 0

        func at(_ offset: Int) -> Unicode.Scalar? {
            index + offset < scalars.count ? scalars[index + offset] : nil
        }
        func isIdentifierStart(_ scalar: Unicode.Scalar?) -> Bool {
            guard let scalar else { return false }
            return scalar == "_" || (scalar.properties.isAlphabetic && scalar.isASCII)
        }
        func isIdentifierPart(_ scalar: Unicode.Scalar?) -> Bool {
            guard let scalar else { return false }
            return isIdentifierStart(scalar) || ("0"..."9").contains(scalar)
        }
        /// Copies a quoted section up to its closing quote (a doubled quote is an escaped one).
        func copyQuoted(_ quote: Unicode.Scalar, backslashEscapes: Bool) throws {
            out.unicodeScalars.append(scalars[index])
            index += 1
            while index < scalars.count {
                let scalar = scalars[index]
                out.unicodeScalars.append(scalar)
                index += 1
                if backslashEscapes && scalar == "\\" && index < scalars.count {
                    out.unicodeScalars.append(scalars[index])
                    index += 1
                } else if scalar == quote {
                    if at(0) == quote {
                        out.unicodeScalars.append(quote)
                        index += 1
                    } else {
                        return
                    }
                }
            }
            throw HandlerSQLError(message: "unterminated \(quote == "'" ? "string literal" : "quoted identifier")")
        }

        while index < scalars.count {
            let scalar = scalars[index]
            switch scalar {
            case "'":
                // E'…' (backslash escapes): an E that is not the end of a longer word.
                let previous = Array(out.unicodeScalars.suffix(2))
                let escaped = previous.last.map { $0 == "E" || $0 == "e" } == true
                    && (previous.count < 2 || !isIdentifierPart(previous[0]))
                try copyQuoted("'", backslashEscapes: escaped)
            case "\"":
                try copyQuoted("\"", backslashEscapes: false)
            case "-" where at(1) == "-":
                while index < scalars.count && scalars[index] != "\n" {
                    out.unicodeScalars.append(scalars[index])
                    index += 1
                }
            case "/" where at(1) == "*":
                var nesting = 0
                repeat {
                    if at(0) == "/" && at(1) == "*" {
                        nesting += 1
                        out += "/*"
                        index += 2
                    } else if at(0) == "*" && at(1) == "/" {
                        nesting -= 1
                        out += "*/"
                        index += 2
                    } else if index < scalars.count {
                        out.unicodeScalars.append(scalars[index])
                        index += 1
                    } else {
                        throw HandlerSQLError(message: "unterminated /* comment")
                    }
                } while nesting > 0
            case "$":
                if at(1).map({ ("0"..."9").contains($0) }) == true {
                    throw HandlerSQLError(message: "positional parameters ($1, $2, …) are not allowed: use named ones (:id, :data.amount)")
                }
                // $table, or a dollar-quoted string $tag$…$tag$.
                var end = index + 1
                while end < scalars.count && isIdentifierPart(scalars[end]) { end += 1 }
                let word = String(String.UnicodeScalarView(scalars[(index + 1)..<end]))
                if end < scalars.count && scalars[end] == "$" {
                    let delimiter = Array(scalars[index...end])
                    var close = end + 1
                    var found = false
                    while close + delimiter.count <= scalars.count {
                        if Array(scalars[close..<(close + delimiter.count)]) == delimiter {
                            found = true
                            break
                        }
                        close += 1
                    }
                    guard found else { throw HandlerSQLError(message: "unterminated dollar-quoted string \(String(String.UnicodeScalarView(delimiter)))") }
                    out.unicodeScalars.append(contentsOf: scalars[index..<(close + delimiter.count)])
                    index = close + delimiter.count
                } else if word == "table" {
                    out += table
                    index = end
                } else {
                    throw HandlerSQLError(message: "unknown placeholder $\(word) (only $table is replaced)")
                }
            case ":":
                if at(1) == ":" {
                    out += "::"
                    index += 2
                } else if isIdentifierStart(at(1)) {
                    var end = index + 1
                    while end < scalars.count && (isIdentifierPart(scalars[end])
                        || (scalars[end] == "." && end + 1 < scalars.count && isIdentifierPart(scalars[end + 1])))
                    {
                        end += 1
                    }
                    let name = String(String.UnicodeScalarView(scalars[(index + 1)..<end]))
                    let parameter = try Self.parameter(named: name, forget: forget)
                    if let existing = parameters.firstIndex(of: parameter) {
                        out += "$\(existing + 1)"
                    } else {
                        parameters.append(parameter)
                        out += "$\(parameters.count)"
                    }
                    index = end
                } else {
                    out.unicodeScalars.append(scalar)
                    index += 1
                }
            default:
                out.unicodeScalars.append(scalar)
                index += 1
            }
        }
        self.sql = out
        self.parameters = parameters
    }

    static func parameter(named name: String, forget: Bool = false) throws -> HandlerParameter {
        if name == "subject" {
            guard forget else { throw HandlerSQLError(message: ":subject is bound only in forget:") }
            return .subject
        }
        if let simple = HandlerParameter.simple[name] { return simple }
        let parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        if parts.count >= 2, parts.allSatisfy({ !$0.isEmpty }) {
            if parts[0] == "data" { return .data(Array(parts.dropFirst())) }
            if parts[0] == "metadata" { return .metadata(Array(parts.dropFirst())) }
        }
        let known = HandlerParameter.simple.keys.sorted().map { ":" + $0 }.joined(separator: ", ")
        throw HandlerSQLError(message: "unknown parameter :\(name) (known: \(known), :data.<path>, :metadata.<path>)")
    }

    /// The statement for `event`, every parameter bound as text for PostgreSQL to type.
    public func query(for event: RecordedEvent) -> SQLQuery {
        let binds = parameters.map { parameter -> PostgresBind in
            guard let text = parameter.value(for: event) else { return .null }
            return PostgresBind(oid: 0, format: 0, bytes: Array(text.utf8))
        }
        return SQLQuery(unsafeSQL: sql, binds: binds).prepared()
    }

    /// RFC 3339 in UTC with microseconds (PostgreSQL's precision), as timestamptz reads it.
    static func timestamp(_ date: Date) -> String {
        let micros = Int64((date.timeIntervalSince1970 * 1_000_000).rounded())
        var seconds = time_t(micros >= 0 ? micros / 1_000_000 : (micros - 999_999) / 1_000_000)
        let fraction = micros - Int64(seconds) * 1_000_000
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        let micro = String(fraction)
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))."
            + String(repeating: "0", count: 6 - micro.count) + micro + "Z"
    }
}

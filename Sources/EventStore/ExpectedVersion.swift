/// What the appender believes about the stream's version (its number of events) before appending.
public enum ExpectedVersion: Sendable, Hashable, CustomStringConvertible {
    /// Append whatever the stream holds.
    case any
    /// The stream must have no events (version 0).
    case noStream
    /// The stream must have at least one event.
    case exists
    /// The stream must have exactly this many events.
    case exact(Int)

    /// Whether a stream at `current` satisfies this expectation.
    public func isSatisfied(by current: Int) -> Bool {
        switch self {
        case .any: true
        case .noStream: current == 0
        case .exists: current > 0
        case .exact(let version): current == version
        }
    }

    public var description: String {
        switch self {
        case .any: "any"
        case .noStream: "no-stream"
        case .exists: "exists"
        case .exact(let version): String(version)
        }
    }

    /// Parses `any`, `no-stream` (or `noStream`), `exists`, or a number ≥ 0 (0 means no stream).
    public init?(parsing text: String) {
        switch text {
        case "any": self = .any
        case "no-stream", "noStream", "no_stream": self = .noStream
        case "exists", "stream-exists": self = .exists
        default:
            guard let version = Int(text), version >= 0 else { return nil }
            self = version == 0 ? .noStream : .exact(version)
        }
    }
}

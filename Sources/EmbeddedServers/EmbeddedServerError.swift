/// Why a private server could not be started or used; `description` is a complete sentence a
/// person can act on (an install hint, or the tail of the server's log).
public struct EmbeddedServerError: Error, CustomStringConvertible, Sendable {
    /// The full human-readable explanation, including any install hint or log tail.
    public let message: String

    /// Creates an error carrying `message` verbatim.
    public init(_ message: String) {
        self.message = message
    }

    /// The same text as `message`, so `"\(error)"` and test failures show the actionable hint.
    public var description: String { message }
}

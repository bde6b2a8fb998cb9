/// A failure reported by this module; two errors are equal when their codes are equal,
/// whatever their messages say.
///
/// Callers branch on the code (`error == .corruptInput`, `error.code == LZ4Error.corruptInput.code`,
/// `catch LZ4Error.corruptInput`); the message is for logs only and its wording may change.
public struct LZ4Error: Error, CustomStringConvertible, Equatable, Sendable {
    /// Identifies the kind of failure; stable across releases, unlike `message`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        internal let kind: Kind

        /// The code's name, e.g. `corruptInput`.
        public var description: String { kind.rawValue }
    }

    // Internal so the set of codes can grow without breaking exhaustive switches in callers.
    internal enum Kind: String, Sendable {
        case inputTooLarge
        case compressionFailed
        case corruptInput
        case truncatedInput
        case declaredSizeTooLarge
        case lengthMismatch
        case outputLimitExceeded
        case frameError
        case invalidState
    }

    /// The kind of failure; compare this (or the errors themselves), never `message`.
    public let code: Code
    /// Human-readable detail for logs, including LZ4F's own error name where there is one.
    public let message: String

    internal init(_ kind: Kind, _ message: String) {
        self.code = Code(kind: kind)
        self.message = message
    }

    /// The input is larger than LZ4 can handle (a block holds at most `LZ4Block.maxInputSize` bytes).
    public static let inputTooLarge = LZ4Error(.inputTooLarge, "input too large for LZ4")
    /// The LZ4 library refused to compress input that was within its limits.
    public static let compressionFailed = LZ4Error(.compressionFailed, "LZ4 compression failed")
    /// The compressed bytes are not a valid LZ4 block.
    public static let corruptInput = LZ4Error(.corruptInput, "corrupt LZ4 input")
    /// The input ended before the data it announced (a block header, or the rest of a frame).
    public static let truncatedInput = LZ4Error(.truncatedInput, "truncated LZ4 input")
    /// A block header declares an uncompressed length above the caller's limit; nothing was allocated for it.
    public static let declaredSizeTooLarge = LZ4Error(.declaredSizeTooLarge, "declared LZ4 size exceeds the limit")
    /// A block decoded cleanly but to a different length than its header declared.
    public static let lengthMismatch = LZ4Error(.lengthMismatch, "decoded length differs from the declared length")
    /// Decoding a frame stream would produce more bytes than the caller's limit.
    public static let outputLimitExceeded = LZ4Error(.outputLimitExceeded, "decompressed output exceeds the limit")
    /// The LZ4F frame library reported an error: bad magic number, checksum mismatch, corrupt block, and so on.
    public static let frameError = LZ4Error(.frameError, "LZ4 frame error")
    /// The encoder or decoder was used after it finished, was closed, or failed.
    public static let invalidState = LZ4Error(.invalidState, "LZ4 stream used in an invalid state")

    /// `LZ4Error.<code>: <message>`.
    public var description: String { "LZ4Error.\(code): \(message)" }

    /// Compares codes only, so a specific error from the library equals the static member of its kind.
    public static func == (lhs: LZ4Error, rhs: LZ4Error) -> Bool {
        lhs.code == rhs.code
    }

    /// Lets `catch LZ4Error.corruptInput` match any error of that code, whatever its message.
    public static func ~= (pattern: LZ4Error, value: any Error) -> Bool {
        guard let error = value as? LZ4Error else { return false }
        return error.code == pattern.code
    }

    internal func with(_ message: String) -> LZ4Error {
        LZ4Error(code.kind, message)
    }
}

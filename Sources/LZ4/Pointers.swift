import CLZ4

// An empty Swift buffer may have a nil base address, but some LZ4 entry points reject NULL
// and C leaves arithmetic on NULL undefined, so every buffer handed to C gets a real address.

internal func withBaseAddress<R>(
    _ buffer: UnsafeRawBufferPointer,
    _ body: (UnsafeRawPointer) -> R
) -> R {
    if let base = buffer.baseAddress { return body(base) }
    var placeholder: UInt8 = 0
    return withUnsafePointer(to: &placeholder) { body(UnsafeRawPointer($0)) }
}

internal func withBaseAddress<R>(
    _ buffer: UnsafeMutableRawBufferPointer,
    _ body: (UnsafeMutableRawPointer) -> R
) -> R {
    if let base = buffer.baseAddress { return body(base) }
    var placeholder: UInt8 = 0
    return withUnsafeMutablePointer(to: &placeholder) { body(UnsafeMutableRawPointer($0)) }
}

/// The `.frameError` an LZ4F `size_t` result stands for, naming LZ4F's own diagnosis; nil on success.
internal func lz4fFailure(_ result: Int, _ operation: String) -> LZ4Error? {
    guard LZ4F_isError(result) != 0 else { return nil }
    let name = LZ4F_getErrorName(result).map { String(cString: $0) } ?? "unknown error"
    return LZ4Error.frameError.with("\(operation): \(name)")
}

internal func checkLZ4F(_ result: Int, _ operation: String) throws -> Int {
    if let failure = lz4fFailure(result, operation) { throw failure }
    return result
}

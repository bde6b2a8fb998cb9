import ReadModels

/// Invalidates the projector's changed keys in Redis after each committed batch.
public struct RedisInvalidationSink: InvalidationSink {
    public let cache: ReadModelCache

    public init(cache: ReadModelCache) {
        self.cache = cache
    }

    public func invalidate(projection: String, generation: Int, keys: [String], position: Int) async throws {
        try await cache.invalidate(projection: projection, generation: generation, keys: keys, position: position)
    }
}

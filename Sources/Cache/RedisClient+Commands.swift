import Synchronization

/// Typed conveniences over `send`. Each throws `RedisError.server` for an error reply and
/// `.protocolError` for a reply of a shape the command cannot return.
extension RedisClient {
    /// Sends PING and checks for PONG.
    public func ping() async throws {
        let reply = try await send(["PING"])
        guard reply == .status("PONG") else { throw unexpected(reply, to: "PING") }
    }

    /// The value at `key`, or nil when there is none.
    public func get(_ key: String) async throws -> [UInt8]? {
        let reply = try await send(["GET", .string(key)])
        guard case .bulk(let bytes) = reply else { throw unexpected(reply, to: "GET") }
        return bytes
    }

    /// Stores `value` at `key`, replacing any value and TTL; with `expireSeconds` (which must
    /// be positive) the key expires after that many seconds.
    public func set(_ key: String, _ value: [UInt8], expireSeconds: Int? = nil) async throws {
        var command: [RedisArgument] = ["SET", .string(key), .bytes(value)]
        if let expireSeconds { command += ["EX", .int(expireSeconds)] }
        let reply = try await send(command)
        guard reply == .status("OK") else { throw unexpected(reply, to: "SET") }
    }

    /// Stores the UTF-8 of `value` at `key`; see `set(_:_:expireSeconds:)` for bytes.
    public func set(_ key: String, _ value: String, expireSeconds: Int? = nil) async throws {
        try await set(key, Array(value.utf8), expireSeconds: expireSeconds)
    }

    /// Deletes `keys`; returns how many existed.
    @discardableResult
    public func del(_ keys: [String]) async throws -> Int {
        guard !keys.isEmpty else { return 0 }
        return try await integer(["DEL"] + keys.map(RedisArgument.string), "DEL")
    }

    /// Deletes `keys`; returns how many existed.
    @discardableResult
    public func del(_ keys: String...) async throws -> Int {
        try await del(keys)
    }

    /// Sets a TTL on `key`; false when the key does not exist.
    @discardableResult
    public func expire(_ key: String, seconds: Int) async throws -> Bool {
        try await integer(["EXPIRE", .string(key), .int(seconds)], "EXPIRE") == 1
    }

    /// The seconds `key` has left to live: -1 when it has no TTL, -2 when it does not exist.
    public func ttl(_ key: String) async throws -> Int {
        try await integer(["TTL", .string(key)], "TTL")
    }

    /// Adds one to the integer at `key` (a missing key counts as 0) and returns the new value.
    @discardableResult
    public func incr(_ key: String) async throws -> Int {
        try await integer(["INCR", .string(key)], "INCR")
    }

    /// Publishes `message` on `channel`; returns how many subscribers received it.
    @discardableResult
    public func publish(_ channel: String, _ message: [UInt8]) async throws -> Int {
        try await integer(["PUBLISH", .string(channel), .bytes(message)], "PUBLISH")
    }

    /// Publishes the UTF-8 of `message` on `channel`; returns how many subscribers received it.
    @discardableResult
    public func publish(_ channel: String, _ message: String) async throws -> Int {
        try await publish(channel, Array(message.utf8))
    }

    /// Runs a Lua script with `keys` as KEYS and `args` as ARGV and returns its result; a
    /// script error is thrown as `.server`. Sends EVALSHA with the digest Redis gave the script
    /// when it was loaded; a script not loaded yet, or no longer known to the server (NOSCRIPT,
    /// after a restart or SCRIPT FLUSH), is loaded first with SCRIPT LOAD on the same connection.
    public func eval(_ script: String, keys: [String] = [], args: [RedisArgument] = []) async throws -> RedisReply {
        let tail: [RedisArgument] = [.int(keys.count)] + keys.map(RedisArgument.string) + args
        let known = scriptDigests.withLock { $0[script] }
        let reply = try await run { connection in
            func load() throws -> String {
                let loaded = try connection.send(["SCRIPT", "LOAD", .string(script)])
                if let error = loaded.serverError { throw error }
                guard let digest = loaded.string else { throw RedisError.protocolError("SCRIPT LOAD did not answer a digest") }
                return digest
            }
            var digest = try known ?? load()
            var reply = try connection.send(["EVALSHA", .string(digest)] + tail)
            if reply.serverError?.serverCode == "NOSCRIPT" {
                digest = try load()
                reply = try connection.send(["EVALSHA", .string(digest)] + tail)
            }
            if digest != known { self.scriptDigests.withLock { $0[script] = digest } }
            return reply
        }
        return try reply.throwingServerError()
    }

    /// `eval` with text arguments.
    public func eval(_ script: String, keys: [String] = [], args: [String]) async throws -> RedisReply {
        try await eval(script, keys: keys, args: args.map(RedisArgument.string))
    }

    private func integer(_ command: [RedisArgument], _ name: String) async throws -> Int {
        let reply = try await send(command)
        guard case .integer(let value) = reply else { throw unexpected(reply, to: name) }
        return value
    }

    private func unexpected(_ reply: RedisReply, to command: String) -> RedisError {
        let kind: String
        switch reply {
        case .status(let text): kind = "status \(text.prefix(64))"
        case .error(let text): kind = "error \(text.prefix(64))"
        case .integer(let value): kind = "integer \(value)"
        case .bulk(let bytes?): kind = "bulk string of \(bytes.count) bytes"
        case .bulk(nil): kind = "null bulk string"
        case .array(let elements?): kind = "array of \(elements.count) elements"
        case .array(nil): kind = "null array"
        }
        return .protocolError("unexpected reply to \(command): \(kind)")
    }
}

/// One blocking connection to Redis, used by one thread at a time.
///
/// Opening it connects, then sends AUTH and SELECT as the configuration asks. Any I/O error,
/// timeout or invalid reply closes it for good (`isOpen` turns false): the stream can no longer
/// be trusted to line replies up with commands. Error replies from the server are returned as
/// `.error` values and leave it open.
final class RedisConnection {
    let configuration: RedisConfiguration
    private let socket: RedisSocket
    private var buffer = ReadBuffer()
    private var parser = RESPParser()
    private(set) var isOpen = true

    init(_ configuration: RedisConfiguration) throws {
        self.configuration = configuration
        self.socket = try RedisSocket(
            host: configuration.host, port: configuration.port, timeout: configuration.connectTimeout
        )
        do {
            try handshake()
        } catch {
            close()
            throw error
        }
    }

    deinit {
        socket.close()
    }

    /// Closes the socket; later calls do nothing.
    func close() {
        isOpen = false
        socket.close()
    }

    /// Sends one command and returns its reply (an `.error` reply is returned, not thrown).
    func send(_ command: [RedisArgument]) throws -> RedisReply {
        try pipeline([command])[0]
    }

    /// Writes every command, then reads one reply per command, in order.
    func pipeline(_ commands: [[RedisArgument]]) throws -> [RedisReply] {
        guard !commands.isEmpty else { return [] }
        try write(commands)
        var replies: [RedisReply] = []
        replies.reserveCapacity(commands.count)
        for _ in commands { replies.append(try readReply()) }
        return replies
    }

    /// Writes commands without reading their replies (for pub/sub, whose replies arrive later).
    func write(_ commands: [[RedisArgument]]) throws {
        try checkOpen()
        for command in commands where command.isEmpty {
            throw RedisError.invalidArgument("a command needs at least its name")
        }
        try closingOnError {
            try socket.write(RESP.encode(commands), timeout: configuration.commandTimeout, draining: &buffer)
        }
    }

    /// Reads the next reply, waiting up to the command timeout for each part of it.
    func readReply() throws -> RedisReply {
        try checkOpen()
        return try closingOnError {
            while true {
                if let reply = try parser.next(from: &buffer) { return reply }
                try socket.read(into: &buffer, timeout: configuration.commandTimeout)
            }
        }
    }

    /// Whether a reply (or part of one) is waiting or arrives within `timeout`.
    func waitForReply(timeout: Duration) throws -> Bool {
        try checkOpen()
        if buffer.readableCount > 0 { return true }
        return try closingOnError { try socket.waitReadable(timeout: timeout) }
    }

    /// Whether this connection, with no command in flight, can take the next one: it is open
    /// and the server has sent nothing unasked (a connection the server closed while it sat
    /// idle shows end-of-file here). Costs one poll(2) with a zero timeout.
    func isUsableWhenIdle() -> Bool {
        isOpen && parser.isIdle && buffer.readableCount == 0 && !socket.hasPendingInput()
    }

    private func checkOpen() throws {
        guard isOpen else { throw RedisError(code: .connection, message: "the connection is closed") }
    }

    private func closingOnError<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch {
            close()
            throw error
        }
    }

    private func handshake() throws {
        var commands: [[RedisArgument]] = []
        if let password = configuration.password {
            if let user = configuration.user {
                commands.append(["AUTH", .string(user), .string(password)])
            } else {
                commands.append(["AUTH", .string(password)])
            }
        }
        if configuration.database != 0 {
            commands.append(["SELECT", .int(configuration.database)])
        }
        let replies = try pipeline(commands)
        for (command, reply) in zip(commands, replies) {
            guard let error = reply.serverError else { continue }
            let what = command[0] == "AUTH" ? "authentication failed" : "SELECT \(configuration.database) failed"
            throw RedisError(code: .connection, message: "\(what): \(error.message)", serverCode: error.serverCode)
        }
    }
}

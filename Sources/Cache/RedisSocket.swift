#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A non-blocking TCP socket driven with poll(2), so that every wait has a timeout. Owned by
/// one thread at a time; not Sendable.
final class RedisSocket {
    private var descriptor: Int32
    private let scratch: UnsafeMutableRawBufferPointer
    private let peer: String

    /// Resolves `host` and connects to the first address that accepts within `timeout` (one
    /// deadline for all of them), with TCP_NODELAY and keep-alive set.
    init(host: String, port: Int, timeout: Duration) throws {
        let peer = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        self.descriptor = try Self.connect(host: host, port: port, peer: peer, deadline: .now + timeout, timeout: timeout)
        self.peer = peer
        self.scratch = .allocate(byteCount: 64 * 1024, alignment: 16)
    }

    deinit {
        close()
        scratch.deallocate()
    }

    var isOpen: Bool { descriptor >= 0 }

    /// Closes the socket; later calls do nothing.
    func close() {
        guard descriptor >= 0 else { return }
        _ = systemClose(descriptor)
        descriptor = -1
    }

    /// Reads what has arrived (at least one byte) into `buffer`, waiting up to `timeout` for it.
    func read(into buffer: inout ReadBuffer, timeout: Duration) throws {
        while true {
            if try readAvailable(into: &buffer) { return }
            guard try wait(for: Int16(POLLIN), timeout: timeout) != 0 else {
                throw RedisError(code: .timeout, message: "\(peer) sent no reply within \(timeout)")
            }
        }
    }

    /// Writes all of `bytes`, waiting up to `timeout` each time the socket is full. While it
    /// waits it keeps reading replies into `buffer`, so that a large pipeline cannot deadlock
    /// with a server that is blocked writing replies nobody reads.
    func write(_ bytes: [UInt8], timeout: Duration, draining buffer: inout ReadBuffer) throws {
        try bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let sent = systemSend(descriptor, raw.baseAddress! + offset, raw.count - offset)
                if sent > 0 {
                    offset += sent
                    continue
                }
                if sent < 0 {
                    let code = errno
                    if code == EINTR { continue }
                    guard code == EAGAIN || code == EWOULDBLOCK else {
                        throw RedisError.posix("send to \(peer)", errno: code)
                    }
                }
                let events = try wait(for: Int16(POLLOUT) | Int16(POLLIN), timeout: timeout)
                guard events != 0 else {
                    throw RedisError(code: .timeout, message: "\(peer) did not accept the command within \(timeout)")
                }
                if events & Int16(POLLIN) != 0 { _ = try readAvailable(into: &buffer) }
            }
        }
    }

    /// Waits up to `timeout` for something to read (or for the peer to close); false on timeout.
    func waitReadable(timeout: Duration) throws -> Bool {
        try wait(for: Int16(POLLIN), timeout: timeout) != 0
    }

    /// Whether anything at all is readable right now: unsolicited data, end-of-file or an
    /// error. On an idle connection any of them means it cannot be used.
    func hasPendingInput() -> Bool {
        guard descriptor >= 0 else { return true }
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        return systemPoll(&entry, 0) != 0
    }

    // MARK: - Internals

    /// One non-blocking recv: true if bytes were appended, false if none are there yet.
    private func readAvailable(into buffer: inout ReadBuffer) throws -> Bool {
        while true {
            let received = recv(descriptor, scratch.baseAddress, scratch.count, 0)
            if received > 0 {
                buffer.append(UnsafeRawBufferPointer(rebasing: scratch[0..<received]))
                return true
            }
            if received == 0 {
                throw RedisError(code: .connection, message: "\(peer) closed the connection")
            }
            let code = errno
            if code == EINTR { continue }
            if code == EAGAIN || code == EWOULDBLOCK { return false }
            throw RedisError.posix("recv from \(peer)", errno: code)
        }
    }

    /// poll(2) for `events` until they occur or `timeout` passes; the returned events, 0 on timeout.
    private func wait(for events: Int16, timeout: Duration) throws -> Int16 {
        guard descriptor >= 0 else { throw RedisError(code: .connection, message: "the connection is closed") }
        return try Self.wait(descriptor, for: events, until: .now + timeout)
    }

    private static func wait(_ descriptor: Int32, for events: Int16, until deadline: ContinuousClock.Instant) throws -> Int16 {
        while true {
            var entry = pollfd(fd: descriptor, events: events, revents: 0)
            let result = systemPoll(&entry, milliseconds(until: deadline))
            if result > 0 { return entry.revents }
            if result == 0 {
                // poll rounds to milliseconds; only a passed deadline is a timeout.
                if ContinuousClock.now >= deadline { return 0 }
                continue
            }
            let code = errno
            if code == EINTR { continue }
            throw RedisError.posix("poll", errno: code)
        }
    }

    private static func milliseconds(until deadline: ContinuousClock.Instant) -> Int32 {
        let left = deadline - .now
        guard left > .zero else { return 0 }
        let (seconds, attoseconds) = left.components
        let total = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return Int32(clamping: total)
    }

    private static func connect(
        host: String, port: Int, peer: String, deadline: ContinuousClock.Instant, timeout: Duration
    ) throws -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = streamSocketType
        hints.ai_flags = AI_NUMERICSERV
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let list else {
            let reason = status == EAI_SYSTEM ? String(cString: strerror(errno)) : String(cString: gai_strerror(status))
            throw RedisError(code: .connection, message: "cannot resolve \(host): \(reason)")
        }
        defer { freeaddrinfo(list) }

        var lastError = RedisError(code: .connection, message: "\(host) has no usable address")
        var cursor: UnsafeMutablePointer<addrinfo>? = list
        while let info = cursor {
            cursor = info.pointee.ai_next
            do {
                return try connect(info.pointee, peer: peer, deadline: deadline, timeout: timeout)
            } catch let error as RedisError {
                lastError = error
                if error.code == .timeout { break }
            }
        }
        throw lastError
    }

    private static func connect(
        _ info: addrinfo, peer: String, deadline: ContinuousClock.Instant, timeout: Duration
    ) throws -> Int32 {
        let descriptor = try syscall("socket") { makeSocket(info.ai_family, info.ai_protocol) }
        var ok = false
        defer { if !ok { _ = systemClose(descriptor) } }

        if systemConnect(descriptor, info.ai_addr, info.ai_addrlen) != 0 {
            let code = errno
            guard code == EINPROGRESS || code == EINTR else { throw RedisError.posix("connect to \(peer)", errno: code) }
            guard try wait(descriptor, for: Int16(POLLOUT), until: deadline) != 0 else {
                throw RedisError(code: .timeout, message: "connecting to \(peer) took longer than \(timeout)", errno: ETIMEDOUT)
            }
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            try syscall("getsockopt") { getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &error, &length) }
            guard error == 0 else { throw RedisError.posix("connect to \(peer)", errno: error) }
        }
        var one: Int32 = 1
        let size = socklen_t(MemoryLayout<Int32>.size)
        try syscall("setsockopt(TCP_NODELAY)") { setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, &one, size) }
        try syscall("setsockopt(SO_KEEPALIVE)") { setsockopt(descriptor, SOL_SOCKET, SO_KEEPALIVE, &one, size) }
        #if canImport(Darwin)
        try syscall("setsockopt(SO_NOSIGPIPE)") { setsockopt(descriptor, SOL_SOCKET, SO_NOSIGPIPE, &one, size) }
        #endif
        ok = true
        return descriptor
    }
}

// File-scope wrappers: inside the class these names would resolve to its own methods.

#if canImport(Glibc)
private let streamSocketType = Int32(SOCK_STREAM.rawValue)

private func makeSocket(_ family: Int32, _ proto: Int32) -> Int32 {
    socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), proto)
}

private func systemSend(_ descriptor: Int32, _ pointer: UnsafeRawPointer, _ count: Int) -> Int {
    send(descriptor, pointer, count, Int32(MSG_NOSIGNAL))
}
#else
private let streamSocketType = SOCK_STREAM

private func makeSocket(_ family: Int32, _ proto: Int32) -> Int32 {
    let descriptor = socket(family, SOCK_STREAM, proto)
    guard descriptor >= 0 else { return descriptor }
    _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
    _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
    return descriptor
}

private func systemSend(_ descriptor: Int32, _ pointer: UnsafeRawPointer, _ count: Int) -> Int {
    send(descriptor, pointer, count, 0)
}
#endif

private func systemClose(_ descriptor: Int32) -> Int32 { close(descriptor) }

private func systemConnect(_ descriptor: Int32, _ address: UnsafePointer<sockaddr>?, _ length: socklen_t) -> Int32 {
    connect(descriptor, address, length)
}

private func systemPoll(_ entry: inout pollfd, _ milliseconds: Int32) -> Int32 {
    poll(&entry, 1, milliseconds)
}

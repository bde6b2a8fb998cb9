#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Synchronization

/// A blocking TCP connection to 127.0.0.1 with timeouts, enough to probe a server and speak
/// a line of the Redis protocol without any package.
struct LoopbackSocket: ~Copyable {
    private let fd: Int32

    /// Connects within `timeout`; nil if nothing accepts on `port`.
    init?(port: Int, timeout: Duration) {
        #if canImport(Glibc)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { return nil }
        #if canImport(Darwin)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, socklen_t(MemoryLayout<Int32>.size))
        #endif
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        var address = LoopbackSocket.address(port: port)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        if result != 0 {
            guard errno == EINPROGRESS, LoopbackSocket.waitFor(fd, events: Int16(POLLOUT), timeout: timeout) else {
                close(fd)
                return nil
            }
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0, error == 0 else {
                close(fd)
                return nil
            }
        }
        _ = fcntl(fd, F_SETFL, flags)
        self.fd = fd
    }

    deinit {
        close(fd)
    }

    /// Sends all of `text`; false on any error or timeout.
    func send(_ text: String, timeout: Duration) -> Bool {
        let bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            guard LoopbackSocket.waitFor(fd, events: Int16(POLLOUT), timeout: timeout) else { return false }
            #if canImport(Glibc)
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            #else
            let n = bytes[sent...].withUnsafeBytes { Darwin.send(fd, $0.baseAddress, $0.count, 0) }
            #endif
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            sent += n
        }
        return true
    }

    /// Reads until `isComplete` accepts the bytes so far, the peer closes, or `timeout` passes.
    func receive(timeout: Duration, until isComplete: ([UInt8]) -> Bool) -> [UInt8] {
        let deadline = ContinuousClock.now + timeout
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !isComplete(received) {
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero, LoopbackSocket.waitFor(fd, events: Int16(POLLIN), timeout: remaining) else { break }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            received.append(contentsOf: buffer[0..<n])
        }
        return received
    }

    /// Whether something accepts TCP connections on 127.0.0.1:`port`.
    static func accepts(port: Int, timeout: Duration = .milliseconds(500)) -> Bool {
        LoopbackSocket(port: port, timeout: timeout) != nil
    }

    private static func waitFor(_ fd: Int32, events: Int16, timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            let remaining = deadline - ContinuousClock.now
            let milliseconds = max(0, Int32(min(remaining.seconds * 1000, 60_000)))
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let result = poll(&entry, 1, milliseconds)
            if result > 0 { return true }
            if result < 0 && errno == EINTR && ContinuousClock.now < deadline { continue }
            return false
        }
    }

    fileprivate static func address(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr = in_addr(s_addr: in_addr_t(0x7f00_0001).bigEndian)
        return address
    }
}

/// Free TCP ports on 127.0.0.1, for servers started by tests and `eventctl dev`.
public enum FreePort {
    // Ports handed out recently in this process: two servers starting at the same moment
    // could otherwise be told the same just-released port by the kernel.
    private static let recentlyPicked = Mutex<[Int]>([])

    /// A port on 127.0.0.1 that nothing listened on a moment ago (bind to port 0, read it back).
    public static func pick() throws -> Int {
        for _ in 0..<20 {
            let port = try bindEphemeral()
            let fresh = recentlyPicked.withLock { recent -> Bool in
                guard !recent.contains(port) else { return false }
                recent.append(port)
                if recent.count > 256 { recent.removeFirst(recent.count - 256) }
                return true
            }
            if fresh { return port }
        }
        throw EmbeddedServerError("could not find a free TCP port on 127.0.0.1")
    }

    private static func bindEphemeral() throws -> Int {
        #if canImport(Glibc)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else {
            throw EmbeddedServerError("could not create a socket: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var address = LoopbackSocket.address(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else {
            throw EmbeddedServerError("could not bind 127.0.0.1:0: \(String(cString: strerror(errno)))")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else {
            throw EmbeddedServerError("getsockname failed: \(String(cString: strerror(errno)))")
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

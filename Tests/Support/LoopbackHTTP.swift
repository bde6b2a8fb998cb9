import Foundation

/// HTTP/1.1 over a plain socket to a server on this machine, for tests of processes (a server
/// started as `eventctl serve`) and of requests that break HTTP itself (which a client will not
/// send). Blocking socket calls, on a thread of their own.
public enum LoopbackHTTP {
    /// The name every test client uses for a server on this machine: Hummingbird's live test
    /// framework binds its servers to it, and a stock Debian resolves it to ::1 as well as
    /// 127.0.0.1 (in that order), where some machines have 127.0.0.1 only. A client that
    /// connects to a fixed address reaches a server on one kind of machine and not on the
    /// other; clients use this name and try every address it resolves to.
    public static let host = "localhost"

    /// A parsed answer.
    public struct Answer: Sendable {
        public var status: Int
        public var headers: [String: String]
        public var body: String
    }

    /// Sends `request` as it is over a new connection to `host`:`port` (every address the name
    /// resolves to is tried: `localhost` is ::1 on a stock Debian), and returns what the server
    /// answers until it closes the connection or `timeout` passes.
    public static func exchange(host: String = LoopbackHTTP.host, port: Int, _ request: [UInt8], timeout: Double = 3) async throws -> String {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<String, any Error>) in
            Thread.detachNewThread {
                continuation.resume(with: Result {
                    let fd = try connect(host: host, port: port)
                    defer { close(fd) }
                    var wait = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - timeout.rounded(.down)) * 1_000_000))
                    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
                    var sent = 0
                    while sent < request.count {
                        let count = request.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
                        guard count > 0 else { throw POSIXError(.EIO) }
                        sent += count
                    }
                    var answer: [UInt8] = []
                    var buffer = [UInt8](repeating: 0, count: 65536)
                    while true {
                        let count = recv(fd, &buffer, buffer.count, 0)
                        if count <= 0 { break }
                        answer += buffer[0..<count]
                    }
                    return String(decoding: answer, as: UTF8.self)
                })
            }
        }
    }

    /// One request with `Connection: close`; the answer parsed (chunked bodies joined).
    public static func request(
        _ method: String = "GET", host: String = LoopbackHTTP.host, port: Int, _ path: String, headers: [String: String] = [:],
        body: String? = nil, timeout: Double = 10
    ) async throws -> Answer {
        var text = "\(method) \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n"
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        if let body {
            if headers["Content-Type"] == nil { text += "Content-Type: application/json\r\n" }
            text += "Content-Length: \(body.utf8.count)\r\n"
        }
        text += "\r\n" + (body ?? "")
        let raw = try await exchange(host: host, port: port, Array(text.utf8), timeout: timeout)
        guard let split = raw.range(of: "\r\n\r\n") else { throw POSIXError(.EPROTO) }
        let head = raw[..<split.lowerBound].components(separatedBy: "\r\n")
        guard let statusLine = head.first, statusLine.hasPrefix("HTTP/1.1 "),
            let status = Int(statusLine.dropFirst(9).prefix(3))
        else { throw POSIXError(.EPROTO) }
        var fields: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        var body = String(raw[split.upperBound...])
        if fields["transfer-encoding"]?.lowercased() == "chunked" { body = dechunk(body) }
        return Answer(status: status, headers: fields, body: body)
    }

    /// Whether anything answers HTTP on `port` yet.
    public static func answers(port: Int, _ path: String = "/health/live") async -> Bool {
        (try? await request(port: port, path, timeout: 2)) != nil
    }

    private static func dechunk(_ text: String) -> String {
        var bytes = Substring(text)
        var out = ""
        while let end = bytes.range(of: "\r\n"), let size = Int(bytes[..<end.lowerBound], radix: 16), size > 0 {
            let start = end.upperBound
            let utf8 = bytes[start...].utf8
            let stop = utf8.index(utf8.startIndex, offsetBy: size, limitedBy: utf8.endIndex) ?? utf8.endIndex
            out += String(bytes[start..<stop])
            bytes = bytes[stop...].dropFirst(2)
        }
        return out
    }

    /// A connected socket to `host`:`port` (blocking), for tests that drive a connection by hand.
    public static func connect(host: String, port: Int) throws -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>? = nil
        guard getaddrinfo(host, String(port), &hints, &list) == 0 else { throw POSIXError(.EHOSTUNREACH) }
        defer { freeaddrinfo(list) }
        var next = list
        while let info = next {
            next = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
            guard fd >= 0 else { continue }
            if Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 { return fd }
            close(fd)
        }
        throw POSIXError(.ECONNREFUSED)
    }
}

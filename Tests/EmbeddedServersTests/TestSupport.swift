#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import EmbeddedServers
import Foundation

/// Runs `psql` against `server` and returns its unaligned, tuples-only output.
func psql(_ server: EmbeddedPostgres, _ sql: String, database: String = "postgres") throws -> String {
    let candidates = [server.binDirectory + "/psql", "/usr/bin/psql"]
    guard let psql = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        throw EmbeddedServerError("psql not found: install the PostgreSQL client (apt-get install -y postgresql-client)")
    }
    return try run(psql, ["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql, server.url(database: database)])
}

/// Runs a command to completion and returns its trimmed stdout; throws with stderr on failure.
func run(_ executable: String, _ arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let output = Pipe()
    let errors = Pipe()
    process.standardOutput = output
    process.standardError = errors
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let outputData = output.fileHandleForReading.readDataToEndOfFile()
    let errorData = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let stdout = String(decoding: outputData, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    guard process.terminationReason == .exit, process.terminationStatus == 0 else {
        throw EmbeddedServerError(
            "\(executable) \(arguments.joined(separator: " ")) failed (\(process.terminationStatus)): "
                + String(decoding: errorData, as: UTF8.self)
        )
    }
    return stdout
}

/// Opens a TCP connection to 127.0.0.1:`port`, or returns nil if nothing accepts.
func openConnection(port: Int) -> Int32? {
    #if canImport(Glibc)
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    #else
    let fd = socket(AF_INET, SOCK_STREAM, 0)
    #endif
    guard fd >= 0 else { return nil }
    var address = loopback(port: port)
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard result == 0 else {
        close(fd)
        return nil
    }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

/// Whether anything accepts TCP connections on 127.0.0.1:`port`.
func acceptsConnections(port: Int) -> Bool {
    guard let fd = openConnection(port: port) else { return false }
    close(fd)
    return true
}

/// Sends one inline Redis command and returns the first reply line including its CRLF.
func redisCommand(port: Int, _ command: String) -> String? {
    guard let fd = openConnection(port: port) else { return nil }
    defer { close(fd) }
    let request = Array((command + "\r\n").utf8)
    #if canImport(Glibc)
    let flags = Int32(MSG_NOSIGNAL)
    #else
    let flags: Int32 = 0
    #endif
    guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, flags) }) == request.count else {
        return nil
    }
    var reply: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 512)
    while !reply.contains(10) {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { break }
        reply += buffer[0..<n]
    }
    return String(decoding: reply, as: UTF8.self)
}

/// A socket listening on a free 127.0.0.1 port, to make a server's bind fail.
func occupyPort() throws -> (fd: Int32, port: Int) {
    #if canImport(Glibc)
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    #else
    let fd = socket(AF_INET, SOCK_STREAM, 0)
    #endif
    var address = loopback(port: 0)
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard fd >= 0, bound == 0, listen(fd, 1) == 0 else {
        throw EmbeddedServerError("could not occupy a port: \(String(cString: strerror(errno)))")
    }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

private func loopback(port: Int) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr = in_addr(s_addr: in_addr_t(0x7f00_0001).bigEndian)
    return address
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
func eventually(within timeout: Duration, _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(100))
    }
    return condition()
}

func directoryExists(_ path: String) -> Bool {
    var isDirectory: ObjCBool = false
    return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue
}

/// Writes a line straight to fd 1 (no buffering to lose when an exit test SIGKILLs itself).
func report(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// The `KEY value…` line an exit test reported, split into fields.
func reportedFields(_ output: [UInt8], key: String) -> [String]? {
    let text = String(decoding: output, as: UTF8.self)
    for line in text.split(separator: "\n") where line.hasPrefix(key + " ") {
        return line.split(separator: " ").dropFirst().map(String.init)
    }
    return nil
}

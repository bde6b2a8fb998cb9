import Foundation

/// Sends `signal` to `pid` and to every process below it (children first), found through
/// /proc: a test kills exactly what it started, with no pkill (minimal Debian has no procps).
public func killProcessTree(_ pid: Int32, signal: Int32 = SIGKILL) {
    for child in descendants(of: pid).reversed() { kill(child, signal) }
    kill(pid, signal)
}

/// The processes below `pid`, parents before their children.
public func descendants(of pid: Int32) -> [Int32] {
    var children: [Int32: [Int32]] = [:]
    for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
        guard let child = Int32(entry), let parent = parentPID(of: child) else { continue }
        children[parent, default: []].append(child)
    }
    var found: [Int32] = []
    var queue = children[pid] ?? []
    while let next = queue.first {
        queue.removeFirst()
        found.append(next)
        queue += children[next] ?? []
    }
    return found
}

/// A process's command line, arguments joined by spaces ("" once it has gone).
public func commandLine(of pid: Int32) -> String {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return "" }
    return String(decoding: data.map { $0 == 0 ? UInt8(ascii: " ") : $0 }, as: UTF8.self)
}

private func parentPID(of pid: Int32) -> Int32? {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/stat") else { return nil }
    // "pid (comm) state ppid …": comm may hold spaces and parentheses, so read after the last ')'.
    let text = String(decoding: data, as: UTF8.self)
    guard let close = text.lastIndex(of: ")") else { return nil }
    let fields = text[text.index(after: close)...].split(separator: " ")
    return fields.count > 1 ? Int32(fields[1]) : nil
}

/// A long-running child process (a server, a projector) whose output goes to a log file, and
/// which is killed with everything it started when the test ends, passed or failed.
public final class BackgroundProcess: @unchecked Sendable {
    public let process: Process
    public let logFile: URL

    /// Starts `path` with `arguments`; `environment` is added to this process's own.
    public init(
        _ path: String, _ arguments: [String], environment: [String: String] = [:], currentDirectory: String? = nil,
        replaceEnvironment: Bool = false
    ) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        var env = replaceEnvironment ? [:] : ProcessInfo.processInfo.environment
        if !replaceEnvironment { env.removeValue(forKey: "EVENTLINE_DATABASE_URL") }
        for (key, value) in environment { env[key] = value }
        if !replaceEnvironment { TestMasterKey.applied(to: &env) }
        process.environment = env
        if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
        logFile = FileManager.default.temporaryDirectory.appendingPathComponent("eventline-\(UUID().uuidString.prefix(8)).log")
        FileManager.default.createFile(atPath: logFile.path, contents: nil)
        let handle = try FileHandle(forWritingTo: logFile)
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }

    /// What the process has written so far (stdout and stderr).
    public var output: String { (try? String(contentsOf: logFile, encoding: .utf8)) ?? "" }

    /// Sends `signal` to the process and waits (on a thread of its own) until it has exited.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeout: TimeInterval = 20) async -> Int32 {
        if process.isRunning { kill(pid, signal) }
        let process = self.process
        let exited = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            Thread.detachNewThread {
                let deadline = Date().addingTimeInterval(timeout)
                while process.isRunning && Date() < deadline { usleep(10_000) }
                continuation.resume(returning: !process.isRunning)
            }
        }
        if !exited { killProcessTree(pid) }
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit {
        if process.isRunning { killProcessTree(process.processIdentifier) }
        try? FileManager.default.removeItem(at: logFile)
    }
}

/// Processes a test started, killed (with all they started) by `killAll`, which a `defer`
/// calls so that nothing outlives a failed test.
public final class ProcessList: @unchecked Sendable {
    private let lock = NSLock()
    private var processes: [Process] = []

    public init() {}

    public func append(_ process: Process) {
        lock.withLock { processes.append(process) }
    }

    public var pids: [Int32] { lock.withLock { processes.map(\.processIdentifier) } }

    public func killAll() {
        for process in lock.withLock({ processes }) where process.isRunning {
            killProcessTree(process.processIdentifier)
            process.waitUntilExit()
        }
    }
}

/// Database timeouts for server processes the tests start against the shared test database.
/// The server's defaults (1.5 s to connect or answer) suit a database that should answer in
/// milliseconds; the shared one is busy with every suite at once, and a test about something
/// else must not fail because a connection took two seconds to open. The tests of the
/// defaults themselves run against a server of their own.
public let tolerantDatabaseTimeouts = [
    "EVENTLINE_DB_CONNECT_TIMEOUT": "15", "EVENTLINE_DB_STATEMENT_TIMEOUT": "60", "EVENTLINE_DB_POOL_TIMEOUT": "15",
]

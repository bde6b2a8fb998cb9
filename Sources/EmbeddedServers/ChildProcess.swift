#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

// Children are spawned with posix_spawn rather than Foundation.Process because the servers
// must be stoppable from an atexit handler (plain syscalls, no run loop), must not inherit
// the parent's descriptors (a leaked pipe would keep `swift test` or an exit test waiting
// until the server died), and must sit in their own session so a terminal's Ctrl-C reaches
// only our process, which then stops them in order.

/// How a child ended.
enum ChildExit: Equatable, Sendable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)
    /// Someone else reaped it (SIGCHLD ignored); it is gone but its status is unknown.
    case unknown

    var description: String {
        switch self {
        case .exited(let code): return "exit status \(code)"
        case .signaled(let signal): return "signal \(signal)"
        case .unknown: return "unknown status"
        }
    }
}

#if os(Linux)
private typealias AddCloseFrom = @convention(c) (
    UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32
) -> Int32
private typealias AddChdir = @convention(c) (
    UnsafeMutablePointer<posix_spawn_file_actions_t>?, UnsafePointer<CChar>?
) -> Int32

// glibc declares these only under _GNU_SOURCE, which the Swift Glibc module does not define,
// so they are looked up at run time; both exist since glibc 2.34 (Debian 12 has 2.36).
private let addCloseFromFunction: AddCloseFrom? =
    dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np")
    .map { unsafeBitCast($0, to: AddCloseFrom.self) }
private let addChdirFunction: AddChdir? =
    dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addchdir_np")
    .map { unsafeBitCast($0, to: AddChdir.self) }
// Not exported by the Glibc module for the same reason; the value is fixed in glibc's ABI.
private let spawnSetSID: Int32 = 0x80
#endif

enum ChildProcess {
    /// Starts `executable` with stdin from /dev/null and stdout+stderr to `outputPath`
    /// (or /dev/null), no inherited descriptors, default signal dispositions, in a new session.
    static func spawn(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String],
        workingDirectory: String? = nil,
        outputPath: String? = nil,
        truncateOutput: Bool = true
    ) throws -> pid_t {
        #if os(Linux)
        var actions = posix_spawn_file_actions_t()
        var attributes = posix_spawnattr_t()
        #else
        var actions: posix_spawn_file_actions_t? = nil
        var attributes: posix_spawnattr_t? = nil
        #endif
        try check(posix_spawn_file_actions_init(&actions), "posix_spawn_file_actions_init")
        defer { posix_spawn_file_actions_destroy(&actions) }
        try check(posix_spawnattr_init(&attributes), "posix_spawnattr_init")
        defer { posix_spawnattr_destroy(&attributes) }

        try check(posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0), "addopen stdin")
        let outputFlags = O_WRONLY | O_CREAT | (truncateOutput ? O_TRUNC : O_APPEND)
        try check(
            posix_spawn_file_actions_addopen(&actions, 1, outputPath ?? "/dev/null", outputFlags, 0o644),
            "addopen stdout"
        )
        try check(posix_spawn_file_actions_adddup2(&actions, 1, 2), "adddup2 stderr")

        #if os(Linux)
        if let addCloseFrom = addCloseFromFunction {
            try check(addCloseFrom(&actions, 3), "addclosefrom")
        } else {
            // glibc ignores EBADF for in-range descriptors, so a descriptor closed meanwhile is harmless.
            for fd in openDescriptors() where fd > 2 {
                _ = posix_spawn_file_actions_addclose(&actions, fd)
            }
        }
        // Without addchdir (glibc < 2.29) the child keeps our directory, which only matters
        // when it is one the unprivileged account cannot enter.
        if let workingDirectory, let addChdir = addChdirFunction {
            try check(addChdir(&actions, workingDirectory), "addchdir")
        }
        let flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF) | spawnSetSID
        #else
        if let workingDirectory {
            try check(posix_spawn_file_actions_addchdir_np(&actions, workingDirectory), "addchdir")
        }
        let flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_CLOEXEC_DEFAULT)
            | 0x0400 /* POSIX_SPAWN_SETSID */
        #endif

        // Ignored signals and the calling thread's mask survive exec: a host that ignores SIGPIPE
        // or SIGINT (a shell's background job does) would hand that on, and a server that
        // ignores SIGINT could not be stopped.
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        try check(posix_spawnattr_setsigmask(&attributes, &emptyMask), "setsigmask")
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGHUP, SIGINT, SIGQUIT, SIGPIPE, SIGTERM, SIGCHLD, SIGUSR1, SIGUSR2, SIGALRM] {
            sigaddset(&defaults, signal)
        }
        try check(posix_spawnattr_setsigdefault(&attributes, &defaults), "setsigdefault")
        try check(posix_spawnattr_setflags(&attributes, Int16(truncatingIfNeeded: flags)), "setflags")

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else {
            throw EmbeddedServerError("could not start \(executable): \(String(cString: strerror(result)))")
        }
        return pid
    }

    /// Reaps `pid` if it has ended; nil while it is still running.
    static func poll(_ pid: pid_t) -> ChildExit? {
        var status: Int32 = 0
        while true {
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid { return decode(status) }
            if result == 0 { return nil }
            if errno == EINTR { continue }
            // ECHILD: not our child any more (SIGCHLD ignored, or already reaped).
            return kill(pid, 0) == 0 ? nil : .unknown
        }
    }

    /// Waits up to `timeout` for `pid` to end; nil if it is still running then.
    static func wait(_ pid: pid_t, timeout: Duration) -> ChildExit? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let exit = poll(pid) { return exit }
            if ContinuousClock.now >= deadline { return nil }
            usleep(20_000)
        }
    }

    /// Sends `signal` to `target` (default: the child itself), waits up to `grace` for the
    /// child `pid` to end, then SIGKILLs both and reaps, so nothing lingers. `target` differs
    /// when the child is a runuser wrapper that exits once the server it runs has.
    @discardableResult
    static func terminate(_ pid: pid_t, signal: Int32, grace: Duration, target: pid_t? = nil) -> ChildExit {
        let target = target ?? pid
        if let exit = poll(pid) {
            // The wrapper is gone; a server it left behind has no one else to stop it.
            if target != pid { kill(target, SIGKILL) }
            return exit
        }
        kill(target, signal)
        if let exit = wait(pid, timeout: grace) { return exit }
        kill(target, SIGKILL)
        kill(pid, SIGKILL)
        return wait(pid, timeout: .seconds(30)) ?? .unknown
    }

    /// Runs a short-lived command to completion, killing it if `deadline` passes first.
    static func run(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String],
        workingDirectory: String? = nil,
        outputPath: String? = nil,
        deadline: ContinuousClock.Instant
    ) throws -> ChildExit {
        let pid = try spawn(
            executable, arguments, environment: environment,
            workingDirectory: workingDirectory, outputPath: outputPath
        )
        let remaining = deadline - ContinuousClock.now
        if let exit = wait(pid, timeout: max(remaining, .zero)) { return exit }
        terminate(pid, signal: SIGKILL, grace: .seconds(5))
        throw EmbeddedServerError(
            "\((executable as NSString).lastPathComponent) did not finish in time and was killed"
        )
    }

    private static func decode(_ status: Int32) -> ChildExit {
        let low = status & 0x7f
        return low == 0 ? .exited((status >> 8) & 0xff) : .signaled(low)
    }

    private static func check(_ result: Int32, _ what: String) throws {
        guard result == 0 else {
            throw EmbeddedServerError("\(what) failed: \(String(cString: strerror(result)))")
        }
    }

    #if os(Linux)
    private static func openDescriptors() -> [Int32] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        let open = names.compactMap { Int32($0) }
        return open.isEmpty ? Array(3..<1024) : open
    }
    #endif
}

/// Runs blocking process work on a thread of its own: waiting for initdb and a server's
/// readiness takes seconds, and parking a cooperative-pool thread that long can starve
/// every other task on a 2-core machine.
func onDedicatedThread<T: Sendable>(
    _ name: String,
    _ body: @escaping @Sendable () throws -> T
) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let thread = Thread {
            continuation.resume(with: Result(catching: body))
        }
        thread.name = name
        thread.start()
    }
}

extension Duration {
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}

enum Executables {
    /// The first executable named `name` on PATH or in the usual system directories.
    static func find(_ name: String, environment: [String: String]) -> String? {
        let path = environment["PATH"] ?? ""
        let directories = path.split(separator: ":").map(String.init)
            + ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        for directory in directories where !directory.isEmpty {
            let candidate = directory + "/" + name
            if isExecutable(candidate) { return candidate }
        }
        return nil
    }

    static func isExecutable(_ path: String) -> Bool {
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return false }
        return access(path, X_OK) == 0
    }
}

/// The account servers run as when this process is root, because initdb and postgres refuse
/// to run as root.
struct UnprivilegedAccount: Sendable {
    let name: String
    let uid: uid_t
    let gid: gid_t

    /// nil when not root: then servers simply run as the current user.
    static func forCurrentProcess() throws -> UnprivilegedAccount? {
        guard geteuid() == 0 else { return nil }
        for name in ["postgres", "nobody"] {
            if let entry = getpwnam(name) {
                return UnprivilegedAccount(name: name, uid: entry.pointee.pw_uid, gid: entry.pointee.pw_gid)
            }
        }
        throw EmbeddedServerError(
            "running as root but neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL as: "
                + "install the postgresql package (apt-get install -y postgresql)"
        )
    }

    /// Hands `path` to this account so the server can write its data and socket there.
    func take(_ path: String) throws {
        guard chown(path, uid, gid) == 0, chmod(path, 0o700) == 0 else {
            throw EmbeddedServerError("could not hand \(path) to user \(name): \(String(cString: strerror(errno)))")
        }
    }

    /// The command line that runs `command` as this account.
    func wrap(_ command: [String], environment: [String: String]) throws -> [String] {
        // setpriv execs in place, so the pid we hold is the server's own and our signals reach
        // it directly; runuser forks and stands in between, so it is only the fallback.
        if let setpriv = Executables.find("setpriv", environment: environment) {
            return [setpriv, "--reuid=\(uid)", "--regid=\(gid)", "--clear-groups", "--"] + command
        }
        if let runuser = Executables.find("runuser", environment: environment) {
            return [runuser, "-u", name, "--"] + command
        }
        throw EmbeddedServerError(
            "running as root needs setpriv or runuser to drop privileges: install util-linux (apt-get install -y util-linux)"
        )
    }
}

enum ServerFiles {
    /// A fresh private directory under /tmp; short, because PostgreSQL's Unix socket path
    /// inside it must fit in sockaddr_un.
    static func makeTemporaryDirectory(prefix: String) throws -> String {
        var template = Array("/tmp/\(prefix).XXXXXX".utf8CString)
        let created = template.withUnsafeMutableBufferPointer { buffer -> Bool in
            mkdtemp(buffer.baseAddress!) != nil
        }
        guard created else {
            throw EmbeddedServerError("could not create a temporary directory in /tmp: \(String(cString: strerror(errno)))")
        }
        return template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    static func remove(_ path: String) {
        try? FileManager.default.removeItem(atPath: path)
    }

    /// A private directory for `account` (or us).
    static func makeDirectory(_ path: String, account: UnprivilegedAccount?) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        if let account { try account.take(path) }
    }

    /// The last `lines` lines of a log, for error messages.
    static func tail(_ path: String, lines: Int = 25) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { return "(no log at \(path))" }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        let start = size > 8192 ? size - 8192 : 0
        try? handle.seek(toOffset: start)
        let data = (try? handle.readToEnd()) ?? Data()
        let text = String(decoding: data, as: UTF8.self)
        let kept = text.split(separator: "\n", omittingEmptySubsequences: true).suffix(lines)
        return kept.isEmpty ? "(log \(path) is empty)" : kept.joined(separator: "\n")
    }

    /// The environment for server children: ours without libpq's PG* variables (a stray
    /// PGSSLMODE or PGPORT would change what pg_isready probes) and with the C locale, so
    /// initdb does not fail on a LANG that names an ungenerated locale.
    static func childEnvironment(_ base: [String: String], home: String?) -> [String: String] {
        var environment = base.filter { !$0.key.hasPrefix("PG") && !$0.key.hasPrefix("LC_") }
        environment["LC_ALL"] = "C"
        environment["LANG"] = "C"
        if let home { environment["HOME"] = home }
        if environment["PATH"] == nil { environment["PATH"] = "/usr/local/bin:/usr/bin:/bin" }
        return environment
    }
}

/// Processes as /proc shows them.
enum ProcessTree {
    /// Whether `pid` is a process that has not exited (a zombie has: it holds no memory).
    static func isRunning(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else {
            return false
        }
        return stat[stat.index(after: close)...].split(separator: " ").first != "Z"
    }

    /// The processes whose parent is `pid`.
    static func children(of pid: pid_t) -> [pid_t] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return entries.compactMap { entry -> pid_t? in
            guard let candidate = pid_t(entry),
                let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return nil }
            // "pid (comm) state ppid …": the name may hold spaces and parentheses.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 1 && pid_t(fields[1]) == pid ? candidate : nil
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Synchronization

/// Servers still running in this process, stopped by an atexit handler so a test run or
/// `eventctl dev` that simply returns or calls exit() leaves nothing behind.
enum RunningServers {
    private static let stops = Mutex<[UInt64: @Sendable () -> Void]>([:])
    private static let nextID = Atomic<UInt64>(1)

    static func register(_ stop: @escaping @Sendable () -> Void) -> UInt64 {
        _ = atExitInstalled
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        stops.withLock { $0[id] = stop }
        return id
    }

    static func unregister(_ id: UInt64) {
        _ = stops.withLock { $0.removeValue(forKey: id) }
    }

    static func stopAll() {
        let pending = stops.withLock { stops -> [@Sendable () -> Void] in
            defer { stops.removeAll() }
            return Array(stops.values)
        }
        for stop in pending { stop() }
    }
}

// A global initialiser runs exactly once, however many threads register at the same moment;
// the closure captures nothing, so it converts to the C function pointer atexit needs.
private let atExitInstalled: Bool = {
    atexit { RunningServers.stopAll() }
    return true
}()

/// A `/bin/sh` process that outlives us only to take our server down: when this process dies
/// in a way that skips atexit (SIGKILL, a crash, an unhandled signal), it signals the server,
/// waits for it, SIGKILLs it if needed and deletes its directory.
///
/// The pid of the server's current child (initdb, then the server) is read from `DIR/child.pid`
/// at that moment, so one watchdog also covers initdb and start retries.
/// Running as root it can signal a server that runs as `postgres`; otherwise both run as us.
struct Watchdog: Sendable {
    let pid: pid_t

    private static let script = #"""
        trap '' INT HUP
        parent=$1 dir=$2 sig=$3
        alive() {
            kill -0 "$1" 2>/dev/null || return 1
            # A zombie still answers kill -0; /proc tells it apart where there is one.
            if [ -r "/proc/$1/stat" ]; then
                read -r stat < "/proc/$1/stat" || return 1
                state=${stat##*") "}
                [ "${state%% *}" != Z ] || return 1
            fi
            return 0
        }
        while alive "$parent"; do sleep 1; done
        child=
        [ -r "$dir/child.pid" ] && read -r child < "$dir/child.pid"
        if [ -n "$child" ] && alive "$child"; then
            kill -"$sig" "$child" 2>/dev/null
            i=0
            while [ "$i" -lt 10 ] && alive "$child"; do sleep 1; i=$((i + 1)); done
            kill -KILL "$child" 2>/dev/null
        fi
        rm -rf "$dir"
        """#

    /// Starts watching on behalf of this process; `signal` is the server's graceful-stop
    /// signal name ("INT" for PostgreSQL's fast shutdown, "TERM" for Redis).
    static func start(directory: String, signal: String, environment: [String: String]) throws -> Watchdog {
        let pid = try ChildProcess.spawn(
            "/bin/sh",
            ["-c", script, "eventline-watchdog", String(getpid()), directory, signal],
            environment: environment,
            workingDirectory: "/"
        )
        return Watchdog(pid: pid)
    }

    /// Tells the watchdog which process to take down if we die.
    static func recordChild(_ pid: pid_t, in directory: String) throws {
        // Written atomically so the watchdog never reads half a number.
        try String(pid).write(toFile: directory + "/child.pid", atomically: true, encoding: .utf8)
    }

    /// Ends the watchdog and its `sleep` (it is its own process group) before we stop the
    /// server ourselves, so it cannot race us deleting the directory.
    func cancel() {
        kill(-pid, SIGKILL)
        kill(pid, SIGKILL)
        _ = ChildProcess.wait(pid, timeout: .seconds(5))
    }
}

/// One value per process, created by the first caller; concurrent callers all await the same
/// start, and a failed start is remembered so parallel tests do not each wait out a timeout.
final class ProcessWideInstance<Value: Sendable>: Sendable {
    private let task = Mutex<Task<Value, any Error>?>(nil)

    func get(_ make: @escaping @Sendable () async throws -> Value) async throws -> Value {
        let task = task.withLock { task in
            if let task { return task }
            let started = Task.detached { try await make() }
            task = started
            return started
        }
        return try await task.value
    }
}

/// The override in `environment[name]`, ignoring an empty value.
func environmentOverride(_ name: String, in environment: [String: String]) -> String? {
    guard let value = environment[name]?.trimmingCharacters(in: .whitespacesAndNewlines), !value.isEmpty else {
        return nil
    }
    return value
}

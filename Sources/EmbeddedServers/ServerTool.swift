import Foundation

/// Runs a client program that ships with a server (pgbench, psql, redis-cli) the way the
/// servers themselves are started: a clean signal mask, no inherited descriptors. Foundation's
/// `Process` hands on the calling thread's blocked signals, and pgbench's `-T` timer (SIGALRM)
/// then never fires.
public enum ServerTool {
    /// The program's exit status and its combined stdout and stderr.
    public struct Output: Sendable {
        public var status: Int32
        public var output: String
    }

    /// Runs `executable` to completion on a thread of its own; kills it after `timeout`.
    public static func run(_ executable: String, _ arguments: [String], timeout: Duration = .seconds(600)) async throws -> Output {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(with: Result {
                    let file = FileManager.default.temporaryDirectory
                        .appendingPathComponent("eventline-tool-\(UUID().uuidString).log").path
                    defer { try? FileManager.default.removeItem(atPath: file) }
                    let exit = try ChildProcess.run(
                        executable, arguments, environment: ProcessInfo.processInfo.environment, outputPath: file,
                        deadline: ContinuousClock.now + timeout)
                    let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
                    switch exit {
                    case .exited(let code): return Output(status: code, output: text)
                    case .signaled(let signal): return Output(status: 128 + signal, output: text)
                    case .unknown: return Output(status: -1, output: text)
                    }
                })
            }
        }
    }
}

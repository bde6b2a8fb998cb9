import Foundation
import HTTPServer
import Logging

/// Logging for long-running commands: text lines, or JSON lines with `EVENTLINE_LOG_FORMAT=json`.
enum Logs {
    static var level: Logger.Level {
        ProcessInfo.processInfo.environment["EVENTLINE_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .info
    }

    /// Sets up logging for this process and returns a logger at the configured level.
    static func logger(_ label: String) -> Logger {
        bootstrap()
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }

    static func bootstrap() {
        ServerLogHandler.bootstrap(format: ProcessInfo.processInfo.environment["EVENTLINE_LOG_FORMAT"] == "json" ? .json : .text, level: level)
    }
}

import Foundation
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
        let json = ProcessInfo.processInfo.environment["EVENTLINE_LOG_FORMAT"] == "json"
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler = json ? JSONLogHandler(label: label) : StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

/// One JSON object per line on stderr: time, level, label, message and metadata as fields.
struct JSONLogHandler: LogHandler {
    let label: String
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var fields: [String: String] = [
            "time": Date().formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true)),
            "level": event.level.rawValue, "label": label, "message": event.message.description,
        ]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) { fields[key] = value.description }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard var line = try? encoder.encode(fields) else { return }
        line.append(0x0A)
        FileHandle.standardError.write(line)
    }
}

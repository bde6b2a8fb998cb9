import Foundation
import Logging
import Synchronization

/// The log handlers of Eventline's processes: text lines as swift-log's `StreamLogHandler`
/// writes them, or one JSON object per line; both on stderr.
///
/// Unlike `StreamLogHandler`, metadata set on a logger is formatted only when a line is
/// written: the HTTP server sets a request id on a logger for every request, most of which
/// log nothing below the configured level.
public enum ServerLogging {
    /// Installs the handler for this process (once; later calls do nothing).
    public static func bootstrap(json: Bool, level: Logger.Level) {
        guard !bootstrapped.exchange(true, ordering: .relaxed) else { return }
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler = json ? JSONLogHandler(label: label) : TextLogHandler(label: label)
            handler.logLevel = level
            return handler
        }
    }

    private static let bootstrapped = Atomic<Bool>(false)

    /// Where the handlers write by default.
    public static let standardError: @Sendable (Data) -> Void = { FileHandle.standardError.write($0) }

    /// The metadata of a logger and of one line, merged as `StreamLogHandler` does.
    static func merged(_ base: Logger.Metadata, _ event: LogEvent) -> Logger.Metadata {
        var metadata = base
        if let explicit = event.metadata { metadata.merge(explicit) { $1 } }
        if let error = event.error {
            metadata["error.message"] = "\(error)"
            metadata["error.type"] = "\(String(reflecting: type(of: error)))"
        }
        return metadata
    }
}

/// `2026-11-21T16:00:02+0000 info eventline.http: key=value [Module] message` on stderr.
public struct TextLogHandler: LogHandler {
    public let label: String
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info

    let write: @Sendable (Data) -> Void

    public init(label: String, write: @escaping @Sendable (Data) -> Void = ServerLogging.standardError) {
        self.label = label
        self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let metadata = ServerLogging.merged(metadata, event)
        var line = Self.timestamp() + " \(event.level) \(label):"
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) { line += " \(key)=\(value)" }
        line += " [\(event.source)] \(event.message)\n"
        write(Data(line.utf8))
    }

    static func timestamp() -> String {
        var now = time(nil)
        var local = tm()
        guard localtime_r(&now, &local) != nil else { return "<unknown>" }
        var buffer = [CChar](repeating: 0, count: 64)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S%z", &local)
        return String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// One JSON object per line on stderr: time, level, label, message and metadata as fields.
public struct JSONLogHandler: LogHandler {
    public let label: String
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info

    let write: @Sendable (Data) -> Void

    public init(label: String, write: @escaping @Sendable (Data) -> Void = ServerLogging.standardError) {
        self.label = label
        self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields: [String: String] = [
            "time": Date().formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true)),
            "level": event.level.rawValue, "label": label, "message": event.message.description,
        ]
        for (key, value) in ServerLogging.merged(metadata, event) { fields[key] = value.description }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard var line = try? encoder.encode(fields) else { return }
        line.append(0x0A)
        write(line)
    }
}

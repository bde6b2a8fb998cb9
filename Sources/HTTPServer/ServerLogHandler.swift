import Foundation
import Logging
import Synchronization

/// The log handler of Eventline's processes: text lines as swift-log's `StreamLogHandler`
/// writes them, or one JSON object per line; on stderr.
///
/// Unlike `StreamLogHandler`, it formats metadata set on a logger only when a line is written:
/// the HTTP server sets a request id on a logger for every request, most of which log nothing
/// below the configured level.
public struct ServerLogHandler: LogHandler {
    public enum Format: Sendable {
        /// `2026-11-21T16:00:02+0000 info eventline.http: key=value [Module] message`
        case text
        /// `{"label":…,"level":…,"message":…,"time":…,<metadata>…}`, keys sorted.
        case json
    }

    public let label: String
    public let format: Format
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let write: @Sendable (Data) -> Void

    public init(label: String, format: Format, write: @escaping @Sendable (Data) -> Void = Self.standardError) {
        self.label = label
        self.format = format
        self.write = write
    }

    /// Where lines go by default.
    public static let standardError: @Sendable (Data) -> Void = { FileHandle.standardError.write($0) }

    /// Installs the handler for this process (once; later calls do nothing).
    public static func bootstrap(format: Format, level: Logger.Level) {
        guard !bootstrapped.exchange(true, ordering: .relaxed) else { return }
        LoggingSystem.bootstrap { label in
            var handler = ServerLogHandler(label: label, format: format)
            handler.logLevel = level
            return handler
        }
    }

    private static let bootstrapped = Atomic<Bool>(false)

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        // The logger's metadata and the line's, merged as `StreamLogHandler` does.
        var metadata = self.metadata
        if let explicit = event.metadata { metadata.merge(explicit) { $1 } }
        if let error = event.error {
            metadata["error.message"] = "\(error)"
            metadata["error.type"] = "\(String(reflecting: type(of: error)))"
        }
        switch format {
        case .text:
            var line = Self.timestamp() + " \(event.level) \(label):"
            for (key, value) in metadata.sorted(by: { $0.key < $1.key }) { line += " \(key)=\(value)" }
            line += " [\(event.source)] \(event.message)\n"
            write(Data(line.utf8))
        case .json:
            var fields: [String: String] = [
                "time": Date().formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true)),
                "level": event.level.rawValue, "label": label, "message": event.message.description,
            ]
            for (key, value) in metadata { fields[key] = value.description }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            guard var line = try? encoder.encode(fields) else { return }
            line.append(0x0A)
            write(line)
        }
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

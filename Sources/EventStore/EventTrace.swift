import Foundation
import Tracing

/// The W3C trace context an event was written under, kept in its metadata (`traceparent`), so
/// that whoever handles the event later (a projector's batch, a reactor's follow-up command)
/// continues the trace of the request that caused it. With no tracer bootstrapped every call
/// here is a no-op.
public enum EventTrace {
    /// The metadata key, as W3C Trace Context names the header.
    public static let metadataKey = "traceparent"

    /// Whether an instrument is installed (`InstrumentationSystem.bootstrap`). Asked on every
    /// command and append: a concrete type check, not `InstrumentationSystem.tracer`'s search
    /// through the instruments with a cast to a protocol.
    public static var isEnabled: Bool { !(InstrumentationSystem.instrument is NoOpInstrument) }

    /// Runs `body` in a span named `name` when a tracer is installed, else just runs it.
    public static func withSpan<T>(
        _ name: String, ofKind kind: SpanKind = .internal, isolation: isolated (any Actor)? = #isolation,
        _ body: () async throws -> T
    ) async rethrows -> T {
        guard isEnabled else { return try await body() }
        return try await Tracing.withSpan(name, ofKind: kind, isolation: isolation) { _ in try await body() }
    }

    /// Runs `body` in a span named `name` when a tracer is installed, else just runs it.
    public static func withSpan<T, E: Error>(_ name: String, _ body: () throws(E) -> T) throws(E) -> T {
        guard isEnabled else { return try body() }
        let span = Tracing.startSpan(name)
        defer { span.end() }
        let result = ServiceContext.$current.withValue(span.context) { Result { () throws(E) -> T in try body() } }
        if case .failure(let error) = result { span.recordError(error) }
        return try result.get()
    }

    /// The current task's span as a `traceparent` value, or nil when no span is recording.
    public static func currentTraceparent() -> String? {
        guard let context = ServiceContext.current else { return nil }
        var carrier: [String: String] = [:]
        InstrumentationSystem.instrument.inject(context, into: &carrier, using: DictionaryInjector())
        return carrier[metadataKey]
    }

    /// Adds the current span's `traceparent` to `metadata` unless it names one already.
    public static func inject(into metadata: inout [String: JSONValue]) {
        guard metadata[metadataKey] == nil, let traceparent = currentTraceparent() else { return }
        metadata[metadataKey] = .string(traceparent)
    }

    /// The trace context stored with `event`, to continue or to link to; nil when it has none.
    public static func context(of event: RecordedEvent) -> ServiceContext? {
        guard let traceparent = traceparent(of: event) else { return nil }
        var context = ServiceContext.topLevel
        InstrumentationSystem.instrument.extract([metadataKey: traceparent], into: &context, using: DictionaryExtractor())
        return context
    }

    /// The `traceparent` in `event`'s metadata, found without parsing the whole object.
    public static func traceparent(of event: RecordedEvent) -> String? {
        let key = Array("\"\(metadataKey)\"".utf8)
        let bytes = event.metadata
        guard let range = bytes.firstRange(of: key) else { return nil }
        // "traceparent" : "00-<32 hex>-<16 hex>-<2 hex>"
        var index = range.upperBound
        func skipSpaces() { while index < bytes.endIndex, bytes[index] == UInt8(ascii: " ") { index += 1 } }
        skipSpaces()
        guard index < bytes.endIndex, bytes[index] == UInt8(ascii: ":") else { return nil }
        index += 1
        skipSpaces()
        guard index < bytes.endIndex, bytes[index] == UInt8(ascii: "\"") else { return nil }
        let start = index + 1
        guard let end = bytes[start...].firstIndex(of: UInt8(ascii: "\"")), end - start == 55 else { return nil }
        return String(decoding: bytes[start..<end], as: UTF8.self)
    }

    /// Starts a span for work done on behalf of `events` (a batch): the child of the first
    /// event's trace, linked to the others' (OpenTelemetry's shape for a batch that serves many
    /// traces). Without a tracer, or when no event carries a trace, a span of no trace.
    public static func startSpan(_ name: String, ofKind kind: SpanKind = .consumer, for events: some Sequence<RecordedEvent>) -> any Span {
        guard isEnabled else { return Tracing.startSpan(name, context: ServiceContext.topLevel, ofKind: kind) }
        var seen = Set<String>()
        var contexts: [ServiceContext] = []
        for event in events {
            guard let traceparent = traceparent(of: event), seen.insert(traceparent).inserted else { continue }
            var context = ServiceContext.topLevel
            InstrumentationSystem.instrument.extract([metadataKey: traceparent], into: &context, using: DictionaryExtractor())
            contexts.append(context)
        }
        return startSpan(name, parent: contexts.first, links: contexts.dropFirst(), ofKind: kind)
    }

    /// Starts a span under `parent` (a new trace when nil), linked to `links`.
    public static func startSpan(
        _ name: String, parent: ServiceContext?, links: some Sequence<ServiceContext>, ofKind kind: SpanKind = .internal
    ) -> any Span {
        let span = Tracing.startSpan(name, context: parent ?? .topLevel, ofKind: kind)
        for link in links { span.addLink(SpanLink(context: link, attributes: [:])) }
        return span
    }
}

/// `[String: String]` as a carrier of trace headers.
struct DictionaryInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
}

struct DictionaryExtractor: Extractor {
    func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
}

/// The event a reactor is handling, for the commands it issues meanwhile: their events carry
/// its id as `causationId` and keep its `correlationId` (and continue its trace).
public struct CausingEvent: Sendable {
    public var id: UUID
    public var correlationId: String?

    public init(id: UUID, correlationId: String?) {
        self.id = id
        self.correlationId = correlationId
    }

    /// `event`, with the correlation id its metadata carries.
    public init(_ event: RecordedEvent) {
        let metadata = (try? JSONSerialization.jsonObject(with: event.metadata)) as? [String: Any]
        self.init(id: event.id, correlationId: metadata?[MetadataKey.correlationId] as? String)
    }

    /// The event being handled by the current task, if any.
    @TaskLocal public static var current: CausingEvent?

    /// Fills in `causationId` and `correlationId` from the current task's causing event, where
    /// `metadata` does not name them already.
    public static func apply(to metadata: inout [String: JSONValue]) {
        guard let current else { return }
        if metadata[MetadataKey.causationId] == nil { metadata[MetadataKey.causationId] = .string(current.id.uuidString.lowercased()) }
        if metadata[MetadataKey.correlationId] == nil, let correlation = current.correlationId {
            metadata[MetadataKey.correlationId] = .string(correlation)
        }
    }
}

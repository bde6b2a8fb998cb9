import ArgumentParser
import Foundation
import Hummingbird
import Logging
import Metrics
import OTel
import Prometheus
import ServiceLifecycle
import Tracing
import UnixSignals

/// Tracing for long-running commands: OpenTelemetry over OTLP/HTTP, configured by the standard
/// `OTEL_*` variables and off unless an OTLP endpoint is named.
enum Telemetry {
    /// Installs the process's tracer when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and returns the exporter's service, which
    /// the caller runs first in its service group (so it stops last and flushes every span).
    static func bootstrapTracing(serviceName: String, logger: Logger) throws -> (any Service)? {
        let environment = ProcessInfo.processInfo.environment
        let endpoint = environment["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] ?? environment["OTEL_EXPORTER_OTLP_ENDPOINT"]
        guard let endpoint, !endpoint.isEmpty else { return nil }
        if environment["OTEL_SDK_DISABLED"]?.lowercased() == "true" || environment["OTEL_TRACES_EXPORTER"] == "none" { return nil }
        // swift-otel stops the process on settings it was not built for; refuse them in one line.
        let protocolName = environment["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] ?? environment["OTEL_EXPORTER_OTLP_PROTOCOL"] ?? "http/protobuf"
        guard ["http/protobuf", "http/json"].contains(protocolName) else {
            throw CLIError("OTEL_EXPORTER_OTLP_PROTOCOL=\(protocolName) is not supported: \(CLI.name) exports OTLP over HTTP (http/protobuf or http/json)")
        }
        if let propagators = environment["OTEL_PROPAGATORS"], !propagators.isEmpty,
            let other = propagators.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) })
                .first(where: { !["tracecontext", "none"].contains($0) })
        {
            throw CLIError("OTEL_PROPAGATORS=\(propagators): only tracecontext (W3C) is supported, not \(other)")
        }
        if let exporter = environment["OTEL_TRACES_EXPORTER"], !exporter.isEmpty, exporter != "otlp" {
            throw CLIError("OTEL_TRACES_EXPORTER=\(exporter) is not supported: use otlp (or none)")
        }
        var configuration = OTel.Configuration.default
        configuration.serviceName = serviceName  // OTEL_SERVICE_NAME wins
        configuration.logs.enabled = false
        configuration.metrics.enabled = false
        configuration.traces.enabled = true
        // The exporter's own complaints go through this process's log handler (JSON or text).
        configuration.diagnosticLogger = .custom(logger)
        do {
            let backend = try OTel.makeTracingBackend(configuration: configuration)
            InstrumentationSystem.bootstrap(backend.factory)
            logger.info("tracing", metadata: ["otel.endpoint": "\(endpoint)", "otel.protocol": "\(protocolName)"])
            return backend.service
        } catch {
            throw CLIError("cannot set up tracing: \(error)")
        }
    }
}

extension Telemetry {
    /// Runs `service` until SIGTERM or SIGINT with tracing (when configured) started first, so
    /// that it stops last and exports every span, and the metrics endpoint (when asked for) last.
    static func runObserved(
        _ service: any Service, serviceName: String, metrics address: (host: String, port: Int)?, logger: Logger,
        gauges: @escaping @Sendable () async -> [(name: String, labels: [(String, String)], value: Double)]
    ) async throws {
        var services: [any Service] = []
        if let tracing = try bootstrapTracing(serviceName: serviceName, logger: logger) { services.append(tracing) }
        services.append(service)
        if let address {
            ProcessMetrics.bootstrap()
            services.append(ProcessMetrics.endpoint(host: address.host, port: address.port, logger: logger, gauges: gauges))
        }
        try await ServiceGroup(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger).run()
    }
}

/// `--metrics-port`: Prometheus `/metrics` (and `/health/live`) for processes that serve no
/// HTTP API of their own (`eventctl project`, `eventctl react`).
struct MetricsOptions: ParsableArguments {
    @Option(name: .customLong("metrics-port"), help: "Serve Prometheus /metrics and /health/live on this port (default: $EVENTLINE_METRICS_PORT; unset: none).")
    var port: Int?
    @Option(name: .customLong("metrics-host"), help: "The address for --metrics-port (default: $EVENTLINE_METRICS_HOST or 127.0.0.1).")
    var host: String?

    func validate() throws {
        if let port, !(0...65535).contains(port) { throw ValidationError("--metrics-port must be between 0 and 65535") }
    }

    /// The endpoint's address, or nil when none is asked for.
    func address() throws -> (host: String, port: Int)? {
        let environment = ProcessInfo.processInfo.environment
        var port = self.port
        if port == nil, let text = environment["EVENTLINE_METRICS_PORT"], !text.isEmpty {
            guard let value = Int(text), (0...65535).contains(value) else {
                throw CLIError("EVENTLINE_METRICS_PORT must be a port number, not '\(text)'")
            }
            port = value
        }
        guard let port else { return nil }
        return (host ?? environment["EVENTLINE_METRICS_HOST"] ?? "127.0.0.1", port)
    }
}

/// The process's swift-metrics backend: a Prometheus registry, exported at `/metrics`.
enum ProcessMetrics {
    static let registry = PrometheusCollectorRegistry()

    /// Sends every swift-metrics metric of this process to `registry` (once per process).
    static func bootstrap() {
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    }

    /// A small HTTP service: `/metrics` (the registry, plus `gauges()` read at each scrape)
    /// and `/health/live`.
    static func endpoint(
        host: String, port: Int, logger: Logger, gauges: @escaping @Sendable () async -> [(name: String, labels: [(String, String)], value: Double)]
    ) -> some Service {
        let router = Router()
        router.get("/metrics") { _, _ -> Response in
            for gauge in await gauges() {
                registry.makeGauge(name: gauge.name, labels: gauge.labels).set(gauge.value)
            }
            var buffer: [UInt8] = []
            registry.emit(into: &buffer)
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: buffer)))
        }
        router.get("/health/live") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(string: #"{"status":"ok"}"#)))
        }
        return Application(
            router: router, configuration: .init(address: .hostname(host, port: port), serverName: "eventline-metrics"), logger: logger)
    }
}

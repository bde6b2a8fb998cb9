// swift-tools-version:6.1
import PackageDescription

/// One settings array for every target, as Hummingbird does.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "Eventline",
    platforms: [.macOS(.v15)],
    products: [
        // What a service built on Eventline imports: `import Eventline`.
        .library(name: "Eventline", targets: ["Eventline"]),
        .library(name: "EventlineTesting", targets: ["EventlineTesting"]),
        .library(name: "EventStore", targets: ["EventStore"]),
        .library(name: "Aggregates", targets: ["Aggregates"]),
        .library(name: "Projector", targets: ["Projector"]),
        .library(name: "Reactors", targets: ["Reactors"]),
        .library(name: "PostgresClient", targets: ["PostgresClient"]),
        .library(name: "LZ4", targets: ["LZ4"]),
        .library(name: "EmbeddedServers", targets: ["EmbeddedServers"]),
        .library(name: "Cache", targets: ["Cache"]),
        .executable(name: "eventctl", targets: ["eventctl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.81.0"),
        // Already in the graph through Hummingbird: its HTTP part types, for a channel handler.
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.34.1"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.1.0"),
        // OTLP over HTTP only (the gRPC exporter's build is larger than all of Eventline's).
        .package(url: "https://github.com/swift-otel/swift-otel", from: "1.6.0", traits: ["OTLPHTTP"]),
        // Webhook delivery; swift-otel's OTLP/HTTP exporter depends on it already.
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    ],
    targets: [
        // C libraries from Debian's -dev packages.
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        .systemLibrary(
            name: "CLZ4",
            pkgConfig: "liblz4",
            providers: [.apt(["liblz4-dev"])]
        ),
        // OpenSSL's libcrypto (libpq links it already): hashes, never hand-written.
        .systemLibrary(
            name: "CCrypto",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),

        // Safe layers over the C libraries.
        .target(
            name: "PostgresClient",
            dependencies: [
                "CLibPQ",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(name: "LZ4", dependencies: ["CLZ4"], swiftSettings: swiftSettings),

        // A small Redis client over POSIX sockets, each connection on a thread of its own.
        .target(
            name: "Cache",
            dependencies: [.product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),

        // Schemas/ compiled into the binary: migrations and the OpenAPI document.
        .executableTarget(name: "eventline-embed", swiftSettings: swiftSettings),
        .plugin(name: "EmbedSchemas", capability: .buildTool(), dependencies: ["eventline-embed"]),
        .target(name: "EventlineSchemas", swiftSettings: swiftSettings, plugins: ["EmbedSchemas"]),

        // The event log.
        .target(
            name: "EventStore",
            dependencies: [
                "PostgresClient", "EventlineSchemas",
                "LZ4", "CCrypto",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),

        // Command handling over the event store, and the sample domain.
        .target(
            name: "Aggregates",
            dependencies: [
                "EventStore", .product(name: "Logging", package: "swift-log"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),


        // The write side of read models: declarative (YAML) and Swift projections, the
        // projector, leases, replay.
        .target(
            name: "Projector",
            dependencies: [
                "EventStore", "PostgresClient", "ReadModels",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),

        // The read side of read models, for the server: the catalog and row queries, and the
        // Redis cache-aside that the projector invalidates.
        .target(
            name: "ReadModels",
            dependencies: [
                "EventStore", "PostgresClient", "Cache",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),

        // Reactors (process managers): log consumers that issue commands. Their leases and
        // checkpoints are the EventStore's checkpoint store: no database client of their own.
        .target(
            name: "Reactors",
            dependencies: [
                "EventStore", .product(name: "Logging", package: "swift-log"),
                // Webhooks: a kept HTTP client (already in the graph through swift-otel's OTLP/HTTP exporter).
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),

        // The HTTP API: commands, streams, the log, read models, health and metrics.
        .target(
            name: "HTTPServer",
            dependencies: [
                "EventStore", "Aggregates", "PostgresClient", "Projector", "ReadModels", "Cache", "EventlineSchemas",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),

        // Private PostgreSQL and Redis servers for tests, `eventctl dev` and benchmarks.
        .target(name: "EmbeddedServers", swiftSettings: swiftSettings),
        // Shared test helpers: a fresh database per test on the private server.
        .target(
            name: "EventlineTestSupport",
            dependencies: [
                "EmbeddedServers", "PostgresClient", "EventStore",
                // A webhook receiver on loopback, for tests of delivery.
                .product(name: "Hummingbird", package: "hummingbird"), .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            path: "Tests/Support",
            swiftSettings: swiftSettings
        ),

        // The framework: the domain declaration and the whole command set, for a service's `@main`.
        .target(
            name: "Eventline",
            dependencies: [
                "EventStore", "HTTPServer", "Aggregates",
                "PostgresClient", "Projector", "ReadModels", "Reactors", "Cache",
                "EmbeddedServers",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "OTel", package: "swift-otel"),
            ],
            swiftSettings: swiftSettings
        ),

        // The sample domain, built on the public API as any service would be.
        .target(
            name: "BankDomain",
            dependencies: ["Eventline", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        .executableTarget(name: "eventctl", dependencies: ["Eventline", "BankDomain"], swiftSettings: swiftSettings),

        // The testing kit: given–when–then for aggregates, upcaster checks, and a domain's
        // service over a private PostgreSQL for integration tests.
        .target(
            name: "EventlineTesting",
            dependencies: [
                "Eventline", "EventlineTestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),

        .executableTarget(
            name: "eventline-bench",
            dependencies: [
                "EventStore", "PostgresClient", "EmbeddedServers", "HTTPServer", "Aggregates", "BankDomain", "Projector",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/AppendBenchmark",
            swiftSettings: swiftSettings
        ),

        .testTarget(
            name: "PostgresClientTests",
            dependencies: ["PostgresClient", "EventlineTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "LZ4Tests", dependencies: ["LZ4", "EventlineTestSupport"], swiftSettings: swiftSettings),
        .testTarget(
            name: "CacheTests",
            dependencies: ["Cache", "EmbeddedServers"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "EventStoreTests",
            dependencies: ["EventStore", "PostgresClient", "EventlineTestSupport", "LZ4"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AggregatesTests",
            dependencies: ["Aggregates", "BankDomain", "EventStore", "EventlineTestSupport", "EventlineTesting"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HTTPServerTests",
            dependencies: [
                "HTTPServer", "BankDomain", "EventStore", "EventlineTestSupport", "EmbeddedServers", "Projector", "ReadModels", "Cache",
                "PostgresClient",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ProjectorTests",
            dependencies: [
                "Projector", "ReadModels", "Reactors", "EventStore", "PostgresClient", "EventlineTestSupport", "Cache", "EmbeddedServers",
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ReactorTests",
            dependencies: [
                "Reactors", "BankDomain", "Aggregates", "EventStore", "PostgresClient", "Projector", "EventlineTestSupport",
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "EmbeddedServersTests",
            dependencies: ["EmbeddedServers"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "EventCtlTests",
            dependencies: [
                "eventctl", "EventStore", "PostgresClient", "EventlineTestSupport", "EmbeddedServers", "BankDomain",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)

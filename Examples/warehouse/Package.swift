// swift-tools-version:6.1
import PackageDescription

// A service built on Eventline: the warehouse domain and its `warehouse` executable.
let package = Package(
    name: "warehouse",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "warehouse", targets: ["warehouse"]),
    ],
    dependencies: [
        // Eventline itself, by path; a service of your own names its release instead:
        // .package(url: "https://github.com/<you>/eventline", from: "…")
        .package(name: "Eventline", path: "../.."),
    ],
    targets: [
        .target(name: "WarehouseDomain", dependencies: [.product(name: "Eventline", package: "Eventline")]),
        .executableTarget(
            name: "warehouse",
            dependencies: ["WarehouseDomain", .product(name: "Eventline", package: "Eventline")]
        ),
        .testTarget(
            name: "WarehouseTests",
            dependencies: ["WarehouseDomain", .product(name: "EventlineTesting", package: "Eventline")]
        ),
    ]
)

import EventStore
import Foundation
import HTTPTypes
import Hummingbird

/// Where a read route's reads go: on standbys when the server has them
/// (`EVENTLINE_READ_DATABASE_URL`), at a position the request names, and the answer says
/// which node served it.
enum ReadPlacement {
    /// The position a read must see: the larger of `atLeast` (the route's own parameter) and
    /// the `Eventline-Min-Position` header, which any read may carry.
    static func minPosition(_ request: Request, atLeast: Int?) throws -> Int? {
        guard let text = request.headers[.minPosition] else { return atLeast }
        guard let value = Int(text.trimmingCharacters(in: .whitespaces)), value >= 0 else {
            throw Problem.badRequest("Eventline-Min-Position must be a log position, an integer ≥ 0", field: "Eventline-Min-Position")
        }
        return max(value, atLeast ?? 0)
    }

    /// Runs a read route under a `ReadContext` that must see `minPosition`, and marks its
    /// answer `Eventline-Served-By: replica` or `primary`.
    static func serve(minPosition: Int?, _ body: () async throws -> Response) async throws -> Response {
        let context = ReadContext(minPosition: minPosition)
        var response = try await ReadContext.$current.withValue(context) { try await body() }
        response.headers[.servedBy] = (context.servedBy ?? .primary).rawValue
        return response
    }
}

extension HTTPField.Name {
    static let minPosition = Self("Eventline-Min-Position")!
    static let servedBy = Self("Eventline-Served-By")!
}

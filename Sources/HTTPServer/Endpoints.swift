import HTTPTypes
import Hummingbird

/// The router, with a record of the methods each path serves. Once every route is in,
/// `finish()` makes every other method on a known path an answer rather than a 404: OPTIONS is
/// 204 and any other method 405, both with `Allow`. HEAD is served wherever GET is (by the
/// router, as GET without the body).
final class Endpoints {
    typealias Handler = @Sendable (Request, EventlineRequestContext) async throws -> Response

    let router: Router<EventlineRequestContext>
    private var methods: [(path: String, methods: [HTTPRequest.Method])] = []

    init(_ router: Router<EventlineRequestContext>) {
        self.router = router
    }

    func get(_ path: String, _ handler: @escaping Handler) { add(path, .get, handler) }
    func post(_ path: String, _ handler: @escaping Handler) { add(path, .post, handler) }

    private func add(_ path: String, _ method: HTTPRequest.Method, _ handler: @escaping Handler) {
        router.on(RouterPath(path), method: method, use: handler)
        if let index = methods.firstIndex(where: { $0.path == path }) {
            methods[index].methods.append(method)
        } else {
            methods.append((path, [method]))
        }
    }

    /// Adds the OPTIONS and 405 answers of every known path.
    func finish() {
        let others: [HTTPRequest.Method] = [.get, .post, .put, .patch, .delete, .options, .head]
        for (path, served) in methods {
            let allowed = served.contains(.get) ? served + [.head] : served
            let allow = (allowed + [.options]).map(\.rawValue).joined(separator: ", ")
            let shown = path.split(separator: "/").map { $0.hasPrefix(":") ? "{\($0.dropFirst())}" : String($0) }.joined(separator: "/")
            for method in others where !allowed.contains(method) {
                router.on(RouterPath(path), method: method) { _, _ -> Response in
                    guard method != .options else { return Response(status: .noContent, headers: [.allow: allow]) }
                    throw Problem(
                        .methodNotAllowed, "method-not-allowed", "Method not allowed",
                        detail: "/\(shown) accepts \(allow), not \(method.rawValue)", headers: [.allow: allow])
                }
            }
        }
    }
}

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
    func put(_ path: String, _ handler: @escaping Handler) { add(path, .put, handler) }
    func delete(_ path: String, _ handler: @escaping Handler) { add(path, .delete, handler) }

    private func add(_ path: String, _ method: HTTPRequest.Method, _ handler: @escaping Handler) {
        router.on(RouterPath(path), method: method, use: handler)
        if let index = methods.firstIndex(where: { $0.path == path }) {
            methods[index].methods.append(method)
        } else {
            methods.append((path, [method]))
        }
    }

    /// The methods HTTP defines (RFC 9110, and PATCH). On a known path, those a path does not
    /// serve are 405, and so is any other method (`UnknownMethodResponder` routes it as TRACE).
    static let knownMethods: [HTTPRequest.Method] = [.get, .head, .post, .put, .patch, .delete, .options, .trace, .connect]

    /// Adds the OPTIONS and 405 answers of every known path.
    func finish() {
        let others = Self.knownMethods.filter { $0 != .connect }
        for (path, served) in methods {
            let allowed = served.contains(.get) ? served + [.head] : served
            let allow = (allowed + [.options]).map(\.rawValue).joined(separator: ", ")
            let shown = path.split(separator: "/").map { $0.hasPrefix(":") ? "{\($0.dropFirst())}" : String($0) }.joined(separator: "/")
            for method in others where !allowed.contains(method) {
                router.on(RouterPath(path), method: method) { _, context -> Response in
                    guard method != .options else { return Response(status: .noContent, headers: [.allow: allow]) }
                    let sent = context.unrecognizedMethod ?? method
                    throw Problem(
                        .methodNotAllowed, "method-not-allowed", "Method not allowed",
                        detail: "/\(shown) accepts \(allow), not \(sent.rawValue)", headers: [.allow: allow])
                }
            }
        }
    }
}

/// Routes a method HTTP does not define (a WebDAV method, say), which no route can name, as
/// TRACE: every known path answers TRACE with 405 and its `Allow`, naming the method that was
/// sent (`EventlineRequestContext.unrecognizedMethod`); an unknown path is 404 as for any method.
struct UnknownMethodResponder<Base: HTTPResponder>: HTTPResponder where Base.Context == EventlineRequestContext {
    let base: Base

    func respond(to request: Request, context: EventlineRequestContext) async throws -> Response {
        guard !Endpoints.knownMethods.contains(request.method) else { return try await base.respond(to: request, context: context) }
        var head = request.head
        head.method = .trace
        var context = context
        context.unrecognizedMethod = request.method
        return try await base.respond(to: Request(head: head, body: request.body), context: context)
    }
}

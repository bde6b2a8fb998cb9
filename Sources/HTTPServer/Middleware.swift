import EventStore
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import PostgresClient

/// Outermost middleware: gives every request an id, turns every error into a problem+json
/// response, records metrics and writes one log line per request.
struct RequestMiddleware: RouterMiddleware {
    typealias Context = EventlineRequestContext
    let configuration: ServerConfiguration
    let metrics: ServerMetrics
    let access: AccessControl
    let limiter: RateLimiter?
    let logger: Logger

    /// Whether a path has an empty segment ("//", or a trailing "/" after something).
    static func hasEmptySegment(_ path: String) -> Bool {
        var previous: UInt8 = 0
        for byte in path.utf8 {
            if byte == UInt8(ascii: "/") && previous == UInt8(ascii: "/") { return true }
            previous = byte
        }
        return path.utf8.count > 1 && previous == UInt8(ascii: "/")
    }

    /// An id a client may choose (`X-Request-Id`, `X-Correlation-Id`): 1 to 128 visible ASCII characters.
    static func isSensibleID(_ text: String) -> Bool {
        (1...128).contains(text.utf8.count) && text.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        context.maxUploadSize = configuration.maxBodySize
        if let given = request.headers[.requestID], Self.isSensibleID(given) { context.requestID = given }
        if let given = request.headers[.correlationID], Self.isSensibleID(given) { context.correlationID = given }
        let started = ContinuousClock.now
        var response: Response
        var limitHeaders: HTTPFields = [:]
        do {
            // The router ignores empty path segments; scopes are decided on the path as written,
            // so a path that is not in canonical form never reaches either.
            let path = request.uri.path
            if Self.hasEmptySegment(path) {
                throw Problem.notFound("no such route (the path is not in canonical form)")
            }
            // One deadline for every database step of the request, the check of its key included.
            let deadline = configuration.databaseDeadline.map { DatabaseDeadline(budget: $0) }
            response = try await DatabaseDeadline.$current.withValue(deadline) {
                let identity: String?
                do {
                    identity = try await access.authorize(request)
                } catch let problem as Problem where problem.status == .unauthorized {
                    // Guessing keys costs tokens too, from the address's bucket.
                    if let limiter { _ = try limiter.take("unauthenticated " + context.clientAddress) }
                    throw problem
                }
                if let limiter, AccessControl.requiredScope(method: request.method, path: request.uri.path) != nil {
                    limitHeaders = try limiter.take(identity ?? context.clientAddress)
                }
                context.clientIdentity = identity.map { "key \($0)" }
                return try await next(request, context)
            }
        } catch {
            let (problem, isBug) = Problem.from(error)
            if isBug {
                logger.error("unhandled error", metadata: ["request.id": "\(context.requestID)", "error": "\(String(reflecting: error))"])
            } else if problem.status.code >= 500, !(error is Problem) {
                // The client gets a generic detail; the operator gets the reason.
                logger.warning("request failed", metadata: ["request.id": "\(context.requestID)", "error": "\(error)"])
            }
            var headers = problem.headers
            headers[.contentType] = "application/problem+json"
            response = Response(
                status: problem.status, headers: headers,
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: problem.body(requestID: context.requestID))))
        }
        response.headers[.requestID] = context.requestID
        for field in limitHeaders { response.headers[field.name] = field.value }
        let route = context.endpointPath ?? "unmatched"
        let elapsed = ContinuousClock.now - started
        metrics.recordRequest(method: (context.unrecognizedMethod ?? request.method).rawValue, route: route, status: response.status.code, duration: elapsed)
        logger.info(
            "request",
            metadata: [
                "request.id": "\(context.requestID)", "http.method": "\((context.unrecognizedMethod ?? request.method).rawValue)", "http.route": "\(route)",
                "http.status": "\(response.status.code)",
                "duration.ms": "\(String(format: "%.2f", Double(elapsed.components.attoseconds) / 1e15 + Double(elapsed.components.seconds) * 1000))",
            ])
        return response
    }
}

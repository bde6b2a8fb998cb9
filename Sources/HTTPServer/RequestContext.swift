import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

/// The per-request context: Hummingbird's core plus the request id.
public struct EventlineRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// Echoed in the `X-Request-Id` header and in error bodies; taken from the request's own
    /// `X-Request-Id` when it sends a sensible one.
    public var requestID: String
    /// The correlation id the request's events carry: the request's `X-Correlation-Id` when it
    /// sends a sensible one, else the request id.
    public var correlationID: String?
    /// The method the client sent when HTTP does not define it (the router saw TRACE instead).
    public var unrecognizedMethod: HTTPRequest.Method?
    /// Set by the application from its configuration.
    public var maxUploadSize: Int
    /// The client's address, for rate limiting when the API is open.
    public var clientAddress: String
    /// The API key's identity (a prefix of its hash) once the request is authorized with one;
    /// nil when the API is open or the route needs no key.
    public var clientIdentity: String?
    /// Completes when the client's connection closes: a stream that only writes now and then
    /// (the live feed) learns of a gone client from it, not from its next write.
    public var connectionClosed: EventLoopFuture<Void>?

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.clientAddress = source.channel.remoteAddress?.ipAddress ?? "unknown"
        self.connectionClosed = source.channel.closeFuture
        self.requestID = Self.newID()
        self.maxUploadSize = 1 << 20
    }

    static func newID() -> String {
        String(UInt64.random(in: 0...UInt64.max), radix: 16)
    }
}

extension HTTPField.Name {
    static let requestID = Self("X-Request-Id")!
    static let correlationID = Self("X-Correlation-Id")!
    static let idempotencyKey = Self("Idempotency-Key")!
}

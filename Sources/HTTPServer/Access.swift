import EventStore
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import ServiceLifecycle
import Synchronization

/// API-key checks. Keys in force are read from the database into memory and re-read every
/// `refreshInterval`, so a new or revoked key takes effect within that time without a query per
/// request. The API is open only while no key was ever created, or when the operator opened it
/// (`Authentication.off`): revoking the last key closes it rather than opening it. Each change
/// between open and closed is logged, and the first state when the server starts.
final class AccessControl: Service, Sendable {
    private struct Cache {
        var state = APIKeyState(keys: [:], everCreated: false)
        var loadedAt: ContinuousClock.Instant? = nil
        /// What was last logged.
        var logged: Access? = nil
    }

    /// Whether the API asks for keys now, and why.
    enum Access: Equatable, Sendable {
        /// Keys in force are checked.
        case keys
        /// Keys were created and every one is revoked: every request that needs a key is refused.
        case noKeyInForce
        /// No key was ever created: open until the first one is.
        case openNoKeys
        /// The operator opened it (`EVENTLINE_AUTH=off`).
        case openByOperator

        var isOpen: Bool { self == .openNoKeys || self == .openByOperator }

        /// What `/health/ready` says: `keys`, `no-key-in-force` or `open`.
        var name: String {
            switch self {
            case .keys: "keys"
            case .noKeyInForce: "no-key-in-force"
            case .openNoKeys, .openByOperator: "open"
            }
        }

        var explanation: String {
            switch self {
            case .keys: "API keys are required"
            case .noKeyInForce:
                "every API key is revoked: requests are refused until a key is created (eventctl keys create) or EVENTLINE_AUTH=off opens the API"
            case .openNoKeys: "no API key has been created: the API is open to anyone who can reach it until the first key is"
            case .openByOperator: "EVENTLINE_AUTH=off: the API is open to anyone who can reach it, whatever keys exist"
            }
        }
    }

    private let store: EventStore
    private let refreshInterval: Duration
    private let mode: Authentication
    private let logger: Logger
    private let cache = Mutex(Cache())

    init(store: EventStore, refreshInterval: Duration, mode: Authentication = .keys, logger: Logger = Logger(label: "eventline.http")) {
        self.store = store
        self.refreshInterval = refreshInterval
        self.mode = mode
        self.logger = logger
    }

    /// Re-reads the keys in force every `refreshInterval`, in the background, so that no
    /// request waits on the database for them (but the first, before any read succeeded); says
    /// at start whether the API is open. A database that is down must not delay listening: the
    /// loop keeps to what it knew and tries again.
    func run() async throws {
        guard mode == .keys else {
            note(.openByOperator)
            try? await gracefulShutdown()
            return
        }
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                _ = try? await self.refresh()
                try await Task.sleep(for: self.refreshInterval)
            }
        }
    }

    private func refresh() async throws -> APIKeyState {
        let fresh = try await store.apiKeyState()
        cache.withLock {
            $0.state = fresh
            $0.loadedAt = .now
        }
        note(Self.access(fresh))
        return fresh
    }

    private func keys() async throws -> APIKeyState {
        let (state, loadedAt) = cache.withLock { ($0.state, $0.loadedAt) }
        if loadedAt != nil { return state }
        return try await refresh()
    }

    static func access(_ state: APIKeyState) -> Access {
        !state.keys.isEmpty ? .keys : state.everCreated ? .noKeyInForce : .openNoKeys
    }

    /// The API's access now (logged when it changed).
    func access() async throws -> (Access, APIKeyState) {
        if mode == .off {
            note(.openByOperator)
            return (.openByOperator, APIKeyState(keys: [:], everCreated: false))
        }
        let state = try await keys()
        return (Self.access(state), state)
    }

    private func note(_ access: Access) {
        let changed = cache.withLock { cache -> Bool in
            defer { cache.logged = access }
            return cache.logged != access
        }
        guard changed else { return }
        if access == .keys {
            logger.notice("\(access.explanation)")
        } else {
            logger.warning("\(access.explanation)")
        }
    }

    /// The scope a route needs, or nil for routes open to all (health).
    static func requiredScope(method: HTTPRequest.Method, path: String) -> APIKeyScope? {
        if path.hasPrefix("/health/") { return nil }
        if path == "/metrics" { return .admin }
        if path.hasPrefix("/v1/consumer-groups") {
            // Creating, changing and deleting groups (webhooks reach other systems) and
            // retrying parked events are for admins; consuming only reads the log.
            if method == .put || method == .delete || path.contains("/parked/retry") { return .admin }
            return .read
        }
        // Skipping a parked key's failing event gives it up (on the record).
        if method == .post && path.hasSuffix("/parked/skip") { return .admin }
        // Deleting a stream or forgetting a subject cannot be undone.
        if method == .delete && (path.hasPrefix("/v1/streams/") || path.hasPrefix("/v1/subjects/")) { return .admin }
        // Reading by a query is a read, though its body makes it a POST.
        if method == .post && path == "/v1/events/query" { return .read }
        if method == .post && path.hasPrefix("/v1/") { return .commands }
        return .read
    }

    /// Checks the request's bearer key against the scope its route needs. Returns the key's
    /// identity (for rate limiting), or nil when the API is open or the route needs no key.
    func authorize(_ request: Request) async throws -> String? {
        guard let needed = Self.requiredScope(method: request.method, path: request.uri.path) else { return nil }
        let (access, state) = try await access()
        if access.isOpen { return nil }
        let challenge: HTTPFields = [.wwwAuthenticate: #"Bearer realm="eventline""#]
        guard let header = request.headers[.authorization], header.lowercased().hasPrefix("bearer ") else {
            throw Problem(.unauthorized, "unauthorized", "An API key is required", detail: "send Authorization: Bearer <key>", headers: challenge)
        }
        let key = header.dropFirst("bearer ".count).trimmingCharacters(in: .whitespaces)
        let hash = SHA256.hex(Array(key.utf8))
        guard let scope = state.keys[hash] else {
            let detail = access == .noKeyInForce ? "no API key is in force: every key is revoked" : "the key is unknown or revoked"
            throw Problem(.unauthorized, "unauthorized", "The API key is not valid", detail: detail, headers: challenge)
        }
        guard scope >= needed else {
            throw Problem(
                .forbidden, "forbidden", "The API key's scope is too narrow",
                detail: "this route needs a key with scope \(needed.rawValue) (or wider); this key has \(scope.rawValue)")
        }
        return String(hash.prefix(16))
    }
}

/// A rate: so many requests per second, with a burst.
public struct RateLimit: Sendable, Hashable {
    public var perSecond: Double
    public var burst: Int

    /// A rate between one per day and a million per second (clamped), with a burst of 1 to 10⁶.
    public init(perSecond: Double, burst: Int) {
        self.perSecond = perSecond.isFinite ? min(max(perSecond, 1.0 / 86_400), 1_000_000) : 1_000_000
        self.burst = min(max(1, burst), 1_000_000)
    }

    /// Parses `200/s`, `12000/m` or `100000/h`; the burst defaults to one second's worth.
    public init?(parsing text: String, burst: Int? = nil) {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let count = Double(parts[0]), count.isFinite, count > 0, count <= 1e9 else { return nil }
        let seconds: Double
        switch parts[1] {
        case "s": seconds = 1
        case "m": seconds = 60
        case "h": seconds = 3600
        default: return nil
        }
        self.init(perSecond: count / seconds, burst: burst ?? max(1, Int(min(count / seconds, 1_000_000))))
    }
}

/// Token buckets, one per client (API key, or address when the API is open).
final class RateLimiter: Sendable {
    private struct Bucket {
        var tokens: Double
        var updated: ContinuousClock.Instant
    }

    let limit: RateLimit
    private let buckets = Mutex<[String: Bucket]>([:])

    init(_ limit: RateLimit) {
        self.limit = limit
    }

    /// Takes a token for `client`; throws 429 when there is none. Returns the headers to send.
    func take(_ client: String) throws -> HTTPFields {
        let now = ContinuousClock.now
        let burst = Double(limit.burst)
        let (allowed, tokens) = buckets.withLock { buckets -> (Bool, Double) in
            if buckets.count > 50_000 {
                // Forget clients whose buckets have refilled: they are as good as new.
                buckets = buckets.filter { (now - $0.value.updated).inSeconds * limit.perSecond + $0.value.tokens < burst }
            }
            var bucket = buckets[client] ?? Bucket(tokens: burst, updated: now)
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated).inSeconds * limit.perSecond)
            bucket.updated = now
            let allowed = bucket.tokens >= 1
            if allowed { bucket.tokens -= 1 }
            buckets[client] = bucket
            return (allowed, bucket.tokens)
        }
        let untilFull = Int(((burst - tokens) / limit.perSecond).rounded(.up))
        var headers: HTTPFields = [
            HTTPField.Name("RateLimit-Limit")!: String(limit.burst),
            HTTPField.Name("RateLimit-Remaining")!: String(Int(tokens.rounded(.down))),
            HTTPField.Name("RateLimit-Reset")!: String(untilFull),
            HTTPField.Name("RateLimit-Policy")!: "\(limit.burst);w=\(max(1, Int((burst / limit.perSecond).rounded(.up))))",
        ]
        guard allowed else {
            let retry = Int(((1 - tokens) / limit.perSecond).rounded(.up))
            headers[.retryAfter] = String(max(1, retry))
            throw Problem(
                .tooManyRequests, "rate-limited", "Too many requests",
                detail: "the limit is \(limit.perSecond) requests per second with a burst of \(limit.burst)", headers: headers)
        }
        return headers
    }
}

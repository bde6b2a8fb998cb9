/// Settings of the HTTP server; every field has a default, and environment variables are read
/// only by `eventctl serve`.
public struct ServerConfiguration: Sendable {
    /// The address to listen on.
    public var host: String = "127.0.0.1"
    /// The port to listen on (0 picks a free one, for tests).
    public var port: Int = 8080
    /// The largest request body accepted; larger ones get 413.
    public var maxBodySize: Int = 1 << 20
    /// How long an idempotency key's first request may stay unfinished before a retry takes it over.
    public var idempotencyTakeover: Duration = .seconds(60)
    /// The most events a read may return (at most 9,999: a page reads one more to find `next`).
    public var maxReadLimit: Int = 1000 {
        didSet { maxReadLimit = min(max(1, maxReadLimit), 9_999) }
    }
    /// Requests per client (API key, or address when the API is open); nil: no limit.
    public var rateLimit: RateLimit? = nil
    /// How long one request may wait for the database in all (`DatabaseDeadline`): every step
    /// (a free connection, each statement, the commit of its events) draws from it, from the
    /// first step on; waits on purpose (for a projection, a long poll) do not count. Nil: each
    /// step has only its own timeout. `eventctl serve` sets it to the statement timeout plus
    /// 0.4 s, so that no request answers later than the statement timeout plus half a second.
    public var databaseDeadline: Duration? = nil
    /// `EVENTLINE_REQUIRE_SYNC_REPLICATION`: `/health/ready` answers 503 while no synchronous
    /// standby is connected (`serve` refuses to start when none is configured).
    public var requireSynchronousReplication = false
    /// How often the server returns overdue consumer-group deliveries to the queue (or parks them).
    public var consumerGroupSweepInterval: Duration = .seconds(1)
    /// Whether requests need an API key: `.keys` (the default) from the first key ever created
    /// on, for good (revoking every key leaves the API closed); `.off` never, which an operator
    /// must choose (`EVENTLINE_AUTH=off`).
    public var authentication: Authentication = .keys
    /// How often the server re-reads the API keys in force.
    public var apiKeyRefresh: Duration = .seconds(2)
    /// A connection with no request in progress (idle between requests, or still sending a
    /// request's head) is closed after this long.
    public var idleTimeout: Duration = .seconds(30)
    /// The most connections served at once; past it new connections wait in the listen backlog
    /// until one closes.
    public var maxConnections: Int = 1024
    /// The most live feed streams (`GET /v1/events/live`) at once; the next gets 503 with
    /// Retry-After. Below `maxConnections`, so that idle streams leave connections for health
    /// checks and commands.
    public var liveMaxClients: Int = 256
    /// The most live feed streams one client (an API key, or an address when the API is open)
    /// holds at once.
    public var liveMaxClientsPerKey: Int = 64
    /// How often a live feed client that has had nothing for this long gets a heartbeat (a
    /// comment line), so that proxies and clients can tell a quiet log from a dead connection.
    public var liveHeartbeat: Duration = .seconds(15)

    public init() {}
}

/// Whether the API asks for keys.
public enum Authentication: String, Sendable, CaseIterable {
    /// Keys are required once any key was ever created; until then the API is open (a new
    /// database, `eventctl dev`).
    case keys
    /// No key is asked for, whatever keys exist: chosen by the operator.
    case off
}

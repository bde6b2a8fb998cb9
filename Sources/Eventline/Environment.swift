import EventStore
import Foundation
import Logging
import PostgresClient

/// Every environment variable eventctl reads, with what it does: the README's configuration
/// reference lists the same (a test compares them), and a set `EVENTLINE_*` variable that is not
/// here is a typo, which eventctl reports at start.
enum EnvironmentVariables {
    static let known: [(name: String, meaning: String)] = [
        ("EVENTLINE_DATABASE_URL", "libpq connection string of the event store (every command)"),
        ("EVENTLINE_MIGRATIONS_DIR", "use this directory's NNNN_name.sql files instead of the migrations compiled in (development)"),
        ("EVENTLINE_PROJECTIONS_DIR", "directory of NAME.yaml projections (default ./Projections)"),
        ("EVENTLINE_HTTP_HOST", "serve: address to listen on (default 127.0.0.1)"),
        ("EVENTLINE_HTTP_PORT", "serve: port (default 8080)"),
        ("EVENTLINE_MAX_BODY_SIZE", "serve: largest request body in bytes (default 1 MiB)"),
        ("EVENTLINE_HTTP_IDLE_TIMEOUT", "serve: seconds before a connection with no request in progress, or a request head still arriving, is closed (default 30)"),
        ("EVENTLINE_LIVE_HEARTBEAT", "serve: seconds of silence after which a live feed client (GET /v1/events/live) gets a heartbeat comment (default 15)"),
        ("EVENTLINE_HTTP_MAX_CONNECTIONS", "serve: connections served at once; more wait to be accepted (default 1024)"),
        ("EVENTLINE_LIVE_MAX_CLIENTS", "serve: live feed streams at once; the next gets 503 with Retry-After (default 256, and at most three quarters of EVENTLINE_HTTP_MAX_CONNECTIONS)"),
        ("EVENTLINE_LIVE_MAX_CLIENTS_PER_KEY", "serve: live feed streams at once per API key (per address when the API is open) (default 64)"),
        ("EVENTLINE_DB_CONNECT_TIMEOUT", "serve: seconds opening a database connection may take (default 1.5)"),
        ("EVENTLINE_DB_STATEMENT_TIMEOUT", "serve: seconds a statement may run, and the database stay silent, before the request fails with 503 (default 1.5)"),
        ("EVENTLINE_DB_POOL_TIMEOUT", "serve: seconds a request waits for a free database connection (default 1)"),
        ("EVENTLINE_RATE_LIMIT", "serve: requests per client, 200/s, 12000/m or 100000/h (default: no limit)"),
        ("EVENTLINE_RATE_BURST", "serve: burst of the rate limit (default: one second's worth)"),
        ("EVENTLINE_READ_DATABASE_URL", "serve: libpq connection string of standbys for reads (stream, log, query and read-model reads, the live feed's catch-up), e.g. several hosts with target_session_attrs=prefer-standby (default: none; every read goes to EVENTLINE_DATABASE_URL)"),
        ("EVENTLINE_READ_WAIT_TIMEOUT", "serve: seconds a read with atLeast (or Eventline-Min-Position) waits for a standby, or a read model, to reach its position before the primary serves it (default 5)"),
        ("EVENTLINE_REQUIRE_SYNC_REPLICATION", "serve: true refuses to start against a primary with no synchronous standby configured, and /health/ready answers 503 while none is connected (default false)"),
        ("EVENTLINE_MASTER_KEY", "32 random bytes in base64 (openssl rand -base64 32): wraps the keys that encrypt personal data (default: none; personal fields are refused)"),
        ("EVENTLINE_MASTER_KEY_FILE", "a file holding the master key (base64, or the 32 bytes), instead of EVENTLINE_MASTER_KEY"),
        ("EVENTLINE_AUTH", "serve: keys (default: an API key is required once any key was ever created, even after every key is revoked) or off (the API is open to anyone who can reach it)"),
        ("EVENTLINE_PERSONAL_DATA", "on (default: a domain that declares personal fields needs a master key to serve, project, react, deliver or replay) or off (run without one; personal data is refused)"),
        ("EVENTLINE_REDIS_URL", "serve, project, replay: Redis for the read-model cache (default: none)"),
        ("EVENTLINE_REDIS_TIMEOUT", "serve, project: seconds a cache read, or an invalidation, waits for Redis before going without it (default 0.25)"),
        ("EVENTLINE_CACHE_TTL", "seconds a cached row lives (default 300)"),
        ("EVENTLINE_CACHE_PREFIX", "prefix of cache keys and of the invalidation channel (default eventline)"),
        ("EVENTLINE_REBUILD_ON_VERSION_CHANGE", "project: rebuild a projection whose version changed (default 1; 0 waits for replay)"),
        ("EVENTLINE_METRICS_PORT", "project, react, deliver: serve Prometheus /metrics and /health/live on this port (default: none)"),
        ("EVENTLINE_METRICS_HOST", "project, react, deliver: address of the metrics port (default 127.0.0.1)"),
        ("EVENTLINE_LOG_FORMAT", "text (default) or json: one JSON object per log line"),
        ("EVENTLINE_LOG_LEVEL", "trace, debug, info (default for long-running commands), notice, warning, error, critical"),
        ("EVENTLINE_ANALYST_PASSWORD", "analyst-role: the password (instead of --password)"),
        ("EVENTLINE_PG_BIN", "dev and the tests: directory of PostgreSQL's initdb and postgres (default: found under /usr/lib/postgresql)"),
        ("EVENTLINE_TEST_DATABASE_URL", "tests: use this PostgreSQL instead of a private one"),
        ("EVENTLINE_TEST_REDIS_URL", "tests: use this Redis instead of a private one"),
    ]

    /// Set `EVENTLINE_*` variables that eventctl does not read.
    /// `name` as a number of seconds within `range`, or nil when unset; anything else is an
    /// error naming the variable and the range.
    static func seconds(_ name: String, in range: ClosedRange<Double>, _ environment: [String: String]) throws -> Duration? {
        guard let text = environment[name] else { return nil }
        guard let value = Double(text), range.contains(value) else {
            throw CLIError("\(name) must be a number of seconds from \(String(format: "%g", range.lowerBound)) to \(String(format: "%g", range.upperBound)), not '\(text)'")
        }
        return .milliseconds(Int(value * 1000))
    }

    /// The master key from `EVENTLINE_MASTER_KEY` or `EVENTLINE_MASTER_KEY_FILE`, or nil when
    /// neither is set; a bad one is an error that names the variable.
    static func masterKey(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> MasterKey? {
        switch (environment["EVENTLINE_MASTER_KEY"], environment["EVENTLINE_MASTER_KEY_FILE"]) {
        case (nil, nil):
            return nil
        case (_?, _?):
            throw CLIError("set EVENTLINE_MASTER_KEY or EVENTLINE_MASTER_KEY_FILE, not both")
        case (let text?, nil):
            do {
                return try MasterKey(base64: text)
            } catch {
                throw CLIError("EVENTLINE_MASTER_KEY: \(error.message)")
            }
        case (nil, let path?):
            guard let contents = FileManager.default.contents(atPath: path) else {
                throw CLIError("EVENTLINE_MASTER_KEY_FILE: cannot read \(path)")
            }
            do {
                if contents.count == 32 { return try MasterKey(bytes: Array(contents)) }
                return try MasterKey(base64: String(decoding: contents, as: UTF8.self))
            } catch {
                throw CLIError("EVENTLINE_MASTER_KEY_FILE: \(path) holds neither 32 bytes nor their base64 (\(error.message))")
            }
        }
    }

    /// `EVENTLINE_AUTH`: `keys` (the default) or `off`.
    /// `EVENTLINE_READ_DATABASE_URL`, checked by libpq's own parser, or nil when unset.
    static func readDatabaseURL(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String? {
        guard let url = environment["EVENTLINE_READ_DATABASE_URL"], !url.isEmpty else { return nil }
        do {
            _ = try ConnectionInfo(url)
        } catch let error as PostgresError {
            throw CLIError("EVENTLINE_READ_DATABASE_URL: \(error.message)")
        }
        return url
    }

    /// `EVENTLINE_REQUIRE_SYNC_REPLICATION`: true or false (also 1/0, yes/no, on/off).
    static func requireSynchronousReplication(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Bool {
        guard let text = environment["EVENTLINE_REQUIRE_SYNC_REPLICATION"], !text.isEmpty else { return false }
        switch text.lowercased() {
        case "true", "1", "yes", "on": return true
        case "false", "0", "no", "off": return false
        default: throw CLIError("EVENTLINE_REQUIRE_SYNC_REPLICATION must be true or false, not '\(text)'")
        }
    }

    static func authentication(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Authentication {
        guard let text = environment["EVENTLINE_AUTH"], !text.isEmpty else { return .keys }
        guard let mode = Authentication(rawValue: text) else {
            throw CLIError("EVENTLINE_AUTH must be keys or off, not '\(text)'")
        }
        return mode
    }

    /// The master key for a process that handles the domain's events (`serve`, `project`,
    /// `react`, `deliver`, `replay`): a domain that declares personal fields cannot do its work
    /// without one, so the process refuses to start rather than start "ready" and refuse every
    /// command. `EVENTLINE_PERSONAL_DATA=off` runs it without personal data, on purpose.
    static func requiredMasterKey(
        _ environment: [String: String] = ProcessInfo.processInfo.environment, domain: Domain = .current
    ) throws -> MasterKey? {
        if let key = try masterKey(environment) { return key }
        switch environment["EVENTLINE_PERSONAL_DATA"] {
        case nil, "", "on":
            guard domain.personalData.isEmpty else {
                throw CLIError(
                    "\(domain.name) declares personal fields and EVENTLINE_MASTER_KEY is not set: set it to a key from `\(domain.name) master-key generate` (or EVENTLINE_MASTER_KEY_FILE), or set EVENTLINE_PERSONAL_DATA=off to run without personal data")
            }
            return nil
        case "off":
            return nil
        case let text?:
            throw CLIError("EVENTLINE_PERSONAL_DATA must be on or off, not '\(text)'")
        }
    }

    static func unknown(in environment: [String: String] = ProcessInfo.processInfo.environment) -> [String] {
        let names = Set(known.map(\.name))
        return environment.keys.filter { $0.hasPrefix("EVENTLINE_") && !names.contains($0) }.sorted()
    }

    /// Logs a warning for each variable that looks like eventctl's and is not (a typo is
    /// otherwise silently ignored).
    static func warnAboutUnknown(logger: Logger) {
        for name in unknown() {
            logger.warning("unknown environment variable \(name): \(CLI.name) ignores it (see \(CLI.name) --help and the README)")
        }
    }
}

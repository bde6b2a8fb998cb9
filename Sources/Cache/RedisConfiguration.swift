import Foundation

/// Where and how to connect; every field but the address has a default.
///
/// ```swift
/// let configuration = try RedisConfiguration(url: "redis://:s3cret@cache.internal:6379/2")
/// let client = RedisClient(configuration: configuration, logger: logger)
/// ```
public struct RedisConfiguration: Sendable, Equatable, CustomStringConvertible {
    /// A host name, IPv4 or IPv6 address.
    public var host: String
    /// The TCP port.
    public var port: Int
    /// The ACL user for `AUTH user password`; nil sends `AUTH password` (the default user).
    public var user: String?
    /// The password; nil sends no AUTH.
    public var password: String?
    /// The logical database chosen with SELECT after connecting.
    public var database: Int
    /// How long opening a connection (resolution aside) may take.
    public var connectTimeout: Duration
    /// How long the client waits for the socket to accept more of a command, or for more of a
    /// reply, before failing with `.timeout` (an inactivity limit, as SO_RCVTIMEO is).
    public var commandTimeout: Duration
    /// How many connections, each on its own thread, `RedisClient` keeps.
    public var poolSize: Int
    /// Thread name prefix, for debuggers and `top -H`.
    public var name: String

    public init(
        host: String = "127.0.0.1", port: Int = 6379, user: String? = nil, password: String? = nil,
        database: Int = 0, connectTimeout: Duration = .seconds(5), commandTimeout: Duration = .seconds(5),
        poolSize: Int = 4, name: String = "eventline-redis"
    ) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.poolSize = max(1, poolSize)
        self.name = name
    }

    /// Parses `redis://[user[:password]@]host[:port][/db]`. User and password are
    /// percent-decoded; an IPv6 host goes in brackets. Anything else (another scheme, TLS, a
    /// query, a bad port or database) throws `RedisError.invalidArgument` naming the problem.
    public init(
        url: String, connectTimeout: Duration = .seconds(5), commandTimeout: Duration = .seconds(5),
        poolSize: Int = 4, name: String = "eventline-redis"
    ) throws {
        let parsed = try RedisURL.parse(url)
        self.init(
            host: parsed.host, port: parsed.port, user: parsed.user, password: parsed.password,
            database: parsed.database, connectTimeout: connectTimeout, commandTimeout: commandTimeout,
            poolSize: poolSize, name: name
        )
    }

    /// The address and options, with the password masked.
    public var description: String {
        let credentials: String
        switch (user, password) {
        case (let user?, _?): credentials = "\(user):***@"
        case (nil, _?): credentials = ":***@"
        default: credentials = ""
        }
        let address = host.contains(":") ? "[\(host)]" : host
        return "redis://\(credentials)\(address):\(port)/\(database)"
    }
}

private enum RedisURL {
    struct Parts {
        var host: String
        var port = 6379
        var user: String?
        var password: String?
        var database = 0
    }

    static func parse(_ url: String) throws -> Parts {
        func invalid(_ problem: String) -> RedisError {
            .invalidArgument("invalid Redis URL: \(problem) (expected redis://[user[:password]@]host[:port][/db])")
        }
        guard let schemeEnd = url.range(of: "://") else { throw invalid("no scheme") }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        guard scheme != "rediss" else { throw invalid("TLS (rediss://) is not supported") }
        guard scheme == "redis" else { throw invalid("the scheme must be redis, not \(scheme)") }
        var rest = url[schemeEnd.upperBound...]
        guard !rest.contains("?"), !rest.contains("#") else { throw invalid("query parameters are not supported") }

        var pathPart: Substring = ""
        if let slash = rest.firstIndex(of: "/") {
            pathPart = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        var parts = Parts(host: "")

        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            guard let colon = userInfo.firstIndex(of: ":") else {
                throw invalid("a user name without a password (write redis://user:password@host)")
            }
            let user = try decode(userInfo[..<colon], what: "user name", invalid)
            parts.user = user.isEmpty ? nil : user
            parts.password = try decode(userInfo[userInfo.index(after: colon)...], what: "password", invalid)
        }

        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw invalid("an unclosed [ in the host") }
            parts.host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw invalid("unexpected text after the IPv6 address") }
                portText = after.dropFirst()
            }
        } else if let colon = rest.firstIndex(of: ":") {
            parts.host = String(rest[..<colon])
            portText = rest[rest.index(after: colon)...]
        } else {
            parts.host = String(rest)
        }
        guard !parts.host.isEmpty else { throw invalid("no host") }
        if let portText {
            guard isDigits(portText), let port = Int(portText), (1...65535).contains(port) else {
                throw invalid("the port must be a number from 1 to 65535, not '\(portText)'")
            }
            parts.port = port
        }

        if !pathPart.isEmpty {
            guard isDigits(pathPart), let database = Int(pathPart) else {
                throw invalid("the path must be a database number, not '\(pathPart)'")
            }
            parts.database = database
        }
        return parts
    }

    private static func isDigits(_ text: Substring) -> Bool {
        !text.isEmpty && text.utf8.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
    }

    private static func decode(
        _ text: Substring, what: String, _ invalid: (String) -> RedisError
    ) throws -> String {
        guard let decoded = String(text).removingPercentEncoding else {
            throw invalid("the \(what) has a malformed percent-escape")
        }
        return decoded
    }
}

import CLibPQ
import Foundation

/// A libpq connection string read by libpq itself (`PQconninfoParse`): URLs and `key=value`
/// strings, one host or several. Eventline uses it to check a string before it is used and to
/// reach each node of a multi-host string on its own (replica lag is per node).
public struct ConnectionInfo: Sendable {
    /// The settings given, by libpq keyword (`host`, `port`, `dbname`, `target_session_attrs`…).
    public let settings: [String: String]

    /// The values libpq accepts for `target_session_attrs` (PostgreSQL 14 and later).
    public static let sessionAttributes = ["any", "read-write", "read-only", "primary", "standby", "prefer-standby"]

    /// Parses `conninfo`; a malformed string or an unknown `target_session_attrs` throws
    /// `.invalidParameter` with libpq's own words.
    public init(_ conninfo: String) throws {
        var message: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(conninfo, &message) else {
            let text = message.map { PostgresConnection.trimmed($0) } ?? "out of memory"
            if let message { PQfreemem(message) }
            throw PostgresError(code: .invalidParameter, message: "not a valid PostgreSQL connection string: \(text)")
        }
        defer { PQconninfoFree(options) }
        var settings: [String: String] = [:]
        var option = options
        while let keyword = option.pointee.keyword {
            if let value = option.pointee.val { settings[String(cString: keyword)] = String(cString: value) }
            option += 1
        }
        if let attributes = settings["target_session_attrs"], !Self.sessionAttributes.contains(attributes) {
            throw PostgresError(
                code: .invalidParameter,
                message: "target_session_attrs=\(attributes) is not one of \(Self.sessionAttributes.joined(separator: ", "))")
        }
        self.settings = settings
        // libpq checks ports only when it connects; a typo is caught here, before anything runs.
        for port in ports where UInt16(port).map({ $0 == 0 }) ?? true {
            throw PostgresError(code: .invalidParameter, message: "not a valid PostgreSQL connection string: invalid port number \"\(port)\"")
        }
    }

    /// Each host of the string as `host:port` (libpq's lists: `host=a,b port=1,2`, or one port for all).
    public var nodes: [String] {
        zip(hosts, ports).map { "\($0):\($1)" }
    }

    /// One connection string per host, each reaching that node only (any role), with every
    /// other setting kept.
    public var nodeConnectionStrings: [String] {
        zip(hosts, ports).map { host, port in
            var one = settings
            one["host"] = host
            one["port"] = port
            one["hostaddr"] = nil
            one["target_session_attrs"] = "any"
            return Self.keywords(one)
        }
    }

    /// The same string with its hosts tried in another order: the list turned by `offset`
    /// (libpq tries hosts in order, so connection k of a pool starts at host k). One host: as is.
    public func rotated(by offset: Int) -> String {
        let (hosts, ports) = (self.hosts, self.ports)
        var one = settings
        if hosts.count > 1, hosts.count == ports.count {
            let turn = offset % hosts.count
            one["host"] = (hosts[turn...] + hosts[..<turn]).joined(separator: ",")
            one["port"] = (ports[turn...] + ports[..<turn]).joined(separator: ",")
            one["hostaddr"] = nil
        }
        return Self.keywords(one)
    }

    private static func keywords(_ settings: [String: String]) -> String {
        settings.keys.sorted().map { "\($0)=\(quoted(settings[$0]!))" }.joined(separator: " ")
    }

    private var hosts: [String] {
        let list = (settings["host"] ?? settings["hostaddr"] ?? "localhost").split(separator: ",", omittingEmptySubsequences: false)
        return list.map { $0.isEmpty ? "localhost" : String($0) }
    }

    private var ports: [String] {
        let list = (settings["port"] ?? "5432").split(separator: ",", omittingEmptySubsequences: false).map { $0.isEmpty ? "5432" : String($0) }
        if list.count == 1 { return Array(repeating: list[0], count: hosts.count) }
        return list
    }

    /// A conninfo value in single quotes, with `\` and `'` escaped as libpq reads them.
    private static func quoted(_ value: String) -> String {
        "'" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
    }
}

import CLibPQ
import Foundation

/// A synchronous libpq connection. Every call blocks, so a connection is used only on its own
/// dedicated thread (see `PostgresConnectionPool` and `PostgresListener`), never on Swift's
/// cooperative pool or an event loop. Not Sendable: it stays on the thread that owns it.
public final class PostgresConnection {
    private var handle: OpaquePointer?
    /// Statements prepared on this session: SQL text → statement name.
    private var preparedStatements: [String: String] = [:]

    /// How long a statement may wait with no answer from the server before the connection is
    /// given up (closed, failing with `.connectionClosed`): a server that accepts TCP and never
    /// answers makes a caller wait this long, not forever. It limits silence, not work: any byte
    /// from the server starts it again. Nil waits as long as the server takes.
    public var answerTimeout: Duration?

    /// Opens a connection with any string libpq accepts: a `postgres://` URL, `key=value` conninfo,
    /// several hosts with `target_session_attrs`. Unset settings come from the PG* environment.
    /// Opening gives up after `connectTimeout` in all (DNS aside), so a database that accepts
    /// TCP and never answers fails the caller fast.
    public init(conninfo: String, connectTimeout: Duration = PostgresConnection.defaultConnectTimeout) throws {
        let (conn, timedOut) = Self.connect(conninfo, timeout: connectTimeout)
        guard let conn, PQstatus(conn) == CONNECTION_OK else {
            var message = conn.map { Self.trimmed(PQerrorMessage($0)) } ?? "out of memory"
            if timedOut { message = "no answer within \(connectTimeout)" + (message.isEmpty ? "" : " (\(message))") }
            if let conn { PQfinish(conn) }
            var error = PostgresError(code: .connectionFailed, message: "cannot connect to PostgreSQL: \(message)")
            error.timedOut = timedOut
            throw error
        }
        handle = conn
        // Our binds send timestamps as binary and we decode binary results; pin the session so that
        // text renderings (errors, COPY) are stable whatever the server's defaults.
        _ = try? execute(unsafeSQL: "SET client_encoding = 'UTF8'")
    }

    /// How long opening a connection may take unless the caller says otherwise (the server
    /// sets its own, shorter limit: `EVENTLINE_DB_CONNECT_TIMEOUT`).
    public static let defaultConnectTimeout: Duration = .seconds(10)

    deinit {
        close()
    }

    /// TCP keepalives and a user timeout unless the connection string sets its own: a peer
    /// that vanished is noticed in about a minute, not after the kernel's two hours.
    private static let defaults: [(String, String)] = [
        ("keepalives", "1"), ("keepalives_idle", "30"), ("keepalives_interval", "10"), ("keepalives_count", "3"),
        ("tcp_user_timeout", "60000"),
    ]

    /// Starts a connection and drives it with poll(2) until it is made, fails, or `timeout`
    /// passes (libpq's own `connect_timeout` counts whole seconds, 2 at least).
    private static func connect(_ conninfo: String, timeout: Duration) -> (OpaquePointer?, timedOut: Bool) {
        // With expand_dbname, the connection string given as dbname overrides the entries before it.
        let keywords = defaults.map(\.0) + ["dbname"]
        let values = defaults.map(\.1) + [conninfo]
        let cKeywords = keywords.map { strdup($0) }
        let cValues = values.map { strdup($0) }
        defer {
            cKeywords.forEach { free($0) }
            cValues.forEach { free($0) }
        }
        let keywordPointers = cKeywords.map { UnsafePointer($0) } + [nil]
        let valuePointers = cValues.map { UnsafePointer($0) } + [nil]
        guard let conn = PQconnectStartParams(keywordPointers, valuePointers, 1) else { return (nil, false) }
        if PQstatus(conn) == CONNECTION_BAD { return (conn, false) }
        let deadline = ContinuousClock.now + timeout
        var polling = PGRES_POLLING_WRITING
        while polling != PGRES_POLLING_OK && polling != PGRES_POLLING_FAILED {
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { return (conn, true) }
            // The socket can change between calls (the next host, or address, is tried).
            var descriptor = pollfd(
                fd: PQsocket(conn), events: Int16(polling == PGRES_POLLING_READING ? POLLIN : POLLOUT), revents: 0)
            let milliseconds = Int32(clamping: max(1, remaining.milliseconds))
            let ready = poll(&descriptor, 1, milliseconds)
            if ready < 0 && errno != EINTR { return (conn, false) }
            if ready == 0 { continue }
            polling = PQconnectPoll(conn)
        }
        return (conn, false)
    }

    /// Closes the connection; calling it again does nothing.
    public func close() {
        if let handle {
            PQfinish(handle)
            self.handle = nil
        }
    }

    /// Whether the connection is open and healthy as far as libpq knows.
    public var isOpen: Bool {
        guard let handle else { return false }
        return PQstatus(handle) == CONNECTION_OK
    }

    /// Whether a transaction block is open (idle in transaction or failed).
    public var inTransaction: Bool {
        guard let handle else { return false }
        let status = PQtransactionStatus(handle)
        return status == PQTRANS_INTRANS || status == PQTRANS_INERROR || status == PQTRANS_ACTIVE
    }

    /// The server's process id for this session.
    public var backendPID: Int32 {
        guard let handle else { return 0 }
        return PQbackendPID(handle)
    }

    /// The node this session reached, as `host:port` (of a multi-host string, the one libpq
    /// chose), or nil when closed.
    public var node: String? {
        guard let handle, let host = PQhost(handle), let port = PQport(handle) else { return nil }
        return "\(String(cString: host)):\(String(cString: port))"
    }

    /// Whether the server is a hot standby, as it reports itself at connect and on every
    /// change (`in_hot_standby`, PostgreSQL 14 and later: no round trip); nil when it does not say.
    public var isHotStandby: Bool? {
        guard let handle, let value = PQparameterStatus(handle, "in_hot_standby") else { return nil }
        return String(cString: value) == "on"
    }

    /// The socket descriptor, for polling.
    public var socket: Int32 {
        guard let handle else { return -1 }
        return PQsocket(handle)
    }

    /// Checks an idle connection without a round trip: a server that closed the session (restart,
    /// `pg_terminate_backend`) has left an error and EOF on the socket, which this reads.
    /// Returns false when the connection is no longer usable.
    public func probeIdle() -> Bool {
        guard let handle, PQstatus(handle) == CONNECTION_OK else { return false }
        var descriptor = pollfd(fd: PQsocket(handle), events: Int16(POLLIN), revents: 0)
        // A killed session sends an error and then closes: read until the socket is quiet, so
        // that the EOF is seen too.
        for _ in 0..<8 {
            guard poll(&descriptor, 1, 0) > 0 else { break }
            if PQconsumeInput(handle) == 0 { return false }
            // Drop anything unsolicited (notices, stray notifications) so the next query starts clean.
            while let notify = PQnotifies(handle) { PQfreemem(notify) }
            if PQstatus(handle) != CONNECTION_OK { return false }
        }
        return PQstatus(handle) == CONNECTION_OK
    }

    /// Re-establishes a broken connection with the same settings.
    public func reset() throws {
        guard let handle else {
            throw PostgresError(code: .connectionClosed, message: "the connection was closed")
        }
        PQreset(handle)
        preparedStatements = [:]  // a new session has none
        guard PQstatus(handle) == CONNECTION_OK else {
            throw PostgresError(
                code: .connectionFailed, message: "cannot reconnect to PostgreSQL: \(Self.trimmed(PQerrorMessage(handle)))")
        }
    }

    // MARK: - Statements

    /// Runs one statement with bound parameters and returns its rows (binary format).
    @discardableResult
    public func query(_ query: SQLQuery) throws -> PostgresResult {
        let conn = try liveHandle(for: query.sql)
        if query.isPrepared {
            let name = try prepare(query)
            let result = try exchange(conn, sql: query.sql) {
                try withParameters(query) { count, _, values, lengths, formats in
                    PQsendQueryPrepared(conn, name, count, values, lengths, formats, 1)
                }
            }
            return try check(result, sql: query.sql)
        }
        let result = try exchange(conn, sql: query.sql) {
            try withParameters(query) { count, types, values, lengths, formats in
                PQsendQueryParams(conn, query.sql, count, types, values, lengths, formats, 1)
            }
        }
        return try check(result, sql: query.sql)
    }

    /// Prepares `query` on this session once and returns its statement name.
    private func prepare(_ query: SQLQuery) throws -> String {
        if let name = preparedStatements[query.sql] { return name }
        let conn = try liveHandle(for: query.sql)
        let name = "eventline_\(preparedStatements.count + 1)"
        let types = query.binds.map { Oid($0.oid) }
        let result = try exchange(conn, sql: query.sql) {
            types.withUnsafeBufferPointer { types in
                PQsendPrepare(conn, name, query.sql, Int32(types.count), types.baseAddress)
            }
        }
        _ = try check(result, sql: query.sql)
        preparedStatements[query.sql] = name
        return name
    }

    /// Runs one statement and returns the number of rows it affected.
    @discardableResult
    public func execute(_ query: SQLQuery) throws -> Int {
        try self.query(query).affectedRows
    }

    /// Runs SQL text that may hold several statements (a migration file) with the simple query
    /// protocol. The caller vouches that the text holds no untrusted input.
    public func execute(unsafeSQL sql: String) throws {
        let conn = try liveHandle(for: sql)
        // Only the last result counts; errors stop the script and are reported instead.
        _ = try check(try exchange(conn, sql: sql) { PQsendQuery(conn, sql) }, sql: sql)
    }

    /// Runs `body` in a transaction: COMMIT when it returns, ROLLBACK when it throws.
    public func transaction<T>(
        isolation: String? = nil, _ body: (PostgresConnection) throws -> T
    ) throws -> T {
        if let isolation {
            try execute(unsafeSQL: "BEGIN ISOLATION LEVEL \(isolation)")
        } else {
            try execute(unsafeSQL: "BEGIN")
        }
        let value: T
        do {
            value = try body(self)
        } catch {
            rollbackQuietly()
            throw error
        }
        if let handle, PQtransactionStatus(handle) == PQTRANS_INERROR {
            // A statement failed and the body went on: COMMIT would quietly roll back.
            rollbackQuietly()
            throw PostgresError(
                code: .server, message: "the transaction was aborted by an earlier error and has been rolled back")
        }
        try execute(unsafeSQL: "COMMIT")
        return value
    }

    /// Rolls back an open transaction, ignoring errors (the connection may already be gone).
    public func rollbackQuietly() {
        guard let handle, PQstatus(handle) == CONNECTION_OK, inTransaction else { return }
        if let result = try? exchange(handle, sql: "ROLLBACK", { PQsendQuery(handle, "ROLLBACK") }) { PQclear(result) }
    }

    // MARK: - Pipeline mode

    /// Sends several statements in libpq's pipeline mode, one round trip for all of them, and
    /// returns each one's outcome. After the first failure the server skips the rest, which then
    /// report `PostgresError` with SQLSTATE nil and code `.server` "skipped". A transaction block
    /// opened in the pipeline and left failed is rolled back.
    public func pipeline(_ queries: [SQLQuery]) throws -> [Result<PostgresResult, PostgresError>] {
        let conn = try liveHandle(for: queries.first?.sql ?? "")
        // Everything that can fail before sending is checked first, and statements prepared for
        // the first time are prepared before the pipeline starts: a pipeline left half-sent
        // cannot be recovered.
        for query in queries { try query.checkSendable() }
        var names: [String?] = []
        for query in queries { names.append(query.isPrepared ? try prepare(query) : nil) }
        guard PQenterPipelineMode(conn) == 1 else {
            throw PostgresError(code: .protocolViolation, message: "cannot enter pipeline mode: \(Self.trimmed(PQerrorMessage(conn)))")
        }
        do {
            return try runPipeline(conn, queries, names)
        } catch {
            // Results may still be pending; the session cannot leave pipeline mode cleanly, so it
            // is closed (the server rolls back any open transaction) and replaced on next use.
            if handle != nil, PQpipelineStatus(conn) != PQ_PIPELINE_OFF { close() }
            throw error
        }
    }

    private func runPipeline(
        _ conn: OpaquePointer, _ queries: [SQLQuery], _ names: [String?]
    ) throws -> [Result<PostgresResult, PostgresError>] {
        for (query, name) in zip(queries, names) {
            let sent = try withParameters(query) { count, types, values, lengths, formats in
                if let name {
                    return PQsendQueryPrepared(conn, name, count, values, lengths, formats, 1)
                }
                return PQsendQueryParams(conn, query.sql, count, types, values, lengths, formats, 1)
            }
            guard sent == 1 else { throw connectionError(sql: query.sql) }
        }
        guard PQpipelineSync(conn) == 1 else { throw connectionError(sql: "") }

        var outcomes: [Result<PostgresResult, PostgresError>] = []
        outcomes.reserveCapacity(queries.count)
        for query in queries {
            try awaitAnswer(conn, sql: query.sql)
            guard let result = PQgetResult(conn) else { throw connectionError(sql: query.sql) }
            let status = PQresultStatus(result)
            if status == PGRES_PIPELINE_ABORTED {
                PQclear(result)
                outcomes.append(.failure(PostgresError(
                    code: .server, message: "skipped after an earlier error in the pipeline", query: query.sql)))
            } else {
                do {
                    outcomes.append(.success(try check(result, sql: query.sql)))
                } catch let error as PostgresError {
                    if error.code == .connectionClosed { throw error }
                    outcomes.append(.failure(error))
                }
            }
            // Each statement's results end with a NULL.
            while true {
                try awaitAnswer(conn, sql: query.sql)
                guard let extra = PQgetResult(conn) else { break }
                PQclear(extra)
            }
            if PQstatus(conn) != CONNECTION_OK { throw connectionError(sql: query.sql) }
        }
        // The sync point.
        try awaitAnswer(conn, sql: "")
        guard let sync = PQgetResult(conn) else { throw connectionError(sql: "") }
        let syncStatus = PQresultStatus(sync)
        PQclear(sync)
        guard syncStatus == PGRES_PIPELINE_SYNC else {
            // No sync point: the server ended the session mid-pipeline (a shutdown sends its
            // FATAL error before libpq has seen the socket close). The session is unusable.
            throw PostgresError(
                code: .connectionClosed, message: "the connection to PostgreSQL was lost during a pipeline")
        }
        guard PQexitPipelineMode(conn) == 1 else {
            throw PostgresError(code: .protocolViolation, message: "cannot leave pipeline mode: \(Self.trimmed(PQerrorMessage(conn)))")
        }
        if PQtransactionStatus(conn) == PQTRANS_INERROR { rollbackQuietly() }
        return outcomes
    }

    /// `text` as an SQL string literal escaped by libpq (`PQescapeLiteral`), for the few
    /// statements that take no bind parameters (`ALTER ROLE … PASSWORD`).
    public func quoteLiteral(_ text: String) throws -> String {
        let conn = try liveHandle(for: "")
        let bytes = Array(text.utf8)
        if bytes.contains(0) { throw PostgresError(code: .invalidParameter, message: "a text value contains a NUL character") }
        guard let escaped = bytes.withUnsafeBufferPointer({ buffer in
            buffer.withMemoryRebound(to: CChar.self) { PQescapeLiteral(conn, $0.baseAddress, buffer.count) }
        }) else {
            throw PostgresError(code: .invalidParameter, message: Self.trimmed(PQerrorMessage(conn)))
        }
        defer { PQfreemem(escaped) }
        return String(cString: escaped)
    }

    // MARK: - COPY

    /// Runs `COPY (…) TO STDOUT` and hands each chunk (one row in text or CSV format) to `body`.
    /// COPY takes no bind parameters, so interpolated values are inlined as literals escaped by
    /// libpq (`PQescapeLiteral`). Returns the number of rows copied.
    @discardableResult
    public func copyOut(_ query: SQLQuery, _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> Int {
        let conn = try liveHandle(for: query.sql)
        let sql = try inlineLiterals(query)
        guard let start = PQexec(conn, sql) else { throw connectionError(sql: sql) }
        let startStatus = PQresultStatus(start)
        if startStatus != PGRES_COPY_OUT {
            _ = try check(start, sql: sql)
            throw PostgresError(code: .protocolViolation, message: "the statement is not COPY … TO STDOUT", query: sql)
        }
        PQclear(start)
        var rows = 0
        var bodyError: (any Error)? = nil
        while true {
            var buffer: UnsafeMutablePointer<CChar>? = nil
            let length = PQgetCopyData(conn, &buffer, 0)
            if length > 0, let buffer {
                if bodyError == nil {
                    do {
                        try body(UnsafeRawBufferPointer(start: buffer, count: Int(length)))
                    } catch {
                        // Keep draining so the connection stays usable, then rethrow.
                        bodyError = error
                    }
                }
                rows += 1
                PQfreemem(buffer)
            } else if length == -1 {
                break
            } else {
                throw connectionError(sql: sql)
            }
        }
        guard let end = PQgetResult(conn) else { throw connectionError(sql: sql) }
        _ = try check(end, sql: sql)
        while let extra = PQgetResult(conn) { PQclear(extra) }
        if let bodyError { throw bodyError }
        return rows
    }

    // MARK: - LISTEN / NOTIFY

    /// Starts listening on `channel` (quoted as an identifier).
    public func listen(_ channel: String) throws {
        try execute(unsafeSQL: "LISTEN \(quoteIdentifier(channel))")
    }

    /// Waits up to `timeout` for notifications and returns those received (possibly none).
    /// Throws when the connection breaks.
    public func waitForNotifications(timeout: Duration) throws -> [PostgresNotification] {
        let conn = try liveHandle(for: "")
        var received = drainNotifications(conn)
        if !received.isEmpty { return received }
        var descriptor = pollfd(fd: PQsocket(conn), events: Int16(POLLIN), revents: 0)
        let milliseconds = Int32(clamping: timeout.milliseconds)
        let ready = poll(&descriptor, 1, milliseconds)
        if ready < 0 && errno != EINTR {
            throw PostgresError(code: .connectionClosed, message: "poll failed: \(String(cString: strerror(errno)))")
        }
        if ready > 0 {
            guard PQconsumeInput(conn) == 1 else { throw connectionError(sql: "") }
            received = drainNotifications(conn)
        }
        guard PQstatus(conn) == CONNECTION_OK else { throw connectionError(sql: "") }
        return received
    }

    private func drainNotifications(_ conn: OpaquePointer) -> [PostgresNotification] {
        var received: [PostgresNotification] = []
        while let notify = PQnotifies(conn) {
            received.append(PostgresNotification(
                channel: String(cString: notify.pointee.relname),
                payload: String(cString: notify.pointee.extra),
                pid: notify.pointee.be_pid))
            PQfreemem(notify)
        }
        return received
    }

    // MARK: - Internals

    /// Sends one statement with `send` and collects its results as PQexec does: the last
    /// result, or the first error. Every wait for the server is bounded by `answerTimeout`.
    private func exchange(_ conn: OpaquePointer, sql: String, _ send: () throws -> Int32) throws -> OpaquePointer? {
        guard try send() == 1 else { throw connectionError(sql: sql) }
        var kept: OpaquePointer? = nil
        while true {
            do {
                try awaitAnswer(conn, sql: sql)
            } catch {
                if let kept { PQclear(kept) }
                throw error
            }
            guard let result = PQgetResult(conn) else { break }
            let status = PQresultStatus(result)
            if let previous = kept, PQresultStatus(previous) == PGRES_FATAL_ERROR {
                PQclear(result)  // the first error is the one to report
            } else {
                if let previous = kept { PQclear(previous) }
                kept = result
            }
            // COPY hands the connection to the caller; nothing more comes until it is done.
            if status == PGRES_COPY_IN || status == PGRES_COPY_OUT || status == PGRES_COPY_BOTH { break }
        }
        return kept
    }

    /// Waits until a result can be read without blocking. With `answerTimeout`, a server
    /// silent for that long has the connection closed under it: its state is unknown, and a
    /// statement still running there must not be mistaken for a fresh session's.
    private func awaitAnswer(_ conn: OpaquePointer, sql: String) throws {
        guard let limit = answerTimeout else { return }
        var deadline = ContinuousClock.now + limit
        while PQisBusy(conn) == 1 {
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else {
                close()
                var error = PostgresError(
                    code: .connectionClosed,
                    message: "PostgreSQL did not answer within \(limit); the connection was closed",
                    query: sql.isEmpty ? nil : sql)
                error.timedOut = true
                throw error
            }
            var descriptor = pollfd(fd: PQsocket(conn), events: Int16(POLLIN), revents: 0)
            let milliseconds = Int32(clamping: max(1, remaining.milliseconds))
            let ready = poll(&descriptor, 1, milliseconds)
            if ready < 0 && errno != EINTR {
                throw PostgresError(code: .connectionClosed, message: "poll failed: \(String(cString: strerror(errno)))", query: sql)
            }
            if ready > 0 {
                guard PQconsumeInput(conn) == 1 else { throw connectionError(sql: sql) }
                deadline = ContinuousClock.now + limit
            }
        }
    }

    private func liveHandle(for sql: String) throws -> OpaquePointer {
        guard let handle else {
            throw PostgresError(code: .connectionClosed, message: "the connection was closed", query: sql)
        }
        guard PQstatus(handle) == CONNECTION_OK else {
            throw PostgresError(code: .connectionClosed, message: "the connection to PostgreSQL is broken", query: sql)
        }
        return handle
    }

    private func connectionError(sql: String) -> PostgresError {
        let message = handle.map { Self.trimmed(PQerrorMessage($0)) } ?? "the connection was closed"
        return PostgresError(
            code: .connectionClosed, message: message.isEmpty ? "the connection to PostgreSQL was lost" : message,
            query: sql.isEmpty ? nil : sql)
    }

    /// Turns a result into rows or a `PostgresError`; frees failed results.
    private func check(_ result: OpaquePointer?, sql: String) throws -> PostgresResult {
        guard let result else { throw connectionError(sql: sql) }
        switch PQresultStatus(result) {
        case PGRES_TUPLES_OK, PGRES_COMMAND_OK, PGRES_EMPTY_QUERY, PGRES_SINGLE_TUPLE:
            return PostgresResult(handle: result, sql: sql)
        default:
            let field = { (code: UInt8) -> String? in
                guard let value = PQresultErrorField(result, Int32(code)) else { return nil }
                return String(cString: value)
            }
            let sqlState = field(UInt8(ascii: "C"))
            var error = PostgresError(
                code: .server,
                message: field(UInt8(ascii: "M")) ?? Self.trimmed(PQresultErrorMessage(result)),
                sqlState: sqlState,
                detail: field(UInt8(ascii: "D")),
                hint: field(UInt8(ascii: "H")),
                constraint: field(UInt8(ascii: "n")),
                query: sql)
            PQclear(result)
            if sqlState == nil, let handle, PQstatus(handle) != CONNECTION_OK {
                error.code = .connectionClosed
                if error.message.isEmpty { error.message = "the connection to PostgreSQL was lost" }
            }
            throw error
        }
    }

    /// Lays the binds out as the C arrays libpq wants, valid for the duration of `body`.
    private func withParameters<R>(
        _ query: SQLQuery,
        _ body: (
            Int32, UnsafePointer<Oid>?, UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<Int32>?,
            UnsafePointer<Int32>?
        ) throws -> R
    ) throws -> R {
        try query.checkSendable()
        let binds = query.binds
        if binds.isEmpty { return try body(0, nil, nil, nil, nil) }
        // One contiguous buffer; text values are NUL-terminated as libpq requires.
        var storage: [UInt8] = []
        var offsets: [Int?] = []
        var lengths: [Int32] = []
        var types: [Oid] = []
        var formats: [Int32] = []
        for bind in binds {
            types.append(bind.oid)
            formats.append(bind.format)
            guard let bytes = bind.bytes else {
                offsets.append(nil)
                lengths.append(0)
                continue
            }
            offsets.append(storage.count)
            lengths.append(Int32(bytes.count))
            storage.append(contentsOf: bytes)
            if bind.format == 0 { storage.append(0) }
        }
        storage.append(0)  // never an empty buffer, so baseAddress is never nil
        return try storage.withUnsafeBufferPointer { buffer in
            let base = UnsafeRawPointer(buffer.baseAddress!).assumingMemoryBound(to: CChar.self)
            let values: [UnsafePointer<CChar>?] = offsets.map { $0.map { base + $0 } }
            return try values.withUnsafeBufferPointer { values in
                try body(Int32(binds.count), types, values.baseAddress, lengths, formats)
            }
        }
    }

    /// Renders binds as escaped literals for statements that cannot take parameters (COPY).
    private func inlineLiterals(_ query: SQLQuery) throws -> String {
        guard !query.binds.isEmpty else { return query.sql }
        let conn = try liveHandle(for: query.sql)
        var literals: [String] = []
        for bind in query.binds {
            guard let bytes = bind.bytes else {
                literals.append("NULL")
                continue
            }
            if bind.format == 1 {
                guard bind.oid == PostgresOID.bytea else {
                    throw PostgresError(
                        code: .invalidParameter, message: "only text and bytea values can be inlined into COPY",
                        query: query.sql)
                }
                literals.append("'\\x" + bytes.map { String(format: "%02x", $0) }.joined() + "'::bytea")
                continue
            }
            if bytes.contains(0) {
                throw PostgresError(code: .invalidParameter, message: "a text parameter contains a NUL character")
            }
            guard let escaped = bytes.withUnsafeBufferPointer({ buffer in
                buffer.withMemoryRebound(to: CChar.self) { PQescapeLiteral(conn, $0.baseAddress, buffer.count) }
            }) else {
                throw PostgresError(code: .invalidParameter, message: Self.trimmed(PQerrorMessage(conn)))
            }
            literals.append(String(cString: escaped))
            PQfreemem(escaped)
        }
        // One pass over the text, so that a literal that itself contains "$2" is never rewritten;
        // quoted literals, quoted identifiers and dollar-quoted bodies are copied untouched.
        var sql = ""
        let scalars = Array(query.sql.unicodeScalars)
        var index = 0
        func copyQuoted(until terminator: [Unicode.Scalar]) {
            while index < scalars.count {
                if Array(scalars[index..<min(index + terminator.count, scalars.count)]) == terminator {
                    terminator.forEach { sql.unicodeScalars.append($0) }
                    index += terminator.count
                    return
                }
                sql.unicodeScalars.append(scalars[index])
                index += 1
            }
        }
        while index < scalars.count {
            let scalar = scalars[index]
            if scalar == "'" || scalar == "\"" {
                sql.unicodeScalars.append(scalar)
                index += 1
                copyQuoted(until: [scalar])
                continue
            }
            guard scalar == "$" else {
                sql.unicodeScalars.append(scalar)
                index += 1
                continue
            }
            var end = index + 1
            while end < scalars.count, ("0"..."9").contains(scalars[end]) { end += 1 }
            if end > index + 1, let number = Int(String(String.UnicodeScalarView(scalars[(index + 1)..<end]))),
                number >= 1, number <= literals.count
            {
                sql += literals[number - 1]
                index = end
                continue
            }
            // A dollar quote: $$ or $tag$ … $tag$.
            var tagEnd = index + 1
            while tagEnd < scalars.count, scalars[tagEnd].properties.isAlphabetic || scalars[tagEnd] == "_"
                || (tagEnd > index + 1 && ("0"..."9").contains(scalars[tagEnd]))
            {
                tagEnd += 1
            }
            if tagEnd < scalars.count, scalars[tagEnd] == "$" {
                let tag = Array(scalars[index...tagEnd])
                tag.forEach { sql.unicodeScalars.append($0) }
                index = tagEnd + 1
                copyQuoted(until: tag)
                continue
            }
            sql.unicodeScalars.append(scalar)
            index += 1
        }
        return sql
    }

    static func trimmed(_ message: UnsafePointer<CChar>?) -> String {
        guard let message else { return "" }
        return String(cString: message).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// A notification received on a LISTEN channel.
public struct PostgresNotification: Sendable, Hashable {
    public var channel: String
    public var payload: String
    public var pid: Int32
}

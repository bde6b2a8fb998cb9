import EventStore
import EventlineTestSupport
import Foundation
import PostgresClient
import Synchronization
import Testing

/// What one append attempt asked for and what the store answered.
struct Attempt: Sendable {
    enum Outcome: Sendable {
        case acknowledged(AppendResult)
        case conflict(current: Int)
        /// The outcome is not known to the caller (connection killed during commit).
        case unknown(String)
    }
    var stream: String
    var expected: ExpectedVersion
    var ids: [UUID]
    var outcome: Outcome
}

/// Checks, from the database alone, the invariants of the log against what was acknowledged.
func checkLog(_ rows: [LogRow], attempts: [Attempt], head: Int) {
    // Positions are exactly 1…N.
    #expect(rows.map(\.position) == Array(stride(from: 1, through: rows.count, by: 1)))
    #expect(head == rows.count)

    // Each stream's versions are 1…n in position order.
    var versions: [String: Int] = [:]
    for row in rows {
        let expected = (versions[row.stream] ?? 0) + 1
        #expect(row.version == expected, "stream \(row.stream) has version \(row.version) at position \(row.position), expected \(expected)")
        versions[row.stream] = row.version
    }

    let byId = Dictionary(rows.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
    #expect(byId.count == rows.count, "an event id is stored twice")
    var acknowledgedEvents = 0
    var unknownIds = Set<UUID>()
    for attempt in attempts {
        switch attempt.outcome {
        case .acknowledged(let result):
            acknowledgedEvents += result.events.count
            #expect(result.events.map(\.id) == attempt.ids)
            for event in result.events {
                let row = byId[event.id]
                #expect(row != nil, "acknowledged event \(event.id) is missing")
                #expect(row?.stream == attempt.stream)
                #expect(row?.version == event.version, "acknowledged version differs")
                #expect(row?.position == event.position, "acknowledged position differs")
            }
            if case .exact(let version) = attempt.expected {
                #expect(result.events.first?.version == version + 1)
            }
        case .conflict:
            for id in attempt.ids { #expect(byId[id] == nil, "a rejected append left event \(id)") }
        case .unknown:
            unknownIds.formUnion(attempt.ids)
        }
    }
    // Nothing but acknowledged events (and, where the caller could not know, those) was written.
    let unexplained = rows.filter { row in !unknownIds.contains(row.id) }.count
    #expect(unexplained == acknowledgedEvents)
}

@Suite("Concurrent appends", .serialized)
struct ConcurrencyTests {
    /// Runs `appenders` tasks, each making `appendsEach` appends: some to a few shared streams with
    /// exact expected versions (they race and conflict), some to shared streams with `any`, some
    /// to streams of their own. Returns every attempt.
    static func load(
        stores: [EventStore], appenders: Int, appendsEach: Int, sharedStreams: Int = 6, tolerateUnavailable: Bool = false
    ) async throws -> [Attempt] {
        let run = UUID().uuidString.prefix(6).lowercased()
        return try await withThrowingTaskGroup(of: [Attempt].self) { group in
            for appender in 0..<appenders {
                let store = stores[appender % stores.count]
                group.addTask {
                    var attempts: [Attempt] = []
                    var ownVersion = 0
                    for index in 0..<appendsEach {
                        let mode = (appender + index) % 3
                        let stream: String
                        let expected: ExpectedVersion
                        switch mode {
                        case 0:
                            stream = "shared-\(run)\((appender + index) % sharedStreams)"
                            let current = try await store.streamVersion(stream)
                            expected = current == 0 ? .noStream : .exact(current)
                        case 1:
                            stream = "shared-\(run)\((appender * 7 + index) % sharedStreams)"
                            expected = .any
                        default:
                            stream = "own-\(run)\(appender)"
                            expected = ownVersion == 0 ? .noStream : .exact(ownVersion)
                        }
                        let count = 1 + (index % 3)
                        let events = (0..<count).map { n in
                            NewEvent(id: UUID(), type: "Tested", data: Data(#"{"appender":\#(appender),"index":\#(index),"n":\#(n)}"#.utf8))
                        }
                        do {
                            let result = try await store.append(to: stream, expected: expected, events: events)
                            if mode == 2 { ownVersion = result.version }
                            attempts.append(Attempt(stream: stream, expected: expected, ids: events.map(\.id), outcome: .acknowledged(result)))
                        } catch let error as EventStoreError where error.code == .wrongExpectedVersion {
                            #expect(error.currentVersion != nil)
                            if mode == 2 { Issue.record("an appender's own stream conflicted: \(error)") }
                            attempts.append(Attempt(stream: stream, expected: expected, ids: events.map(\.id), outcome: .conflict(current: error.currentVersion ?? -1)))
                        } catch let error as EventStoreError
                            where tolerateUnavailable && (error.code == .unavailable || error.code == .commitOutcomeUnknown || error.code == .database)
                        {
                            attempts.append(Attempt(stream: stream, expected: expected, ids: events.map(\.id), outcome: .unknown(error.message)))
                            if mode == 2 { ownVersion = try await store.streamVersion(stream) }
                        }
                    }
                    return attempts
                }
            }
            var all: [Attempt] = []
            for try await attempts in group { all += attempts }
            return all
        }
    }

    @Test("32 concurrent appenders: every acknowledged append is stored once, rejected ones leave nothing, positions are 1…N")
    func concurrentAppenders() async throws {
        let test = try await TestStore.make("conc")
        let attempts = try await Self.load(stores: [test.store], appenders: 32, appendsEach: 100)
        let rows = try await test.allRows()
        let head = try await test.store.headPosition()
        #expect(attempts.count == 3200)
        #expect(attempts.contains { if case .conflict = $0.outcome { true } else { false } }, "the load made no conflicts")
        checkLog(rows, attempts: attempts, head: head)
        let stats = test.store.writerStatistics
        #expect(stats.batches < stats.appends, "no group commit happened: \(stats)")
        await test.store.shutdown()
    }

    @Test("two store instances (two processes' writers) on one database keep the log dense and consistent")
    func twoWriters() async throws {
        let test = try await TestStore.make("two")
        let other = test.secondStore()
        let attempts = try await Self.load(stores: [test.store, other], appenders: 32, appendsEach: 40)
        let rows = try await test.allRows()
        checkLog(rows, attempts: attempts, head: try await test.store.headPosition())
        await other.shutdown()
        await test.store.shutdown()
    }

    @Test("killing the log writer's database session during load loses no acknowledged event and leaves no hole")
    func writerSessionKilled() async throws {
        let test = try await TestStore.make("kill")
        let (attempts, kills) = try await test.whileKillingWriterSessions(every: .milliseconds(150)) {
            try await Self.load(stores: [test.store], appenders: 16, appendsEach: 60, tolerateUnavailable: true)
        }
        #expect(kills > 0, "the writer session was never killed")
        let rows = try await test.allRows()
        checkLog(rows, attempts: attempts, head: try await test.store.headPosition())
        // The store recovers: a new append works.
        let result = try await test.store.append(to: "after-kill", events: [NewEvent(type: "Recovered", data: Data("{}".utf8))])
        #expect(result.position == rows.count + 1)
        await test.store.shutdown()
    }

    @Test("an append that the database refuses fails alone; the rest of its group commits and positions stay dense")
    func poisonedAppendInGroup() async throws {
        let test = try await TestStore.make("poison")
        try await test.sql { conn in
            try conn.execute(unsafeSQL: "ALTER TABLE eventline.events ADD CONSTRAINT test_no_poison CHECK (type <> 'Poison')")
        }
        let outcomes = try await withThrowingTaskGroup(of: (Bool, Result<AppendResult, EventStoreError>).self) { group in
            for index in 0..<200 {
                group.addTask {
                    let poison = index % 10 == 3
                    let event = NewEvent(type: poison ? "Poison" : "Fine", data: Data("{}".utf8))
                    do {
                        return (poison, .success(try await test.store.append(to: "p-\(index % 7)", events: [event])))
                    } catch let error as EventStoreError {
                        return (poison, .failure(error))
                    }
                }
            }
            var all: [(Bool, Result<AppendResult, EventStoreError>)] = []
            for try await outcome in group { all.append(outcome) }
            return all
        }
        for (poison, outcome) in outcomes {
            switch outcome {
            case .success: #expect(!poison)
            case .failure(let error):
                #expect(poison, "a good append failed: \(error)")
                #expect(error.code == .database)
                #expect(error.underlying?.sqlState == "23514")
            }
        }
        let rows = try await test.allRows()
        #expect(rows.count == 180)
        #expect(rows.map(\.position) == Array(1...180))
        await test.store.shutdown()
    }
}

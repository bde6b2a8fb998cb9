import ArgumentParser
import EventStore
import Foundation

/// `consumer-groups`: the groups in a database, their progress and parked events.
struct ConsumerGroups: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "consumer-groups",
        abstract: "List consumer groups, show one, list or retry its parked events, or delete it.",
        discussion: "Groups are created and changed over HTTP (PUT /v1/consumer-groups/{name}, admin scope).",
        subcommands: [List.self, Show.self, Parked.self, Retry.self, Delete.self], defaultSubcommand: List.self)

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every group: its checkpoint, lag, in flight and parked.")
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            try await CLI.run {
                let store = try database.openStore()
                let groups = try await store.consumerGroups()
                await store.shutdown()
                print("group                 checkpoint  lag       in flight  waiting   parked    delivery")
                for group in groups {
                    func column(_ value: Any, _ width: Int) -> String { "\(value)".padding(toLength: width, withPad: " ", startingAt: 0) }
                    let delivery = group.settings.webhook.map { "webhook \($0.url)" } ?? "consumers (\(group.consumers.count) lately)"
                    print(
                        column(group.name, 22) + column(group.checkpoint, 12) + column(group.lag, 10) + column(group.inFlight, 11)
                            + column(group.waiting, 10) + column(group.parked, 10) + delivery)
                }
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One group: its settings, progress and recent consumers.")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The group's name.") var name: String

        func run() async throws {
            try await CLI.run {
                let store = try database.openStore()
                let group = try await store.consumerGroup(name)
                await store.shutdown()
                guard let group else { throw CLIError("no consumer group \(name)") }
                let settings = group.settings
                print("group:          \(group.name)")
                print("categories:     \(settings.filter.categories?.joined(separator: ", ") ?? "all")")
                print("types:          \(settings.filter.types?.joined(separator: ", ") ?? "all")")
                print("start after:    \(settings.startAfter)")
                print("max deliveries: \(settings.maxDeliveries)")
                print("ack timeout:    \(settings.ackTimeout.components.seconds) s")
                print("in flight max:  \(settings.maxInFlightPerConsumer.map { "\($0) per consumer" } ?? "no bound")")
                print("per stream:     \(settings.maxPerStream) consecutive event(s) per fetch")
                print("webhook:        \(settings.webhook.map { "\($0.url) (batches of \($0.batchSize))" } ?? "none")")
                print("checkpoint:     \(group.checkpoint) (head \(group.head), lag \(group.lag))")
                print("in flight:      \(group.inFlight)")
                print("waiting:        \(group.waiting)")
                print("parked:         \(group.parked)")
                print("redeliveries:   \(group.redeliveries)")
                for consumer in group.consumers {
                    print("consumer:       \(consumer.name) (last seen \(EventPrinter.timestamp(consumer.lastSeen)))")
                }
            }
        }
    }

    struct Parked: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A group's parked events, oldest first.")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The group's name.") var name: String
        @Option(help: "Only events after this log position.") var after: Int = 0
        @Option(help: "At most this many (1 to 1000).") var limit: Int = 100

        func validate() throws {
            guard after >= 0 else { throw ValidationError("--after must be a position of 0 or more") }
            guard (1...1000).contains(limit) else { throw ValidationError("--limit must be from 1 to 1000") }
        }

        func run() async throws {
            try await CLI.run {
                let store = try database.openStore()
                let parked = try await store.parkedMessages(group: name, after: after, limit: limit)
                await store.shutdown()
                guard let parked else { throw CLIError("no consumer group \(name)") }
                for message in parked {
                    print("\(EventPrinter.line(message.event, json: false))\tattempts \(message.attempt)\t\(message.lastError ?? "")")
                }
                if parked.isEmpty { FileHandle.standardError.write(Data("no parked events in \(name)\n".utf8)) }
            }
        }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Deliver parked events again, with fresh attempts (all, or those named).")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The group's name.") var name: String
        @Option(name: .customLong("position"), help: "A parked event's log position (repeat for several; none: all).") var positions: [Int] = []

        func validate() throws {
            guard positions.allSatisfy({ $0 > 0 }) else { throw ValidationError("--position must be a log position (1 or more)") }
        }

        func run() async throws {
            try await CLI.run {
                let store = try database.openStore()
                let retried = try await store.retryParked(group: name, positions: positions.isEmpty ? nil : positions)
                await store.shutdown()
                guard let retried else { throw CLIError("no consumer group \(name)") }
                print("retried \(retried) parked event\(retried == 1 ? "" : "s") of \(name)")
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a group and everything it has not delivered.")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The group's name.") var name: String

        func run() async throws {
            try await CLI.run {
                let store = try database.openStore()
                let deleted = try await store.deleteConsumerGroup(name)
                await store.shutdown()
                guard deleted else { throw CLIError("no consumer group \(name)") }
                print("deleted consumer group \(name)")
            }
        }
    }
}

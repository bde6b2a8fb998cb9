import Eventline
import Foundation
import Logging

/// The reactor that carries out money transfers: it follows `transfer` events and drives each
/// transfer from its current state until it is finished.
///
/// | transfer state   | account step                             | then records                    |
/// |------------------|------------------------------------------|---------------------------------|
/// | started          | `WithdrawMoney` from `from`              | `RecordDebit`, or `RecordDebitRefused` when `from` refuses (the transfer is rejected) |
/// | debited          | `DepositMoney` to `to`                   | `RecordCredit`, or `RecordCreditRefused` when `to` refuses |
/// | credit refused   | `DepositMoney` back to `from` (refund)   | `RecordRefund`                  |
///
/// Every account step appends with an event id derived from the transfer id and the step
/// (`eventID(transfer:step:)`) and metadata `{"transfer": id, "step": step}`; every outcome is
/// appended to the transfer stream with an id derived from the transfer id and the outcome, at
/// the version the step was decided on.
///
/// ## Why a killed process never moves money twice or loses it
///
/// The transfer stream says which step is next, and the account streams say whether that step
/// already happened: its deterministic event id is either in the log or not. At each crash point:
///
/// - **Before the account step's append commits** (or when its outcome is unknown): the event
///   is handed over again (the checkpoint had not moved), the transfer is still in the same
///   state, the step's id is not in the log, so the step is decided afresh. Nothing was taken
///   or given, so deciding again on the account's current state is right, whatever it decides.
/// - **After the account step committed, before its outcome was recorded**: the transfer is
///   still in the same state, but the step's id *is* in the log, so the step is recorded as
///   done without deciding again. Deciding again would be wrong: after our own withdrawal the
///   account may no longer cover the amount, and the transfer would be rejected with the money
///   gone; or it would withdraw "again" with the same event id at a newer version, which the
///   store refuses as a conflict, not as a replay. Hence the look-up (`EventStore.event(id:)`)
///   before every account step.
/// - **After the outcome was recorded, before the checkpoint moved**: the event is handed over
///   again, the transfer's state has moved on, and the process continues from there (or does
///   nothing when it is finished). Later events of the same transfer find it finished.
/// - **A step that was refused, then a crash before the refusal was recorded**: the step is
///   decided again on the account's current state; if it now succeeds (money arrived
///   meanwhile) the transfer simply goes that way. Either outcome is recorded only once: the
///   transfer stream accepts an outcome only in the state it follows from, at the version the
///   step was decided on.
///
/// One process owns the reactor at a time (`ReactorRunner`). A former owner that lost its
/// database session but has not noticed yet may still be driving a transfer when a standby
/// takes over, and the two then drive it at once. Deterministic ids make a step they both take
/// one event (the second append is a replay, or a conflict resolved by the look-up after every
/// refusal or failure), and the expected version on the transfer stream lets only one outcome
/// in. What they cannot exclude is a step decided on a transfer state the other changed a
/// moment before (between loading the transfer and appending the step, a few round trips): for
/// example a withdrawal retried after the other recorded its refusal, money having arrived in
/// between. The owner checks its session before every event, so that window is one event long.
///
/// ## Known edge, not solved
///
/// The refund is a deposit to `from`. If `from` was closed after the debit (its owner emptied
/// and closed it), the deposit is refused: the transfer stays `credit_refused`, the reactor
/// retries the event with backoff and logs `refund refused`, and — as it never skips an event —
/// holds up the transfers behind it until an operator settles the money by hand. A bank would
/// book it to a suspense account; the sample domain has none.
public struct TransferProcess: Reactor {
    public let name = "transfers"
    public let filter = EventFilter(category: Transfer.category)
    public let transfers: CommandHandler<Transfer>
    public let accounts: CommandHandler<BankAccount>
    private let logger: Logger

    /// The account steps, named in the metadata and in the event ids.
    public enum Step: String, Sendable, CaseIterable {
        case debit, credit, refund
    }

    /// A process with command handlers of its own over `store`.
    public init(store: EventStore, logger: Logger = Logger(label: "eventline.transfers")) {
        self.init(
            transfers: CommandHandler(store: store, logger: logger), accounts: CommandHandler(store: store, logger: logger),
            logger: logger)
    }

    public init(transfers: CommandHandler<Transfer>, accounts: CommandHandler<BankAccount>, logger: Logger = Logger(label: "eventline.transfers")) {
        self.transfers = transfers
        self.accounts = accounts
        self.logger = logger
    }

    /// Drives the event's transfer; the event itself is only the trigger.
    public func react(to event: RecordedEvent) async throws {
        try await drive(StreamName(event.stream).id)
    }

    /// Takes the transfer `id` from its current state to a finished one, one step at a time.
    /// Safe to call any number of times, concurrently with itself in other processes too.
    public func drive(_ id: String) async throws {
        let stream = try transfers.stream(for: id)
        // At most three steps; a few more rounds for outcomes another writer recorded first.
        for _ in 0..<6 {
            let (state, version) = try await transfers.load(stream)
            let outcome: any DomainCommand
            switch state.status {
            case .new, .completed, .refunded, .rejected:
                return
            case .started:
                switch try await accountStep(.debit, transfer: id, account: state.from, WithdrawMoney(amount: state.amount)) {
                case .done: outcome = RecordDebit()
                case .refused(let rule): outcome = RecordDebitRefused(reason: rule.code)
                }
            case .debited:
                switch try await accountStep(.credit, transfer: id, account: state.to, DepositMoney(amount: state.amount)) {
                case .done: outcome = RecordCredit()
                case .refused(let rule): outcome = RecordCreditRefused(reason: rule.code)
                }
            case .creditRefused:
                switch try await accountStep(.refund, transfer: id, account: state.from, DepositMoney(amount: state.amount)) {
                case .done: outcome = RecordRefund()
                case .refused(let rule): throw TransferProcessError.refundRefused(transfer: id, account: state.from, rule: rule)
                }
            }
            try await record(outcome, transfer: id, at: version)
        }
        let (state, _) = try await transfers.load(stream)
        if !state.status.isTerminal {
            throw TransferProcessError.unfinished(transfer: id, status: state.status.rawValue)
        }
    }

    /// The id of the event that `step` of transfer `id` appends to its account, for example
    /// to look it up in the log.
    public static func eventID(transfer id: String, step: Step) -> UUID {
        eventIDs(transfer: id, name: step.rawValue)(0)
    }

    /// Ids derived from the transfer id and a name.
    static func eventIDs(transfer id: String, name: String) -> @Sendable (Int) -> UUID {
        { index in UUID.sha256Derived(from: "eventline.transfer\n\(id)\n\(name)\n\(index)") }
    }

    enum StepOutcome {
        case done
        case refused(RuleViolation)
    }

    /// Runs an account step unless the log shows it already ran.
    private func accountStep(_ step: Step, transfer id: String, account: String, _ command: any DomainCommand) async throws -> StepOutcome {
        let stream = try accounts.stream(for: account)
        let eventID = Self.eventID(transfer: id, step: step)
        if try await isInLog(eventID, stream: stream) {
            logger.info(
                "account step already in the log (taken before a restart); recording it",
                metadata: ["transfer.id": "\(id)", "transfer.step": "\(step.rawValue)"])
            return .done
        }
        do {
            _ = try await accounts.handle(
                id: account, command: command, metadata: ["transfer": .string(id), "step": .string(step.rawValue)],
                eventIDs: Self.eventIDs(transfer: id, name: step.rawValue))
            return .done
        } catch let refusal as RuleViolation {
            // Decided on the account's state as the log holds it; only another writer of this
            // very step (a former owner) can have put the event there meanwhile.
            if try await isInLog(eventID, stream: stream) { return .done }
            logger.info(
                "account step refused",
                metadata: ["transfer.id": "\(id)", "transfer.step": "\(step.rawValue)", "rule": "\(refusal.code)"])
            return .refused(refusal)
        } catch {
            // A conflict that outlasted the retries, a commit with an unknown outcome: the log knows.
            if (try? await isInLog(eventID, stream: stream)) == true { return .done }
            throw error
        }
    }

    private func isInLog(_ eventID: UUID, stream: StreamName) async throws -> Bool {
        guard let event = try await accounts.store.event(id: eventID) else { return false }
        guard event.stream == stream.rawValue else {
            throw TransferProcessError.foreignEvent(id: eventID, stream: event.stream, expected: stream.rawValue)
        }
        return true
    }

    /// Records an outcome at the version the step was decided on. When another writer recorded
    /// one first, the next round reloads and goes on from the state it left.
    private func record(_ outcome: any DomainCommand, transfer id: String, at version: Int) async throws {
        do {
            _ = try await transfers.handle(
                id: id, command: outcome, expectedVersion: version, metadata: ["transfer": .string(id)],
                eventIDs: Self.eventIDs(transfer: id, name: type(of: outcome).typeName))
        } catch let error as EventStoreError where error.code == .wrongExpectedVersion {
            logger.info("transfer moved on before its outcome was recorded", metadata: ["transfer.id": "\(id)"])
        } catch let refusal as RuleViolation where refusal.code == Transfer.Rule.stepOutOfOrder {
            logger.info("transfer moved on before its outcome was recorded", metadata: ["transfer.id": "\(id)"])
        }
    }
}

/// Why the transfer process cannot go on with a transfer for now (the event is retried).
public enum TransferProcessError: Error, Sendable, CustomStringConvertible {
    /// The refund to `account` was refused (the known edge: `from` was closed after the debit).
    case refundRefused(transfer: String, account: String, rule: RuleViolation)
    /// An account step's deterministic event id is used by another stream.
    case foreignEvent(id: UUID, stream: String, expected: String)
    /// The transfer is still not finished after every step was taken.
    case unfinished(transfer: String, status: String)

    public var description: String {
        switch self {
        case .refundRefused(let transfer, let account, let rule):
            "refund refused: transfer \(transfer) cannot give the money back to account \(account) (\(rule)); settle it by hand"
        case .foreignEvent(let id, let stream, let expected):
            "event \(id.uuidString.lowercased()) is in stream \(stream), not \(expected)"
        case .unfinished(let transfer, let status):
            "transfer \(transfer) is still \(status)"
        }
    }
}

import Foundation
import Synchronization

/// LISTEN on one or more channels from a connection with a thread of its own.
///
/// The stream yields `.notification` for each NOTIFY, `.tick` when `pollInterval` passes without
/// one (so a consumer that re-reads on every element also polls), and `.connected` after every
/// (re)connect, when notifications sent while disconnected may have been missed. A dropped
/// connection is reopened with backoff. Cancelling the consuming task or dropping the stream
/// stops the thread and closes the connection within one `pollInterval`.
public enum PostgresListener {
    /// What the listener saw.
    public enum Event: Sendable, Equatable {
        case notification(PostgresNotification)
        case tick
        case connected
    }

    /// Starts listening; the returned stream keeps only the newest `bufferSize` events, so a slow
    /// consumer never makes memory grow.
    public static func events(
        conninfo: String, channels: [String], pollInterval: Duration = .seconds(1), bufferSize: Int = 1
    ) -> AsyncStream<Event> {
        let (stream, continuation) = AsyncStream<Event>.makeStream(bufferingPolicy: .bufferingNewest(max(1, bufferSize)))
        let stop = StopFlag()
        continuation.onTermination = { _ in stop.flag.store(true, ordering: .releasing) }
        let thread = Thread {
            listenLoop(conninfo: conninfo, channels: channels, pollInterval: pollInterval, stop: stop, continuation: continuation)
        }
        thread.name = "eventline-listen"
        thread.start()
        return stream
    }

    private final class StopFlag: Sendable {
        let flag = Atomic<Bool>(false)
    }

    private static func listenLoop(
        conninfo: String, channels: [String], pollInterval: Duration, stop: StopFlag,
        continuation: AsyncStream<Event>.Continuation
    ) {
        var connection: PostgresConnection? = nil
        var backoff = 0.05
        /// Sleeps in short slices, so that a stop request is honoured promptly.
        func pause(_ seconds: Double) {
            var left = seconds
            while left > 0 && !stop.flag.load(ordering: .acquiring) {
                Thread.sleep(forTimeInterval: min(left, 0.05))
                left -= 0.05
            }
        }
        while !stop.flag.load(ordering: .acquiring) {
            if connection == nil {
                do {
                    let fresh = try PostgresConnection(conninfo: conninfo)
                    try fresh.execute(unsafeSQL: "SET application_name = 'eventline-listen'")
                    for channel in channels { try fresh.listen(channel) }
                    connection = fresh
                    continuation.yield(.connected)
                } catch {
                    continuation.yield(.tick)
                    pause(backoff)
                    backoff = min(backoff * 2, 5)
                    continue
                }
            }
            do {
                let received = try connection!.waitForNotifications(timeout: pollInterval)
                // Only a connection that has carried a full wait counts as healthy again.
                backoff = 0.05
                if received.isEmpty {
                    continuation.yield(.tick)
                } else {
                    for notification in received { continuation.yield(.notification(notification)) }
                }
            } catch {
                connection?.close()
                connection = nil
                continuation.yield(.tick)
                pause(backoff)
                backoff = min(backoff * 2, 5)
            }
        }
        connection?.close()
        continuation.finish()
    }
}

import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Closes a connection whose request has not fully arrived within `timeout` of its head: a
/// client that dribbles (or stops sending) a body holds a connection no longer than one that
/// dribbles a head, which the idle timeout closes. When no response has started, the client
/// is told why first: `408 /problems/body-timeout`. One event-loop timer per request, no task.
///
/// The close after a 408 lingers, as nginx's does: the server shuts its side down, then reads
/// and discards what the client still sends for up to `linger`, and only then closes. A
/// socket closed with unread bytes answers the client's next byte with a reset, and a reset
/// makes the client's kernel drop the 408 it has not read yet.
///
/// A client that closes its side while its response is streaming (the live feed) has gone:
/// the connection is closed then, so the stream ends at once instead of at its next write.
/// (The server allows half-closed connections, so without this only a failed write would
/// tell.) A client that half-closes before its response begins is answered as usual.
final class RequestDeadlineHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let timeout: TimeAmount
    private let linger: TimeAmount
    private var deadline: Scheduled<Void>?
    /// Set once a 408 has been written: from then on what the client sends is discarded.
    private var expired = false
    /// Whether a response head has been written since the last request head.
    private var responding = false
    /// Whether that response is a stream (no length) still being written.
    private var streaming = false

    init(timeout: TimeAmount, linger: TimeAmount = .seconds(2)) {
        self.timeout = timeout
        self.linger = linger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !expired else { return }
        switch unwrapInboundIn(data) {
        case .head:
            deadline?.cancel()
            responding = false
            let bound = NIOLoopBound((handler: self, context: context), eventLoop: context.eventLoop)
            deadline = context.eventLoop.scheduleTask(in: timeout) {
                bound.value.handler.expire(bound.value.context)
            }
        case .end:
            deadline?.cancel()
            deadline = nil
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if expired { context.read() } else { context.fireChannelReadComplete() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed, expired || streaming {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head):
            responding = true
            // A body of unknown length is a stream; a sized one is written at once.
            streaming = head.headerFields[.contentLength] == nil
        case .end:
            streaming = false
        case .body:
            break
        }
        context.write(data, promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
    }

    private func expire(_ context: ChannelHandlerContext) {
        deadline = nil
        guard !responding else {
            context.close(promise: nil)
            return
        }
        responding = true
        expired = true
        let seconds = Double(timeout.nanoseconds) / 1e9
        let body = #"{"type":"/problems/body-timeout","title":"The request body took too long","status":408,"detail":"the request body did not arrive within \#(seconds) seconds of its head; the connection is closed"}"#
        var head = HTTPResponse(status: .requestTimeout)
        head.headerFields[.contentType] = "application/problem+json"
        head.headerFields[.contentLength] = String(body.utf8.count)
        head.headerFields[.connection] = "close"
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(context.channel.allocator.buffer(string: body))), promise: nil)
        let bound = NIOLoopBound((handler: self, context: context), eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            bound.value.handler.lingeringClose(bound.value.context)
        }
    }

    /// Half-closes, keeps reading (`channelRead` discards) until the client closes or `linger`
    /// has passed, then closes.
    private func lingeringClose(_ context: ChannelHandlerContext) {
        let channel = context.channel
        context.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
        context.read()
        context.eventLoop.scheduleTask(in: linger) { channel.close(promise: nil) }
    }
}

"""`rt.test_client()`: drive handlers through the real dispatch path without a socket.

Like Flask's test client: the same decode → route → middleware → reply code runs as
for a WebSocket client, and everything the session is sent is decoded back into
`Message` objects.  Hooks run too (on_connect when the client is made, on_disconnect
when it is closed).  It drives the core's public API (`App.new_session`,
`App.open_session`, `App.dispatch`, `App.end_session`), the same calls the gateway makes.

It keeps streams as `rtgevent.client` does (SPEC section 14, by the same
`rtgevent.positions.Positions`): the last offset and epoch of each channel and of the
personal stream, a publication already received is dropped, and `TestClient.reconnect`
comes back the way a dropped client does -- a new session of the same identity that
brings the personal position (``since``) and subscribes again to every channel with
what it has seen -- so that a test can check what a user gets after a network drop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gevent import getcurrent

from .errors import SessionClosed
from .history.base import Position
from .lifecycle import Closing, Ending, Lifecycle
from .message import (
    ERROR_ROUTE,
    PERSONAL_ROUTE,
    REPLY_ROUTE,
    SUBSCRIBE_ROUTE,
    UNSUBSCRIBE_ROUTE,
    Message,
    MessageId,
)
from .positions import Positions
from .transport.frames import OutItem
from .types import Identity, Initiator

if TYPE_CHECKING:
    from .app import App

__all__ = ["TestClient"]


class _Sink:
    """The test client's transport: keeps what would have been written, in order."""

    extensions = True  # ask for (is_text, payload) items, never pre-built frames

    def __init__(self) -> None:
        self.items: list[str | bytes] = []
        self._closing: Closing | None = None
        self._failure: BaseException | None = None
        self.reader: Any = getcurrent()

    @property
    def closing(self) -> Closing | None:
        return self._closing

    def frame(self, payload: str | bytes) -> OutItem:
        return (True, payload.encode()) if isinstance(payload, str) else (False, payload)

    def enqueue(self, item: OutItem) -> None:
        if self._closing is not None:
            raise SessionClosed("session is closing")
        assert isinstance(item, tuple)
        is_text, data = item
        self.items.append(data.decode() if is_text else data)

    def close(self, closing: Closing) -> bool:
        if self._closing is not None:
            return False
        self._closing = closing
        return True

    def drop(self) -> None:
        """The stream failed under the session, as a cut network does: no close frame either way."""
        if self._closing is None:
            self._closing = Closing(Initiator.CLIENT, 1006, "connection dropped", flush=False, abort=True)
        self._failure = ConnectionResetError("connection dropped")

    def ending(self) -> Ending:
        return Ending(closing=self._closing, failure=self._failure)


class TestClient:
    """One simulated client; `send` returns what the handlers sent back.

    One session at a time: `drop` ends it as a dropped connection would, `reconnect`
    opens the next one for the same identity.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, rt: App, identity: Identity) -> None:
        self._rt = rt
        rt.freeze()
        self._identity = identity
        self._book = Positions()
        #: channels subscribed through `subscribe` (a dict for their order)
        self._channels: dict[str, None] = {}
        #: ids of ``rt.subscribe`` not answered yet → (channel, asked with a since)
        self._sub_ids: dict[MessageId, tuple[str, bool]] = {}
        #: received and kept (see `get_received`), not handed out yet
        self._pending: list[Message] = []
        self._ended = False
        self._open(None)

    def _open(self, resume: Position | None) -> bool:
        """A new session of the identity, bringing ``resume`` as a reconnecting client's ``since``."""
        self._sink = _Sink()
        self._seen = 0
        self._life = Lifecycle(in_band=False)
        self.session = self._rt.new_session(self._sink, self._identity, "test-client")
        self.session.resume = (resume.offset, resume.epoch) if resume is not None else None
        self._personal_asked = resume is not None
        self._live = True  # until end_session
        return self._rt.open_session(self.session, self._life)

    @property
    def connected(self) -> bool:
        return not self._ended and self._live and self._sink.closing is None

    def send_raw(self, frame: str | bytes) -> list[Message]:
        """Dispatch one raw frame (as a client would send it); return the new messages."""
        if not self.connected:
            raise SessionClosed("test client is closed")
        self._rt.dispatch(self.session, frame)
        return self.get_received()

    def send(self, route: str, data: Any = None, *, id: MessageId | None = None) -> list[Message]:
        """Dispatch an envelope; return what the session was sent meanwhile."""
        return self.send_raw(self._rt.codec.encode(Message(route, data, id=id)))

    def request(self, route: str, data: Any = None, *, id: MessageId = 1) -> Message:
        """Send with an id and return the ``rt.reply`` or ``rt.error`` that answers it.

        What else the handler sent is dropped; what `subscribe`, `drop` or `reconnect` kept
        for `get_received` stays there.
        """
        kept, self._pending = self._pending, []
        try:
            for msg in self.send(route, data, id=id):
                if _answers(msg, id):
                    return msg
        finally:
            self._pending = kept + self._pending
        raise AssertionError(f"rtgevent: no reply to {route!r}")

    def subscribe(self, channel: str, *, since: tuple[int, str] | None = None) -> Message:
        """Send ``rt.subscribe`` for ``channel``; the ``rt.reply`` or ``rt.error`` answering it.

        ``since`` (an ``(offset, epoch)``; default: the position kept for the channel)
        asks for what came after it.  Everything else the session was sent meanwhile (the
        publications recovered before the reply, ``rt.recovery_failed``) is kept for
        `get_received`.
        """
        if not self.connected:
            raise SessionClosed("test client is closed")
        already = channel in self._channels
        if since is not None and not already:
            self._book.seed(channel, since)
        answer = self._subscribe(channel, None if already else self._book.get(channel))
        if answer.route == REPLY_ROUTE:
            self._channels[channel] = None
        return answer

    def unsubscribe(self, channel: str) -> Message:
        """Send ``rt.unsubscribe`` for ``channel``; the answer.  Its position is forgotten."""
        self._channels.pop(channel, None)
        self._book.forget(channel)
        return self.request(UNSUBSCRIBE_ROUTE, {"channel": channel}, id=f"unsubscribe:{channel}")

    def get_received(self) -> list[Message]:
        """Messages sent to this client since the last call, decoded; publications once each.

        Besides what the sessions were sent: ``rt.recovery_failed`` (as `rtgevent.client`
        emits it) after an answer that says a stream could not be recovered.
        """
        out, self._pending = self._pending, []
        out.extend(self._drain())
        return out

    @property
    def positions(self) -> dict[str | None, Position]:
        """Where each stream stands for this client: channel (None: personal stream) → (offset, epoch)."""
        return self._book.snapshot()

    def position(self, channel: str | None = None) -> Position | None:
        """The last (offset, epoch) of ``channel`` (None: the personal stream), or None."""
        return self._book.get(channel)

    def drop(self) -> None:
        """End the session as a dropped connection would (on_disconnect sees 1006, the client's).

        What the session was sent until then stays for `get_received`; `reconnect` comes back.
        """
        if self._ended:
            raise SessionClosed("test client is closed")
        if not self._live:
            return
        self._pending.extend(self._drain())
        self._live = False
        self._sink.drop()
        self._rt.end_session(self.session, self._sink.ending(), self._life)

    def reconnect(self) -> dict[str, Message]:
        """Come back as a dropped client does; each channel's answer to its new ``rt.subscribe``.

        Ends the session first if it is still there (`drop`), then opens a new one for the
        same identity with the personal stream's position, and subscribes again to every
        channel subscribed through `subscribe` with ``since`` = what it has seen.  What
        follows in `get_received` is what was missed, in order, then live messages; a
        channel the server refuses now is no longer subscribed.
        """
        self.drop()
        if not self._open(self._book.get(None)):
            return {}  # on_connect rejected the new session
        answers: dict[str, Message] = {}
        for channel in list(self._channels):
            answer = self._subscribe(channel, self._book.get(channel))
            answers[channel] = answer
            if answer.route != REPLY_ROUTE:
                del self._channels[channel]
        return answers

    def close(self, code: int = 1000, reason: str = "") -> None:
        """End the session as if the client closed it; on_disconnect runs.  Final."""
        if self._ended:
            return
        self._ended = True
        if self._live:
            self._live = False
            self._sink.close(Closing(Initiator.CLIENT, code, reason, flush=False))
            self._rt.end_session(self.session, self._sink.ending(), self._life)

    def __enter__(self) -> TestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _subscribe(self, channel: str, since: Position | None) -> Message:
        """Dispatch ``rt.subscribe`` (with ``since``); its answer, everything else kept for later."""
        msg_id = f"subscribe:{channel}"
        data: dict[str, Any] = {"channel": channel}
        if since is not None:
            data["since"] = {"offset": since.offset, "epoch": since.epoch}
        self._sub_ids[msg_id] = (channel, since is not None)
        self._rt.dispatch(self.session, self._rt.codec.encode(Message(SUBSCRIBE_ROUTE, data, id=msg_id)))
        answer = None
        for msg in self._drain():
            if answer is None and _answers(msg, msg_id):
                answer = msg
            else:
                self._pending.append(msg)
        self._sub_ids.pop(msg_id, None)
        if answer is None:
            raise AssertionError(f"rtgevent: no reply to rt.subscribe {channel!r}")
        return answer

    def _drain(self) -> list[Message]:
        """What the current session was sent and nobody read yet: decoded, positions kept, duplicates out."""
        items = self._sink.items[self._seen :]
        self._seen = len(self._sink.items)
        out: list[Message] = []
        for item in items:
            msg = self._rt.codec.decode(item)
            reply_to = (msg.metadata or {}).get("in_reply_to")
            subscription = None
            if msg.route in (REPLY_ROUTE, ERROR_ROUTE) and isinstance(reply_to, (str, int)):
                subscription = self._sub_ids.pop(reply_to, None)
            if subscription is not None:
                out.append(msg)
                if msg.route == REPLY_ROUTE:
                    channel, asked = subscription
                    out.extend(_event(self._book.answered(channel, msg.data, asked=asked)))
            elif msg.route == PERSONAL_ROUTE:
                asked, self._personal_asked = self._personal_asked, False
                out.append(msg)
                out.extend(_event(self._book.answered(None, msg.data, asked=asked)))
            elif self._book.admit(msg):
                out.append(msg)
        return out


def _answers(msg: Message, msg_id: MessageId) -> bool:
    return msg.route in (REPLY_ROUTE, ERROR_ROUTE) and (msg.metadata or {}).get("in_reply_to") == msg_id


def _event(msg: Message | None) -> list[Message]:
    return [] if msg is None else [msg]

"""`rt.test_client()`: drive handlers through the real dispatch path without a socket.

Like Flask's test client: the same decode → route → middleware → reply code runs as
for a WebSocket client, and everything the session is sent is decoded back into
`Message` objects.  Hooks run too (on_connect when the client is made, on_disconnect
when it is closed).  It drives the core's public API (`App.new_session`,
`App.open_session`, `App.dispatch`, `App.end_session`), the same calls the gateway makes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gevent import getcurrent

from .errors import SessionClosed
from .lifecycle import Closing, Ending, Lifecycle
from .message import ERROR_ROUTE, REPLY_ROUTE, Message, MessageId
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

    def ending(self) -> Ending:
        return Ending(closing=self._closing)


class TestClient:
    """One simulated connection; `send` returns what the handlers sent back."""

    __test__ = False  # not a pytest test class

    def __init__(self, rt: App, identity: Identity) -> None:
        self._rt = rt
        rt.freeze()
        self._sink = _Sink()
        self._seen = 0
        self._life = Lifecycle(in_band=False)
        self.session = rt.new_session(self._sink, identity, "test-client")
        rt.open_session(self.session, self._life)
        self._ended = False

    @property
    def connected(self) -> bool:
        return not self._ended and self._sink.closing is None

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
        """Send with an id and return the ``rt.reply`` or ``rt.error`` that answers it."""
        for msg in self.send(route, data, id=id):
            if msg.route in (REPLY_ROUTE, ERROR_ROUTE) and (msg.metadata or {}).get("in_reply_to") == id:
                return msg
        raise AssertionError(f"rtgevent: no reply to {route!r}")

    def subscribe(self, channel: str) -> Message:
        """Send ``rt.subscribe`` for ``channel``; the ``rt.reply`` or ``rt.error`` answering it."""
        return self.request("rt.subscribe", {"channel": channel}, id=f"subscribe:{channel}")

    def unsubscribe(self, channel: str) -> Message:
        """Send ``rt.unsubscribe`` for ``channel``; the answer."""
        return self.request("rt.unsubscribe", {"channel": channel}, id=f"unsubscribe:{channel}")

    def get_received(self) -> list[Message]:
        """Messages sent to this session since the last call, decoded."""
        items = self._sink.items[self._seen :]
        self._seen = len(self._sink.items)
        return [self._rt.codec.decode(item) for item in items]

    def close(self, code: int = 1000, reason: str = "") -> None:
        """End the session as if the client closed it; on_disconnect runs."""
        if self._ended:
            return
        self._ended = True
        self._sink.close(Closing(Initiator.CLIENT, code, reason, flush=False))
        self._rt.end_session(self.session, self._sink.ending(), self._life)

    def __enter__(self) -> TestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""`rt.test_client()`: drive handlers through the real dispatch path without a socket.

Like Flask's test client: the same decode → route → middleware → reply code runs as
for a WebSocket client, and everything the session is sent is decoded back into
`Message` objects.  Hooks run too (on_connect when the client is made, on_disconnect
when it is closed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gevent import getcurrent

from .errors import SessionClosed
from .message import ERROR_ROUTE, REPLY_ROUTE, Message, MessageId
from .session import Session
from .transport.frames import Closing, Outcome, OutItem
from .types import Identity, Initiator

if TYPE_CHECKING:
    from .realtime import Realtime

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

    def outcome(self) -> Outcome:
        closing = self._closing
        if closing is None:
            return Initiator.CLIENT, 1000, "", None
        return closing.initiator, closing.code, closing.reason, closing.error


class TestClient:
    """One simulated connection; `send` returns what the handlers sent back."""

    __test__ = False  # not a pytest test class

    def __init__(self, rt: Realtime, identity: Identity) -> None:
        self._rt = rt
        self._router = rt._freeze()
        self._sink = _Sink()
        self._seen = 0
        self.session = Session(
            rt._new_id(),
            identity,
            "test-client",
            self._sink,
            rt.codec,
            node_id=rt.node_id,
            report_error=rt._report,
            debug=rt.config.debug,
        )
        self._registered = rt._register(self.session)
        self._ended = False

    @property
    def connected(self) -> bool:
        return not self._ended and self._sink.closing is None

    def send_raw(self, frame: str | bytes) -> list[Message]:
        """Dispatch one raw frame (as a client would send it); return the new messages."""
        if not self.connected:
            raise SessionClosed("test client is closed")
        self._rt._dispatch(self.session, frame, self._router)
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
        self._rt._end(self.session, self._sink.outcome(), self._registered)

    def __enter__(self) -> TestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""`Session`: the public face of one connected client (SPEC section 5).

It exposes read-only facts and the send / close verbs; the socket, the queue and the
greenlets stay inside its `Connection`, so application code cannot break the lifecycle.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, Protocol

from gevent.event import Event

from .codec import Codec
from .errors import SessionClosed
from .message import Message
from .threadsafe import HubCaller
from .transport.frames import Closing, OutItem
from .types import DisconnectInfo, Identity, Initiator, SessionInfo, utcnow

__all__ = ["Session"]

ErrorReporter = Callable[[BaseException, "Session | None"], None]


class Transport(Protocol):
    """What a session needs of its connection: the frame engine, or the test client's sink."""

    extensions: bool

    @property
    def closing(self) -> Closing | None: ...

    @property
    def reader(self) -> Any: ...

    def frame(self, payload: str | bytes) -> OutItem: ...

    def enqueue(self, item: OutItem) -> None: ...

    def close(self, closing: Closing) -> bool: ...


class Session:
    """One connected client.  Methods are safe to call from any greenlet."""

    __slots__ = (
        "__weakref__",
        "_caller",
        "_codec",
        "_conn",
        "_debug",
        "_ended",
        "_info",
        "_report_error",
        "connected_at",
        "id",
        "identity",
        "node_id",
        "remote_addr",
        "state",
    )

    def __init__(
        self,
        session_id: str,
        identity: Identity,
        remote_addr: str,
        conn: Transport | None,
        codec: Codec,
        *,
        node_id: str,
        report_error: ErrorReporter,
        debug: bool = False,
        caller: HubCaller | None = None,
    ) -> None:
        self.id = session_id
        self.identity = identity
        self.remote_addr = remote_addr
        self.connected_at: datetime.datetime = utcnow()
        self.node_id = node_id
        #: free for the application: anything it wants to keep per session
        self.state: dict[str, Any] = {}
        self._conn = conn
        self._codec = codec
        self._info: DisconnectInfo | None = None
        self._ended: Event | None = None
        self._report_error = report_error
        self._debug = debug
        self._caller = caller

    def __repr__(self) -> str:
        return f"<Session {self.id} identity={self.identity.tenant_id}/{self.identity.id}>"

    # ------------------------------------------------------------------ sending

    def send(self, route: str, data: Any = None) -> None:
        """Queue ``{"route": route, "data": data}`` for this client; see `send_message`."""
        self.send_message(Message(route, data))

    def send_message(self, msg: Message) -> None:
        """Queue an envelope without blocking; the backpressure policy applies when full.

        Called from this session's own handler, a full queue waits for room instead.
        Raises `SessionClosed` once the session is closing, `BackpressureError` when
        DROP_NEWEST dropped the message.  From a native OS thread the call is handed to
        the gevent hub and waits for it.
        """
        caller = self._caller
        if caller is not None and not caller.in_hub_thread():
            return caller.call(self.send_message, msg)
        self._push(self._codec.encode(msg))

    def _push(self, payload: str | bytes) -> None:
        conn = self._conn
        if conn is None:
            raise SessionClosed("session has no connection")
        conn.enqueue(conn.frame(payload))

    def _push_frame(self, frame: bytes, payload: str | bytes) -> None:
        """Queue a frame prepared once for many sessions (a broadcast)."""
        conn = self._conn
        if conn is None:
            raise SessionClosed("session has no connection")
        item: OutItem = frame if not conn.extensions else conn.frame(payload)
        conn.enqueue(item)

    # ------------------------------------------------------------------ closing

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after what is already queued; idempotent, the first call records ``server``."""
        self._close(Closing(Initiator.SERVER, code, reason, flush=True))

    def _close(self, closing: Closing) -> bool:
        if self._conn is None:
            return False
        return self._conn.close(closing)

    @property
    def closed(self) -> bool:
        """True from the moment the session starts closing."""
        conn = self._conn
        return self._info is not None or conn is None or conn.closing is not None

    @property
    def close_info(self) -> DisconnectInfo | None:
        """Why the session ended, or None while it is open."""
        return self._info

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block the calling greenlet until the session ended; False on timeout."""
        if self._info is not None:
            return True
        if self._ended is None:
            self._ended = Event()
        return bool(self._ended.wait(timeout))

    # ------------------------------------------------------------------ framework side

    def _finish(self, info: DisconnectInfo) -> None:
        self._info = info
        if self._ended is not None:
            self._ended.set()

    def _report(self, error: BaseException) -> None:
        self._report_error(error, self)

    def info(self, expires_at: datetime.datetime | None = None) -> SessionInfo:
        """A presence snapshot of this session."""
        return SessionInfo(
            session_id=self.id,
            identity_id=self.identity.id,
            tenant_id=self.identity.tenant_id,
            node_id=self.node_id,
            remote_addr=self.remote_addr,
            connected_at=self.connected_at,
            expires_at=expires_at,
        )

"""`Session`: the public face of one connected client (SPEC section 5).

It exposes read-only facts and the send / close verbs; the socket, the queue and the
greenlets stay inside its `Connection`, so application code cannot break the lifecycle.

A few methods are the framework's side of the session, public so that the rooms that
need them (delivery, the core, the test client) ask for them by name rather than reach
into private state: `push_frame`, `request_close`, `finish`, `served_here`, `report`, `debug`,
`joined`, `left`.  Applications use `send`, `close`, `wait_closed`, `subscribe`,
`unsubscribe` and `channels`.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, Protocol

from gevent import getcurrent
from gevent.event import Event

from .codec import Codec
from .errors import SessionClosed
from .lifecycle import Closing
from .message import Message
from .threadsafe import HubCaller
from .transport.frames import OutItem
from .types import DisconnectInfo, Identity, Initiator, SessionInfo, utcnow

__all__ = ["ChannelHost", "ConnectHook", "DisconnectHook", "ErrorHook", "Session", "Transport"]

#: ``@rt.on_connect``: ``fn(session)``; raising rejects the session
ConnectHook = Callable[["Session"], None]
#: ``@rt.on_disconnect``: ``fn(session, info)``, once per session that was open
DisconnectHook = Callable[["Session", DisconnectInfo], None]
#: ``@rt.on_error``: ``fn(error, session_or_None)``; also how a session reports its errors
ErrorHook = Callable[[BaseException, "Session | None"], None]


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


class ChannelHost(Protocol):
    """Who keeps a session's channels: the core (``App``), which checks, counts and routes."""

    def subscribe(self, session: Session, channel: str) -> object: ...

    def unsubscribe(self, session: Session, channel: str) -> None: ...


class Session:
    """One connected client.  Methods are safe to call from any greenlet."""

    __slots__ = (
        "__weakref__",
        "_caller",
        "_channel_host",
        "_channels",
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
        "resume",
        "sequence",
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
        report_error: ErrorHook,
        debug: bool = False,
        caller: HubCaller | None = None,
        channel_host: ChannelHost | None = None,
    ) -> None:
        self.id = session_id
        self.identity = identity
        self.remote_addr = remote_addr
        self.connected_at: datetime.datetime = utcnow()
        self.node_id = node_id
        #: free for the application: anything it wants to keep per session
        self.state: dict[str, Any] = {}
        #: this login's number among the identity's, from presence (the highest is the
        #: newest); None until registered, 0 when presence could not register it
        self.sequence: int | None = None
        #: the personal stream position the client came back with (``since``), if any
        self.resume: tuple[int, str] | None = None
        self._conn = conn
        self._codec = codec
        self._info: DisconnectInfo | None = None
        self._ended: Event | None = None
        self._report_error = report_error
        self._debug = debug
        self._caller = caller
        self._channel_host = channel_host
        #: the channels this session is subscribed to (kept by the channel host)
        self._channels: set[str] = set()

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

    def push_frame(self, frame: bytes, payload: str | bytes) -> None:
        """Framework side: queue a frame prepared once for many sessions (a broadcast).

        ``payload`` is the envelope the frame carries, for a connection that negotiated an
        extension and must frame (compress) it itself.
        """
        conn = self._conn
        if conn is None:
            raise SessionClosed("session has no connection")
        item: OutItem = frame if not conn.extensions else conn.frame(payload)
        conn.enqueue(item)

    # ------------------------------------------------------------------ channels

    def subscribe(self, channel: str) -> None:
        """Receive every publication to ``channel`` (SPEC section 13); idempotent.

        Returns once this node receives the channel's publications from the broker (bounded
        by the broker's subscribe timeout).  Raises `InvalidOption` for a bad channel name
        or past ``Config.max_channels_per_session`` / the namespace's ``max_subscribers``,
        `SessionClosed` once the session is closing.
        """
        caller = self._caller
        if caller is not None and not caller.in_hub_thread():
            return caller.call(self.subscribe, channel)
        if self.closed:
            raise SessionClosed("session is closing")
        if self._channel_host is None:
            raise SessionClosed("session has no channel host")
        self._channel_host.subscribe(self, channel)

    def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``'s publications; a channel it is not in is a no-op."""
        caller = self._caller
        if caller is not None and not caller.in_hub_thread():
            return caller.call(self.unsubscribe, channel)
        if self._channel_host is not None and channel in self._channels:
            self._channel_host.unsubscribe(self, channel)

    @property
    def channels(self) -> frozenset[str]:
        """The channels this session is subscribed to."""
        return frozenset(self._channels)

    def joined(self, channel: str) -> None:
        """Framework side: the channel host added this session to ``channel``."""
        self._channels.add(channel)

    def left(self, channel: str) -> None:
        """Framework side: the channel host took this session out of ``channel``."""
        self._channels.discard(channel)

    # ------------------------------------------------------------------ closing

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after what is already queued; idempotent, the first call records ``server``."""
        self.request_close(Closing(Initiator.SERVER, code, reason, flush=True))

    def request_close(self, closing: Closing) -> bool:
        """Framework side: close with any initiator; False if it was closing already."""
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

    def served_here(self) -> bool:
        """Framework side: True when the calling greenlet is this session's reader.

        A handler that shuts the gateway down must not wait for its own session to end.
        """
        conn = self._conn
        return conn is not None and conn.reader is getcurrent()

    def finish(self, info: DisconnectInfo) -> None:
        """Framework side: record why the session ended and wake `wait_closed`."""
        self._info = info
        if self._ended is not None:
            self._ended.set()

    @property
    def debug(self) -> bool:
        """Framework side: errors may show their text to this client (``Config.debug``)."""
        return self._debug

    def report(self, error: BaseException) -> None:
        """Framework side: give ``error`` to the on_error hooks, naming this session (middleware uses it)."""
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

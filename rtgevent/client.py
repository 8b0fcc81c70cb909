"""A blocking Python client of rtgevent, for tests, bots and benchmarks.

::

    from rtgevent.client import connect

    with connect("ws://127.0.0.1:8000/ws", token="secret") as client:
        client.on("chat.message", lambda msg: print(msg.data))
        print(client.request("chat.send", {"text": "hi"}))    # the rt.reply's data
        news = client.recv(timeout=5)                          # the next other message
        client.run(timeout=10)                                 # dispatch to on() handlers

The verbs are the browser client's (``rtgevent.js``): ``on``, ``send``, ``request``,
``close``, plus ``recv`` and ``run`` because blocking code pulls instead of being called.

Built on ``websockets``' sync client because ``websockets`` is already a dependency of
the package: an installed rtgevent can run a bot with nothing else.  Under gevent's
monkey-patching its reader thread is a greenlet, so the client also blocks
cooperatively inside a gevent program (the test suite).

Design choices:

* The token goes in an ``Authorization: Bearer`` header (a program can set headers;
  unlike a query string, a header does not end up in access logs).  ``in_band=True``
  sends it as the first message instead (``rt.auth``, for `InBandAuthenticator`).
* One frame is read at a time under a lock, so one thread may ``request`` while another
  ``recv``\\ s: whoever reads a frame files it where it belongs (an answer for a waiting
  request, a handler call, or the inbox).
* A message whose route has ``on`` handlers goes to them; every other message waits in a
  bounded inbox for ``recv`` (the oldest is dropped when it is full).  Replies never reach
  the inbox; a late reply to a request that timed out is dropped.
* No automatic reconnect: a test wants to see the drop, and a bot's reconnect policy is
  its own (catch `ClientClosed`, ``connect`` again).
* TLS: a ``wss://`` (or ``https://``) URL is verified with ``ssl=``, an `ssl.SSLContext`,
  or with the system's default context (``ssl.create_default_context()``) when it is
  None.  To trust a private CA or a self-signed certificate, pass a context that loads
  it (``ssl.create_default_context(cafile=...)``).
"""

from __future__ import annotations

import collections
import inspect
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from .codec import Codec, JSONCodec
from .errors import InvalidOption, RealtimeError
from .message import AUTH_ROUTE, ERROR_ROUTE, REPLY_ROUTE, Message

__all__ = ["Client", "ClientClosed", "ClientTimeout", "ConnectRefused", "RemoteError", "connect"]

MessageHandler = Callable[[Message], None]
DEFAULT_TIMEOUT = 10.0
#: websockets >= 17.1 warns unless a direct (non-context-manager) connect says legacy=True;
#: older versions have no such flag (it would reach socket.create_connection)
_DIRECT: dict[str, Any] = {"legacy": True} if "legacy" in inspect.signature(ws_connect).parameters else {}


class RemoteError(RealtimeError):
    """The server answered a request with ``rt.error``; ``code`` is the wire code."""

    def __init__(self, code: str, message: str, data: Any = None) -> None:
        self.code = code
        self.data = data
        super().__init__(f"{code}: {message}")


class ClientTimeout(RealtimeError, TimeoutError):
    """Nothing arrived in time (a request's reply, or the next message for ``recv``)."""

    code = "timeout"


class ClientClosed(RealtimeError):
    """The connection is closed; ``code`` and ``reason`` are the close frame's, if any."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed ({code} {reason})".rstrip())


class ConnectRefused(RealtimeError):
    """The server refused the upgrade with an HTTP status (401, 403, 503, ...)."""

    def __init__(self, status: int, body: bytes = b"") -> None:
        self.status = status
        self.body = body
        text = body.decode(errors="replace").strip()
        super().__init__(f"upgrade refused with HTTP {status}" + (f": {text}" if text else ""))


def _ws_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        return f"ws{scheme[4:].lower()}://{rest}"
    return url


def _secure(url: str) -> bool:
    return url.partition("://")[0].lower() == "wss"


def _closed(exc: ConnectionClosed) -> ClientClosed:
    frame = exc.rcvd or exc.sent
    return ClientClosed(frame.code if frame is not None else None, frame.reason if frame is not None else "")


def _reply_id(msg: Message) -> Any:
    return (msg.metadata or {}).get("in_reply_to")


class Client:
    """One connection; see the module docstring.  Safe to use from several threads."""

    def __init__(
        self,
        connection: ClientConnection,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        codec: Codec | None = None,
        inbox_size: int = 10000,
    ) -> None:
        self._conn = connection
        #: default seconds for ``request`` and ``recv``
        self.timeout = timeout
        self.codec: Codec = codec or JSONCodec()
        self._handlers: dict[str, list[MessageHandler]] = {}
        #: channel → the handler of its publications (`subscribe`)
        self._channels: dict[str, MessageHandler] = {}
        self._inbox: collections.deque[Message] = collections.deque(maxlen=inbox_size)
        self._waiting: set[Any] = set()
        self._answers: dict[Any, Message] = {}
        self._ids = itertools.count(1)
        self._read_lock = threading.RLock()
        #: from the ``rt.auth`` answer when authenticated in band
        self.session_id: str | None = None
        self.identity_id: str | None = None

    # ------------------------------------------------------------------ verbs

    def on(self, route: str, fn: MessageHandler) -> Callable[[], None]:
        """Call ``fn(message)`` for every message of ``route``; returns a function that removes it.

        Handlers run in whichever call reads the frame (``recv``, ``request``, ``run``), and
        an exception a handler raises comes out of that call.
        """
        self._handlers.setdefault(route, []).append(fn)

        def remove() -> None:
            handlers = self._handlers.get(route, [])
            if fn in handlers:
                handlers.remove(fn)

        return remove

    def subscribe(self, channel: str, fn: MessageHandler | None = None, *, timeout: float | None = None) -> Any:
        """Subscribe to ``channel`` (``rt.subscribe``); the server's answer (SPEC section 13).

        With ``fn``, every publication to the channel goes to ``fn(message)`` instead of
        the route handlers and `recv`.  Raises `RemoteError` (``unauthorized``, ``limit``,
        ``bad_message``) when the server refuses.
        """
        if fn is not None:
            self._channels[channel] = fn
        try:
            return self.request("rt.subscribe", {"channel": channel}, timeout=timeout)
        except BaseException:
            self._channels.pop(channel, None)
            raise

    def unsubscribe(self, channel: str, *, timeout: float | None = None) -> Any:
        """Leave ``channel`` (``rt.unsubscribe``); its handler is dropped at once."""
        self._channels.pop(channel, None)
        return self.request("rt.unsubscribe", {"channel": channel}, timeout=timeout)

    def send(self, route: str, data: Any = None) -> None:
        """Send a message without an id (the server sends no reply, only errors)."""
        self._send(Message(route, data))

    def request(self, route: str, data: Any = None, *, timeout: float | None = None) -> Any:
        """Send a message with an id and return the data of its ``rt.reply``.

        Raises `RemoteError` (with the wire ``code``) for an ``rt.error`` answer,
        `ClientTimeout` when no answer arrives within ``timeout`` (default ``self.timeout``),
        `ClientClosed` when the connection ends first.
        """
        msg_id = f"py-{next(self._ids)}"
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._waiting.add(msg_id)
        try:
            self._send(Message(route, data, id=msg_id))
            self._read_until(lambda: msg_id in self._answers, deadline, f"a reply to {route!r}")
            answer = self._answers.pop(msg_id)
        finally:
            self._waiting.discard(msg_id)
            self._answers.pop(msg_id, None)
        if answer.route == ERROR_ROUTE:
            raise _remote_error(answer)
        return answer.data

    def recv(self, timeout: float | None = None) -> Message:
        """The next message that is neither a reply nor taken by an ``on`` handler.

        ``rt.error`` envelopes answering messages sent without an id arrive here too.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._read_until(lambda: bool(self._inbox), deadline, "a message")
        return self._inbox.popleft()

    def run(self, timeout: float | None = None) -> None:
        """Read and dispatch messages to the ``on`` handlers for ``timeout`` seconds (None: forever).

        Returns when the time is up; raises `ClientClosed` when the connection ends.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._read_until(lambda: False, deadline, "messages")
        except ClientTimeout:
            return

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (waits briefly for the server's close frame); idempotent."""
        self._conn.close(code, reason)

    @property
    def closed(self) -> bool:
        return self._conn.state is State.CLOSED

    @property
    def close_code(self) -> int | None:
        return self._conn.close_code

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _send(self, msg: Message) -> None:
        try:
            self._conn.send(self.codec.encode(msg))
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    def _read_until(self, done: Callable[[], bool], deadline: float | None, what: str) -> None:
        """Read and file frames until ``done()``; `ClientTimeout` once ``deadline`` passes.

        The lock is re-entrant so that an ``on`` handler may itself call ``request``.
        """
        while not done():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ClientTimeout(f"timed out waiting for {what}")
            if not self._read_lock.acquire(timeout=-1 if remaining is None else remaining):
                raise ClientTimeout(f"timed out waiting for {what}")
            try:
                if done():
                    return  # another reader filed it while we waited for the lock
                if deadline is not None:
                    remaining = max(0.0, deadline - time.monotonic())
                try:
                    frame = self._conn.recv(remaining)
                except TimeoutError:
                    raise ClientTimeout(f"timed out waiting for {what}") from None
                except ConnectionClosed as exc:
                    raise _closed(exc) from None
                self._file(self.codec.decode(frame))
            finally:
                self._read_lock.release()

    def _file(self, msg: Message) -> None:
        if msg.route in (REPLY_ROUTE, ERROR_ROUTE):
            msg_id = _reply_id(msg)
            if msg_id in self._waiting:
                self._answers[msg_id] = msg
                return
            if msg.route == REPLY_ROUTE or msg_id not in ("", None):
                return  # late: its request timed out
        channel = (msg.metadata or {}).get("channel")
        if channel is not None and channel in self._channels:
            self._channels[channel](msg)
            return
        handlers = self._handlers.get(msg.route)
        if handlers:
            for fn in list(handlers):
                fn(msg)
        else:
            self._inbox.append(msg)


def _remote_error(msg: Message) -> RemoteError:
    data = msg.data if isinstance(msg.data, dict) else {}
    code = str((msg.metadata or {}).get("code") or "error")
    return RemoteError(code, str(data.get("message") or code), msg.data)


def connect(
    url: str,
    token: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    headers: Mapping[str, str] | None = None,
    origin: str | None = None,
    in_band: bool = False,
    codec: Codec | None = None,
    max_size: int | None = 1 << 24,
    # an ssl.SSLContext; typed loosely because only transport/ imports ssl (docs/architecture.md)
    ssl: Any = None,
) -> Client:
    """Open a connection to ``url`` (``ws://``, ``wss://``; ``http(s)://`` are accepted).

    ``timeout`` bounds the handshake and is the default for ``request`` and ``recv``.
    ``headers`` are extra handshake headers (a ``Cookie`` for a session login);
    ``origin`` sets the ``Origin`` header like a browser page on that origin would.
    ``ssl`` is the `ssl.SSLContext` a ``wss://`` URL is verified with (None: the default
    context, which trusts the system's certificate authorities and checks the host name);
    giving one with a ``ws://`` URL raises `InvalidOption`.
    Raises `ConnectRefused` with the HTTP status when the server refuses the upgrade.
    """
    ws_url = _ws_url(url)
    if ssl is not None and not _secure(ws_url):
        raise InvalidOption("ssl", "a TLS context needs a wss:// or https:// URL")
    extra: dict[str, str] = dict(headers or {})
    if token is not None and not in_band:
        extra["Authorization"] = f"Bearer {token}"
    try:
        conn = ws_connect(
            ws_url,
            ssl=ssl,  # None for wss://: websockets uses ssl.create_default_context()
            additional_headers=extra or None,
            origin=origin,  # type: ignore[arg-type]  # websockets' Origin is a NewType of str
            open_timeout=timeout,
            close_timeout=timeout,
            ping_interval=None,  # the server pings; answering is automatic
            max_size=max_size,
            **_DIRECT,
        )
    except InvalidStatus as exc:
        raise ConnectRefused(exc.response.status_code, bytes(exc.response.body or b"")) from None
    client = Client(conn, timeout=timeout, codec=codec)
    if in_band:
        try:
            answer = client.request(AUTH_ROUTE, token)
        except RealtimeError:
            client.close()
            raise
        if isinstance(answer, dict):
            client.session_id = answer.get("session_id")
            client.identity_id = answer.get("identity_id")
    return client

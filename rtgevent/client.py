"""A blocking Python client of rtgevent, for tests, bots and benchmarks.

::

    from rtgevent.client import Reconnect, connect

    with connect("ws://127.0.0.1:8000/ws", token="secret") as client:
        client.on("chat.message", lambda msg: print(msg.data))
        print(client.request("chat.send", {"text": "hi"}))    # the rt.reply's data
        news = client.recv(timeout=5)                          # the next other message
        client.run(timeout=10)                                 # dispatch to on() handlers

    # a bot that outlives network drops and server restarts, and misses nothing
    client = connect(url, token="secret", reconnect=Reconnect(start=0.5, cap=10))
    client.subscribe("room:42", lambda msg: print(msg.data))
    client.on("rt.recovery_failed", lambda msg: reload(msg.data["channel"]))
    client.run()                                               # forever, across reconnects

The verbs are the browser client's (``rtgevent.js``): ``on``, ``send``, ``request``,
``subscribe``, ``close``, plus ``recv`` and ``run`` because blocking code pulls instead of
being called.

Built on ``websockets``' sync client because ``websockets`` is already a dependency of
the package: an installed rtgevent can run a bot with nothing else.  Under gevent's
monkey-patching its reader thread is a greenlet, so the client also blocks
cooperatively inside a gevent program (the test suite).

Design choices:

* The token goes in an ``Authorization: Bearer`` header (a program can set headers;
  unlike a query string, a header does not end up in access logs).  ``in_band=True``
  sends it as the first message instead (``rt.auth``, for `InBandAuthenticator`).
  ``token`` may be a function returning the token, asked before every connection, so
  that a reconnect presents a fresh one rather than one that expired meanwhile.
* One frame is read at a time under a lock, so one thread may ``request`` while another
  ``recv``\\ s: whoever reads a frame files it where it belongs (an answer for a waiting
  request, a handler call, or the inbox).
* A message whose route has ``on`` handlers goes to them; every other message waits in a
  bounded inbox for ``recv`` (the oldest is dropped when it is full).  Replies never reach
  the inbox; a late reply to a request that timed out is dropped.
* No reconnect by default: a test wants to see the drop.  ``reconnect=True`` (or a
  `Reconnect` policy) opts in, like websocket-client's ``run_forever(reconnect=...)`` and
  python-socketio's ``reconnection=True``.
* TLS: a ``wss://`` (or ``https://``) URL is verified with ``ssl=``, an `ssl.SSLContext`,
  or with the system's default context (``ssl.create_default_context()``) when it is
  None.  To trust a private CA or a self-signed certificate, pass a context that loads
  it (``ssl.create_default_context(cafile=...)``).

Reconnecting (``reconnect=``):

* After a drop -- the connection ended, and not because this client closed it, nor with
  a close code of `Reconnect.stop_codes` (4001: a newer login of the identity replaced
  this session, coming back would replace that one in turn; 1008: authentication
  failed) -- the client connects again after a delay doubling from ``start`` to ``cap``,
  jittered to 50-100 % so that the clients of a restarted server do not all come back
  in the same instant.  A connection that stayed open ``stable_after`` seconds resets the
  delay; ``attempts`` bounds the failures in a row (None: forever).  An upgrade refused
  with a 4xx status (other than 408 and 429) or an in-band token refused ends it at once.
* The reconnect happens in whichever call notices the drop or needs the connection next,
  under the read lock, so there is no background thread: ``recv`` and ``run`` wait
  across it for the next message; ``send`` and ``request`` wait for the connection to
  come back (``request`` within its timeout, ``send`` within the client's), then send.
  A request already sent when the connection dropped raises `ClientClosed`: its reply
  went down with that connection, and only the caller knows whether sending it again is
  safe.  A ``send`` written into a connection that died before the client could know
  (no RST reached it yet) is lost with it: what must arrive goes by ``request``.
  `ClientClosed` from any call once the client gave up (or was closed).
* It authenticates the same way, then subscribes again to every channel subscribed
  through `Client.subscribe`, before anything else is sent.  ``client.reconnects``
  counts the connections made again.

Recovery (SPEC section 14):

* The client keeps, per stream -- each channel, and the identity's personal stream
  (``None``) -- the last offset and epoch it handed to the application, and drops a
  publication already handed over (same epoch, offset not above the kept one) before
  it reaches an ``on`` handler or the inbox.  A reconnect asks for what came after:
  ``since`` on every ``rt.subscribe``, and for the personal stream the query parameter
  ``since=<offset>:<epoch>`` (or the ``rt.auth`` data ``{"token", "since"}`` in band).
  So the application sees every publication once, in order, across drops.
* `Client.positions` is what the client knows; a program that persists it and passes
  it to ``connect(..., positions=...)`` picks up where it left off after a restart.
* When the server could not give everything back (history trimmed or expired, the epoch
  changed), the local event ``rt.recovery_failed`` with data
  ``{"channel": <name, or None for the personal stream>, "offset", "epoch"}`` goes to the
  ``on("rt.recovery_failed", fn)`` handlers, or to the inbox when there is none: the
  application reloads its state then.  A channel without history has nothing to give
  back, and no event says so (``rtgevent.js`` does the same).  A re-subscription the server refused after a
  reconnect gives ``rt.subscribe_failed`` ``{"channel", "code", "message"}`` the same way.
* Every answer to ``rt.subscribe`` (those of a reconnect too) goes to
  ``on("rt.subscribed", fn)`` handlers, and the server's ``rt.personal`` to
  ``on("rt.personal", fn)``; neither reaches the inbox.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import itertools
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from .codec import Codec, JSONCodec
from .errors import InvalidOption, RealtimeError
from .history.base import Position
from .message import (
    AUTH_ROUTE,
    ERROR_ROUTE,
    PERSONAL_ROUTE,
    REPLY_ROUTE,
    SUBSCRIBE_ROUTE,
    UNSUBSCRIBE_ROUTE,
    Message,
)
from .positions import RECOVERY_FAILED, Positions, since_data
from .retry import Backoff

__all__ = [
    "RECOVERY_FAILED",
    "SUBSCRIBED",
    "SUBSCRIBE_FAILED",
    "Client",
    "ClientClosed",
    "ClientTimeout",
    "ConnectRefused",
    "Position",
    "Positions",
    "Reconnect",
    "RemoteError",
    "connect",
]

MessageHandler = Callable[[Message], None]
#: a token, or a function asked for one before every connection
Token = str | Callable[[], "str | None"] | None
DEFAULT_TIMEOUT = 10.0
#: websockets >= 17.1 warns unless a direct (non-context-manager) connect says legacy=True;
#: older versions have no such flag (it would reach socket.create_connection)
_DIRECT: dict[str, Any] = {"legacy": True} if "legacy" in inspect.signature(ws_connect).parameters else {}

#: local event: the server's answer to an ``rt.subscribe``, a reconnect's included
SUBSCRIBED = "rt.subscribed"
#: local event: the server refused a subscription the client renewed after a reconnect
SUBSCRIBE_FAILED = "rt.subscribe_failed"
#: HTTP refusals worth trying again: the request timed out, too many at once
_RETRIABLE_STATUS = frozenset({408, 429})


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


@dataclasses.dataclass(frozen=True)
class Reconnect:
    """When and how often a client connects again after a drop (see the module docstring).

    The delays are `rtgevent.retry.Backoff`'s, the one formula every rtgevent room retries
    with; the defaults are ``rtgevent.js``'s.
    """

    #: seconds before the first attempt (jittered to 50-100 %), doubling after each failure
    start: float = 0.5
    #: the longest delay between two attempts
    cap: float = 10.0
    #: failed attempts in a row before the client gives up; None: never
    attempts: int | None = None
    #: a connection open this long resets the delay (a server that accepts and drops at once is not hammered)
    stable_after: float = 5.0
    #: close codes after which coming back would be wrong: auth failure, replaced by a newer login
    stop_codes: frozenset[int] = frozenset({1008, 4001})

    def __post_init__(self) -> None:
        Backoff(self.start, self.cap)  # the same bounds as every backoff (InvalidOption)
        if self.attempts is not None and self.attempts < 1:
            raise InvalidOption("reconnect", f"attempts must be None or at least 1, got {self.attempts}")
        if self.stable_after < 0:
            raise InvalidOption("reconnect", f"stable_after must be >= 0, got {self.stable_after}")


# ---------------------------------------------------------------------- the connection


def _ws_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        return f"ws{scheme[4:].lower()}://{rest}"
    return url


def _secure(url: str) -> bool:
    return url.partition("://")[0].lower() == "wss"


def _with_since(url: str, position: Position) -> str:
    """``url`` with ``since=<offset>:<epoch>`` (the personal stream's), replacing any given before."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k != "since"]
    query.append(("since", f"{position.offset}:{position.epoch}"))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _closed(exc: ConnectionClosed) -> ClientClosed:
    frame = exc.rcvd or exc.sent
    return ClientClosed(frame.code if frame is not None else None, frame.reason if frame is not None else "")


def _reply_id(msg: Message) -> Any:
    return (msg.metadata or {}).get("in_reply_to")


@dataclasses.dataclass(frozen=True)
class _Dialer:
    """Everything needed to open the same connection again (`connect`'s arguments)."""

    url: str
    token: Token
    headers: Mapping[str, str]
    origin: str | None
    in_band: bool
    timeout: float
    max_size: int | None
    ssl: Any
    ping_interval: float | None

    def current_token(self) -> str | None:
        return self.token() if callable(self.token) else self.token

    def dial(self, personal: Position | None) -> ClientConnection:
        """Open and upgrade a connection, bringing the personal position in the URL (header auth)."""
        url = self.url if personal is None or self.in_band else _with_since(self.url, personal)
        extra: dict[str, str] = dict(self.headers)
        token = None if self.in_band else self.current_token()
        if token is not None:
            extra["Authorization"] = f"Bearer {token}"
        # None: the server pings and answering is automatic; a client's own pings notice a
        # connection that died silently (no FIN, no RST).  Passed untyped: websockets'
        # overloads times these unions are more combinations than mypy tries.
        keepalive: dict[str, Any] = {"ping_interval": self.ping_interval, "ping_timeout": self.ping_interval}
        try:
            return ws_connect(
                url,
                ssl=self.ssl,  # None for wss://: websockets uses ssl.create_default_context()
                additional_headers=extra or None,
                origin=self.origin,  # type: ignore[arg-type]  # websockets' Origin is a NewType of str
                open_timeout=self.timeout,
                close_timeout=self.timeout,
                max_size=self.max_size,
                **keepalive,
                **_DIRECT,
            )
        except InvalidStatus as exc:
            raise ConnectRefused(exc.response.status_code, bytes(exc.response.body or b"")) from None


class Client:
    """One client of one server; see the module docstring.  Safe to use from several threads.

    `connect` makes it; one made from a bare ``connection`` cannot reconnect.
    """

    def __init__(
        self,
        connection: ClientConnection,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        codec: Codec | None = None,
        inbox_size: int = 10000,
        reconnect: Reconnect | None = None,
        positions: Mapping[str | None, Sequence[Any]] | None = None,
        dialer: _Dialer | None = None,
    ) -> None:
        if reconnect is not None and dialer is None:
            raise InvalidOption("reconnect", "only a client made by connect() can connect again")
        self._conn = connection
        #: default seconds for ``request`` and ``recv``
        self.timeout = timeout
        self.codec: Codec = codec or JSONCodec()
        self._handlers: dict[str, list[MessageHandler]] = {}
        #: channels subscribed through `subscribe` → the handler of their publications, if any
        self._subs: dict[str, MessageHandler | None] = {}
        #: ids of ``rt.subscribe`` not answered yet → (channel, asked with a since)
        self._sub_ids: dict[Any, tuple[str, bool]] = {}
        #: channels a `subscribe` call is asking for: a reconnect meanwhile leaves them to it
        self._joining: set[str] = set()
        self._book = Positions(positions)
        self._inbox: collections.deque[Message] = collections.deque(maxlen=inbox_size)
        self._waiting: set[Any] = set()
        self._answers: dict[Any, Message] = {}
        self._ids = itertools.count(1)
        self._read_lock = threading.RLock()
        #: counts the steps readers finished (frames filed, reconnects tried), for the calls watching them
        self._turn = threading.Condition(threading.Lock())
        self._ticks = 0
        #: from the ``rt.auth`` answer when authenticated in band
        self.session_id: str | None = None
        self.identity_id: str | None = None
        #: how many times the client connected again after a drop
        self.reconnects = 0
        self._policy = reconnect
        self._dialer = dialer
        self._backoff = Backoff(reconnect.start, reconnect.cap) if reconnect is not None else None
        #: the connection in use; bumped by each reconnect (a request knows which one it was sent on)
        self._generation = 0
        self._opened_at = time.monotonic()
        #: the drop being recovered from, or None while the connection is up
        self._down: ClientClosed | None = None
        #: with a policy: why the client is closed for good (it closed, gave up, or was told to stop)
        self._final: ClientClosed | None = None
        self._stop = threading.Event()  # close() ends a backoff wait at once
        self._retry_at: float | None = None
        self._failures = 0
        self._recovering = False
        #: whether this connection brought a personal position (rt.personal then says if it recovered)
        self._personal_asked = dialer is not None and not dialer.in_band and self._book.get(None) is not None

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

    def subscribe(
        self,
        channel: str,
        fn: MessageHandler | None = None,
        *,
        since: tuple[int, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Subscribe to ``channel`` (``rt.subscribe``); the server's answer (SPEC sections 13, 14).

        With ``fn``, every publication to the channel goes to ``fn(message)`` instead of
        the route handlers and `recv`.  ``since`` (an ``(offset, epoch)``; default: the
        position kept for the channel, e.g. one given to `connect`) asks for what came
        after it first; the answer says whether it all ``recovered``.  The channel is
        subscribed again after every reconnect.  Raises `RemoteError` (``unauthorized``,
        ``limit``, ``bad_message``) when the server refuses.
        """
        already = channel in self._subs
        previous = self._subs.get(channel)
        self._subs[channel] = fn if fn is not None else previous
        if since is not None and not already:
            self._book.seed(channel, since)
        # a channel subscribed already recovers nothing: the server only says where it stands
        kept = None if already else self._book.get(channel)
        data: dict[str, Any] = {"channel": channel}
        if kept is not None:
            data["since"] = since_data(kept)
        msg_id = self._next_id()
        self._sub_ids[msg_id] = (channel, kept is not None)
        if not already:
            self._joining.add(channel)  # this request asks for it, not a reconnect it may cause
        try:
            return self._call(msg_id, SUBSCRIBE_ROUTE, data, timeout)
        except BaseException:
            self._sub_ids.pop(msg_id, None)
            if already:
                self._subs[channel] = previous
            else:
                self._subs.pop(channel, None)
            raise
        finally:
            if not already:
                self._joining.discard(channel)

    def unsubscribe(self, channel: str, *, timeout: float | None = None) -> Any:
        """Leave ``channel`` (``rt.unsubscribe``); its handler and position are dropped at once."""
        self._subs.pop(channel, None)
        self._book.forget(channel)
        return self.request(UNSUBSCRIBE_ROUTE, {"channel": channel}, timeout=timeout)

    def send(self, route: str, data: Any = None) -> None:
        """Send a message without an id (the server sends no reply, only errors).

        While the client reconnects it waits for the new connection (up to ``self.timeout``).
        """
        self._send(Message(route, data), time.monotonic() + self.timeout)

    def request(self, route: str, data: Any = None, *, timeout: float | None = None) -> Any:
        """Send a message with an id and return the data of its ``rt.reply``.

        Raises `RemoteError` (with the wire ``code``) for an ``rt.error`` answer,
        `ClientTimeout` when no answer arrives within ``timeout`` (default ``self.timeout``),
        `ClientClosed` when the connection ends first.
        """
        return self._call(self._next_id(), route, data, timeout)

    def recv(self, timeout: float | None = None) -> Message:
        """The next message that is neither a reply nor taken by an ``on`` handler.

        ``rt.error`` envelopes answering messages sent without an id arrive here too, and
        the local events nobody handles (``rt.recovery_failed``, ``rt.subscribe_failed``).
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._read_until(lambda: bool(self._inbox), deadline, "a message")
        return self._inbox.popleft()

    def run(self, timeout: float | None = None) -> None:
        """Read and dispatch messages to the ``on`` handlers for ``timeout`` seconds (None: forever).

        Returns when the time is up; raises `ClientClosed` when the connection ends (with
        ``reconnect``: once the client gave up).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._read_until(lambda: False, deadline, "messages")
        except ClientTimeout:
            return

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (waits briefly for the server's close frame); idempotent, and final."""
        if self._policy is not None and self._final is None:
            self._final = ClientClosed(code, reason)
        self._stop.set()
        self._conn.close(code, reason)

    @property
    def closed(self) -> bool:
        """True once the connection is closed (with ``reconnect``: for good, no reconnect to come)."""
        if self._policy is not None:
            return self._final is not None
        return self._conn.state is State.CLOSED

    @property
    def close_code(self) -> int | None:
        return self._conn.close_code

    @property
    def positions(self) -> dict[str | None, Position]:
        """Where each stream stands for this client: channel (None: personal stream) → (offset, epoch).

        A copy, to persist and give back to `connect` (``positions=``) after a restart.
        """
        return self._book.snapshot()

    def position(self, channel: str | None = None) -> Position | None:
        """The last (offset, epoch) of ``channel`` (None: the personal stream), or None."""
        return self._book.get(channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ sending and reading

    def _next_id(self) -> str:
        return f"py-{next(self._ids)}"

    def _call(self, msg_id: str, route: str, data: Any, timeout: float | None) -> Any:
        """Send with ``msg_id`` and wait for its answer (`request`)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._waiting.add(msg_id)
        try:
            generation = self._send(Message(route, data, id=msg_id), deadline)

            def answered() -> bool:
                # a drop of the connection it went out on ends the wait: the reply is lost
                return msg_id in self._answers or self._generation != generation or self._down is not None

            self._read_until(answered, deadline, f"a reply to {route!r}")
            answer = self._answers.pop(msg_id, None)
        finally:
            self._waiting.discard(msg_id)
            self._answers.pop(msg_id, None)
        if answer is None:
            lost = self._down or self._final or ClientClosed(None)
            raise ClientClosed(lost.code, lost.reason or "dropped before the reply arrived")
        if answer.route == ERROR_ROUTE:
            raise _remote_error(answer)
        return answer.data

    def _send(self, msg: Message, deadline: float | None) -> int:
        """Write ``msg``, after the reconnect if one is due; the generation it went out on."""
        frame = self.codec.encode(msg)
        while True:
            if self._down is not None or self._final is not None:
                self._take_turns(
                    lambda: self._down is None or self._final is not None,
                    lambda: self._ensure_open(deadline),
                    deadline,
                    "the connection",
                )
                if self._final is not None:
                    raise self._final
            conn, generation = self._conn, self._generation
            try:
                conn.send(frame)
                return generation
            except ConnectionClosed as exc:
                self._lost(conn, exc)  # raises, unless a reconnect is to come: then send on it

    def _read_until(self, done: Callable[[], bool], deadline: float | None, what: str) -> None:
        """Read and file frames until ``done()``; `ClientTimeout` once ``deadline`` passes."""
        self._take_turns(done, lambda: self._read_one(deadline, what), deadline, what)

    def _take_turns(
        self, done: Callable[[], bool], step: Callable[[], None], deadline: float | None, what: str
    ) -> None:
        """Run ``step`` under the read lock until ``done()``; while another call holds it, watch it work.

        A call that finds the lock taken does not queue for it: a ``run()`` that reads
        forever would take it back each time before the waiter woke (neither threading's
        nor gevent's lock is fair), and the waiter would time out with its answer filed.
        It waits for the holder to finish a step instead (``_ticks``) and looks again.
        The lock is re-entrant so that an ``on`` handler may itself call ``request``.
        """
        while not done():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ClientTimeout(f"timed out waiting for {what}")
            with self._turn:
                seen = self._ticks
            if not self._read_lock.acquire(blocking=False):
                with self._turn:
                    while self._ticks == seen:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            raise ClientTimeout(f"timed out waiting for {what}")
                        self._turn.wait(left)
                continue
            try:
                if done():
                    return  # another reader filed it before we took the lock
                step()
            finally:
                self._read_lock.release()
                with self._turn:
                    self._ticks += 1
                    self._turn.notify_all()

    def _read_one(self, deadline: float | None, what: str) -> None:
        """With the read lock: file one frame, or reconnect first when the connection dropped."""
        if self._down is not None or self._final is not None:
            self._ensure_open(deadline)
            return
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        conn = self._conn
        try:
            frame = conn.recv(remaining)
        except TimeoutError:
            raise ClientTimeout(f"timed out waiting for {what}") from None
        except ConnectionClosed as exc:
            self._lost(conn, exc)  # raises, unless a reconnect is to come
            return
        self._file(self.codec.decode(frame))

    # ------------------------------------------------------------------ filing what arrives

    def _file(self, msg: Message) -> None:
        if msg.route in (REPLY_ROUTE, ERROR_ROUTE):
            msg_id = _reply_id(msg)
            subscription = self._sub_ids.pop(msg_id, None)
            if subscription is not None:
                self._subscribe_answered(*subscription, msg, renewed=msg_id not in self._waiting)
            if msg_id in self._waiting:
                self._answers[msg_id] = msg
                return
            if subscription is not None or msg.route == REPLY_ROUTE or msg_id not in ("", None):
                return  # late: its request timed out
        elif msg.route == PERSONAL_ROUTE:
            asked, self._personal_asked = self._personal_asked, False
            self._emit(msg, inbox=False)
            self._emit(self._book.answered(None, msg.data, asked=asked))
            return
        elif not self._book.admit(msg):
            return  # the application had it already (SPEC section 14)
        channel = (msg.metadata or {}).get("channel")
        handler = self._subs.get(channel) if isinstance(channel, str) else None
        if handler is not None:
            handler(msg)
            return
        self._emit(msg)

    def _subscribe_answered(self, channel: str, asked: bool, msg: Message, *, renewed: bool) -> None:
        """An answer to ``rt.subscribe``: where the channel stands, and what the application must hear."""
        if msg.route == ERROR_ROUTE:
            if renewed:  # nobody waits for this answer: the application hears of it as an event
                self._subs.pop(channel, None)  # the position stays: a later subscribe resumes from it
                error = _remote_error(msg)
                data = {"channel": channel, "code": error.code, "message": str(error)}
                self._emit(Message(SUBSCRIBE_FAILED, data))
            return
        failed = self._book.answered(channel, msg.data, asked=asked)
        self._emit(Message(SUBSCRIBED, msg.data, metadata={"channel": channel}), inbox=False)
        self._emit(failed)

    def _emit(self, msg: Message | None, *, inbox: bool = True) -> None:
        """To the route's ``on`` handlers; else to the inbox (unless ``inbox`` is False)."""
        if msg is None:
            return
        handlers = self._handlers.get(msg.route)
        if handlers:
            for fn in list(handlers):
                fn(msg)
        elif inbox:
            self._inbox.append(msg)

    # ------------------------------------------------------------------ drops and reconnects

    def _lost(self, conn: ClientConnection, exc: ConnectionClosed) -> None:
        """``conn`` ended under a reader or a writer: note the drop, or raise when none will follow."""
        if conn is not self._conn:
            return  # an older connection's late news: a reconnect happened since
        closed = _closed(exc)
        policy = self._policy
        if policy is None:
            raise closed from None
        if self._final is None and (self._stop.is_set() or closed.code in policy.stop_codes):
            self._final = closed
        if self._final is not None:
            raise self._final from None
        if self._down is None:
            self._down = closed
            self._retry_at = None

    def _ensure_open(self, deadline: float | None) -> None:
        """Called with the read lock: make sure a live connection is there, reconnecting if due."""
        if self._final is not None:
            raise self._final
        if self._down is None:
            return
        if self._recovering:
            raise self._down  # a step of the reconnect itself failed: the reconnect decides
        self._recover(deadline)

    def _recover(self, deadline: float | None) -> None:
        """Connect again per the policy, until it works, the client gives up or ``deadline`` passes.

        Past the deadline it raises `ClientTimeout` and keeps its schedule, so that the next
        call that needs the connection carries on where this one stopped.
        """
        assert self._policy is not None and self._backoff is not None
        policy, backoff = self._policy, self._backoff
        if self._retry_at is None:
            if time.monotonic() - self._opened_at >= policy.stable_after:
                backoff.reset()
            self._retry_at = time.monotonic() + backoff.next()
        self._recovering = True
        try:
            while True:
                if self._final is not None:
                    raise self._final
                wait = self._retry_at - time.monotonic()
                if wait > 0:
                    if deadline is not None and time.monotonic() + wait > deadline:
                        self._stop.wait(max(0.0, deadline - time.monotonic()))
                        raise ClientTimeout("timed out waiting for the connection to come back")
                    self._stop.wait(wait)
                    continue  # closed meanwhile, or the time has come
                try:
                    self._reopen()
                except (ConnectRefused, RemoteError) as exc:
                    if isinstance(exc, RemoteError) or not (exc.status >= 500 or exc.status in _RETRIABLE_STATUS):
                        self._final = ClientClosed(1008, f"reconnect refused: {exc}")
                        raise self._final from exc
                    self._failed(exc)
                # a handshake cut short raises ConnectionClosed; one that got no HTTP answer, InvalidHandshake
                except (OSError, TimeoutError, EOFError, InvalidHandshake, ConnectionClosed, ClientClosed) as exc:
                    self._failed(exc)
                else:
                    self._failures = 0
                    self.reconnects += 1
                    return
        finally:
            self._recovering = False

    def _failed(self, exc: BaseException) -> None:
        """One attempt failed: schedule the next, or give up after ``attempts`` in a row."""
        assert self._policy is not None and self._backoff is not None
        if self._final is not None:
            raise self._final from exc  # closed while the attempt ran
        self._failures += 1
        if self._down is None:
            self._down = ClientClosed(None, "reconnect failed")
        attempts = self._policy.attempts
        if attempts is not None and self._failures >= attempts:
            self._final = ClientClosed(self._down.code, f"gave up after {self._failures} failed reconnects: {exc}")
            raise self._final from exc
        self._retry_at = time.monotonic() + self._backoff.next()

    def _reopen(self) -> None:
        """One attempt: a new connection, authenticated, every channel asked for again."""
        assert self._dialer is not None
        personal = self._book.get(None)
        conn = self._dialer.dial(personal)
        if self._final is not None:  # closed while the handshake ran
            conn.close()
            raise self._final
        self._conn = conn
        self._generation += 1
        self._opened_at = time.monotonic()
        self._down = None
        self._sub_ids.clear()  # answers to the old connection's rt.subscribe will never come
        self._personal_asked = not self._dialer.in_band and personal is not None
        try:
            if self._dialer.in_band:
                self._authenticate()
            self._resubscribe(c for c in list(self._subs) if c not in self._joining)
        except BaseException:
            if self._down is None:
                self._down = ClientClosed(None, "reconnect failed")
            conn.close()
            raise

    def _authenticate(self) -> None:
        """``rt.auth`` with the token, and the personal stream's position when there is one."""
        assert self._dialer is not None
        token = self._dialer.current_token()
        personal = self._book.get(None)
        data: Any = token if personal is None else {"token": token, "since": since_data(personal)}
        self._personal_asked = personal is not None
        try:
            answer = self.request(AUTH_ROUTE, data)
        except BaseException:
            self._personal_asked = False
            raise
        if isinstance(answer, dict):
            self.session_id = answer.get("session_id")
            self.identity_id = answer.get("identity_id")

    def _resubscribe(self, channels: Iterable[str]) -> None:
        """``rt.subscribe`` for every channel with what it has seen; the answers are filed as they come."""
        for channel in list(channels):
            kept = self._book.get(channel)
            data: dict[str, Any] = {"channel": channel}
            if kept is not None:
                data["since"] = since_data(kept)
            msg_id = self._next_id()
            self._sub_ids[msg_id] = (channel, kept is not None)
            self._send(Message(SUBSCRIBE_ROUTE, data, id=msg_id), None)


def _remote_error(msg: Message) -> RemoteError:
    data = msg.data if isinstance(msg.data, dict) else {}
    code = str((msg.metadata or {}).get("code") or "error")
    return RemoteError(code, str(data.get("message") or code), msg.data)


def connect(
    url: str,
    token: Token = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    headers: Mapping[str, str] | None = None,
    origin: str | None = None,
    in_band: bool = False,
    codec: Codec | None = None,
    max_size: int | None = 1 << 24,
    # an ssl.SSLContext; typed loosely because only transport/ imports ssl (docs/architecture.md)
    ssl: Any = None,
    reconnect: bool | Reconnect = False,
    positions: Mapping[str | None, Sequence[Any]] | None = None,
    ping_interval: float | None = None,
) -> Client:
    """Open a connection to ``url`` (``ws://``, ``wss://``; ``http(s)://`` are accepted).

    ``timeout`` bounds the handshake and is the default for ``request`` and ``recv``.
    ``token`` is a string, or a function asked for one before every connection.
    ``headers`` are extra handshake headers (a ``Cookie`` for a session login);
    ``origin`` sets the ``Origin`` header like a browser page on that origin would.
    ``ssl`` is the `ssl.SSLContext` a ``wss://`` URL is verified with (None: the default
    context, which trusts the system's certificate authorities and checks the host name);
    giving one with a ``ws://`` URL raises `InvalidOption`.
    ``reconnect``: True (the default `Reconnect`) or a `Reconnect` policy connects again
    after a drop; ``positions`` (a `Client.positions` kept from an earlier run) are where
    the streams resume; ``ping_interval`` makes the client ping too, so that a connection
    that died silently is noticed within twice that many seconds.
    Raises `ConnectRefused` with the HTTP status when the server refuses the upgrade.
    """
    ws_url = _ws_url(url)
    if ssl is not None and not _secure(ws_url):
        raise InvalidOption("ssl", "a TLS context needs a wss:// or https:// URL")
    policy = Reconnect() if reconnect is True else reconnect or None
    dialer = _Dialer(ws_url, token, dict(headers or {}), origin, in_band, timeout, max_size, ssl, ping_interval)
    book = Positions(positions)  # checked before a connection is made
    conn = dialer.dial(book.get(None))
    client = Client(conn, timeout=timeout, codec=codec, reconnect=policy, positions=positions, dialer=dialer)
    if in_band:
        try:
            client._authenticate()
        except RealtimeError:
            client.close()
            raise
    return client

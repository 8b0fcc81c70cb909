"""The frame engine: one WebSocket on one socket, under gevent.

Theory of operation
-------------------
Every byte in and out goes through `websockets`' sans-I/O `Protocol` (framing, masking
checks, control frames, close handshake, size limit at the frame header).  This module
only moves bytes between it and the socket, with three kinds of work:

* **reader** — the WSGI request greenlet itself (a session costs no extra greenlet while
  idle).  It feeds received bytes to the protocol, has `Assembler` join fragments and
  hands each message to ``on_message`` in order.  It ends the session when the stream ends.
* **writer** — whoever drains the outbox.  At most one greenlet is the writer at a time
  (``_writing``), so frames never interleave: control frames the protocol produced
  (pongs, close echoes), a due ping, then queued data frames.  A data frame for an idle
  connection (nothing queued, nobody writing) is written at once by the greenlet that
  sends it, with one non-blocking ``send``: a broadcast to a thousand sessions costs a
  thousand system calls and no greenlet.  Frames that follow it before the hub turns (the
  next broadcasts of a burst) are *corked*: kept in order and written together with one
  ``send`` when the hub turns (`_Turns`: libev's count of loop iterations tells a pass from
  the next, and a ``check`` watcher runs after the next poll), or as soon as they add up to
  `CORK_BYTES` or have waited the connection's ``write_delay`` (``Config.write_delay``,
  5 ms by default; 0 corks nothing); a lone frame still leaves at once, and corked frames come before
  anything a writer writes (it takes them first).  Only what the kernel does not take, and
  sends to a connection that is already busy, go through the outbox; the reader drains it
  inline (replies need no extra greenlet), a send from anywhere else spawns a short-lived
  writer greenlet that exits when the outbox is empty.  (A new greenlet is not free: on
  CPython 3.11+ its first call maps a fresh 16 KiB frame stack, unmapped when it ends.)
* **heartbeat** — a deadline in the hub's wheel (`Heartbeats`: one timer for every
  connection), no greenlet: on an idle connection it writes the ping itself (one
  non-blocking ``send``), else it asks the writer for one; when no pong came within
  ``pong_timeout``, it closes with 1011.

Lifecycle, as a table (state → event → next state)::

    OPEN     close requested (any side)      → CLOSING   close frame queued, writer kicked
    OPEN     stream failed / ended           → CLOSED
    CLOSING  close frame echoed / EOF        → CLOSED
    CLOSING  no echo within close timeout    → CLOSED    (socket shut down)

The first close request wins: it decides the ``initiator`` of the `DisconnectInfo`.
`run` returns only after every greenlet and timer of the connection is gone ("release"):
returning earlier lets the server close the socket under a live watcher.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
import weakref
import zlib
from collections.abc import Callable
from time import monotonic
from typing import Any

import gevent
from gevent import Greenlet, Timeout, getcurrent
from gevent.event import Event
from websockets.exceptions import InvalidState, PayloadTooBig, ProtocolError
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import CLOSED, OPEN, SEND_EOF

from ..config import Backpressure
from ..errors import BackpressureError, SessionClosed
from ..lifecycle import Closing, Ending
from ..outbox import Outbox, Verdict
from ..stats import Stats
from ..types import Initiator
from .assembler import Assembler
from .frames import DeflateFrames, OutItem, deflater, encode_frame
from .heartbeat import heartbeats_of
from .protocol import ServerProtocol

__all__ = ["Connection"]

log = logging.getLogger("rtgevent.transport")

_RECV_SIZE = 1 << 16
#: How long to wait for the client's close frame after ours before dropping TCP.
CLOSE_TIMEOUT = 5.0
#: The reader writes at most this many frames inline before handing off to a writer greenlet,
#: so that a steady broadcast stream cannot keep it from reading (and from seeing pongs).
_INLINE_BUDGET = 32
_YIELD_EVERY = 64
#: corked frames are written at once when they add up to this many bytes (see the module docstring)
CORK_BYTES = 32 * 1024
#: (... or when the hub has not turned ``write_delay`` after the first of them: gevent runs
#: callbacks in batches of 50 before it looks at the clock, so a pass of back-to-back broadcasts
#: that yield with ``sleep(0)`` can last 50 broadcasts.)


_FAILING = frozenset({Initiator.HEARTBEAT, Initiator.BACKPRESSURE, Initiator.ERROR})
#: closes of a client that stopped answering pings: nothing is waited for, the close frame
#: goes out only if the kernel takes it at once.  (A client closed for backpressure stopped
#: reading, which it may do for a while: it gets ``write_timeout`` to read its close frame.)
_UNRESPONSIVE = frozenset({Initiator.HEARTBEAT})


class _WriteTimeout(Exception):
    pass


class _QuietLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets logs every closed connection at INFO; we report closes ourselves."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.WARNING and self.logger.isEnabledFor(level)


_protocol_logger = _QuietLogger(logging.getLogger("rtgevent.protocol"), {})


def _nothing() -> None:
    pass


class _Turns:
    """One per hub: writes out the corked connections when the hub turns.

    A pass of the hub is everything between two polls: gevent's callbacks (run in batches of
    up to one switch interval) and the greenlets they and the last poll's I/O wake.  libev
    counts its iterations (``loop.iteration``, read for free), so a direct send only notes
    the count; nothing is started for a lone frame.  Once a frame is corked, a ``check``
    watcher (run after the next poll) writes out every corked connection, and an ``idle``
    watcher keeps that poll from blocking.
    """

    __slots__ = ("_check", "_corked", "_delay", "_idle", "_loop", "deadline")

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self._check = loop.check()
        self._idle = loop.idle()
        self._corked: list[Connection] = []
        #: when the corked frames must leave even if the hub has not turned (``write_delay``)
        self.deadline = math.inf
        self._delay = 0.0

    @property
    def turn(self) -> int:
        """Which pass of the hub this is."""
        turn: int = self._loop.iteration
        return turn

    def cork(self, connection: Connection) -> None:
        """``connection`` holds corked frames: write them out at the next turn."""
        if not self._corked:
            self._idle.start(_nothing)
            self._check.start(self._turned)
            self._delay = connection._write_delay
            self.deadline = monotonic() + self._delay
        self._corked.append(connection)

    def flush(self) -> None:
        """The hub is slow to turn: write out every corked connection now (they stay corked)."""
        for connection in self._corked:
            connection.flush_cork()
        self.deadline = monotonic() + self._delay

    def _turned(self) -> None:
        # Runs in the hub: only non-blocking sends.
        self.deadline = math.inf
        corked, self._corked = self._corked, []
        for connection in corked:
            try:
                connection.uncork()
            except Exception as exc:  # a bug here must not leave the other sessions corked
                log.exception("writing corked frames failed")
                connection._abort(exc)
        self._idle.stop()
        self._check.stop()


_turns: weakref.WeakKeyDictionary[Any, _Turns] = weakref.WeakKeyDictionary()


def _turns_of(hub: Any) -> _Turns | None:
    """The hub's `_Turns`; None on a loop that does not count its iterations (no corking)."""
    if not hasattr(hub.loop, "iteration"):
        return None
    turns = _turns.get(hub)
    if turns is None:
        turns = _turns[hub] = _Turns(hub.loop)
    return turns


def _shared_deflate(extensions: list[Extension]) -> DeflateFrames | None:
    """The shared compressor of a connection whose only extension is permessage-deflate
    without server context takeover; None when its protocol must frame data itself."""
    if len(extensions) != 1:
        return None
    ext = extensions[0]
    if not isinstance(ext, PerMessageDeflate) or not ext.local_no_context_takeover:
        return None
    settings = dict(ext.compress_settings)
    memory_level = settings.pop("memLevel", zlib.DEF_MEM_LEVEL)
    if settings:  # a compression level or strategy of its own: leave it to the protocol
        return None
    return deflater(ext.local_max_window_bits, memory_level)


class Connection:
    """One WebSocket connection; see the module docstring for who does what."""

    __slots__ = (
        "_assembler",
        "_busy",
        "_close_timer",
        "_closing",
        "_cork",
        "_cork_bytes",
        "_deflate",
        "_done",
        "_fast_send",
        "_heartbeat_interval",
        "_heartbeats",
        "_loop",
        "_on_message",
        "_outbox",
        "_partial",
        "_ping_due",
        "_ping_seq",
        "_pong_overdue",
        "_pong_timeout",
        "_protocol",
        "_reader",
        "_room",
        "_sent_in",
        "_sock",
        "_turns",
        "_waiting_pong",
        "_write_delay",
        "_write_timeout",
        "_writer",
        "_writing",
        "extensions",
        "failure",
        "heartbeat_slot",
        "stats",
    )

    def __init__(
        self,
        sock: socket.socket,
        *,
        read_limit: int,
        write_timeout: float | None,
        heartbeat_interval: float | None,
        pong_timeout: float | None,
        send_queue_size: int,
        backpressure: Backpressure,
        extensions: list[Extension],
        stats: Stats,
        write_delay: float = 0.0,
    ) -> None:
        self._sock = sock
        # Frames go out as soon as they are written: with Nagle's algorithm a small frame sent
        # while an earlier one is unacknowledged waits for the client's delayed ACK (~40 ms).
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a Unix socket)
        # gevent's TLS socket ignores a per-call timeout of 0 and would wait: plain sockets only
        self._fast_send = not isinstance(sock, ssl.SSLSocket)
        protocol = ServerProtocol(max_size=read_limit, logger=_protocol_logger)
        protocol.extensions = list(extensions)
        self._protocol = protocol
        self.extensions = bool(extensions)
        #: messages compressed each on its own: framed here, shared by a broadcast's sessions
        self._deflate = _shared_deflate(extensions)
        self._write_timeout = write_timeout
        self._heartbeat_interval = heartbeat_interval
        self._pong_timeout = pong_timeout
        self._outbox: Outbox[OutItem] = Outbox(send_queue_size, backpressure)
        #: the rest of a frame the kernel took only part of: written before anything else
        self._partial: memoryview | None = None
        #: frames sent after a direct send in the same pass, waiting for the turn (None: not corked)
        #: how long corked frames may wait for the hub to turn (0: frames are never corked)
        self._write_delay = write_delay
        self._cork: list[bytes] | None = None
        self._cork_bytes = 0
        #: the turn of the last direct send: a frame sent before the hub turns again is corked
        self._sent_in = -1
        self._writing = False
        self._writer: Greenlet | None = None
        self._reader: Any = None
        self._room: Event | None = None
        self._closing: Closing | None = None
        self._close_timer: Any = None
        #: the heartbeat's deadline: its slot in the hub's wheel (`Heartbeats`), None when none
        self.heartbeat_slot: int | None = None
        self._ping_due = False
        self._ping_seq = 0
        self._waiting_pong = False
        #: the pong deadline passed while the reader was in application code (see heartbeat_due)
        self._pong_overdue = False
        #: the reader is running application code (a hook or a handler), not reading
        self._busy = False
        self._assembler = Assembler(read_limit)
        self._done = False
        hub = gevent.get_hub()
        self._loop = hub.loop
        self._turns = _turns_of(hub) if write_delay else None
        self._heartbeats = heartbeats_of(hub)
        self._on_message: Callable[[str | bytes], None] | None = None
        #: the exception that ended the connection abnormally, if any
        self.failure: BaseException | None = None
        self.stats = stats

    # ------------------------------------------------------------------ sending

    @property
    def closing(self) -> Closing | None:
        return self._closing

    @property
    def reader(self) -> Any:
        """The greenlet serving this connection (None before `run`)."""
        return self._reader

    def frame(self, payload: str | bytes) -> OutItem:
        """Prepare ``payload`` for this connection's outbox."""
        if not self.extensions:
            return encode_frame(payload)
        if self._deflate is not None:
            return self._deflate.frame(payload)
        if isinstance(payload, str):
            return (True, payload.encode())
        return (False, payload)

    def enqueue(self, item: OutItem) -> None:
        """Queue a data frame, applying the backpressure policy (SPEC section 5).

        From the connection's own reader (a handler answering), a full queue makes the
        reader wait for room instead: the client is slowed, not dropped.
        """
        if self._closing is not None or self._done:
            raise SessionClosed("session is closing")
        outbox = self._outbox
        if (
            not self._writing
            and self._writer is None
            and self._fast_send
            and isinstance(item, bytes)
            and self._partial is None
            and not len(outbox)
            and not self._ping_due
            and not self._protocol.writes
            and self._protocol.state is OPEN
        ):
            turns = self._turns
            if turns is None:
                self._send_now(item)  # no coalescing (Config.write_delay 0): every frame at once
                return
            cork = self._cork
            if cork is not None:
                cork.append(item)
                self._cork_bytes += len(item)
                if self._cork_bytes >= CORK_BYTES:
                    self.flush_cork()
                elif monotonic() >= turns.deadline:
                    turns.flush()
                return
            if self._sent_in == turns.turn:
                # a frame already left in this pass: this one waits for the turn, with its followers
                self._cork = [item]
                self._cork_bytes = len(item)
                turns.cork(self)
                if monotonic() >= turns.deadline:
                    turns.flush()
                return
            self._send_now(item)
            self._sent_in = turns.turn
            return
        if getcurrent() is self._reader and outbox.full():
            self._wait_for_room()
            if self._closing is not None or self._done:
                raise SessionClosed("session is closing")
            outbox.force(item)
            self._kick()
            return
        verdict = outbox.push(item)
        if verdict is Verdict.QUEUED:
            self._kick()
            return
        if verdict is Verdict.DROPPED_OLDEST:
            self.stats.queue_drops += 1
            self._kick()
            return
        if verdict is Verdict.DROPPED_NEWEST:
            self.stats.queue_drops += 1
            raise BackpressureError("send queue full, message dropped")
        # CLOSE: nothing was dropped by policy; the session ends (counted as a close, not a drop)
        self.stats.backpressure_closes += 1
        self.close(Closing(Initiator.BACKPRESSURE, 1008, "send queue full", flush=False))
        raise SessionClosed("send queue full: session closed")

    def _send_now(self, frame: bytes) -> None:
        """Write ``frame`` from the calling greenlet: one non-blocking send, never a switch.

        What the kernel does not take waits in ``_partial`` for a writer greenlet.
        """
        try:
            sent = self._send_nowait(frame)
        except OSError as exc:
            self._abort(exc)
            return
        self.stats.messages_out += 1
        if sent < len(frame):
            self._partial = memoryview(frame)[sent:]
            self._spawn_writer()

    def flush_cork(self) -> None:
        """Write the corked frames with one non-blocking send; the rest goes to a writer.

        The connection stays corked until the turn, unless the kernel did not take it all:
        then later frames queue in the outbox behind ``_partial``.
        """
        cork = self._cork
        if not cork or self._writing or self._done:
            return
        self._cork = []
        self._cork_bytes = 0
        data = cork[0] if len(cork) == 1 else b"".join(cork)
        try:
            sent = self._send_nowait(data)
        except OSError as exc:
            self._abort(exc)
            return
        self.stats.messages_out += len(cork)
        if sent < len(data):
            self._cork = None
            self._partial = memoryview(data)[sent:]
            self._spawn_writer()

    def uncork(self) -> None:
        """The hub turned (`_Turns`): the corked frames leave, the next frame goes out at once."""
        if self._cork is None or self._done:
            return
        if self._writing:
            self._take_cork()  # not expected (a writer takes the cork as it starts), but in order
            return
        self.flush_cork()
        self._cork = None

    def _take_cork(self) -> None:
        """A writer starts: the corked frames come before anything it has, so they go first."""
        cork = self._cork
        if cork is None:
            return
        self._cork = None
        if not cork:
            return
        self._cork_bytes = 0
        self.stats.messages_out += len(cork)
        data = cork[0] if len(cork) == 1 else b"".join(cork)
        partial = self._partial
        # a connection is corked only while nothing is partly written; were it otherwise, keep both
        self._partial = memoryview(data if partial is None else bytes(partial) + data)

    def _send_nowait(self, chunk: bytes | memoryview) -> int:
        """One non-blocking send; how many bytes the kernel took (plain sockets only)."""
        try:
            sent: int = self._sock.send(chunk, 0, 0.0)  # type: ignore[call-arg]  # gevent: a per-call timeout
        except BlockingIOError:
            return 0
        return sent

    def _wait_for_room(self) -> None:
        self._kick()
        while self._outbox.full() and self._closing is None and not self._done:
            if self._room is None:
                self._room = Event()
            self._room.clear()
            self._room.wait(1.0)

    def close(self, closing: Closing) -> bool:
        """Start the closing handshake; the first request wins.  Never blocks.

        Returns False when the connection was already closing or closed.
        """
        if self._closing is not None or self._done or self._protocol.close_rcvd is not None:
            return False
        self._closing = closing
        if closing.initiator is Initiator.BACKPRESSURE and self._write_timeout is not None:
            # what is queued in the kernel, the rest of a frame and the close frame reach a
            # client that reads again within write_timeout; TCP is cut only after that
            self._start_close_timer(self._write_timeout)
        else:
            self._start_close_timer()
        if not closing.flush:
            self._outbox.clear()
        self._stop_heartbeat()
        if self._room is not None:
            self._room.set()
        if self._writing and self._unresponsive():
            # A write is blocked on this client (writers switch away only inside a send), and
            # it stopped reading: end the stream now rather than at write_timeout.
            self._abort(None)
            return True
        self._kick()
        return True

    def _kick(self) -> None:
        """Make sure a writer will run; inline in the reader, else in a new greenlet."""
        if self._writing or self._done:
            return
        if getcurrent() is self._reader:
            if self._drain(_INLINE_BUDGET):
                self._spawn_writer()
        elif self._writer is None:
            self._spawn_writer()

    def _spawn_writer(self) -> None:
        if self._writer is None and not self._done:
            self._writer = gevent.spawn(self._writer_main)

    def _writer_main(self) -> None:
        try:
            self._drain(None)
        finally:
            self._writer = None

    def _drain(self, budget: int | None) -> bool:
        """Write until nothing is left (or ``budget`` frames); True if work remains."""
        if self._writing:
            return False
        self._writing = True
        self._take_cork()
        protocol = self._protocol
        outbox = self._outbox
        written = 0
        try:
            while True:
                partial = self._partial
                if partial is not None:
                    self._partial = None
                    self._write(partial)
                if self._ping_due and protocol.state is OPEN:
                    self._ping_due = False
                    self._ping_seq += 1
                    protocol.send_ping(self._ping_seq.to_bytes(4, "big"))
                closing = self._closing
                if closing is not None and protocol.state is OPEN and not len(outbox):
                    self._send_close(closing)
                chunks = protocol.data_to_send()
                if not chunks:
                    if protocol.state is not OPEN:
                        outbox.clear()
                        return False
                    item = outbox.pop()
                    if item is None:
                        return False
                    if self._room is not None:
                        self._room.set()
                    if isinstance(item, bytes):
                        chunks = [item]
                    else:
                        is_text, payload = item
                        if is_text:
                            protocol.send_text(payload)
                        else:
                            protocol.send_binary(payload)
                        chunks = protocol.data_to_send()
                    self.stats.messages_out += 1
                for chunk in chunks:
                    self._write(chunk)
                written += 1
                if budget is not None and written >= budget:
                    return bool(len(outbox)) or bool(protocol.writes)
                if written % _YIELD_EVERY == 0:
                    self._writing = False
                    gevent.sleep(0)  # let other sessions' work run between long bursts
                    if self._writing or self._done:
                        return False
                    self._writing = True
        except (OSError, _WriteTimeout, InvalidState) as exc:
            self._abort(exc)
            return False
        finally:
            self._writing = False

    def _send_close(self, closing: Closing) -> None:
        # A peer that stopped answering pings, stopped reading or never authenticated will
        # not echo our close frame: fail the connection (close frame, then TCP at once,
        # RFC 6455 section 7.1.7) instead of waiting CLOSE_TIMEOUT for an echo.
        send = self._protocol.fail if closing.initiator in _FAILING else self._protocol.send_close
        try:
            send(closing.code, closing.reason)
        except ProtocolError:
            send(CloseCode.INTERNAL_ERROR, "")

    def _start_close_timer(self, seconds: float = CLOSE_TIMEOUT, *, restart: bool = False) -> None:
        """Whatever happens next, the socket is shut ``seconds`` from now."""
        if self._done or (self._close_timer is not None and not restart):
            return
        timer = self._loop.timer(seconds)
        timer.start(self._close_timed_out)
        old, self._close_timer = self._close_timer, timer
        if old is not None:
            old.stop()

    def _write(self, chunk: bytes | memoryview) -> None:
        if chunk is SEND_EOF or not chunk:
            # The protocol is done sending: a server closes TCP first (RFC 6455 section 7.1.1),
            # and does not wait for a client that stopped reading or answering to close its side.
            try:
                self._sock.shutdown(socket.SHUT_RDWR if self._unresponsive() else socket.SHUT_WR)
            except OSError:
                pass
            # our side is written out: the client gets CLOSE_TIMEOUT from now to end its side
            self._start_close_timer(restart=True)
            return
        sock = self._sock
        if self._fast_send:
            # Most writes fit in the kernel's buffer: one non-blocking send, no timer.
            # Only a partial write pays for the timeout and gevent's waiting sendall.
            sent = self._send_nowait(chunk)
            if sent == len(chunk):
                return
            if self._unresponsive():
                self._abort(None)  # it does not read: waiting to write the rest only delays the end
                return
            chunk = memoryview(chunk)[sent:]
        if self._write_timeout is None:
            sock.sendall(chunk)
            return
        with Timeout(self._write_timeout, _WriteTimeout):
            sock.sendall(chunk)

    def _unresponsive(self) -> bool:
        """Closing because the client stopped reading (backpressure) or answering pings."""
        closing = self._closing
        return closing is not None and closing.initiator in _UNRESPONSIVE

    def _abort(self, exc: BaseException | None) -> None:
        """The stream is unusable: stop both directions now, waking the reader."""
        if self.failure is None and exc is not None:
            self.failure = exc
        if self._closing is None:
            reason = "write timeout" if isinstance(exc, _WriteTimeout) else "connection failed"
            self._closing = Closing(Initiator.ERROR, 1006, reason, flush=False, error=exc, abort=True)
        self._outbox.clear()
        self._partial = None
        self._cork = None
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _close_timed_out(self) -> None:
        # Runs in the hub: only non-blocking work.
        self._abort(None)

    # ------------------------------------------------------------------ heartbeat

    def _start_heartbeat(self) -> None:
        if self._heartbeat_interval is not None:
            self._arm(self._heartbeat_interval)

    def _arm(self, seconds: float) -> None:
        self._heartbeats.schedule(self, seconds)

    def _stop_heartbeat(self) -> None:
        self._heartbeats.cancel(self)

    def heartbeat_failed(self, exc: BaseException) -> None:
        """`Heartbeats`: `heartbeat_due` raised (a bug): end this connection, not the others."""
        self._abort(exc)

    def heartbeat_due(self) -> None:
        """`Heartbeats`: the ping is due, or the pong is late.  Runs in the hub: never blocks."""
        if self._closing is not None or self._done:
            return
        if self._waiting_pong:
            if self._busy:
                # The reader is in application code and cannot have read the pong: a slow
                # handler is no sign of a dead client.  Judge once it reads again.
                self._pong_overdue = True
                return
            self.close(Closing(Initiator.HEARTBEAT, 1011, "ping timeout", flush=False))
            return
        if not self._ping_now():
            self._ping_due = True
            self._kick()
        if self._pong_timeout is not None:
            self._waiting_pong = True
            self._arm(self._pong_timeout)
        else:
            assert self._heartbeat_interval is not None
            self._arm(self._heartbeat_interval)

    def _ping_now(self) -> bool:
        """An idle connection's ping, written by its timer: one non-blocking send, no greenlet.

        At a heartbeat of 30 s, 50,000 connections ping 1,700 times a second: a writer
        greenlet per ping (its creation, the collections it sets off, its stack's unmapping)
        cost more than the ping itself.  False when anything else is being written or
        waits: then the writer sends the ping after it, as before.
        """
        protocol = self._protocol
        if (
            self._writing
            or self._writer is not None
            or not self._fast_send
            or self._partial is not None
            or self._cork
            or len(self._outbox)
            or protocol.writes
            or protocol.state is not OPEN
        ):
            return False
        self._ping_seq += 1
        # the frame itself (FIN + ping, 4 bytes of payload, unmasked): websockets' send_ping
        # keeps no state for a ping, and its framing cost a third of the timer's work
        data = b"\x89\x04" + self._ping_seq.to_bytes(4, "big")
        try:
            sent = self._send_nowait(data)
        except OSError as exc:
            self._abort(exc)
            return True
        if sent < len(data):
            self._partial = memoryview(data)[sent:]
            self._spawn_writer()
        return True

    def _got_pong(self) -> None:
        if self._waiting_pong:
            self._waiting_pong = False
            assert self._heartbeat_interval is not None
            self._arm(self._heartbeat_interval)

    # ------------------------------------------------------------------ reading

    def run(self, pending: bytes, on_message: Callable[[str | bytes], None], on_open: Callable[[], None]) -> None:
        """Serve the connection in the calling greenlet until it ends, then release it.

        ``on_open`` runs first (in this greenlet) and may close the connection;
        ``on_message`` gets each complete message, in order.
        """
        self._reader = getcurrent()
        self._on_message = on_message
        protocol = self._protocol
        sock = self._sock
        try:
            self._start_heartbeat()
            self._run_app(on_open)
            if pending:
                self._feed(pending)
            # After a short read the socket is most likely empty: wait until it is readable
            # before the next recv, rather than let recv fail with EAGAIN first (a system call
            # and an exception for every pong).  gevent's own wait on the socket's own read
            # watcher, so that closing the socket still wakes this greenlet; TLS sockets may
            # hold decrypted bytes the file descriptor does not show, so they read first.
            wait = getattr(sock, "_wait", None) if self._fast_send else None
            drained = False
            while protocol.state is not CLOSED:
                try:
                    if drained and wait is not None:
                        event = getattr(sock, "_read_event", None)  # None once closed: recv says so
                        if event is not None:
                            wait(event)
                    data = sock.recv(_RECV_SIZE)
                except OSError as exc:
                    if self.failure is None and self._closing is None:
                        self.failure = exc
                    break
                drained = len(data) < _RECV_SIZE
                self._feed(data)
                if not data:
                    break  # EOF: nothing more will come, whatever the protocol thinks
        finally:
            self._release()

    def _feed(self, data: bytes) -> None:
        protocol = self._protocol
        if data and protocol.lone_pong(data):
            self._got_pong()  # the heartbeat's answer, and nothing else in this read
            return
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        self._handle_events(protocol.events_received())  # type: ignore[arg-type]  # frames only, server side
        if data and protocol.reader.buffer and self._closing is None:
            self._check_arriving()
        if protocol.held is not None:
            # a bad frame came after these events: their replies are queued, now fail (after them)
            code, reason = protocol.held
            if not self.close(Closing(Initiator.ERROR, code, reason, flush=True, error=protocol.parser_exc)):
                protocol.fail_held()
        if protocol.writes or len(self._outbox):
            self._kick()
        elif self._cork:
            # the reader answered a burst and reads again: its replies need not wait for the turn
            self.flush_cork()

    def _handle_events(self, events: list[Frame]) -> None:
        for frame in events:
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
                self._assemble(frame)
            elif opcode is Opcode.PONG:
                self._got_pong()
            if self._protocol.state is not OPEN and opcode is not Opcode.CLOSE:
                break

    def _assemble(self, frame: Frame) -> None:
        try:
            message = self._assembler.feed(frame)
        except UnicodeDecodeError as exc:
            # RFC 6455 section 8.1: invalid UTF-8 in a text message fails the connection.
            self._fail(exc, CloseCode.INVALID_DATA, "invalid UTF-8")
            return
        except PayloadTooBig as exc:
            self._fail(exc, CloseCode.MESSAGE_TOO_BIG, "message too big")
            return
        if message is None or self._closing is not None or self._on_message is None:
            return  # a fragment, or closing: the client's late messages are not dispatched
        self.stats.messages_in += 1
        self._run_app(self._on_message, message)

    def _run_app(self, call: Callable[..., None], *args: Any) -> None:
        """Run a hook or handler in the reader, keeping the heartbeat fair to the client."""
        self._busy = True
        try:
            call(*args)
        finally:
            self._busy = False
            if self._pong_overdue:
                # a pong may be waiting in the socket: the client gets pong_timeout from now
                self._pong_overdue = False
                if self._waiting_pong and self._pong_timeout is not None and self._closing is None:
                    self._arm(self._pong_timeout)

    def _check_arriving(self) -> None:
        """A read ended inside a frame: check the UTF-8 of the part that is here."""
        arriving = self._protocol.arriving_payload()
        if arriving is None:
            return
        try:
            self._assembler.check_arriving(*arriving)
        except UnicodeDecodeError as exc:
            self._fail(exc, CloseCode.INVALID_DATA, "invalid UTF-8")

    def _fail(self, exc: BaseException, code: CloseCode, reason: str) -> None:
        """Fail the connection for a bad message: nothing more is read, replies already queued go first."""
        self.failure = exc
        self._protocol.stop_parsing()
        if not self.close(Closing(Initiator.ERROR, code, reason, flush=True, error=exc)):
            self._protocol.fail(code, reason)
            self._kick()

    def _release(self) -> None:
        self._done = True
        self._stop_heartbeat()
        timer, self._close_timer = self._close_timer, None
        if timer is not None:
            timer.stop()
        if self._room is not None:
            self._room.set()
        writer = self._writer
        if writer is not None and writer is not getcurrent():
            writer.kill(block=True, timeout=CLOSE_TIMEOUT)
        self._writer = None
        self._outbox.clear()
        self._cork = None
        self._on_message = None

    # ------------------------------------------------------------------ results

    def ending(self) -> Ending:
        """What this connection saw as it ended; `rtgevent.lifecycle.disconnect_info` judges it."""
        protocol = self._protocol
        parser_exc = protocol.parser_exc
        failure = self.failure
        protocol_error: BaseException | None = None
        # Invalid UTF-8 fails the connection whether it was in a message (our check) or in a
        # close reason (the protocol's), RFC 6455 section 8.1; so does an oversize message.
        if isinstance(parser_exc, (ProtocolError, PayloadTooBig, UnicodeDecodeError)):
            protocol_error = parser_exc
        elif isinstance(failure, (UnicodeDecodeError, PayloadTooBig)):
            protocol_error = failure
        sent, rcvd = protocol.close_sent, protocol.close_rcvd
        return Ending(
            closing=self._closing,
            received=(rcvd.code, rcvd.reason) if rcvd is not None else None,
            sent=(sent.code, sent.reason) if sent is not None else None,
            protocol_error=protocol_error,
            failure=failure,
        )

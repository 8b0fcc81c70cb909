"""The load generator: gevent, raw sockets, a minimal hand-written RFC 6455 client.

Run as its own process (the driver pins it to another CPU than the server)::

    python -m bench.loadgen KIND --port P idle --conns N
    python -m bench.loadgen KIND --port P echo --clients 50 --size 100 --messages 20000

``KIND`` is a server kind of `bench.servers` and decides the wire protocol: a plain
WebSocket to ``/ws`` for rtgevent (raw frames for ``rtgevent-bare``, JSON envelopes with an
``id`` for ``rtgevent-full``), Engine.IO v4 + Socket.IO v5 over the websocket transport for
``socketio`` (``0{...}`` open packet, ``40`` / ``40{...}`` connect, events with an ack id), and
raw frames to ``/ws`` for ``reference`` and ``node``, which echo data frames as they come.

It talks to the driver with one JSON object per stdout line and one word per stdin line, so
the driver can read the server's /proc figures exactly between phases:

    -> {"event": "ready"}        <- go
    -> {"event": "connected"|"done", ...figures...}
    <- close
    -> {"event": "closed", ...}

Everything is bounded: connects and handshakes by a socket timeout, the echo phase by a
message count and a time limit, the whole process by ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import string
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any

import gevent
import gevent.os
from gevent import socket
from gevent.lock import Semaphore

from bench.proc import raise_nofile

_c_apply_mask: Callable[[bytes, bytes], bytes] | None
try:
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    _c_apply_mask = None

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_getrandbits = random.getrandbits


def apply_mask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (websockets' C code when available)."""
    if _c_apply_mask is not None:
        return bytes(_c_apply_mask(data, mask))
    n = len(data)
    if not n:
        return b""
    key = int.from_bytes(mask * (n // 4 + 1), "little") & ((1 << (8 * n)) - 1)
    return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


class Closed(Exception):
    """The server closed the connection (close frame or EOF)."""


class WSConn:
    """One client WebSocket over a gevent socket: masked frames out, plain frames in."""

    __slots__ = ("buf", "sock")

    def __init__(self, sock: socket.socket, buf: bytearray) -> None:
        self.sock = sock
        self.buf = buf

    def send(self, payload: bytes, opcode: int = 0x1) -> None:
        n = len(payload)
        first = 0x80 | opcode
        if n < 126:
            header = bytes((first, 0x80 | n))
        elif n < 1 << 16:
            header = bytes((first, 0xFE)) + n.to_bytes(2, "big")
        else:
            header = bytes((first, 0xFF)) + n.to_bytes(8, "big")
        mask = _getrandbits(32).to_bytes(4, "big")
        self.sock.sendall(header + mask + apply_mask(payload, mask))

    def recv_frame(self) -> tuple[int, bool, bytes]:
        """The next frame: (opcode, fin, payload).  Server frames are never masked."""
        buf = self.buf
        sock = self.sock
        while True:
            have = len(buf)
            if have >= 2:
                length = buf[1] & 0x7F
                start = 2
                if length == 126:
                    start = 4
                    length = int.from_bytes(buf[2:4], "big") if have >= 4 else -1
                elif length == 127:
                    start = 10
                    length = int.from_bytes(buf[2:10], "big") if have >= 10 else -1
                end = start + length
                if length >= 0 and have >= end:
                    first = buf[0]
                    payload = bytes(buf[start:end])
                    del buf[:end]
                    return first & 0x0F, bool(first & 0x80), payload
            data = sock.recv(65536)
            if not data:
                raise Closed("EOF")
            buf += data

    def recv(self) -> bytes:
        """The next data message; answers pings, raises `Closed` on a close frame."""
        parts: list[bytes] | None = None
        while True:
            opcode, fin, payload = self.recv_frame()
            if opcode == 0x9:
                self.send(payload, 0xA)
                continue
            if opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                raise Closed(f"close frame {code} {payload[2:].decode(errors='replace')}")
            if opcode == 0xA:
                continue
            if fin and parts is None:
                return payload
            parts = (parts or []) + [payload]
            if fin:
                return b"".join(parts)

    def close(self, polite: bool = True) -> None:
        try:
            if polite:
                self.send((1000).to_bytes(2, "big"), 0x8)
            self.sock.close()
        except OSError:
            pass


#: what a browser offers (RFC 7692): deflate, and the server may limit the client's window
DEFLATE_OFFER = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
#: the client's LZ77 window: within any ``client_max_window_bits`` a server may answer (8 to 15)
CLIENT_WBITS = 9  # zlib makes no 8-bit raw deflate streams; a 9-bit one is within any limit but 8


#: ``IP_BIND_ADDRESS_NO_PORT`` (Linux 4.2+; not in Python's ``socket`` module): a ``bind`` to
#: port 0 leaves the port to ``connect``, which may then reuse it towards another destination
IP_BIND_ADDRESS_NO_PORT = 24


def connect(
    port: int,
    path: str,
    timeout: float,
    deflate: bool = False,
    source: str | None = None,
    rcvbuf: int | None = None,
) -> WSConn:
    """TCP connect and WebSocket upgrade; raises on refusal or after ``timeout``.

    ``deflate``: offer permessage-deflate and raise unless the server accepted it.
    ``source``: the local address to connect from (``127.0.0.2`` ...: Linux routes all of
    127/8 to loopback, and each source address has its own range of ephemeral ports).
    ``rcvbuf``: a fixed receive buffer (``SO_RCVBUF``, set before ``connect`` so that it bounds
    the window), instead of the kernel's autotuning up to ``net.ipv4.tcp_rmem``'s maximum.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16))
        sock.sendall(
            b"GET "
            + path.encode()
            + b" HTTP/1.1\r\nHost: 127.0.0.1:"
            + str(port).encode()
            + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
            + key
            + b"\r\nSec-WebSocket-Version: 13\r\n"
            + (DEFLATE_OFFER if deflate else b"")
            + b"\r\n"
        )
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            data = sock.recv(4096)
            if not data:
                raise Closed("EOF during the handshake")
            buf += data
            if len(buf) > 16384:
                raise ValueError("handshake response too long")
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ValueError(f"upgrade refused: {status.decode(errors='replace')}")
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        if accept not in head:
            raise ValueError("bad Sec-WebSocket-Accept")
        if deflate and b"permessage-deflate" not in head.lower():
            raise ValueError("the server did not accept permessage-deflate")
        sock.settimeout(None)
        return WSConn(sock, bytearray(rest))
    except BaseException:
        sock.close()
        raise


# ---------------------------------------------------------------------- protocols


class Protocol:
    """How a kind of server is spoken to: path, handshake, request and expected answer."""

    path = "/ws"

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def handshake(self, conn: WSConn) -> None:
        pass

    def request(self, n: int) -> bytes:
        raise NotImplementedError

    def expected(self, n: int) -> bytes:
        raise NotImplementedError

    def check(self, n: int, answer: bytes) -> bool:
        return answer == self.expected(n)

    def recv_answer(self, conn: WSConn) -> bytes:
        return conn.recv()

    def idle_read(self, conn: WSConn) -> None:
        """Hold an idle connection: answer the server's keep-alives until it closes."""
        while True:
            conn.recv()


class BareProtocol(Protocol):
    """rtgevent-bare: the frame is the message and the answer is the same frame."""

    def request(self, n: int) -> bytes:
        return self.payload

    def expected(self, n: int) -> bytes:
        return self.payload


class EnvelopeProtocol(Protocol):
    """rtgevent-full: ``{"id", "route": "echo", "data"}`` in, ``rt.reply`` out."""

    def request(self, n: int) -> bytes:
        return b'{"id":%d,"route":"echo","data":"%s"}' % (n, self.payload)

    def expected(self, n: int) -> bytes:
        return b'{"route":"rt.reply","data":"%s","metadata":{"in_reply_to":%d}}' % (self.payload, n)

    def check(self, n: int, answer: bytes) -> bool:
        if answer == self.expected(n):
            return True
        try:  # same meaning, other key order or spacing
            value = json.loads(answer)
        except ValueError:
            return False
        return bool(
            value.get("route") == "rt.reply"
            and value.get("data") == self.payload.decode()
            and value.get("metadata", {}).get("in_reply_to") == n
        )


class SocketIOProtocol(Protocol):
    """Flask-SocketIO: Engine.IO v4 + Socket.IO v5 over the websocket transport."""

    path = "/socket.io/?EIO=4&transport=websocket"

    def handshake(self, conn: WSConn) -> None:
        opening = conn.recv()
        if not opening.startswith(b"0{"):
            raise ValueError(f"expected an Engine.IO open packet, got {opening[:40]!r}")
        conn.send(b"40")
        while True:
            answer = conn.recv()
            if answer == b"2":
                conn.send(b"3")
                continue
            if not answer.startswith(b"40{"):
                raise ValueError(f"expected a Socket.IO connect answer, got {answer[:40]!r}")
            return

    def request(self, n: int) -> bytes:
        return b'42%d["echo","%s"]' % (n, self.payload)

    def expected(self, n: int) -> bytes:
        return b'43%d["%s"]' % (n, self.payload)

    def check(self, n: int, answer: bytes) -> bool:
        if answer == self.expected(n):
            return True
        prefix = b"43%d" % n
        if not answer.startswith(prefix):
            return False
        try:
            return bool(json.loads(answer[len(prefix) :]) == [self.payload.decode()])
        except ValueError:
            return False

    def recv_answer(self, conn: WSConn) -> bytes:
        while True:
            answer = conn.recv()
            if answer == b"2":  # Engine.IO ping: answer, keep waiting
                conn.send(b"3")
                continue
            return answer

    def idle_read(self, conn: WSConn) -> None:
        while True:
            if conn.recv() == b"2":
                conn.send(b"3")


def make_protocol(kind: str, payload: bytes) -> Protocol:
    if kind in ("rtgevent-bare", "reference", "node"):  # the two others echo frames too
        return BareProtocol(payload)
    if kind == "rtgevent-full":
        return EnvelopeProtocol(payload)
    if kind == "socketio":
        return SocketIOProtocol(payload)
    raise ValueError(f"unknown kind {kind!r}")


#: the server kinds of `bench.servers`, and the Node server (``bench/node/server.js``)
KINDS = ("rtgevent-bare", "rtgevent-full", "socketio", "reference", "node")


def make_payload(size: int) -> bytes:
    """``size`` printable ASCII bytes that need no JSON escaping."""
    rng = random.Random(size)
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(size)).encode()


# ---------------------------------------------------------------------- driver link


class Control:
    """Line-based commands from the driver on stdin, read without blocking the hub."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        gevent.os.make_nonblocking(self.fd)
        self.buf = b""

    def wait(self, word: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.line(max(0.0, deadline - time.monotonic()), f"no {word!r} from the driver") != word:
            pass

    def line(self, timeout: float, what: str = "no command from the driver") -> str:
        """The next line (stripped); `TimeoutError` after ``timeout`` seconds, `EOFError` if stdin closed."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(what)
            with gevent.Timeout(remaining, TimeoutError(what)):
                chunk = gevent.os.nb_read(self.fd, 4096)
            if not chunk:
                raise EOFError("the driver went away")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.strip().decode()


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system


def _error_key(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:80]}" if text else type(exc).__name__


def _count(errors: dict[str, int], exc: BaseException) -> None:
    key = _error_key(exc)
    errors[key] = errors.get(key, 0) + 1


# ---------------------------------------------------------------------- scenarios


def open_session(
    proto: Protocol,
    port: int,
    timeout: float,
    deflate: bool = False,
    source: str | None = None,
    rcvbuf: int | None = None,
) -> WSConn:
    """Connect (from ``source``, see `connect`) and do ``proto``'s handshake.

    With ``deflate``, also one compressed request and answer.
    """
    conn = connect(port, proto.path, timeout, deflate, source, rcvbuf)
    try:
        conn.sock.settimeout(timeout)
        proto.handshake(conn)
        if deflate:
            exchange_compressed(proto, conn)
        conn.sock.settimeout(None)
    except BaseException:
        conn.close(polite=False)
        raise
    return conn


def exchange_compressed(proto: Protocol, conn: WSConn) -> None:
    """One request sent compressed (RSV1) and its answer decompressed and checked.

    So that the server's deflate state exists in both directions, as on a connection that
    has carried a message, not only negotiated.  The client's compressor and decompressor
    live for this one message: the client's memory is not what is measured.
    """
    compressor = zlib.compressobj(wbits=-CLIENT_WBITS)
    data = compressor.compress(proto.request(1)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    conn.send(data[:-4], 0x40 | 0x1)  # RFC 7692 section 7.2.1: without the final 00 00 ff ff
    answer = zlib.decompressobj(wbits=-15).decompress(proto.recv_answer(conn) + b"\x00\x00\xff\xff")
    if not proto.check(1, answer):
        raise ValueError(f"unexpected answer to the compressed request: {answer[:60]!r}")


def run_idle(proto: Protocol, port: int, args: argparse.Namespace, control: Control) -> None:
    deflate = args.compression
    # warm-up: the server's lazy imports and first-connection work are not measured
    warm = [open_session(proto, port, args.timeout, deflate) for _ in range(args.warmup)]
    for conn in warm:
        conn.close()
    gevent.sleep(0.5)
    emit("ready")
    control.wait("go", args.max_seconds)

    conns: list[WSConn] = []
    errors: dict[str, int] = {}
    dropped: dict[str, int] = {}
    gate = Semaphore(args.concurrency)
    holding = True

    def one() -> None:
        with gate:
            try:
                conn = open_session(proto, port, args.timeout, deflate)
            except Exception as exc:
                _count(errors, exc)
                return
        conns.append(conn)
        try:
            proto.idle_read(conn)
        except (Closed, OSError, ValueError) as exc:
            if holding:
                _count(dropped, exc)

    cpu0 = cpu_now()
    started = time.perf_counter()
    greenlets = [gevent.spawn(one) for _ in range(args.conns)]
    deadline = started + args.connect_limit
    while len(conns) + sum(errors.values()) < args.conns and time.perf_counter() < deadline:
        gevent.sleep(0.01)
    elapsed = time.perf_counter() - started
    emit(
        "connected",
        connected=len(conns),
        failed=sum(errors.values()),
        errors=errors,
        elapsed=elapsed,
        rate=len(conns) / elapsed if elapsed > 0 else 0.0,
        loadgen_cpu=cpu_now() - cpu0,
    )
    try:
        control.wait("close", args.max_seconds)
    finally:
        holding = False
        gevent.killall(greenlets, timeout=10)
        for conn in conns:
            conn.close()
    emit("closed", dropped=sum(dropped.values()), drop_reasons=dropped)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def run_echo(proto: Protocol, port: int, args: argparse.Namespace, control: Control) -> None:
    conns = [open_session(proto, port, args.timeout) for _ in range(args.clients)]
    errors: dict[str, int] = {}
    mismatches = [0]
    next_id = [0] * len(conns)

    def client(index: int, budget: Callable[[], bool], latencies: list[float] | None) -> None:
        conn = conns[index]
        n = next_id[index]
        request, recv_answer, check = proto.request, proto.recv_answer, proto.check
        perf = time.perf_counter
        try:
            while budget():
                n += 1
                t0 = perf()
                conn.send(request(n))
                answer = recv_answer(conn)
                t1 = perf()
                if not check(n, answer):
                    mismatches[0] += 1
                if latencies is not None:
                    latencies.append(t1 - t0)
        except (Closed, OSError, ValueError) as exc:
            _count(errors, exc)
        finally:
            next_id[index] = n

    def run_phase(count: int, time_limit: float, latencies: list[float] | None) -> tuple[int, float]:
        left = [count]
        deadline = time.perf_counter() + time_limit

        def budget() -> bool:
            if left[0] <= 0 or time.perf_counter() >= deadline:
                return False
            left[0] -= 1
            return True

        started = time.perf_counter()
        greenlets = [gevent.spawn(client, i, budget, latencies) for i in range(len(conns))]
        gevent.joinall(greenlets, timeout=time_limit + args.timeout)
        stuck = sum(1 for g in greenlets if not g.dead)
        if stuck:
            errors[f"client stuck past the time limit (x{stuck})"] = stuck
            gevent.killall(greenlets, timeout=5)
        return count - left[0], time.perf_counter() - started

    # warm-up: lazy imports, first allocations, TCP buffer auto-tuning; bounded by count and time
    run_phase(args.warmup * len(conns), args.warmup_seconds, None)
    warm_errors = dict(errors)
    emit("ready", warmup_errors=warm_errors, warmup_mismatches=mismatches[0])
    control.wait("go", args.max_seconds)

    errors.clear()
    mismatches[0] = 0
    latencies: list[float] = []
    cpu0 = cpu_now()
    sent, elapsed = run_phase(args.messages, args.time_limit, latencies)
    cpu = cpu_now() - cpu0
    latencies.sort()
    emit(
        "done",
        messages=len(latencies),
        sent=sent,
        elapsed=elapsed,
        rate=len(latencies) / elapsed if elapsed > 0 else 0.0,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=(latencies[-1] * 1000) if latencies else float("nan"),
        errors=errors,
        mismatches=mismatches[0],
        loadgen_cpu=cpu,
    )
    control.wait("close", args.max_seconds)
    for conn in conns:
        conn.close()
    emit("closed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=30.0, help="connect / handshake / answer bound, seconds")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on any wait for the driver")
    sub = parser.add_subparsers(dest="scenario", required=True)
    idle = sub.add_parser("idle")
    idle.add_argument("--conns", type=int, required=True)
    idle.add_argument("--concurrency", type=int, default=100, help="handshakes in flight at once")
    idle.add_argument("--connect-limit", type=float, default=180.0, help="bound on the connect phase, seconds")
    idle.add_argument("--warmup", type=int, default=20, help="connections opened and closed first")
    idle.add_argument(
        "--compression", action="store_true", help="negotiate permessage-deflate, one compressed message each"
    )
    echo = sub.add_parser("echo")
    echo.add_argument("--clients", type=int, default=50)
    echo.add_argument("--size", type=int, default=100, help="payload bytes")
    echo.add_argument("--messages", type=int, required=True, help="messages in the measured phase (all clients)")
    echo.add_argument("--time-limit", type=float, default=60.0, help="bound on the measured phase, seconds")
    echo.add_argument("--warmup", type=int, default=40, help="messages per client before the measured phase")
    echo.add_argument("--warmup-seconds", type=float, default=3.0, help="bound on the warm-up, seconds")
    args = parser.parse_args(argv)

    raise_nofile((args.conns if args.scenario == "idle" else args.clients) + 1000)
    gevent.spawn_later(args.max_seconds * 2 + 300, os._exit, 3)  # never outlive a lost driver
    control = Control()
    proto = make_protocol(args.kind, make_payload(getattr(args, "size", 16)))
    if args.scenario == "idle":
        run_idle(proto, args.port, args, control)
    else:
        run_echo(proto, args.port, args, control)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The load generator of the ``fanout`` and ``slow`` scenarios: clients that only listen.

Run as its own process (the driver pins it to another CPU than the server)::

    python -m bench.receiver KIND --port P --clients 1000 --count 200 --size 100 --interval 0
    python -m bench.receiver KIND --port P --clients 50 --slow 10 --count 1000 --size 16384 --interval 0.01

``--clients`` connections read everything; ``--slow`` more connections complete their handshake
(for Socket.IO: the Engine.IO open packet and the namespace connect) and then never read again.
The connections are opened with `bench.loadgen`'s gevent client; the receive phase then runs
one level-triggered ``epoll`` loop over the readers' raw file descriptors, without greenlets:
each read is stamped with ``CLOCK_MONOTONIC``, its frames are cut out and only the first bytes
of each data frame are kept, and the latencies are computed after the phase.  That keeps the
load generator's CPU per delivery below the server's.

The broadcast is started by ``POST /_bench/broadcast`` on the server under test (`bench.servers`),
first a short warm-up, then the measured one.  Driver link as in `bench.loadgen`::

    -> {"event": "ready"}   <- go   -> {"event": "done", ...figures...}   <- close   -> {"event": "closed"}

Bounded: connects and handshakes by a socket timeout, each phase by ``--time-limit``, the check
of the slow connections by ``--drain-seconds``, the whole process by ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import select
import sys
import time
from dataclasses import dataclass, field

import gevent
from gevent import socket
from gevent.lock import Semaphore

from bench.loadgen import KINDS, Control, Protocol, WSConn, cpu_now, emit, make_protocol, open_session, percentile
from bench.proc import raise_nofile

#: the ``"<i>:<monotonic seconds>:`` prefix of every broadcast's data, in either wire format
STAMP = re.compile(rb'"(\d+):(\d+\.\d+):')
#: bytes kept of each data frame: enough for the envelope's head and the stamp
HEAD = 96
READ_SIZE = 1 << 16
#: lazy reads between two looks at the probes during a sweep
SWEEP_SLICE = 32
PING, PONG, CLOSE = 0x9, 0xA, 0x8
#: the never-reading clients' receive buffer: fixed, so that what they hide from the server does
#: not depend on the machine's ``net.ipv4.tcp_rmem`` (autotuned up to 32 MiB on some machines,
#: which holds a whole ``slow`` phase, and then no policy is ever needed)
SLOW_RCVBUF = 64 * 1024


@dataclass(eq=False)
class Stream:
    """One connection's bytes as they arrive: the frames cut so far and the unparsed rest."""

    conn: WSConn
    #: read at once (latency is measured on these), or in sweeps
    probe: bool = True
    buf: bytes = b""
    #: (arrival time, first bytes of the payload) of each data frame
    arrivals: list[tuple[float, bytes]] = field(default_factory=list)
    closed: str = ""

    @property
    def fd(self) -> int:
        fd: int = self.conn.sock.fileno()
        return fd

    def feed(self, data: bytes, now: float, engineio: bool) -> None:
        """Cut whole frames out of what has arrived; answer pings; note a close frame."""
        if not self.buf and len(data) == 2 + data[1] and data[0] == 0x81 and not engineio:
            self.arrivals.append((now, data[2:HEAD]))  # the common case: one small text frame
            return
        view = self.buf + data if self.buf else data
        have = len(view)
        pos = 0
        arrivals = self.arrivals
        while have - pos >= 2:
            length = view[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if have - pos < 4:
                    break
                length = (view[pos + 2] << 8) | view[pos + 3]
                start = pos + 4
            elif length == 127:
                if have - pos < 10:
                    break
                length = int.from_bytes(view[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > have:
                break
            opcode = view[pos] & 0x0F
            if opcode <= 2:
                head = view[start : min(end, start + HEAD)]
                if engineio and head == b"2":  # Engine.IO ping
                    self.answer(b"3", 0x1)
                else:
                    arrivals.append((now, head))
            elif opcode == PING:
                self.answer(view[start:end], PONG)
            elif opcode == CLOSE:
                code = int.from_bytes(view[start : start + 2], "big") if length >= 2 else 1005
                self.closed = self.closed or f"close frame {code}"
            pos = end
        self.buf = view[pos:] if pos < have else b""

    def answer(self, payload: bytes, opcode: int) -> None:
        try:
            self.conn.send(payload, opcode)
        except OSError:
            pass


def read_phase(streams: list[Stream], want: int, time_limit: float, sweep: float, engineio: bool) -> float:
    """Read until every stream has ``want`` data frames, closed, or ``time_limit``; the elapsed time.

    Probes are read the moment ``epoll`` says so; the others every ``sweep`` seconds, all that
    has piled up in one read (the sockets are gevent's, so non-blocking already).
    """
    poller = select.epoll()
    pending = {s.fd: s for s in streams if len(s.arrivals) < want and not s.closed}
    lazy = [fd for fd, s in pending.items() if not s.probe]
    for fd, stream in pending.items():
        if stream.probe:
            poller.register(fd, select.EPOLLIN)
    monotonic = time.monotonic
    started = monotonic()
    deadline = started + time_limit
    next_sweep = started + sweep

    def read(fd: int) -> None:
        stream = pending[fd]
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                stream.closed = type(exc).__name__
                data = b""
            now = monotonic()
            if data:
                stream.feed(data, now, engineio)
            else:
                stream.closed = stream.closed or "EOF"
            if stream.closed or len(stream.arrivals) >= want:
                if stream.probe:
                    poller.unregister(fd)
                del pending[fd]
                return
            if stream.probe or len(data) < READ_SIZE:
                return

    def read_probes(timeout: float) -> None:
        for fd, _ in poller.poll(timeout):
            if fd in pending:
                read(fd)

    try:
        while pending:
            now = monotonic()
            if now >= deadline:
                break
            read_probes(max(0.0, min(next_sweep, deadline) - now))
            if monotonic() >= next_sweep:
                lazy = [fd for fd in lazy if fd in pending]
                for n, fd in enumerate(lazy, 1):
                    read(fd)
                    if n % SWEEP_SLICE == 0:
                        read_probes(0)  # a sweep must not delay the probes
                next_sweep = monotonic() + sweep
    finally:
        poller.close()
    return monotonic() - started


def drain(streams: list[Stream], seconds: float, engineio: bool) -> None:
    """Read the never-reading connections now: did the server close them (EOF, reset)?

    Reads until each shows EOF or an error, or has been quiet for a second; ``seconds`` bounds it all.
    """
    poller = select.epoll()
    quiet_since: dict[int, float] = {}
    by_fd = {s.fd: s for s in streams if not s.closed}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
        quiet_since[fd] = time.monotonic()
    deadline = time.monotonic() + seconds
    try:
        while by_fd and time.monotonic() < deadline:
            now = time.monotonic()
            for fd, _ in poller.poll(0.1):
                stream = by_fd[fd]
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    stream.closed = stream.closed or type(exc).__name__
                    data = b""
                quiet_since[fd] = now
                if data:
                    stream.arrivals.clear()  # only what ends the stream matters here
                    stream.feed(data, now, engineio)
                else:
                    stream.closed = stream.closed or "EOF"
            for fd in [fd for fd, s in by_fd.items() if s.closed or now - quiet_since[fd] > 1.0]:
                poller.unregister(fd)
                del by_fd[fd]
    finally:
        poller.close()


@dataclass
class Figures:
    received: int = 0
    lost: int = 0
    duplicates: int = 0
    unreadable: int = 0
    latencies: list[float] = field(default_factory=list)
    first_sent: float = float("inf")
    last_arrival: float = 0.0


def figures(streams: list[Stream], want: int) -> Figures:
    """Latency of every delivery to a probe (arrival - stamp); what was lost or seen twice by anyone."""
    out = Figures()
    for stream in streams:
        seen: set[int] = set()
        for arrival, head in stream.arrivals:
            match = STAMP.search(head)
            if match is None:
                out.unreadable += 1
                continue
            index, sent = int(match.group(1)), float(match.group(2))
            if index in seen:
                out.duplicates += 1
                continue
            seen.add(index)
            out.first_sent = min(out.first_sent, sent)
            if stream.probe:  # the others' arrival times are late by up to a sweep
                out.latencies.append(arrival - sent)
                out.last_arrival = max(out.last_arrival, arrival)
        out.received += len(seen)
        out.lost += sum(1 for i in range(want) if i not in seen)
    out.latencies.sort()
    return out


def trigger(port: int, count: int, interval: float, size: int, timeout: float, yield_every: int = 1) -> None:
    """Ask the server to start broadcasting; raises unless it says 202."""
    query = f"count={count}&interval={interval}&size={size}&yield_every={yield_every}"
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(
            f"POST /_bench/broadcast?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    finally:
        sock.close()
    status = answer.split(b"\r\n", 1)[0]
    if b" 202 " not in status:
        raise RuntimeError(f"the server refused the broadcast: {status.decode(errors='replace')!r}")


def connect_all(
    proto: Protocol, port: int, count: int, concurrency: int, timeout: float, rcvbuf: int | None = None
) -> list[WSConn]:
    gate = Semaphore(concurrency)

    def one() -> WSConn:
        with gate:
            return open_session(proto, port, timeout, rcvbuf=rcvbuf)

    greenlets = [gevent.spawn(one) for _ in range(count)]
    gevent.joinall(greenlets, timeout=timeout * (count / concurrency + 2))
    failed = [g for g in greenlets if not g.successful()]
    if failed:
        gevent.killall(greenlets, timeout=5)
        for g in greenlets:
            if g.successful():
                g.value.close(polite=False)
        raise RuntimeError(f"{len(failed)} of {count} connections failed: {failed[0].exception!r}")
    return [g.value for g in greenlets]


def run(args: argparse.Namespace) -> None:
    proto = make_protocol(args.kind, b"")
    engineio = args.kind == "socketio"
    control = Control()
    conns = connect_all(proto, args.port, args.clients, 100, args.timeout)
    every = max(1, len(conns) // max(1, args.probes))
    readers = [Stream(c, i % every == 0, bytes(c.buf)) for i, c in enumerate(conns)]
    slow = (
        [Stream(c) for c in connect_all(proto, args.port, args.slow, 100, args.timeout, rcvbuf=SLOW_RCVBUF)]
        if args.slow
        else []
    )

    # warm-up: the first broadcasts' lazy imports and allocations are not measured
    trigger(args.port, args.warmup, 0.0, args.size, args.timeout)
    read_phase(readers, args.warmup, args.time_limit, args.sweep, engineio)
    warm = figures(readers, args.warmup)
    for stream in readers:
        stream.arrivals.clear()
    emit("ready", warmup_lost=warm.lost, warmup_closed=sum(1 for s in readers if s.closed))
    control.wait("go", args.max_seconds)

    gc.disable()  # a collection pass over the arrivals would stall every probe at once
    cpu0 = cpu_now()
    trigger(args.port, args.count, args.interval, args.size, args.timeout, args.yield_every)
    elapsed = read_phase(readers, args.count, args.time_limit, args.sweep, engineio)
    cpu = cpu_now() - cpu0
    gc.enable()
    result = figures(readers, args.count)
    lat = result.latencies
    span = result.last_arrival - result.first_sent
    emit(
        "done",
        expected=args.count * len(readers),
        received=result.received,
        lost=result.lost,
        duplicates=result.duplicates,
        unreadable=result.unreadable,
        elapsed=elapsed,
        rate=result.received / span if span > 0 else 0.0,
        p50_ms=percentile(lat, 0.50) * 1000,
        p99_ms=percentile(lat, 0.99) * 1000,
        max_ms=(lat[-1] * 1000) if lat else float("nan"),
        readers_closed=sorted(s.closed for s in readers if s.closed),
        loadgen_cpu=cpu,
    )
    control.wait("close", args.max_seconds)
    drain(slow, args.drain_seconds, engineio)
    slow_closed = [s.closed for s in slow if s.closed]
    for stream in readers + slow:
        stream.conn.close(polite=not stream.closed)
    emit("closed", slow_closed=sorted(slow_closed), slow_open=len(slow) - len(slow_closed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=[k for k in KINDS if k != "rtgevent-bare"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True, help="connections that read")
    parser.add_argument("--slow", type=int, default=0, help="connections that never read after the handshake")
    parser.add_argument("--probes", type=int, default=50, help="readers that read at once; latency is theirs")
    parser.add_argument("--sweep", type=float, default=0.05, help="seconds between reads of the other readers")
    parser.add_argument("--count", type=int, required=True, help="broadcasts in the measured phase")
    parser.add_argument("--size", type=int, default=100, help="bytes of each broadcast's data")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between broadcasts (0: back to back)")
    parser.add_argument(
        "--yield-every", type=int, default=1, help="back to back, the server yields after every K broadcasts (0: never)"
    )
    parser.add_argument("--warmup", type=int, default=5, help="broadcasts before the measured phase")
    parser.add_argument("--time-limit", type=float, default=60.0, help="bound on each receive phase, seconds")
    parser.add_argument("--drain-seconds", type=float, default=20.0, help="bound on the check of the slow ones")
    parser.add_argument("--timeout", type=float, default=30.0, help="connect / handshake bound, seconds")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on any wait for the driver")
    args = parser.parse_args(argv)
    raise_nofile(args.clients + args.slow + 1000)
    gevent.spawn_later(args.max_seconds * 2 + 300, os._exit, 3)  # never outlive a lost driver
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One load generator of the ``scale`` scenario: many idle rtgevent clients, then one broadcast.

Run as its own process; the driver starts several (one process cannot hold more sockets than
its ``RLIMIT_NOFILE``), all pinned to the load generator's CPU::

    python -m bench.scale_client --port P --conns 12500 --sources 127.0.0.2,127.0.0.3 --offset 0

Client ``i`` of the process binds its socket to source address ``sources[(offset + i) % len]``
before it connects (one source address has one range of ephemeral ports towards the server's
address and port, ~28,000 on a default Linux), and at most ``--concurrency`` handshakes are in
flight at once so that the server's listen queue is not flooded.  While the connections open,
a greenlet sweeps the ones already open every ``--sweep`` seconds and answers the server's
pings (with a 30 s heartbeat and 10 s to answer, a slow connect phase must not lose the first
connections).  After that there are no greenlets: one level-triggered ``epoll`` loop over the
sockets and stdin answers pings (counted), notes every connection that ends, and, once armed,
stamps each arrival with ``CLOCK_MONOTONIC`` (all processes of the machine share it; the
server puts its own reading in the broadcast's data, `bench.servers.Broadcaster`).

Driver link, one JSON object per stdout line, one word per stdin line::

    -> {"event": "ready"}      <- go
    -> {"event": "connected", ...}
    <- mark                    -> {"event": "mark", "pings": ..., "closed": ...}     (any number of times)
    <- arm N                   -> {"event": "armed"}
    -> {"event": "done", ...}  (when every open client has N broadcasts, or after --time-limit)
    <- close                   -> {"event": "closed", ...}

Bounded: connects and handshakes by ``--timeout``, the connect phase by ``--connect-limit``,
the wait for the broadcasts by ``--time-limit``, any wait for the driver by ``--max-seconds``,
the whole process by a timer that exits it.
"""

from __future__ import annotations

import argparse
import gc
import os
import select
import signal
import sys
import time
from dataclasses import dataclass

import gevent
from gevent.lock import Semaphore

from bench.loadgen import Closed, Control, WSConn, cpu_now, emit, make_protocol, open_session
from bench.proc import raise_nofile
from bench.receiver import PONG, READ_SIZE, STAMP, Stream


@dataclass(eq=False)
class Held(Stream):
    """A `Stream` that counts the pings it answered."""

    pings: int = 0

    def answer(self, payload: bytes, opcode: int) -> None:
        if opcode == PONG:
            self.pings += 1
        super().answer(payload, opcode)


def read_ready(stream: Held, now: float) -> None:
    """Everything the socket has for us now (it is non-blocking); EOF and errors end the stream."""
    fd = stream.fd
    while not stream.closed:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            stream.closed = type(exc).__name__
            return
        if not data:
            stream.closed = stream.closed or "EOF"
            return
        stream.feed(data, now, False)
        if len(data) < READ_SIZE:
            return


def connect_all(args: argparse.Namespace, sources: list[str]) -> tuple[list[Held], dict[str, int], float]:
    """Open ``--conns`` sessions, ``--concurrency`` handshakes at a time; (streams, errors, seconds)."""
    proto = make_protocol("rtgevent-full", b"")
    gate = Semaphore(args.concurrency)
    streams: list[Held] = []
    errors: dict[str, int] = {}

    def one(i: int) -> None:
        with gate:
            try:
                conn = open_session(proto, args.port, args.timeout, source=sources[(args.offset + i) % len(sources)])
            except (Closed, OSError, ValueError) as exc:
                key = f"{type(exc).__name__}: {str(exc)[:80]}"
                errors[key] = errors.get(key, 0) + 1
                return
        streams.append(Held(conn, buf=bytes(conn.buf)))

    def keep_alive() -> None:
        """Answer the pings of the connections already open while the others still connect."""
        while True:
            gevent.sleep(args.sweep)
            now = time.monotonic()
            for stream in list(streams):
                read_ready(stream, now)

    started = time.monotonic()
    sweeper = gevent.spawn(keep_alive)
    greenlets = [gevent.spawn(one, i) for i in range(args.conns)]
    try:
        gevent.joinall(greenlets, timeout=args.connect_limit)
    finally:
        sweeper.kill()
    elapsed = time.monotonic() - started
    late = [g for g in greenlets if not g.dead]
    if late:
        gevent.killall(late, timeout=5)
        errors[f"not connected within {args.connect_limit:g} s"] = len(late)
    return streams, errors, elapsed


def serve(streams: list[Held], control: Control, args: argparse.Namespace) -> None:
    """Hold every connection until ``close``: answer pings, follow the driver, time the broadcasts."""
    stdin = control.fd
    by_fd = {s.fd: s for s in streams}
    poller = select.epoll()
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    poller.register(stdin, select.EPOLLIN)
    pending = control.buf  # what the driver wrote after "go", if anything
    control.buf = b""
    armed_for = 0  # broadcasts each client must get; 0: not armed
    armed_at = cpu0 = 0.0
    give_up = float("inf")
    ended: dict[str, int] = {}
    monotonic = time.monotonic
    deadline = monotonic() + args.max_seconds

    def note_end(stream: Held) -> None:
        poller.unregister(stream.fd)
        ended[stream.closed] = ended.get(stream.closed, 0) + 1

    def complete() -> bool:
        return all(len(s.arrivals) >= armed_for for s in streams if not s.closed)

    try:
        while monotonic() < deadline:
            for fd, _ in poller.poll(0.5):
                if fd == stdin:
                    chunk = os.read(stdin, 4096)
                    if not chunk:
                        raise EOFError("the driver went away")
                    pending += chunk
                    continue
                stream = by_fd[fd]
                read_ready(stream, monotonic())
                if stream.closed:
                    note_end(stream)
            while b"\n" in pending:
                line, _, pending = pending.partition(b"\n")
                word, *rest = line.decode().split() or [""]
                if word == "mark":
                    emit("mark", pings=sum(s.pings for s in streams), closed=ended, cpu=cpu_now())
                elif word == "arm":
                    armed_for = int(rest[0])
                    for s in streams:
                        s.arrivals.clear()
                    gc.disable()  # a collection pass would stall every read at once
                    armed_at, cpu0, give_up = monotonic(), cpu_now(), monotonic() + args.time_limit
                    emit("armed")
                elif word == "close":
                    return
            if armed_for and (complete() or monotonic() >= give_up):
                report(streams, armed_for, monotonic() - armed_at, cpu_now() - cpu0, ended)
                gc.enable()
                armed_for, give_up = 0, float("inf")
        raise TimeoutError(f"no 'close' from the driver within {args.max_seconds:g} s")
    finally:
        poller.close()


def report(streams: list[Held], want: int, elapsed: float, cpu: float, ended: dict[str, int]) -> None:
    """Per broadcast: every client's latency (arrival - the server's stamp), and who missed it."""
    latencies: list[list[float]] = [[] for _ in range(want)]
    last_arrival = [0.0] * want
    sent = [float("inf")] * want
    unreadable = duplicates = 0
    for stream in streams:
        seen: set[int] = set()
        for arrival, head in stream.arrivals:
            match = STAMP.search(head)
            if match is None or int(match.group(1)) >= want:
                unreadable += 1
                continue
            index, stamp = int(match.group(1)), float(match.group(2))
            if index in seen:
                duplicates += 1
                continue
            seen.add(index)
            latencies[index].append(round((arrival - stamp) * 1000, 3))
            last_arrival[index] = max(last_arrival[index], arrival)
            sent[index] = min(sent[index], stamp)
    emit(
        "done",
        clients=len(streams),
        open=sum(1 for s in streams if not s.closed),
        latencies_ms=latencies,
        sent=sent,
        last_arrival=last_arrival,
        unreadable=unreadable,
        duplicates=duplicates,
        elapsed=elapsed,
        loadgen_cpu=cpu,
        closed=ended,
    )


def run(args: argparse.Namespace) -> None:
    sources = args.sources.split(",")
    proto = make_protocol("rtgevent-full", b"")
    control = Control()
    # warm-up: this process's lazy imports and first allocations are not measured
    for conn in [open_session(proto, args.port, args.timeout, source=sources[0]) for _ in range(args.warmup)]:
        conn.close()
    emit("ready")
    control.wait("go", args.max_seconds)
    cpu0 = cpu_now()
    streams, errors, elapsed = connect_all(args, sources)
    gc.collect()
    gc.freeze()  # the connections live until the end: later collections need not walk them
    emit(
        "connected",
        connected=len(streams),
        failed=sum(errors.values()),
        errors=errors,
        elapsed=elapsed,
        loadgen_cpu=cpu_now() - cpu0,
        sources=sorted({s.conn.sock.getsockname()[0] for s in streams}),
    )
    try:
        serve(streams, control, args)
    finally:
        for stream in streams:
            close(stream.conn)
    emit("closed", connections=len(streams))


def close(conn: WSConn) -> None:
    """Drop the TCP connection: no close handshake for tens of thousands of sockets at the end."""
    try:
        conn.sock.close()
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, required=True, help="connections this process opens and holds")
    parser.add_argument("--sources", default="127.0.0.2", help="comma-separated local addresses to connect from")
    parser.add_argument("--offset", type=int, default=0, help="index of this process's first client overall")
    parser.add_argument("--concurrency", type=int, default=50, help="handshakes in flight at once")
    parser.add_argument("--sweep", type=float, default=1.0, help="seconds between reads while connecting")
    parser.add_argument("--warmup", type=int, default=5, help="connections opened and closed first")
    parser.add_argument("--timeout", type=float, default=30.0, help="connect / handshake bound, seconds")
    parser.add_argument("--connect-limit", type=float, default=240.0, help="bound on the connect phase, seconds")
    parser.add_argument("--time-limit", type=float, default=30.0, help="bound on the wait for the broadcasts")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="bound on any wait for the driver")
    args = parser.parse_args(argv)
    if not all(a.startswith("127.") for a in args.sources.split(",")):
        parser.error("--sources: loopback addresses (127.x.y.z) only")
    raise_nofile(args.conns + args.warmup + 100)
    # never outlive a lost driver (an alarm, not a gevent timer: the hold loop does not run the hub)
    signal.alarm(int(args.max_seconds * 2 + 300))
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

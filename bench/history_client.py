"""The clients of the ``history`` scenario's reconnect storm: subscribers that leave and come back.

Run as its own process (the driver pins it to CPU 1)::

    python -m bench.history_client KIND --port P --clients 1000 --channel hist:room --gap 100

``KIND`` is ``rtgevent`` (a WebSocket to ``/ws?access_token=c<i>`` of a `bench.history_node`,
then ``rt.subscribe`` ``{"channel": C}``) or ``socketio`` (a Socket.IO connection to a
`bench.sio_node`, then the event ``join`` with the room's name, answered by an ack).  Commands,
one line in, one JSON line out (like `bench.loadgen`)::

    -> {"event": "ready", ...}     every client connected and subscribed (100 handshakes in
                                   flight), then ``--warmup`` publications (started here through
                                   ``GET /_bench/publish``) received by each; an rtgevent client
                                   keeps the offset and epoch of the last one
    <- leave                       every client closes its connection (close frame, then the socket)
    -> {"event": "left"}
       (the driver waits until the server counts no connection, then has ``--gap`` publications made)
    <- storm                       every client reconnects at once, ``--concurrency`` handshakes in
                                   flight (default: all), and subscribes again: rtgevent with
                                   ``"since": {"offset", "epoch"}`` (its last position), Socket.IO by
                                   joining the room again; each reads until its subscribe reply
                                   (rt.reply; Socket.IO: the join ack)
    -> {"event": "stormed", ...}   wall time from the first reconnect to the last reply, per-client
                                   times, and what came back: replies with ``recovered`` true and
                                   ``missed`` = ``--gap``, the gap's publications received (in
                                   offset order, once each), lost
    <- live                        ``--live`` more publications (started here), received by each
    -> {"event": "live", ...}      received, lost, duplicates (offsets must follow the gap's)
    <- close
    -> {"event": "closed"}

Frames are cut by `bench.loadgen`'s client (pings answered); a publication's offset and epoch
are read from its envelope's metadata with one regular expression, its index (Socket.IO) from
the stamp in its data.  Bounded: connects and handshakes by ``--timeout``, every phase by
``--time-limit``, each wait for the driver by ``--max-seconds``, the process by twice that.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.lock import Semaphore

from bench.channel_client import trigger
from bench.loadgen import Closed, Control, SocketIOProtocol, WSConn, connect, cpu_now, emit, percentile
from bench.proc import raise_nofile

#: a channel publication's position, as the envelope's metadata spells it (strings)
POSITION = re.compile(rb'"offset":"(\d+)","epoch":"([^"]*)"')
#: the ``"<i>:<monotonic>:`` stamp at the start of every publication's data
STAMP = re.compile(rb'"(\d+):\d+\.\d+:')
RT_REPLY = b'{"route":"rt.reply"'
SIO_TICK = b'42["tick"'
SIO_ACK = b"431"


@dataclass(eq=False)
class Client:
    """One subscriber: its connection, its last position and what the current phase brought."""

    index: int
    conn: WSConn | None = None
    offset: int = 0
    epoch: str = ""
    #: offsets (rtgevent) or stamp indexes (Socket.IO) of the publications of the current phase
    got: list[int] = field(default_factory=list)
    #: publications of another epoch, frames that are neither a publication nor the reply
    stray: int = 0
    reply: dict[str, Any] | None = None
    #: monotonic times of the current phase: connected, answered
    connected: float = 0.0
    answered: float = 0.0
    error: str = ""


class Session:
    """What one kind of server is spoken to with: subscribe, read a publication."""

    def __init__(self, kind: str, port: int, channel: str, timeout: float) -> None:
        self.kind = kind
        self.port = port
        self.channel = channel
        self.timeout = timeout

    def open(self, client: Client, since: bool) -> None:
        """Connect and subscribe; every publication before the reply goes to ``client.got``."""
        if self.kind == "rtgevent":
            conn = connect(self.port, f"/ws?access_token=c{client.index}", self.timeout)
        else:
            conn = connect(self.port, SocketIOProtocol.path, self.timeout)
        client.conn = conn
        conn.sock.settimeout(self.timeout)
        if self.kind == "rtgevent":
            client.connected = time.monotonic()
            data: dict[str, Any] = {"channel": self.channel}
            if since:
                data["since"] = {"offset": client.offset, "epoch": client.epoch}
            conn.send(json.dumps({"id": "s", "route": "rt.subscribe", "data": data}).encode())
            while True:
                frame = conn.recv()
                if frame.startswith(RT_REPLY):
                    client.reply = json.loads(frame)
                    break
                self.publication(client, frame)
        else:
            SocketIOProtocol(b"").handshake(conn)
            client.connected = time.monotonic()
            conn.send(b"421" + json.dumps(["join", self.channel]).encode())
            while True:
                frame = conn.recv()
                if frame == b"2":
                    conn.send(b"3")
                elif frame.startswith(SIO_ACK):
                    client.reply = {"data": json.loads(frame[3:])}
                    break
                else:
                    self.publication(client, frame)
        client.answered = time.monotonic()

    def publication(self, client: Client, frame: bytes) -> bool:
        """Count one frame that should be a publication; False if it was something else."""
        if self.kind == "rtgevent":
            m = POSITION.search(frame)
            if m is None:
                client.stray += 1
                return False
            epoch = m.group(2).decode()
            if client.epoch and epoch != client.epoch:
                client.stray += 1
                return False
            client.epoch = epoch
            client.offset = int(m.group(1))
            client.got.append(client.offset)
            return True
        if not frame.startswith(SIO_TICK):
            client.stray += 1
            return False
        m = STAMP.search(frame)
        client.got.append(int(m.group(1)) if m else -1)
        return True

    def read(self, client: Client, count: int) -> None:
        """Read until ``count`` publications of this phase have arrived (Socket.IO pings answered)."""
        conn = client.conn
        assert conn is not None
        while len(client.got) < count:
            frame = conn.recv()
            if self.kind == "socketio" and frame == b"2":
                conn.send(b"3")
                continue
            self.publication(client, frame)


def run_all(clients: list[Client], job: Callable[[Client], None], concurrency: int, limit: float) -> float:
    """``job`` for every client, ``concurrency`` at a time, within ``limit`` s; the seconds it took.

    A client whose job failed or did not finish in time has ``error`` set.
    """
    gate = Semaphore(max(1, concurrency))

    def one(client: Client) -> None:
        with gate:
            try:
                job(client)
            except (Closed, OSError, ValueError, KeyError) as exc:
                client.error = f"{type(exc).__name__}: {str(exc)[:60]}"

    started = time.monotonic()
    greenlets = [gevent.spawn(one, c) for c in clients]
    gevent.joinall(greenlets, timeout=limit)
    for client, g in zip(clients, greenlets, strict=True):
        if not g.dead:
            client.error = client.error or "time limit"
    gevent.killall([g for g in greenlets if not g.dead], timeout=5)
    return time.monotonic() - started


def errors_of(clients: list[Client]) -> dict[str, int]:
    out: dict[str, int] = {}
    for client in clients:
        if client.error:
            out[client.error] = out.get(client.error, 0) + 1
    return out


def close_all(clients: list[Client]) -> None:
    for client in clients:
        if client.conn is not None:
            client.conn.close(polite=not client.error)
            client.conn = None


def reset(clients: list[Client]) -> None:
    for client in clients:
        client.got = []
        client.stray = 0
        client.reply = None
        client.error = ""


def run(args: argparse.Namespace) -> None:
    control = Control()
    session = Session(args.kind, args.port, args.channel, args.timeout)
    clients = [Client(i) for i in range(args.clients)]
    rtg = args.kind == "rtgevent"

    # connect, subscribe, and receive the warm-up publications live
    run_all(clients, lambda c: session.open(c, since=False), 100, args.time_limit)
    failed = errors_of(clients)
    if failed:
        close_all(clients)
        raise RuntimeError(f"{sum(failed.values())} of {args.clients} subscriptions failed: {failed}")
    reset(clients)
    trigger(args.port, args.channel, args.warmup, args.size, args.timeout)
    run_all(clients, lambda c: session.read(c, args.warmup), len(clients), args.time_limit)
    emit(
        "ready",
        clients=len(clients),
        warmup_lost=sum(max(0, args.warmup - len(c.got)) for c in clients),
        warmup_errors=errors_of(clients),
        positions=sorted({(c.offset, c.epoch) for c in clients})[:5] if rtg else [],
    )
    control.wait("leave", args.max_seconds)
    close_all(clients)
    emit("left")

    control.wait("storm", args.max_seconds)
    reset(clients)
    last = {c.index: c.offset for c in clients}
    cpu0 = cpu_now()
    started = time.monotonic()
    elapsed = run_all(clients, lambda c: session.open(c, since=rtg), args.concurrency or len(clients), args.time_limit)
    cpu = cpu_now() - cpu0
    answered = [c for c in clients if c.reply is not None]
    times = sorted(c.answered - started for c in answered)
    connects = sorted(c.connected - started for c in answered)
    if rtg:
        want = {c.index: list(range(last[c.index] + 1, last[c.index] + args.gap + 1)) for c in clients}
        complete = [
            c
            for c in answered
            if c.reply is not None
            and c.reply.get("data", {}).get("recovered") is True
            and c.reply.get("data", {}).get("missed") == args.gap
            and c.got == want[c.index]
        ]
        recovered = sum(1 for c in answered if c.reply is not None and c.reply.get("data", {}).get("recovered"))
        received = sum(len(set(c.got) & set(want[c.index])) for c in clients)
        out_of_order = sum(1 for c in clients if c.got != sorted(c.got))
    else:
        complete = [c for c in answered if len(set(c.got)) >= args.gap]
        recovered = 0
        received = sum(len(set(c.got)) for c in clients)
        out_of_order = 0
    emit(
        "stormed",
        clients=len(clients),
        answered=len(answered),
        complete=len(complete),
        recovered=recovered,
        expected=args.gap * len(clients),
        received=received,
        lost=args.gap * len(clients) - received,
        duplicates=sum(len(c.got) - len(set(c.got)) for c in clients),
        out_of_order=out_of_order,
        stray=sum(c.stray for c in clients),
        errors=errors_of(clients),
        elapsed=elapsed,
        # from the first reconnect until every client has its reply (and, for rtgevent, all it missed)
        wall_s=(max(c.answered for c in complete) - started) if len(complete) == len(clients) else float("nan"),
        last_reply_s=times[-1] if times else float("nan"),
        reply_p50_s=percentile(times, 0.50),
        reply_p99_s=percentile(times, 0.99),
        connect_p50_s=percentile(connects, 0.50),
        connect_p99_s=percentile(connects, 0.99),
        connect_max_s=connects[-1] if connects else float("nan"),
        client_cpu=cpu,
    )

    control.wait("live", args.max_seconds)
    live = [c for c in clients if c.conn is not None and not c.error]
    before = {c.index: c.offset for c in live}
    reset(live)
    trigger(args.port, args.channel, args.live, args.size, args.timeout)
    run_all(live, lambda c: session.read(c, args.live), len(live), args.time_limit)
    if rtg:
        good = sum(1 for c in live if c.got == list(range(before[c.index] + 1, before[c.index] + args.live + 1)))
    else:
        good = sum(1 for c in live if sorted(set(c.got)) == list(range(args.live)))
    emit(
        "live",
        clients=len(live),
        in_order=good,
        received=sum(len(set(c.got)) for c in live),
        expected=args.live * len(live),
        duplicates=sum(len(c.got) - len(set(c.got)) for c in live),
        stray=sum(c.stray for c in live),
        errors=errors_of(live),
    )
    control.wait("close", args.max_seconds)
    close_all(clients)
    emit("closed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history_client", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("rtgevent", "socketio"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--channel", required=True, help="the channel (Socket.IO: the room)")
    parser.add_argument("--gap", type=int, required=True, help="publications made while the clients are away")
    parser.add_argument("--size", type=int, default=200, help="bytes of each publication's data")
    parser.add_argument("--warmup", type=int, default=5, help="publications received live before leaving")
    parser.add_argument("--live", type=int, default=5, help="publications received live after the storm")
    parser.add_argument("--concurrency", type=int, default=0, help="handshakes in flight in the storm (0: all)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="bound on each phase, seconds")
    parser.add_argument("--timeout", type=float, default=30.0, help="connect / handshake / read bound, seconds")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on any wait for the driver")
    args = parser.parse_args(argv)
    raise_nofile(args.clients + 1000)
    gevent.spawn_later(args.max_seconds * 2 + 300, os._exit, 3)  # never outlive a lost driver
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

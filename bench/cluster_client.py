"""The receiving client of the ``cluster`` and ``emitter`` scenarios: WebSockets that only listen.

Run as its own process (the driver pins it to CPU 1)::

    python -m bench.cluster_client --port P --identities target [more ...]

One gevent process, loadgen's hand-written RFC 6455 client, one connection per identity to
``/ws?access_token=<identity>`` of the gateway node on port P.  Each connection asks route
``whoami`` first and waits for the reply, so its session is in the node's hub and in presence
before ``ready``.  Then every message of route ``t`` is timed on arrival: its data is
``{"sent": <sender's time.time()>, "n": <sequence number>}`` and the latency is this
process's ``time.time()`` minus ``sent`` (same machine, same clock).

Driver protocol (one word line in, one JSON line out, like `bench.loadgen`)::

    -> {"event": "ready", "nodes": [...]}
    <- window START COUNT             only n in [START, START + COUNT) count from now on
    -> {"event": "window"}
    <- collect EXPECTED QUIET MAX     wait for EXPECTED of them, or QUIET s without one, or MAX s
    -> {"event": "collected", ...figures...}
    <- close
    -> {"event": "closed"}

Everything is bounded: connects by ``--timeout``, every wait by its own limit, the process by
``--max-seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import gevent

from bench.loadgen import Closed, Control, WSConn, connect, emit, percentile
from bench.proc import raise_nofile


class Window:
    """What arrived of one phase: sequence numbers in [lo, hi), their latencies, and anomalies."""

    def __init__(self, lo: int = 0, hi: int = 0) -> None:
        self.lo, self.hi = lo, hi
        self.latencies: list[float] = []
        self.seen: set[int] = set()
        self.last_n: dict[str, int] = {}
        self.duplicates = 0
        self.out_of_order = 0
        self.stray = 0  # route t, but n outside the window: a late message of an earlier phase
        self.first_recv = float("nan")
        self.last_recv = float("nan")
        self.last_progress = time.monotonic()

    def add(self, identity: str, n: int, sent: float, now: float) -> None:
        if not self.lo <= n < self.hi:
            self.stray += 1
            return
        if n in self.seen:
            self.duplicates += 1
            return
        self.seen.add(n)
        if n < self.last_n.get(identity, -1):
            self.out_of_order += 1
        self.last_n[identity] = n
        self.latencies.append(now - sent)
        if not self.latencies[1:]:
            self.first_recv = now
        self.last_recv = now
        self.last_progress = time.monotonic()

    def figures(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "received": len(lat),
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "stray": self.stray,
            "p50_ms": percentile(lat, 0.50) * 1000,
            "p99_ms": percentile(lat, 0.99) * 1000,
            "max_ms": lat[-1] * 1000 if lat else float("nan"),
            "first_recv": self.first_recv,
            "last_recv": self.last_recv,
        }


def open_listener(port: int, identity: str, timeout: float) -> tuple[WSConn, str]:
    """Connect as ``identity`` and wait for the ``whoami`` reply; (connection, node id)."""
    conn = connect(port, f"/ws?access_token={identity}", timeout)
    try:
        conn.sock.settimeout(timeout)
        conn.send(b'{"id":"who","route":"whoami"}')
        while True:
            msg = json.loads(conn.recv())
            if msg.get("route") == "rt.reply" and msg.get("metadata", {}).get("in_reply_to") == "who":
                break
        if msg["data"]["identity"] != identity:
            raise ValueError(f"registered as {msg['data']['identity']!r}, not {identity!r}")
        conn.sock.settimeout(None)
    except BaseException:
        conn.close(polite=False)
        raise
    return conn, str(msg["data"]["node"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--identities", nargs="+", required=True)
    parser.add_argument("--timeout", type=float, default=30.0, help="connect / handshake bound, seconds")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on any wait for the driver")
    args = parser.parse_args(argv)
    raise_nofile(len(args.identities) + 1000)
    gevent.spawn_later(args.max_seconds * 2 + 300, os._exit, 3)  # never outlive a lost driver

    control = Control()
    opened = [open_listener(args.port, identity, args.timeout) for identity in args.identities]
    window = Window()
    errors: dict[str, int] = {}
    other = [0]  # messages of other routes

    def reader(conn: WSConn, identity: str) -> None:
        loads, now_ = json.loads, time.time
        try:
            while True:
                raw = conn.recv()
                now = now_()
                msg = loads(raw)
                if msg.get("route") != "t":
                    other[0] += 1
                    continue
                data = msg["data"]
                window.add(identity, int(data["n"]), float(data["sent"]), now)
        except (Closed, OSError, ValueError, KeyError, TypeError) as exc:
            key = f"{identity}: {type(exc).__name__}: {str(exc)[:80]}"
            errors[key] = errors.get(key, 0) + 1

    readers = [
        gevent.spawn(reader, conn, identity) for (conn, _), identity in zip(opened, args.identities, strict=True)
    ]
    emit("ready", nodes=sorted({node for _, node in opened}))
    try:
        while True:
            words = control.line(args.max_seconds).split()
            if not words:
                continue
            if words[0] == "window":
                lo, count = int(words[1]), int(words[2])
                window = Window(lo, lo + count)
                emit("window")
            elif words[0] == "collect":
                expected, quiet, limit = int(words[1]), float(words[2]), float(words[3])
                deadline = time.monotonic() + limit
                while len(window.latencies) < expected and time.monotonic() < deadline:
                    if time.monotonic() - window.last_progress >= quiet:
                        break
                    gevent.sleep(0.005)
                emit("collected", **window.figures(), other=other[0], errors=dict(errors))
            elif words[0] == "close":
                break
    finally:
        gevent.killall(readers, timeout=5)
        for conn, _ in opened:
            conn.close()
    emit("closed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

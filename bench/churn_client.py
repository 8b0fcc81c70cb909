"""The clients of the ``churn`` scenario: sessions that subscribe and unsubscribe, and hold channels.

Run as its own process (the driver pins it to CPU 1)::

    python -m bench.churn_client --port P --sessions 1000 --prefix NS

One gevent process, `bench.loadgen`'s raw-socket WebSocket client: ``--sessions`` connections
to ``/ws?access_token=s<i>`` of one `bench.channel_node`, plus one more, the *holder*
(``?access_token=holder``).  Each asks route ``whoami`` first, so its session is registered
before ``ready``.  Channel names start with ``--prefix`` (unique per run).  Commands, one line
in, one JSON line out (like `bench.loadgen`)::

    -> {"event": "ready"}
    <- fill MODE M          every session subscribes M channels (its M subscribes pipelined,
                            100 sessions at a time); MODE shared: channels <p>m:0 .. <p>m:M-1,
                            the same for all; MODE unique: <p>m:<i>:0 .. <p>m:<i>:M-1, its own
    -> {"event": "filled", "pairs", "errors", "elapsed"}
    <- empty MODE M         the same sessions unsubscribe them again
    -> {"event": "emptied", ...}
    <- hold K               the holder subscribes <p>h:0 .. <p>h:K-1 and keeps them
    -> {"event": "held", ...}
    <- churn MODE C SECONDS MAX   the first C sessions each loop, one pair at a time:
                            rt.subscribe, wait for its reply, rt.unsubscribe, wait for its reply;
                            MODE unique: a channel never used before (<p>c<n>:<i>:<round>, n
                            counting the churn commands), so the
                            node subscribes it at the broker and unsubscribes it again; MODE
                            shared: one of the holder's K channels (round-robin), so the node
                            already has it and the broker is not involved; until SECONDS or
                            MAX pairs in all
    -> {"event": "churned", "pairs", "elapsed", "rate", "errors", "sub_p50_ms", ...}
    <- close
    -> {"event": "closed", "stray"}      stray: messages that were no reply (none is expected)

Sessions not in a request read what the server sent every 5 s (answering its pings), so none
is closed for a missed pong while it waits its turn.  Bounded: connects by ``--timeout``, every
command by its own limit, each wait for the driver by ``--max-seconds``, the process by twice that.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.lock import Semaphore

from bench.loadgen import Closed, Control, WSConn, connect, cpu_now, emit, percentile
from bench.proc import raise_nofile

#: bound on one fill / empty / hold command, seconds
STEP_LIMIT = 300.0
#: how often idle sessions read what the server sent (its pings), seconds: well under its heartbeat
KEEP_ALIVE_SECONDS = 5.0


class Session:
    """One connection and its request counter; `call` sends requests and waits for their replies.

    While no call runs, `keep_alive` (from `keeper`) reads what the server sent so its pings are
    answered: a session that waits its turn for minutes must not be closed for a missed pong.
    """

    def __init__(self, conn: WSConn) -> None:
        self.conn = conn
        self.next_id = 0
        self.lock = Semaphore()
        self.stray = 0

    def keep_alive(self) -> None:
        """Read without blocking: answers pings; counts any other message (none is expected)."""
        if self.lock.locked():
            return
        with self.lock:
            self.conn.sock.settimeout(0.0)
            try:
                while True:
                    self.conn.recv()
                    self.stray += 1
            except OSError:  # nothing more to read now (EWOULDBLOCK, or a timeout)
                pass
            finally:
                self.conn.sock.settimeout(None)

    def call(self, route: str, channels: list[str], errors: dict[str, int]) -> int:
        """Send ``route`` for every channel (pipelined), then read every answer; how many were replies."""
        with self.lock:
            return self._call(route, channels, errors)

    def _call(self, route: str, channels: list[str], errors: dict[str, int]) -> int:
        first = self.next_id
        self.next_id += len(channels)
        for n, channel in enumerate(channels, first):
            self.conn.send(b'{"id":%d,"route":"%s","data":{"channel":"%s"}}' % (n, route.encode(), channel.encode()))
        ok = 0
        for _ in channels:
            raw = self.conn.recv()
            if raw.startswith(b'{"route":"rt.reply"'):
                ok += 1
                continue
            try:
                msg = json.loads(raw)
            except ValueError:
                msg = {}
            if msg.get("route") == "rt.reply":
                ok += 1
                continue
            code = msg.get("data", {}).get("code", "?") if isinstance(msg.get("data"), dict) else "?"
            key = f"{route}: {msg.get('route', 'unreadable')} {code}"
            errors[key] = errors.get(key, 0) + 1
        return ok


def open_session(port: int, identity: str, timeout: float) -> Session:
    conn = connect(port, f"/ws?access_token={identity}", timeout)
    try:
        conn.sock.settimeout(timeout)
        conn.send(b'{"id":"who","route":"whoami"}')
        while True:
            msg = json.loads(conn.recv())
            if msg.get("metadata", {}).get("in_reply_to") == "who":
                break
        if msg.get("route") != "rt.reply":
            raise ValueError(f"whoami answered {str(msg)[:120]}")
        conn.sock.settimeout(None)
    except BaseException:
        conn.close(polite=False)
        raise
    return Session(conn)


def keeper(sessions: list[Session], interval: float) -> None:
    """Forever: every ``interval`` seconds, `Session.keep_alive` on every session not in a call."""
    while True:
        gevent.sleep(interval)
        for session in sessions:
            try:
                session.keep_alive()
            except Closed:
                pass  # the next call on it reports it


def in_parallel(count: int, work: Callable[[int], Any], limit: float, concurrency: int = 100) -> list[Any]:
    """``work(i)`` for i in range(count), ``concurrency`` at a time; raises the first failure."""
    gate = Semaphore(concurrency)

    def one(i: int) -> Any:
        with gate:
            return work(i)

    greenlets = [gevent.spawn(one, i) for i in range(count)]
    gevent.joinall(greenlets, timeout=limit)
    failed = [g for g in greenlets if not g.successful()]
    if failed:
        gevent.killall(greenlets, timeout=5)
        exc = failed[0].exception
        raise RuntimeError(f"{len(failed)} of {count} failed or timed out: {exc!r}")
    return [g.value for g in greenlets]


def mem_channels(prefix: str, mode: str, index: int, m: int) -> list[str]:
    if mode == "shared":
        return [f"{prefix}m:{k}" for k in range(m)]
    return [f"{prefix}m:{index}:{k}" for k in range(m)]


def fill(sessions: list[Session], route: str, mode: str, m: int, prefix: str) -> dict[str, Any]:
    errors: dict[str, int] = {}
    t0 = time.perf_counter()
    done = in_parallel(
        len(sessions),
        lambda i: sessions[i].call(route, mem_channels(prefix, mode, i, m), errors),
        STEP_LIMIT,
    )
    return {"pairs": sum(done), "errors": errors, "elapsed": time.perf_counter() - t0}


def churn(
    sessions: list[Session], mode: str, clients: int, seconds: float, max_pairs: int, prefix: str, held: int
) -> dict[str, Any]:
    """``clients`` sessions looping over pairs; ``prefix`` is unique to this phase (``<p>c<n>:``)."""
    errors: dict[str, int] = {}
    subs: list[float] = []
    unsubs: list[float] = []
    pairs = [0]
    perf = time.perf_counter
    start = perf()
    deadline = start + seconds
    per_client = max(1, max_pairs // max(1, clients))

    def loop(i: int) -> None:
        session = sessions[i]
        for r in range(per_client):
            if perf() >= deadline:
                return
            channel = f"{prefix}{i}:{r}" if mode == "unique" else f"{prefix}{(i + r) % held}"
            t0 = perf()
            ok = session.call("rt.subscribe", [channel], errors)
            t1 = perf()
            ok += session.call("rt.unsubscribe", [channel], errors)
            t2 = perf()
            subs.append(t1 - t0)
            unsubs.append(t2 - t1)
            if ok == 2:
                pairs[0] += 1

    cpu0 = cpu_now()
    in_parallel(clients, loop, seconds + 60, concurrency=clients)
    elapsed = perf() - start
    cpu = cpu_now() - cpu0
    subs.sort()
    unsubs.sort()
    return {
        "pairs": pairs[0],
        "attempts": len(subs),
        "elapsed": elapsed,
        "rate": pairs[0] / elapsed if elapsed > 0 else 0.0,
        "errors": errors,
        "sub_p50_ms": percentile(subs, 0.50) * 1000,
        "sub_p99_ms": percentile(subs, 0.99) * 1000,
        "unsub_p50_ms": percentile(unsubs, 0.50) * 1000,
        "unsub_p99_ms": percentile(unsubs, 0.99) * 1000,
        "client_cpu": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.churn_client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--prefix", required=True, help="start of every channel name (unique per run)")
    parser.add_argument("--timeout", type=float, default=30.0, help="connect / handshake bound, seconds")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on any wait for the driver")
    args = parser.parse_args(argv)
    raise_nofile(args.sessions + 1000)
    gevent.spawn_later(args.max_seconds * 2 + 300, os._exit, 3)  # never outlive a lost driver

    control = Control()
    sessions = in_parallel(
        args.sessions,
        lambda i: open_session(args.port, f"s{i}", args.timeout),
        args.timeout * (args.sessions / 100 + 2),
    )
    holder = open_session(args.port, "holder", args.timeout)
    held = phases = 0
    keep = gevent.spawn(keeper, [*sessions, holder], KEEP_ALIVE_SECONDS)
    emit("ready", sessions=len(sessions))
    try:
        while True:
            words = control.line(args.max_seconds).split()
            if not words:
                continue
            try:
                if words[0] in ("fill", "empty"):
                    route = "rt.subscribe" if words[0] == "fill" else "rt.unsubscribe"
                    result = fill(sessions, route, words[1], int(words[2]), args.prefix)
                    emit("filled" if words[0] == "fill" else "emptied", **result)
                elif words[0] == "hold":
                    held = int(words[1])
                    errors: dict[str, int] = {}
                    ok = holder.call("rt.subscribe", [f"{args.prefix}h:{k}" for k in range(held)], errors)
                    emit("held", pairs=ok, errors=errors)
                elif words[0] == "churn":
                    mode, clients, seconds, max_pairs = words[1], int(words[2]), float(words[3]), int(words[4])
                    if mode == "shared" and not held:
                        raise ValueError("churn shared needs channels held first (hold K)")
                    clients = min(clients, len(sessions))
                    phases += 1
                    names = f"{args.prefix}c{phases}:" if mode == "unique" else f"{args.prefix}h:"
                    emit("churned", **churn(sessions, mode, clients, seconds, max_pairs, names, held))
                elif words[0] == "close":
                    break
                else:
                    emit("error", error=f"unknown command {words[0]!r}")
            except (Closed, OSError, RuntimeError, ValueError, IndexError) as exc:
                emit("error", error=f"{type(exc).__name__}: {str(exc)[:200]}")
    finally:
        keep.kill()
        for session in [*sessions, holder]:
            session.conn.close()
    emit("closed", stray=sum(session.stray for session in [*sessions, holder]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

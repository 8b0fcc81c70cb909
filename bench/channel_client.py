"""The listening clients of the ``channels`` scenario: subscribers of one channel over two nodes.

Run as its own process (the driver pins it to CPU 1)::

    python -m bench.channel_client KIND --ports PA PB --clients 1000 --channel bench:room \\
        --count 200 --size 200

``KIND`` is ``rtgevent`` (a WebSocket to ``/ws?access_token=c<i>`` of a `bench.channel_node`,
then ``rt.subscribe`` ``{"channel": C}`` and its ``rt.reply``) or ``socketio`` (a Socket.IO
connection to a `bench.sio_node`, then the event ``join`` with the room's name and its ack).
The first half of the clients go to the first port, the second half to the second.  Every
subscription is confirmed before ``ready``.

The receive phase is `bench.receiver`'s: one level-triggered ``epoll`` loop over the raw file
descriptors; every ``--clients / --probes``-th connection (half of them on each node) is a
probe, read the moment data arrives and stamped with ``CLOCK_MONOTONIC``; the others are read
every ``--sweep`` seconds and count for lost and duplicate messages only.  The publications are
started by ``GET /_bench/publish`` on the first port (the publishing node): a warm-up of
``--warmup`` publications first (not measured), then the measured ``--count``.

Then, on ``paced``, a second phase of ``--paced`` publications due ``1 / --paced-rate`` s apart,
for latency without a backlog.

With ``--channels K`` (K > 1) client i subscribes to channel ``<--channel><i mod K>`` instead,
the publishing node goes round the K channels (`bench.channel_node.channel_names`), and each
client gets every K-th publication: the counts (``--count``, ``--warmup``, ``--paced``) must
be multiples of K.  ``--publisher`` is the publishing node's port when it is not the first of
``--ports`` (it then holds no subscriber).  Driver link as in `bench.loadgen`::

    -> {"event": "ready", ...}   <- go   -> {"event": "done", ...figures...}
    <- paced   -> {"event": "paced", ...figures...}   (optional)
    <- close   -> {"event": "closed"}

Bounded: connects and handshakes by a socket timeout, each receive phase by ``--time-limit``,
the whole process by ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import urllib.parse
from typing import Any

import gevent
from gevent import socket
from gevent.lock import Semaphore

from bench.loadgen import Control, SocketIOProtocol, WSConn, connect, cpu_now, emit, percentile
from bench.proc import raise_nofile
from bench.receiver import Figures, Stream, figures, read_phase


def subscribe_rtgevent(port: int, index: int, channel: str, timeout: float) -> WSConn:
    conn = connect(port, f"/ws?access_token=c{index}", timeout)
    try:
        conn.sock.settimeout(timeout)
        conn.send(json.dumps({"id": "s", "route": "rt.subscribe", "data": {"channel": channel}}).encode())
        while True:
            msg = json.loads(conn.recv())
            if msg.get("metadata", {}).get("in_reply_to") == "s":
                break
        if msg.get("route") != "rt.reply" or msg.get("data", {}).get("channel") != channel:
            raise ValueError(f"rt.subscribe answered {str(msg)[:120]}")
        conn.sock.settimeout(None)
    except BaseException:
        conn.close(polite=False)
        raise
    return conn


def subscribe_socketio(port: int, index: int, channel: str, timeout: float) -> WSConn:
    proto = SocketIOProtocol(b"")
    conn = connect(port, proto.path, timeout)
    try:
        conn.sock.settimeout(timeout)
        proto.handshake(conn)
        conn.send(b"421" + json.dumps(["join", channel]).encode())
        while True:
            answer = conn.recv()
            if answer == b"2":
                conn.send(b"3")
                continue
            if answer.startswith(b"431"):
                break
        if json.loads(answer[3:]) != ["ok"]:
            raise ValueError(f"join answered {answer[:120]!r}")
        conn.sock.settimeout(None)
    except BaseException:
        conn.close(polite=False)
        raise
    return conn


def channel_of(args: argparse.Namespace, index: int) -> str:
    """The channel client ``index`` subscribes to."""
    return args.channel if args.channels <= 1 else f"{args.channel}{index % args.channels}"


def connect_all(args: argparse.Namespace) -> list[tuple[int, WSConn]]:
    """Every client connected and subscribed; (port index, connection), in client order."""
    gate = Semaphore(100)
    subscribe = subscribe_rtgevent if args.kind == "rtgevent" else subscribe_socketio
    ports = args.ports

    def one(index: int) -> tuple[int, WSConn]:
        node = index * len(ports) // args.clients
        with gate:
            return node, subscribe(ports[node], index, channel_of(args, index), args.timeout)

    greenlets = [gevent.spawn(one, i) for i in range(args.clients)]
    gevent.joinall(greenlets, timeout=args.timeout * (args.clients / 100 + 2))
    failed = [g for g in greenlets if not g.successful()]
    if failed:
        gevent.killall(greenlets, timeout=5)
        for g in greenlets:
            if g.successful():
                g.value[1].close(polite=False)
        raise RuntimeError(f"{len(failed)} of {args.clients} subscriptions failed: {failed[0].exception!r}")
    return [g.value for g in greenlets]


def trigger(
    port: int, channel: str, count: int, size: int, timeout: float, interval: float = 0.0, channels: int = 1
) -> None:
    """Ask the publishing node to start; raises unless it says it started."""
    fields: dict[str, Any] = {"channel": channel, "count": count, "size": size, "interval": interval}
    if channels > 1:
        fields["channels"] = channels
    query = urllib.parse.urlencode(fields)
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(f"GET /_bench/publish?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    finally:
        sock.close()
    status = answer.split(b"\r\n", 1)[0]
    if b" 200 " not in status or b'"started": true' not in answer:
        raise RuntimeError(f"the node refused to publish: {answer[:200].decode(errors='replace')!r}")


def latency(result: Figures) -> dict[str, float]:
    lat = result.latencies
    return {
        "p50_ms": percentile(lat, 0.50) * 1000,
        "p99_ms": percentile(lat, 0.99) * 1000,
        "max_ms": (lat[-1] * 1000) if lat else float("nan"),
    }


def phase_figures(streams: list[Stream], count: int, stride: int) -> Figures:
    """`bench.receiver.figures` of a phase of ``count`` publications, each stream getting every ``stride``-th.

    With a stride the publications a stream missed are counted here (what it got minus what it
    should have), not by index as `figures` does for a stream that gets them all.
    """
    if stride <= 1:
        return figures(streams, count)
    result = figures(streams, count // stride)
    result.lost = (count // stride) * len(streams) - result.received
    return result


def run(args: argparse.Namespace) -> None:
    engineio = args.kind == "socketio"
    control = Control()
    stride = max(1, args.channels)
    publisher = args.publisher or args.ports[0]
    opened = connect_all(args)
    every = max(1, len(opened) // max(1, args.probes))
    streams = [Stream(conn, i % every == 0, bytes(conn.buf)) for i, (_, conn) in enumerate(opened)]
    nodes = [node for node, _ in opened]
    per_node = {n: [s for s, node in zip(streams, nodes, strict=True) if node == n] for n in sorted(set(nodes))}

    # warm-up: the first publications' lazy imports, allocations and broker paths are not measured
    trigger(publisher, args.channel, args.warmup, args.size, args.timeout, channels=stride)
    read_phase(streams, args.warmup // stride, args.time_limit, args.sweep, engineio)
    warm = phase_figures(streams, args.warmup, stride)
    for stream in streams:
        stream.arrivals.clear()
    emit(
        "ready",
        clients=len(streams),
        per_node=[len(per_node[n]) for n in per_node],
        probes=sum(1 for s in streams if s.probe),
        warmup_lost=warm.lost,
        warmup_closed=sum(1 for s in streams if s.closed),
    )
    control.wait("go", args.max_seconds)

    gc.disable()  # a collection pass over the arrivals would stall every probe at once
    cpu0 = cpu_now()
    trigger(publisher, args.channel, args.count, args.size, args.timeout, channels=stride)
    elapsed = read_phase(streams, args.count // stride, args.time_limit, args.sweep, engineio)
    cpu = cpu_now() - cpu0
    gc.enable()
    result = phase_figures(streams, args.count, stride)
    span = result.last_arrival - result.first_sent
    by_node: dict[str, Any] = {}
    for n, group in per_node.items():
        part = phase_figures(group, args.count, stride)
        by_node[str(n)] = {"received": part.received, "lost": part.lost, **latency(part)}
    emit(
        "done",
        expected=args.count // stride * len(streams),
        received=result.received,
        lost=result.lost,
        duplicates=result.duplicates,
        unreadable=result.unreadable,
        elapsed=elapsed,
        rate=result.received / span if span > 0 else 0.0,
        **latency(result),
        by_node=by_node,
        readers_closed=sorted(s.closed for s in streams if s.closed),
        client_cpu=cpu,
    )
    if control.line(args.max_seconds) == "paced":
        for stream in streams:
            stream.arrivals.clear()
        interval = 1.0 / args.paced_rate
        trigger(publisher, args.channel, args.paced, args.size, args.timeout, interval, stride)
        read_phase(streams, args.paced // stride, args.paced * interval + args.time_limit, args.sweep, engineio)
        result = phase_figures(streams, args.paced, stride)
        by_node = {}
        for n, group in per_node.items():
            part = phase_figures(group, args.paced, stride)
            by_node[str(n)] = {"received": part.received, "lost": part.lost, **latency(part)}
        emit(
            "paced",
            expected=args.paced // stride * len(streams),
            received=result.received,
            lost=result.lost,
            duplicates=result.duplicates,
            **latency(result),
            by_node=by_node,
        )
        control.wait("close", args.max_seconds)
    for stream in streams:
        stream.conn.close(polite=not stream.closed)
    emit("closed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.channel_client", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("rtgevent", "socketio"))
    parser.add_argument("--ports", type=int, nargs="+", required=True, help="the nodes; the first one publishes")
    parser.add_argument("--clients", type=int, required=True, help="subscribers, split evenly over the ports")
    parser.add_argument("--channel", required=True, help="the channel (Socket.IO: the room)")
    parser.add_argument("--channels", type=int, default=1, help="K > 1: client i on channel <channel><i mod K>")
    parser.add_argument("--publisher", type=int, default=0, help="the publishing node's port (default: the first)")
    parser.add_argument("--probes", type=int, default=50, help="subscribers read at once; latency is theirs")
    parser.add_argument("--sweep", type=float, default=0.05, help="seconds between reads of the others")
    parser.add_argument("--count", type=int, required=True, help="publications in the measured phase")
    parser.add_argument("--size", type=int, default=200, help="bytes of each publication's data")
    parser.add_argument("--warmup", type=int, default=5, help="publications before the measured phase")
    parser.add_argument("--paced", type=int, default=100, help="publications of the paced phase")
    parser.add_argument("--paced-rate", type=float, default=20.0, help="publications per second, paced phase")
    parser.add_argument("--time-limit", type=float, default=60.0, help="bound on each receive phase, seconds")
    parser.add_argument("--timeout", type=float, default=30.0, help="connect / handshake bound, seconds")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on any wait for the driver")
    args = parser.parse_args(argv)
    if args.channels > 1 and any(n % args.channels for n in (args.count, args.warmup, args.paced)):
        parser.error("--count, --warmup and --paced must be multiples of --channels")
    if args.channels > 1 and args.kind != "rtgevent":
        parser.error("--channels is for rtgevent nodes only")
    raise_nofile(args.clients + 1000)
    gevent.spawn_later(args.max_seconds * 2 + 300, os._exit, 3)  # never outlive a lost driver
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

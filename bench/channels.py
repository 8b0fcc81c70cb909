"""The ``channels`` and ``churn`` scenarios: channels (rooms) across two nodes, and joining and leaving them.

``channels``: 1,000 subscribers of one channel (``--quick``: 500), half on each of two nodes
(both ``taskset -c 0``), one listening client process (`bench.channel_client`, ``taskset -c 1``);
the first node publishes 200 messages of 200 B back to back (``--quick``: 100).  rtgevent: two
``rtgevent serve bench.channel_node:make_node()`` with `RedisBroker` and `RedisPresence` in a
unique namespace, clients subscribing with ``rt.subscribe``, ``rt.publish`` on node A.
Flask-SocketIO: two `bench.sio_node` processes sharing a Redis message queue (a pub/sub channel
unique to the run), clients joining the room with an event that calls ``join_room``,
``socketio.emit(..., to=room)`` on process A.  Figures: server CPU per delivery (both
processes), deliveries per second, latency (arrival minus the stamp in the payload), lost.

``churn``: one node (``taskset -c 0``) per broker (`RedisBroker`, `KombuBroker` on RabbitMQ),
one client process (`bench.churn_client`, ``taskset -c 1``).  Sustained subscribe+unsubscribe
pairs per second, with channels unique to each pair (every pair opens and closes the node's
broker subscription: counted by the node) and with channels the node already holds (no broker
work); and memory per (session, channel) pair: RSS with N sessions holding M channels each,
minus RSS with the same N sessions and no channel, over N x M, for channels shared by all the
sessions and for channels of their own (each one a broker subscription), each in a fresh node.

Everything is fresh per (scenario, server or broker, run): processes, namespace, channel names;
stopped by PID and cleaned up (`bench.cluster.cleanup`) in ``finally`` blocks.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from bench.cluster import (
    AMQP_URL,
    BROKERS,
    PRESENCE_URL,
    REDIS_URL,
    Child,
    Meter,
    Node,
    cleanup,
    pinned,
)
from bench.common import LOADGEN_CPU, SERVER_CPU, BenchError, delivery_figures, fmt, median
from bench.proc import rss_kib
from rtgevent.channels import channel_topic

NODE_APP = "bench.channel_node:make_node()"
CHANNEL = "bench:room"
#: Flask-SocketIO's message queue: pub/sub is not per database, so the channel is unique per run
SIO_QUEUE = "redis://127.0.0.1:6379/0"
KINDS = ("rtgevent", "socketio")
LABELS = {"rtgevent": "rtgevent", "socketio": "Flask-SocketIO"}
#: the brokers of ``churn``
CHURN_BROKERS = ("redis", "kombu-amqp")
#: goals of the issue
GOAL_CPU_RATIO = 0.5
GOAL_P99_RATIO = 0.25
GOAL_PAIR_BYTES = 1000.0
#: what every channel's broker topic starts with (RedisBroker: after ``<namespace>.``)
TOPIC_PREFIX = channel_topic("x").removesuffix("x")
#: how long the node is left alone before its RSS is read (after a gc.collect())
SETTLE_SECONDS = 1.0


@dataclass(frozen=True)
class ChannelsPlan:
    clients: int
    count: int
    size: int
    time_limit: float
    #: publications of the paced phase (latency without a backlog), and their rate
    paced: int = 100
    paced_rate: float = 20.0
    warmup: int = 5
    probes: int = 50


@dataclass(frozen=True)
class ChurnPlan:
    #: sessions of the memory phases (and of the client process in the churn phases)
    sessions: int
    #: channels per session in the memory phases
    channels: int
    #: sessions that churn, one pair at a time each
    churners: int
    #: bounds of one churn phase
    seconds: float
    max_pairs: int
    #: channels the holder keeps for the shared churn phase
    held: int = 50
    #: the solo phase: one session alone, pairs of new channels one after the other (their latency)
    solo_pairs: int = 50
    solo_seconds: float = 10.0


CHANNELS_FULL = ChannelsPlan(clients=1000, count=200, size=200, time_limit=120.0)
CHANNELS_QUICK = ChannelsPlan(clients=500, count=100, size=200, time_limit=60.0, paced=50)
CHURN_FULL = ChurnPlan(sessions=1000, channels=20, churners=1000, seconds=5.0, max_pairs=200_000)
CHURN_QUICK = ChurnPlan(sessions=500, channels=10, churners=500, seconds=3.0, max_pairs=100_000)


# ---------------------------------------------------------------------- processes


class SioNode(Node):
    """A Flask-SocketIO process, ``python -m bench.sio_node``, on 127.0.0.1, any free port."""

    def __init__(self, name: str, queue: str, channel: str) -> None:
        Child.__init__(
            self,
            name,
            ["-m", "bench.sio_node", "--port", "0", "--queue", queue, "--channel", channel],
            SERVER_CPU,
        )
        self.port = 0

    def wait_serving(self, timeout: float = 60.0) -> None:
        line = self.lines.line(timeout)
        if not line.startswith("READY "):
            raise BenchError(f"{self.name}: unexpected first line {line!r}")
        self.port = int(line.split()[1])


def _rss_settled(node: Node) -> int:
    """The node's RSS (KiB) after a ``gc.collect()`` there and ``SETTLE_SECONDS`` of quiet."""
    node.call("gc")
    time.sleep(SETTLE_SECONDS)
    return rss_kib(node.proc.pid)


def _wait_stat(node: Node, key: str, want: int, timeout: float = 15.0) -> int:
    """Poll the node's stats until ``key`` is ``want`` (or the timeout); the last value."""
    deadline = time.monotonic() + timeout
    value = -1
    while True:
        value = int(node.call("stats").get(key, -1))
        if value == want or time.monotonic() >= deadline:
            return value
        time.sleep(0.2)


def _pubsub_left(namespace: str, timeout: float = 10.0) -> int:
    """Channels of ``namespace`` that still have a Redis pub/sub subscriber after at most ``timeout`` s.

    The node unsubscribes a channel at once, but its consumer sends the ``UNSUBSCRIBE`` on its
    next round (within its poll interval): the last ones need a moment.
    """
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = len(client.pubsub_channels(f"{namespace}.{TOPIC_PREFIX}*"))
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.2)
    finally:
        client.close()


# ---------------------------------------------------------------------- channels


def measure_channels(kind: str, plan: ChannelsPlan) -> dict[str, Any]:
    """Two nodes, the subscribers split over them, node A publishing back to back."""
    namespace = f"rtgbench-{uuid.uuid4().hex[:12]}"
    result: dict[str, Any] = {"scenario": "channels", "kind": kind, "namespace": namespace}
    with pinned(LOADGEN_CPU), contextlib.ExitStack() as stack:
        nodes: list[Node]
        if kind == "rtgevent":
            stack.callback(lambda: result.update(cleanup(namespace, False, [])))
            spec = {"broker": REDIS_URL, "presence": PRESENCE_URL, "namespace": namespace}
            nodes = [Node("node A", spec, NODE_APP), Node("node B", spec, NODE_APP)]
        else:
            nodes = [
                SioNode("Flask-SocketIO A", SIO_QUEUE, namespace),
                SioNode("Flask-SocketIO B", SIO_QUEUE, namespace),
            ]
        for node in nodes:
            stack.callback(node.close)
        for node in nodes:
            node.wait_serving()
        a, b = nodes
        client = Child(
            "client",
            [
                "-m",
                "bench.channel_client",
                kind,
                "--ports",
                str(a.port),
                str(b.port),
                "--clients",
                str(plan.clients),
                "--channel",
                CHANNEL,
                "--count",
                str(plan.count),
                "--size",
                str(plan.size),
                "--warmup",
                str(plan.warmup),
                "--probes",
                str(plan.probes),
                "--paced",
                str(plan.paced),
                "--paced-rate",
                str(plan.paced_rate),
                "--time-limit",
                str(plan.time_limit),
            ],
            LOADGEN_CPU,
        )
        stack.callback(client.close)
        ready = client.lines.event("ready", 300)
        before = [node.call("stats", channel=CHANNEL) for node in nodes]
        meter = Meter({"A": a, "B": b, "client": client}, services=("redis-server",))
        mark = meter.mark()
        client.tell("go")
        done = client.lines.event("done", plan.time_limit + 120)
        cpu = meter.delta(mark, meter.mark())
        after = [node.call("stats") for node in nodes]
        client.tell("paced")
        paced = client.lines.event("paced", plan.paced / plan.paced_rate + plan.time_limit + 120)
        client.tell("close")
        client.lines.event("closed", 60)
        result["logs"] = {node.name: node.problems()[:10] for node in nodes}
        result["logs"]["client"] = client.problems()[:10]
    n = max(1, done["received"])
    on_a, on_b = done["by_node"]["0"], done["by_node"]["1"]
    result.update(
        {
            "clients": ready["clients"],
            "per_node": ready["per_node"],
            "members": [s.get("members") for s in before],
            "warmup_lost": ready["warmup_lost"],
            "count": plan.count,
            **delivery_figures(done),
            "a_p50_ms": on_a["p50_ms"],
            "a_p99_ms": on_a["p99_ms"],
            "b_p50_ms": on_b["p50_ms"],
            "b_p99_ms": on_b["p99_ms"],
            "server_cpu_us_per_delivery": (cpu["A"] + cpu["B"]) / n * 1e6,
            "a_cpu_us_per_delivery": cpu["A"] / max(1, on_a["received"]) * 1e6,
            "b_cpu_us_per_delivery": cpu["B"] / max(1, on_b["received"]) * 1e6,
            "redis_cpu_us_per_publication": cpu["services"] / max(1, plan.count) * 1e6,
            "client_cpu_us_per_delivery": done["client_cpu"] / n * 1e6,
            "client_cpu_share": cpu["client"] / max(cpu["wall"], 1e-9),
            "published": after[0].get("published"),
            "publish_seconds": after[0].get("publish_seconds"),
            "publish_errors": after[0].get("publish_errors", {}),
            "other_cpus": cpu["other_cpus"],
            "steal_cpus": cpu["steal_cpus"],
            "paced_expected": paced["expected"],
            "paced_lost": paced["lost"],
            "paced_duplicates": paced["duplicates"],
            "paced_p50_ms": paced["p50_ms"],
            "paced_p99_ms": paced["p99_ms"],
            "paced_a_p99_ms": paced["by_node"]["0"]["p99_ms"],
            "paced_b_p50_ms": paced["by_node"]["1"]["p50_ms"],
            "paced_b_p99_ms": paced["by_node"]["1"]["p99_ms"],
        }
    )
    if "messages_out" in after[0]:  # rtgevent counts the frames it wrote
        result["server_messages_out"] = sum(
            int(x["messages_out"]) - int(y["messages_out"]) for x, y in zip(after, before, strict=True)
        )
    return result


def channels_progress(r: dict[str, Any]) -> str:
    return (
        f"channels {LABELS[r['kind']]:<15} {r['rate']:8.0f} deliveries/s p50 {r['p50_ms']:7.2f} ms "
        f"p99 {r['p99_ms']:7.2f} ms lost {r['lost']}  servers {r['server_cpu_us_per_delivery']:5.1f} µs/delivery  "
        f"client {r['client_cpu_us_per_delivery']:4.1f} µs/delivery"
    )


# ---------------------------------------------------------------------- churn


def _churn_client(node: Node, plan: ChurnPlan, prefix: str) -> Child:
    return Child(
        "client",
        ["-m", "bench.churn_client", "--port", str(node.port), "--sessions", str(plan.sessions), "--prefix", prefix],
        LOADGEN_CPU,
    )


def _command(client: Child, line: str, answer: str, timeout: float) -> dict[str, Any]:
    """Tell the client ``line``; its answer ``answer``, or `BenchError` if it answers ``error``."""
    client.tell(line)
    deadline = time.monotonic() + timeout
    while True:
        text = client.lines.line(max(0.0, deadline - time.monotonic()))
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("event") == answer:
            return value
        if isinstance(value, dict) and value.get("event") == "error":
            raise BenchError(f"{client.name}: {value.get('error')}")


def _memory(node: Node, client: Child, mode: str, plan: ChurnPlan, result: dict[str, Any]) -> None:
    """RSS with the sessions alone, with M channels each, after they left them again."""
    pairs = plan.sessions * plan.channels
    rss0 = _rss_settled(node)
    filled = _command(client, f"fill {mode} {plan.channels}", "filled", 400)
    rss1 = _rss_settled(node)
    stats = node.call("stats")
    emptied = _command(client, f"empty {mode} {plan.channels}", "emptied", 400)
    rss2 = _rss_settled(node)
    result.update(
        {
            f"mem_{mode}_rss0_kib": rss0,
            f"mem_{mode}_rss1_kib": rss1,
            f"mem_{mode}_rss2_kib": rss2,
            f"mem_{mode}_bytes_per_pair": (rss1 - rss0) * 1024 / pairs,
            f"mem_{mode}_retained_bytes_per_pair": (rss2 - rss0) * 1024 / pairs,
            f"mem_{mode}_pairs": filled["pairs"],
            f"mem_{mode}_pairs_planned": pairs,
            f"mem_{mode}_errors": {**filled["errors"], **emptied["errors"]},
            f"mem_{mode}_fill_rate": filled["pairs"] / filled["elapsed"] if filled["elapsed"] > 0 else float("nan"),
            f"mem_{mode}_subscribed": stats.get("subscribed"),
            f"mem_{mode}_hub_channels": stats.get("hub_channels"),
            f"mem_{mode}_subscribed_after": _wait_stat(node, "subscribed", 0),
        }
    )


def _churn(
    node: Node,
    client: Child,
    phase: str,
    command: str,
    seconds: float,
    result: dict[str, Any],
    meter: Meter,
) -> None:
    """One churn phase (client command ``command``); its figures as ``churn_<phase>_...``."""
    before = node.call("stats")
    mark = meter.mark()
    got = _command(client, command, "churned", seconds + 120)
    cpu = meter.delta(mark, meter.mark())
    after = node.call("stats")
    n = max(1, got["pairs"])
    prefix = f"churn_{phase}_"
    for key in ("pairs", "attempts", "elapsed", "rate", "errors", "sub_p50_ms", "sub_p99_ms", "unsub_p50_ms"):
        result[prefix + key] = got[key]
    result[prefix + "unsub_p99_ms"] = got["unsub_p99_ms"]
    result[prefix + "node_cpu_us_per_pair"] = cpu["node"] / n * 1e6
    result[prefix + "services_cpu_us_per_pair"] = cpu["services"] / n * 1e6
    result[prefix + "node_cpu_share"] = cpu["node"] / max(cpu["wall"], 1e-9)
    result[prefix + "client_cpu_share"] = cpu["client"] / max(cpu["wall"], 1e-9)
    result[prefix + "broker_subscribes"] = after["broker_subscribes"] - before["broker_subscribes"]
    result[prefix + "broker_unsubscribes"] = after["broker_unsubscribes"] - before["broker_unsubscribes"]
    result[prefix + "other_cpus"] = cpu["other_cpus"]
    result[prefix + "steal_cpus"] = cpu["steal_cpus"]


def measure_churn(broker: str, plan: ChurnPlan) -> dict[str, Any]:
    """Node 1: memory with shared channels, then churn unique and shared; node 2: memory with unique channels."""
    url = BROKERS[broker][1]
    amqp = url.startswith("amqp")
    result: dict[str, Any] = {"scenario": "churn", "broker": broker, "logs": {}}
    for step, (count, memory_mode) in enumerate(((True, "shared"), (False, "unique")), 1):
        namespace = f"rtgbench-{uuid.uuid4().hex[:12]}"
        prefix = f"{namespace}:"
        queues: list[str] = []
        spec = {"broker": url, "presence": PRESENCE_URL, "namespace": namespace, "count": count}
        with pinned(LOADGEN_CPU), contextlib.ExitStack() as stack:
            stack.callback(_cleanup_into, result, namespace, amqp, queues)
            node = Node(f"node {step}", spec, NODE_APP)
            stack.callback(node.close)
            node.wait_serving()
            queue = node.call("stats").get("queue")
            if queue:
                queues.append(str(queue))
            client = _churn_client(node, plan, prefix)
            stack.callback(client.close)
            client.lines.event("ready", 120)
            _memory(node, client, memory_mode, plan, result)
            if step == 1:
                meter = Meter({"node": node, "client": client})
                solo = f"churn unique 1 {plan.solo_seconds} {plan.solo_pairs}"
                _churn(node, client, "solo", solo, plan.solo_seconds, result, meter)
                many = f"{plan.churners} {plan.seconds} {plan.max_pairs}"
                _churn(node, client, "unique", f"churn unique {many}", plan.seconds, result, meter)
                result["churn_unique_subscribed_after"] = _wait_stat(node, "subscribed", 0)
                if not amqp:
                    result["churn_unique_pubsub_left"] = _pubsub_left(namespace)
                held = _command(client, f"hold {plan.held}", "held", 120)
                result["held"] = held["pairs"]
                _churn(node, client, "shared", f"churn shared {many}", plan.seconds, result, meter)
            client.tell("close")
            result[f"stray_{step}"] = client.lines.event("closed", 60).get("stray", 0)
            result["logs"][f"node {step}"] = node.problems()[:10]
            result["logs"][f"client {step}"] = client.problems()[:10]
    result["other_cpus"] = max(result[f"churn_{phase}_other_cpus"] for phase in ("solo", "unique", "shared"))
    result["steal_cpus"] = max(result[f"churn_{phase}_steal_cpus"] for phase in ("solo", "unique", "shared"))
    return result


def _cleanup_into(result: dict[str, Any], namespace: str, amqp: bool, queues: list[str]) -> None:
    """Clean ``namespace`` up; what was left is summed over the measurement's namespaces (-1: unknown)."""
    cleaned = cleanup(namespace, amqp, queues)
    before, now = result.get("left_keys", 0), cleaned["left_keys"]
    result["left_keys"] = -1 if before < 0 or now < 0 else before + now
    result["cleanup_errors"] = [*result.get("cleanup_errors", []), *cleaned["cleanup_errors"]]


def churn_progress(r: dict[str, Any]) -> str:
    label = BROKERS[r["broker"]][0]
    return (
        f"churn    {label:<22} solo sub p50 {r['churn_solo_sub_p50_ms']:5.1f} ms  "
        f"unique {r['churn_unique_rate']:6.0f} pairs/s "
        f"({r['churn_unique_node_cpu_us_per_pair']:4.0f} µs/pair, sub p50 {r['churn_unique_sub_p50_ms']:5.1f} ms)  "
        f"shared {r['churn_shared_rate']:6.0f} pairs/s ({r['churn_shared_node_cpu_us_per_pair']:4.0f} µs/pair)  "
        f"memory shared {r['mem_shared_bytes_per_pair']:5.0f} B/pair, "
        f"unique {r['mem_unique_bytes_per_pair']:5.0f} B/pair"
    )


# ---------------------------------------------------------------------- report


def _median(results: list[dict[str, Any]], key: str, **where: str) -> float:
    return median([r[key] for r in results if all(r.get(k) == v for k, v in where.items())])


def _ratio(a: float, b: float) -> str:
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


CHANNELS_FIGURES = (
    ("rate", "deliveries/s"),
    ("p50_ms", "latency p50 (ms)"),
    ("p99_ms", "latency p99 (ms)"),
    ("max_ms", "latency max (ms)"),
    ("a_p50_ms", "latency p50, subscribers on the publishing node A (ms)"),
    ("a_p99_ms", "latency p99, subscribers on node A (ms)"),
    ("b_p50_ms", "latency p50, subscribers on node B, through Redis (ms)"),
    ("b_p99_ms", "latency p99, subscribers on node B (ms)"),
    ("lost", "lost"),
    ("paced_p50_ms", "paced: latency p50 (ms)"),
    ("paced_p99_ms", "paced: latency p99 (ms)"),
    ("paced_a_p99_ms", "paced: latency p99, subscribers on node A (ms)"),
    ("paced_b_p50_ms", "paced: latency p50, subscribers on node B (ms)"),
    ("paced_b_p99_ms", "paced: latency p99, subscribers on node B (ms)"),
    ("paced_lost", "paced: lost"),
    ("server_cpu_us_per_delivery", "server CPU per delivery, both nodes (µs)"),
    ("a_cpu_us_per_delivery", "node A CPU per delivery to its subscribers (µs)"),
    ("b_cpu_us_per_delivery", "node B CPU per delivery to its subscribers (µs)"),
    ("client_cpu_us_per_delivery", "client CPU per delivery (µs)"),
)


def channels_heading(plan: ChannelsPlan) -> str:
    return (
        f"Channels across two nodes: {plan.clients:,} subscribers of one channel, half on each node; node A "
        f"publishes {plan.count} messages of {plan.size} B back to back. rtgevent: RedisBroker + RedisPresence, "
        f"rt.subscribe / rt.publish; Flask-SocketIO: rooms over a Redis message queue, join_room / "
        f"emit(to=room) (goals: server CPU per delivery <= {GOAL_CPU_RATIO:g}x, p99 <= {GOAL_P99_RATIO:g}x "
        f"Flask-SocketIO)"
    )


def channels_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| figure | rtgevent | Flask-SocketIO | rtgevent / Flask-SocketIO |", "| --- | ---: | ---: | ---: |"]
    for key, label in CHANNELS_FIGURES:
        rt, sio = _median(results, key, kind="rtgevent"), _median(results, key, kind="socketio")
        if key in ("lost", "paced_lost"):
            cells = [f"{v:,.0f}" if math.isfinite(v) else "n/a" for v in (rt, sio)]
            lines.append(f"| {label} | {cells[0]} | {cells[1]} | |")
        else:
            lines.append(f"| {label} | {fmt(rt)} | {fmt(sio)} | {_ratio(rt, sio)} |")
    return lines


def channels_targets(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for key, label, goal in (
        ("server_cpu_us_per_delivery", "server CPU per delivery", GOAL_CPU_RATIO),
        ("p99_ms", "latency p99", GOAL_P99_RATIO),
    ):
        rt, sio = _median(results, key, kind="rtgevent"), _median(results, key, kind="socketio")
        value = rt / sio if sio and math.isfinite(rt) and math.isfinite(sio) else float("nan")
        verdict = "met" if value <= goal else "MISSED"
        lines.append(f"Target channels {label} <= {goal:g}x Flask-SocketIO: {value:.2f}x: {verdict}")
    return lines


def _churn_figures(plan: ChurnPlan) -> tuple[tuple[str, str, str], ...]:
    pairs = f"{plan.sessions:,} sessions x {plan.channels}"
    return (
        ("churn_solo_sub_p50_ms", "rt.subscribe reply p50, one session alone, a new channel each time (ms)", ""),
        ("churn_solo_sub_p99_ms", "rt.subscribe reply p99, one session alone, a new channel each time (ms)", ""),
        ("churn_solo_unsub_p50_ms", "rt.unsubscribe reply p50, one session alone (ms)", ""),
        ("churn_unique_rate", "pairs/s, channels unique to each pair (broker subscribe + unsubscribe each)", ""),
        ("churn_unique_sub_p50_ms", "rt.subscribe reply p50, unique channels (ms)", ""),
        ("churn_unique_sub_p99_ms", "rt.subscribe reply p99, unique channels (ms)", ""),
        ("churn_unique_unsub_p50_ms", "rt.unsubscribe reply p50, unique channels (ms)", ""),
        ("churn_unique_node_cpu_us_per_pair", "node CPU per pair, unique channels (µs)", ""),
        ("churn_unique_node_cpu_share", "node CPU used, unique channels (CPUs)", ""),
        ("churn_unique_services_cpu_us_per_pair", "Redis + RabbitMQ servers' CPU per pair, unique channels (µs)", ""),
        ("churn_shared_rate", "pairs/s, channels the node already holds (no broker work)", ""),
        ("churn_shared_sub_p50_ms", "rt.subscribe reply p50, held channels (ms)", ""),
        ("churn_shared_node_cpu_us_per_pair", "node CPU per pair, held channels (µs)", ""),
        ("churn_shared_node_cpu_share", "node CPU used, held channels (CPUs)", ""),
        ("mem_shared_bytes_per_pair", f"memory per (session, channel) pair, {pairs} shared channels (B)", "≤ 1,000"),
        ("mem_unique_bytes_per_pair", f"memory per pair, {pairs} channels of their own (B)", "≤ 1,000"),
        ("mem_shared_retained_bytes_per_pair", "still held after every session left them, shared (B per pair)", ""),
        ("mem_unique_retained_bytes_per_pair", "still held after every session left them, own (B per pair)", ""),
        ("mem_unique_fill_rate", f"subscribes/s filling {pairs} channels of their own (pipelined)", ""),
    )


def churn_heading(plan: ChurnPlan) -> str:
    return (
        f"Channel churn, one node: {plan.churners:,} sessions each looping rt.subscribe -> reply -> "
        f"rt.unsubscribe -> reply for {plan.seconds:g} s (at most {plan.max_pairs:,} pairs); memory: RSS with "
        f"{plan.sessions:,} sessions x {plan.channels} channels minus RSS with the same sessions and none, "
        f"/ pairs (target <= {GOAL_PAIR_BYTES:,.0f} B per pair)"
    )


def churn_table(results: list[dict[str, Any]], plan: ChurnPlan) -> list[str]:
    brokers = [b for b in CHURN_BROKERS if any(r["broker"] == b for r in results)]
    lines = [
        "| figure | " + " | ".join(BROKERS[b][0] for b in brokers) + " | target |",
        "| --- |" + " ---: |" * len(brokers) + " --- |",
    ]
    for key, label, goal in _churn_figures(plan):
        values = [_median(results, key, broker=b) for b in brokers]
        lines.append(f"| {label} | " + " | ".join(fmt(v) for v in values) + f" | {goal} |")
    return lines


def churn_targets(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for broker in CHURN_BROKERS:
        if not any(r["broker"] == broker for r in results):
            continue
        for mode, what in (("shared", "shared channels"), ("unique", "channels of their own")):
            value = _median(results, f"mem_{mode}_bytes_per_pair", broker=broker)
            verdict = "met" if value <= GOAL_PAIR_BYTES else "MISSED"
            lines.append(
                f"Target memory per (session, channel) pair <= {GOAL_PAIR_BYTES:,.0f} B, {BROKERS[broker][0]}, "
                f"{what}: {fmt(value)} B: {verdict}"
            )
    return lines


def conditions(channels: ChannelsPlan | None, churn: ChurnPlan | None) -> str:
    parts = [
        f"channels / churn: nodes (`rtgevent serve`, default Config; Flask-SocketIO processes) pinned to CPU "
        f"{SERVER_CPU}; clients and driver to CPU {LOADGEN_CPU}; Redis and RabbitMQ servers unpinned"
    ]
    if channels is not None:
        parts.append(
            f"channels: {channels.clients:,} subscribers, {channels.count} publications of {channels.size} B, "
            f"{channels.warmup} warm-up publications, {channels.probes} probes; Flask-SocketIO message queue "
            f"{SIO_QUEUE} on a pub/sub channel unique to the run"
        )
    if churn is not None:
        parts.append(
            f"churn: {churn.sessions:,} sessions, {churn.churners:,} churning, {churn.seconds:g} s per phase; memory "
            f"{churn.sessions:,} x {churn.channels} pairs; brokers RedisBroker ({REDIS_URL}) and KombuBroker "
            f"({AMQP_URL})"
        )
    return "; ".join(parts)


def anomalies(channels: list[dict[str, Any]], churn: list[dict[str, Any]], plan: ChurnPlan) -> list[str]:
    notes: list[str] = []
    for r in channels:
        where = f"channels {LABELS[r['kind']]}"
        if r["members"] != r["per_node"]:
            notes.append(f"{where}: the nodes counted {r['members']} subscribers, the client {r['per_node']}")
        if r["warmup_lost"]:
            notes.append(f"{where}: {r['warmup_lost']} warm-up deliveries lost")
        if r["published"] != r["count"] or r["publish_errors"]:
            notes.append(f"{where}: published {r['published']} of {r['count']}, errors {r['publish_errors']}")
        if r["lost"]:
            notes.append(f"{where}: {r['lost']} of {r['expected']} deliveries lost")
        if r["paced_lost"] or r["paced_duplicates"]:
            notes.append(
                f"{where} paced: {r['paced_lost']} of {r['paced_expected']} deliveries lost, "
                f"{r['paced_duplicates']} duplicates"
            )
        if r["duplicates"] or r["unreadable"]:
            notes.append(f"{where}: {r['duplicates']} duplicates, {r['unreadable']} frames without a stamp")
        if r["readers_closed"]:
            notes.append(f"{where}: connections closed: {r['readers_closed'][:5]}")
        if "server_messages_out" in r and r["server_messages_out"] != r["received"]:
            notes.append(
                f"{where}: the nodes wrote {r['server_messages_out']} frames, the client counted {r['received']}"
            )
        if r["client_cpu_us_per_delivery"] >= r["server_cpu_us_per_delivery"]:
            notes.append(f"{where}: the client used as much CPU as the servers")
    for r in churn:
        where = f"churn {BROKERS[r['broker']][0]}"
        for mode in ("shared", "unique"):
            if r[f"mem_{mode}_pairs"] != r[f"mem_{mode}_pairs_planned"] or r[f"mem_{mode}_errors"]:
                notes.append(
                    f"{where} memory {mode}: {r[f'mem_{mode}_pairs']}/{r[f'mem_{mode}_pairs_planned']} subscribed, "
                    f"errors {r[f'mem_{mode}_errors']}"
                )
            if r[f"mem_{mode}_subscribed_after"] != 0:
                notes.append(f"{where} memory {mode}: {r[f'mem_{mode}_subscribed_after']} broker subscriptions left")
            want = plan.channels if mode == "shared" else plan.sessions * plan.channels
            if r[f"mem_{mode}_subscribed"] != want:
                notes.append(f"{where} memory {mode}: {r[f'mem_{mode}_subscribed']} broker subscriptions, not {want}")
        for phase in ("solo", "unique", "shared"):
            pairs, attempts = r[f"churn_{phase}_pairs"], r[f"churn_{phase}_attempts"]
            if r[f"churn_{phase}_errors"] or pairs != attempts:
                notes.append(
                    f"{where} churn {phase}: {pairs}/{attempts} pairs answered, errors {r[f'churn_{phase}_errors']}"
                )
            if r[f"churn_{phase}_client_cpu_share"] >= 0.9:
                share = r[f"churn_{phase}_client_cpu_share"]
                notes.append(f"{where} churn {phase}: the client used {share:.0%} of a CPU (it may limit the rate)")
            subs, unsubs = r[f"churn_{phase}_broker_subscribes"], r[f"churn_{phase}_broker_unsubscribes"]
            want = 0 if phase == "shared" else attempts
            if not subs == unsubs == want:
                notes.append(
                    f"{where} churn {phase}: {attempts} pairs, {subs} broker subscribes and {unsubs} unsubscribes "
                    f"({want} expected)"
                )
        if r["churn_solo_pairs"] < plan.solo_pairs:
            notes.append(f"{where} churn solo: {r['churn_solo_pairs']}/{plan.solo_pairs} pairs within the time limit")
        if r.get("stray_1") or r.get("stray_2"):
            stray = f"{r.get('stray_1')} + {r.get('stray_2')}"
            notes.append(f"{where}: the sessions got {stray} messages that were no reply")
        if r["held"] != plan.held:
            notes.append(f"{where}: the holder subscribed {r['held']} of {plan.held} channels")
        if r["churn_unique_subscribed_after"] != 0 or r.get("churn_unique_pubsub_left", 0):
            notes.append(
                f"{where} churn unique: {r['churn_unique_subscribed_after']} broker subscriptions left on the node, "
                f"{r.get('churn_unique_pubsub_left', 0)} Redis pub/sub channels with a subscriber after 10 s"
            )
    for r in [*channels, *churn]:
        where = f"{r['scenario']} {LABELS.get(r.get('kind', ''), '') or BROKERS[r['broker']][0]}"
        if r.get("left_keys", 0) != 0 or r.get("cleanup_errors"):
            notes.append(f"{where}: clean-up left {r.get('left_keys')} Redis keys, errors {r.get('cleanup_errors')}")
        for name, lines in r.get("logs", {}).items():
            if lines:
                notes.append(f"{where} {name} stderr: " + " | ".join(lines[:5]))
    return notes

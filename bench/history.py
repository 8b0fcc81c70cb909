"""The ``history`` scenario: what history costs a publication, and a reconnect storm that recovers.

1. **Publishing with and without history.** The ``channels`` shape: subscribers of one channel
   over two ``rtgevent serve bench.history_node:make_node()`` nodes (both ``taskset -c 0``,
   `RedisBroker` + `RedisPresence` + `RedisHistory` on the same Redis), one listening client
   process (`bench.channel_client`, ``taskset -c 1``); node A publishes back to back, then
   paced.  Once on ``bench:room`` (no history) and once on ``hist:room`` (namespace ``hist:``
   with ``history_size`` / ``history_ttl``: every publication appended, and published, by one
   Lua script), in fresh nodes, back to back in the same run; then the same with one
   subscriber per node and many more publications, where the per-publication cost is not
   spread over hundreds of deliveries.  Figures: server CPU per publication (both nodes) and
   per delivery, latency, Redis' own CPU (``INFO cpu``) and commands (``INFO stats``) per
   publication, node A's Redis round trips per publication (counted in the node).
2. **Reconnect storm.** One node (``taskset -c 0``) and one client process
   (`bench.history_client`, ``taskset -c 1``) with 1,000 subscribers of one ``hist:`` channel;
   they receive a few publications live, all close, the node makes 100 publications while they
   are away, then all reconnect at once and subscribe with ``since`` = their last position.
   Figures: wall time from the first reconnect until every client has its reply with
   ``recovered`` true and every one of the 100 publications it missed, Redis round trips per
   client (counted in the node) and Redis' own commands per client.
3. **The same storm against Flask-SocketIO** (one `bench.sio_node`, ``message_queue`` on the
   same Redis, the clients in a room, ``join`` again after the reconnect): it has no history,
   so its clients lose the whole gap.

Everything is fresh per (leg, run): processes, namespace; stopped by PID and cleaned up
(`bench.cluster.cleanup`) in ``finally`` blocks.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.channels import SIO_QUEUE, SioNode
from bench.cluster import PRESENCE_URL, REDIS_URL, Child, Meter, Node, cleanup, pinned
from bench.common import LOADGEN_CPU, SERVER_CPU, BenchError, delivery_figures, fmt, median

NODE_APP = "bench.history_node:make_node()"
PLAIN_CHANNEL = "bench:room"
HISTORY_CHANNEL = "hist:room"
STORM_CHANNEL = "hist:storm"
SIO_ROOM = "storm"
#: publish legs: (key, label, channel)
LEGS = (("plain", "no history", PLAIN_CHANNEL), ("history", "history", HISTORY_CHANNEL))
#: publish shapes: key -> label
SHAPES = ("fanout", "small")
KINDS = ("rtgevent", "socketio")
LABELS = {"rtgevent": "rtgevent (history)", "socketio": "Flask-SocketIO (no history)"}
#: the issue's goal: server CPU per publication with history <= 1.5x without
GOAL_CPU_RATIO = 1.5


@dataclass(frozen=True)
class HistoryPlan:
    #: the fanout shape: subscribers (half on each node), publications back to back
    clients: int
    count: int
    #: the small shape: one subscriber per node, publications back to back
    small_count: int
    #: the storm: subscribers, publications made while they are away
    storm_clients: int
    gap: int
    time_limit: float
    size: int = 200
    history_size: int = 1000
    history_ttl: float = 300.0
    paced: int = 100
    paced_rate: float = 20.0
    warmup: int = 5
    probes: int = 50


HISTORY_FULL = HistoryPlan(clients=1000, count=200, small_count=5000, storm_clients=1000, gap=100, time_limit=120.0)
HISTORY_QUICK = HistoryPlan(
    clients=500, count=100, small_count=2000, storm_clients=500, gap=100, time_limit=60.0, paced=50
)


# ---------------------------------------------------------------------- Redis' own figures


class RedisCounters:
    """The Redis server's CPU (``INFO cpu``), commands processed and per-command calls (``INFO``).

    Whole-server figures: whatever else uses this Redis at the time counts too.
    """

    def __init__(self) -> None:
        import redis

        self.client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)

    def sample(self) -> dict[str, float]:
        info = self.client.info("all")
        out = {
            "cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
            "commands": float(info["total_commands_processed"]),
        }
        for key, value in info.items():
            if key.startswith("cmdstat_") and isinstance(value, dict):
                out[key.removeprefix("cmdstat_")] = float(value.get("calls", 0))
                out["usec:" + key.removeprefix("cmdstat_")] = float(value.get("usec", 0))
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {key: after[key] - before.get(key, 0.0) for key in after}

    def close(self) -> None:
        self.client.close()


@contextlib.contextmanager
def redis_counters() -> Iterator[RedisCounters]:
    counters = RedisCounters()
    try:
        yield counters
    finally:
        counters.close()


def _top_commands(delta: dict[str, float], per: float, limit: int = 6) -> str:
    """The commands Redis ran most in a phase, per ``per`` (publication, client): ``evalsha 1.00, ...``."""
    calls = sorted(
        ((k, v) for k, v in delta.items() if k not in ("cpu", "commands") and ":" not in k and v > 0),
        key=lambda kv: (-kv[1], kv[0]),
    )
    return ", ".join(f"{k} {v / per:.2f}" for k, v in calls[:limit])


def _top_usec(delta: dict[str, float], per: float, limit: int = 4) -> str:
    """Where Redis spent its time in a phase (``commandstats`` usec), per ``per``, in µs.

    A script's time includes the commands it ran, which are also counted on their own.
    """
    usec = sorted(
        ((k.removeprefix("usec:"), v) for k, v in delta.items() if k.startswith("usec:") and v > 0),
        key=lambda kv: (-kv[1], kv[0]),
    )
    return ", ".join(f"{k} {v / per:.1f}" for k, v in usec[:limit])


def _by_command(before: dict[str, Any], after: dict[str, Any], per: float) -> str:
    """The node's Redis round trips in a phase, by command, per ``per``: ``EVALSHA history.since 1.00, ...``."""
    b, a = before.get("redis_by_command", {}), after.get("redis_by_command", {})
    delta = sorted(((k, v - b.get(k, 0)) for k, v in a.items() if v - b.get(k, 0) > 0), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} {v / per:.2f}" for k, v in delta) or "none"


def _errors(lines: list[str]) -> int:
    """How many errors a node logged (rtgevent's own report lines)."""
    return sum(1 for line in lines if " ERROR " in line)


#: "... BrokerUnavailable('rtgevent: presence store redis://... did not answer (unregister) after 3 attempt(s): X')"
_STORE_ERROR = re.compile(r"(\w+)\('rtgevent: (\w+) store .*? \((\w+)\) after \d+ attempt\(s\): ([^']*)")


def _error_kinds(lines: list[str]) -> dict[str, int]:
    """A node's error reports grouped: ``presence unregister: Too many connections`` -> count."""
    kinds: dict[str, int] = {}
    for line in lines:
        if " ERROR " not in line:
            continue
        m = _STORE_ERROR.search(line)
        key = f"{m.group(2)} {m.group(3)}: {m.group(4)[:60]}" if m else line.split(" ERROR ", 1)[1][:100]
        kinds[key] = kinds.get(key, 0) + 1
    return kinds


# ---------------------------------------------------------------------- publishing


def _spec(namespace: str, plan: HistoryPlan) -> dict[str, Any]:
    return {
        "broker": REDIS_URL,
        "presence": PRESENCE_URL,
        "history": REDIS_URL,
        "namespace": namespace,
        "history_size": plan.history_size,
        "history_ttl": plan.history_ttl,
    }


def measure_publish(leg: str, shape: str, plan: HistoryPlan) -> dict[str, Any]:
    """Two nodes, subscribers split over them, node A publishing on ``leg``'s channel."""
    channel = dict((k, c) for k, _, c in LEGS)[leg]
    clients, count = (plan.clients, plan.count) if shape == "fanout" else (2, plan.small_count)
    paced = shape == "fanout"
    namespace = f"rtgbench-{uuid.uuid4().hex[:12]}"
    result: dict[str, Any] = {"scenario": "history-publish", "leg": leg, "shape": shape, "namespace": namespace}
    with pinned(LOADGEN_CPU), contextlib.ExitStack() as stack:
        stack.callback(lambda: result.update(cleanup(namespace, False, [])))
        counters = stack.enter_context(redis_counters())
        spec = _spec(namespace, plan)
        nodes = [Node("node A", spec, NODE_APP), Node("node B", spec, NODE_APP)]
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
                "rtgevent",
                "--ports",
                str(a.port),
                str(b.port),
                "--clients",
                str(clients),
                "--channel",
                channel,
                "--count",
                str(count),
                "--size",
                str(plan.size),
                "--warmup",
                str(plan.warmup),
                "--probes",
                str(min(plan.probes, clients)),
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
        before = [node.call("stats", channel=channel) for node in nodes]
        meter = Meter({"A": a, "B": b, "client": client}, services=("redis-server",))
        mark, redis0 = meter.mark(), counters.sample()
        client.tell("go")
        done = client.lines.event("done", plan.time_limit + 120)
        cpu, redis_d = meter.delta(mark, meter.mark()), counters.delta(redis0, counters.sample())
        after = [node.call("stats") for node in nodes]
        if paced:
            client.tell("paced")
            got = client.lines.event("paced", plan.paced / plan.paced_rate + plan.time_limit + 120)
            result.update(
                {
                    "paced_expected": got["expected"],
                    "paced_lost": got["lost"],
                    "paced_duplicates": got["duplicates"],
                    "paced_p50_ms": got["p50_ms"],
                    "paced_p99_ms": got["p99_ms"],
                    "paced_a_p99_ms": got["by_node"]["0"]["p99_ms"],
                    "paced_b_p99_ms": got["by_node"]["1"]["p99_ms"],
                }
            )
        client.tell("close")
        client.lines.event("closed", 60)
        result["logs"] = {node.name: node.problems()[:10] for node in nodes}
        result["logs"]["client"] = client.problems()[:10]
        result["node_errors"] = sum(_errors(node.problems()) for node in nodes)
    n = max(1, done["received"])
    on_a, on_b = done["by_node"]["0"], done["by_node"]["1"]
    seconds = after[0].get("publish_seconds") or float("nan")
    calls = {k: after[0]["history_calls"][k] - before[0]["history_calls"][k] for k in after[0]["history_calls"]}
    b_since = after[1]["history_calls"]["since"] - before[1]["history_calls"]["since"]
    result.update(
        {
            "clients": ready["clients"],
            "per_node": ready["per_node"],
            "members": [s.get("members") for s in before],
            "warmup_lost": ready["warmup_lost"],
            "count": count,
            **delivery_figures(done),
            "a_p99_ms": on_a["p99_ms"],
            "b_p99_ms": on_b["p99_ms"],
            "server_cpu_us_per_pub": (cpu["A"] + cpu["B"]) / count * 1e6,
            "a_cpu_us_per_pub": cpu["A"] / count * 1e6,
            "b_cpu_us_per_pub": cpu["B"] / count * 1e6,
            "server_cpu_us_per_delivery": (cpu["A"] + cpu["B"]) / n * 1e6,
            "server_cpu_share": (cpu["A"] + cpu["B"]) / max(cpu["wall"], 1e-9),
            "client_cpu_us_per_delivery": done["client_cpu"] / n * 1e6,
            "publish_rate": count / seconds if seconds and math.isfinite(seconds) else float("nan"),
            "redis_cpu_us_per_pub": redis_d["cpu"] / count * 1e6,
            "redis_commands_per_pub": redis_d["commands"] / count,
            "redis_top_commands": _top_commands(redis_d, count),
            "redis_top_usec": _top_usec(redis_d, count),
            "a_redis_writes_per_pub": (after[0]["redis_writes"] - before[0]["redis_writes"]) / count,
            "a_redis_by_command": _by_command(before[0], after[0], count),
            "b_redis_writes_per_pub": (after[1]["redis_writes"] - before[1]["redis_writes"]) / count,
            "history_appends_per_pub": calls.get("append", 0) / count,
            "history_reads": calls.get("since", 0) + b_since,
            "published": after[0].get("published"),
            "publish_errors": after[0].get("publish_errors", {}),
            "server_messages_out": sum(
                int(x["messages_out"]) - int(y["messages_out"]) for x, y in zip(after, before, strict=True)
            ),
            "other_cpus": cpu["other_cpus"],
            "steal_cpus": cpu["steal_cpus"],
        }
    )
    return result


def publish_progress(r: dict[str, Any]) -> str:
    return (
        f"history  publish {r['shape']:<6} {dict((k, lb) for k, lb, _ in LEGS)[r['leg']]:<10} "
        f"servers {r['server_cpu_us_per_pub']:8.0f} µs/publication "
        f"({r['server_cpu_us_per_delivery']:5.1f} µs/delivery) "
        f"p99 {r['p99_ms']:7.2f} ms lost {r['lost']}  Redis {r['redis_cpu_us_per_pub']:5.1f} µs/publication, "
        f"{r['redis_commands_per_pub']:4.1f} commands/publication"
    )


# ---------------------------------------------------------------------- the storm


def _wait_connections(node: Node, want: int, timeout: float = 30.0) -> int:
    """Poll the server until it counts at most ``want`` connections (or the timeout); the last count."""
    deadline = time.monotonic() + timeout
    while True:
        count = int(node.call("stats").get("connections", -1))
        if count <= want or time.monotonic() >= deadline:
            return count
        time.sleep(0.1)


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (``TcpExt:
    ListenOverflows`` of ``/proc/net/netstat``: the whole machine; -1 if unreadable)."""
    try:
        with open("/proc/net/netstat", encoding="ascii") as netstat:
            lines = [line.split() for line in netstat if line.startswith("TcpExt:")]
        return int(dict(zip(lines[0][1:], lines[1][1:], strict=True))["ListenOverflows"])
    except (OSError, IndexError, KeyError, ValueError):
        return -1


def _wait_quiet(node: Node, quiet: float = 1.0, timeout: float = 15.0) -> float:
    """Wait until the node has sent nothing to Redis and logged nothing for ``quiet`` s; the seconds waited.

    Sessions that closed are unregistered from presence after their connection ended (and
    retried after a failure): that work must not spill into the next phase.
    """
    started = time.monotonic()
    last: tuple[Any, int] | None = None
    since = started
    while True:
        now = time.monotonic()
        state = (node.call("stats").get("redis_writes"), len(node.problems()))
        if state != last:
            last, since = state, now
        elif now - since >= quiet or now - started >= timeout:
            return now - started
        time.sleep(0.1)


def _wait_published(node: Node, channel: str, count: int, size: int, limit: float) -> dict[str, Any]:
    """Have the node publish ``count`` times on ``channel`` back to back and wait until it is done."""
    node.call("publish", channel=channel, count=count, size=size, interval=0)
    deadline = time.monotonic() + limit
    while True:
        stats = node.call("stats")
        if stats.get("publish_seconds") is not None or time.monotonic() >= deadline:
            return stats
        time.sleep(0.05)


def measure_storm(kind: str, plan: HistoryPlan) -> dict[str, Any]:
    """One server, ``storm_clients`` subscribers: leave, ``gap`` publications, all come back at once."""
    namespace = f"rtgbench-{uuid.uuid4().hex[:12]}"
    result: dict[str, Any] = {"scenario": "history-storm", "kind": kind, "namespace": namespace}
    rtg = kind == "rtgevent"
    channel = STORM_CHANNEL if rtg else SIO_ROOM
    with pinned(LOADGEN_CPU), contextlib.ExitStack() as stack:
        if rtg:
            stack.callback(lambda: result.update(cleanup(namespace, False, [])))
        counters = stack.enter_context(redis_counters())
        node: Node
        if rtg:
            node = Node("node", _spec(namespace, plan), NODE_APP)
        else:
            node = SioNode("Flask-SocketIO", SIO_QUEUE, namespace)
        stack.callback(node.close)
        node.wait_serving()
        client = Child(
            "client",
            [
                "-m",
                "bench.history_client",
                kind,
                "--port",
                str(node.port),
                "--clients",
                str(plan.storm_clients),
                "--channel",
                channel,
                "--gap",
                str(plan.gap),
                "--size",
                str(plan.size),
                "--warmup",
                str(plan.warmup),
                "--time-limit",
                str(plan.time_limit),
            ],
            LOADGEN_CPU,
        )
        stack.callback(client.close)
        ready = client.lines.event("ready", 300)
        client.tell("leave")
        client.lines.event("left", 60)
        result["connections_after_leave"] = _wait_connections(node, 0)
        result["quiet_after_leave_s"] = _wait_quiet(node)
        away = _wait_published(node, channel, plan.gap, plan.size, plan.time_limit)
        result["gap_published"] = away.get("published")
        result["gap_publish_errors"] = away.get("publish_errors", {})
        before = node.call("stats")
        logged = node.problems()
        meter = Meter({"node": node, "client": client}, services=("redis-server",))
        mark, redis0, overflows = meter.mark(), counters.sample(), listen_overflows()
        client.tell("storm")
        storm = client.lines.event("stormed", plan.time_limit + 120)
        cpu, redis_d = meter.delta(mark, meter.mark()), counters.delta(redis0, counters.sample())
        after_overflows = listen_overflows()
        result["listen_overflows"] = after_overflows - overflows if min(overflows, after_overflows) >= 0 else -1
        after = node.call("stats")
        result["leave_error_kinds"] = _error_kinds(logged)
        result["storm_error_kinds"] = _error_kinds(node.problems()[len(logged) :])
        result["leave_errors"] = sum(result["leave_error_kinds"].values())
        result["storm_errors"] = sum(result["storm_error_kinds"].values())
        client.tell("live")
        live = client.lines.event("live", plan.time_limit + 120)
        client.tell("close")
        client.lines.event("closed", 60)
        result["logs"] = {node.name: node.problems()[:10], "client": client.problems()[:10]}
        problems = node.problems()
        result["node_errors"] = _errors(problems)
        result["node_error_kinds"] = _error_kinds(problems)
        result["node_first_error"] = next((line for line in problems if " ERROR " in line), "")
    n = max(1, plan.storm_clients)
    result.update(
        {
            "clients": ready["clients"],
            "warmup_lost": ready["warmup_lost"],
            "warmup_errors": ready["warmup_errors"],
            "positions": ready["positions"],
            "gap": plan.gap,
            **{
                key: storm[key]
                for key in (
                    "answered",
                    "complete",
                    "recovered",
                    "expected",
                    "received",
                    "lost",
                    "duplicates",
                    "out_of_order",
                    "stray",
                    "errors",
                    "wall_s",
                    "last_reply_s",
                    "reply_p50_s",
                    "reply_p99_s",
                    "connect_p50_s",
                    "connect_p99_s",
                    "connect_max_s",
                )
            },
            "lost_per_client": storm["lost"] / n,
            "node_cpu_ms": cpu["node"] * 1e3,
            "node_cpu_us_per_client": cpu["node"] / n * 1e6,
            "client_cpu_s": storm["client_cpu"],
            "redis_cpu_us_per_client": redis_d["cpu"] / n * 1e6,
            "redis_commands_per_client": redis_d["commands"] / n,
            "redis_top_commands": _top_commands(redis_d, n),
            "redis_top_usec": _top_usec(redis_d, n),
            "live_clients": live["clients"],
            "live_in_order": live["in_order"],
            "live_received": live["received"],
            "live_expected": live["expected"],
            "live_duplicates": live["duplicates"],
            "live_stray": live["stray"],
            "live_errors": live["errors"],
            "other_cpus": cpu["other_cpus"],
            "steal_cpus": cpu["steal_cpus"],
        }
    )
    if rtg:
        calls = {k: after["history_calls"][k] - before["history_calls"][k] for k in after["history_calls"]}
        result["redis_writes_per_client"] = (after["redis_writes"] - before["redis_writes"]) / n
        result["redis_by_command"] = _by_command(before, after, n)
        result["history_reads_per_client"] = (calls["since"] + calls["position"]) / n
    else:
        result["redis_writes_per_client"] = float("nan")
        result["history_reads_per_client"] = float("nan")
        result["redis_by_command"] = ""
    return result


def storm_progress(r: dict[str, Any]) -> str:
    wall = r["wall_s"]
    return (
        f"history  storm {LABELS[r['kind']]:<28} {r['complete']}/{r['clients']} complete "
        f"({'all in ' + format(wall, '.2f') + ' s' if math.isfinite(wall) else 'never all'}), "
        f"every reply in {r['last_reply_s']:.2f} s, lost {r['lost']} of {r['expected']}  "
        f"node {r['node_cpu_us_per_client']:5.0f} µs/client, "
        f"Redis round trips {r['redis_writes_per_client']:.2f}/client, "
        f"Redis commands {r['redis_commands_per_client']:.2f}/client"
    )


# ---------------------------------------------------------------------- report


def _values(results: list[dict[str, Any]], key: str, **where: str) -> list[float]:
    return [r[key] for r in results if all(r.get(k) == v for k, v in where.items())]


def _cell(values: list[float], ranges: bool = True) -> str:
    """The median, and the range over runs when there is more than one."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return "n/a"
    cell = fmt(median(finite))
    if ranges and len(finite) > 1 and min(finite) != max(finite):
        cell += f" ({fmt(min(finite))}\N{EN DASH}{fmt(max(finite))})"
    return cell


def _ratio(a: float, b: float) -> str:
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


PUBLISH_FIGURES: dict[str, tuple[tuple[str, str], ...]] = {
    "fanout": (
        ("server_cpu_us_per_pub", "server CPU per publication, both nodes (µs)"),
        ("a_cpu_us_per_pub", "node A (publisher) CPU per publication (µs)"),
        ("b_cpu_us_per_pub", "node B CPU per publication (µs)"),
        ("server_cpu_us_per_delivery", "server CPU per delivery, both nodes (µs)"),
        ("rate", "deliveries/s"),
        ("p50_ms", "latency p50, back to back (ms)"),
        ("p99_ms", "latency p99, back to back (ms)"),
        ("a_p99_ms", "latency p99, subscribers on node A (ms)"),
        ("b_p99_ms", "latency p99, subscribers on node B (ms)"),
        ("paced_p50_ms", "paced: latency p50 (ms)"),
        ("paced_p99_ms", "paced: latency p99 (ms)"),
        ("lost", "lost"),
        ("redis_cpu_us_per_pub", "Redis server CPU per publication (µs, whole server)"),
        ("redis_commands_per_pub", "Redis commands per publication (whole server, scripts' included)"),
        ("a_redis_writes_per_pub", "node A Redis round trips per publication"),
    ),
    "small": (
        ("server_cpu_us_per_pub", "server CPU per publication, both nodes (µs)"),
        ("a_cpu_us_per_pub", "node A (publisher) CPU per publication (µs)"),
        ("b_cpu_us_per_pub", "node B CPU per publication (µs)"),
        ("publish_rate", "publications/s (one publishing greenlet)"),
        ("p50_ms", "latency p50, back to back (ms)"),
        ("p99_ms", "latency p99, back to back (ms)"),
        ("lost", "lost"),
        ("redis_cpu_us_per_pub", "Redis server CPU per publication (µs, whole server)"),
        ("redis_commands_per_pub", "Redis commands per publication (whole server, scripts' included)"),
        ("a_redis_writes_per_pub", "node A Redis round trips per publication"),
    ),
}


def publish_heading(shape: str, plan: HistoryPlan) -> str:
    if shape == "fanout":
        return (
            f"Publishing with and without history, the `channels` shape: {plan.clients:,} subscribers of one channel, "
            f"half on each of two nodes; node A publishes {plan.count} messages of {plan.size} B back to back, then "
            f"{plan.paced} at {plan.paced_rate:g}/s. No history: `{PLAIN_CHANNEL}`; history: `{HISTORY_CHANNEL}` "
            f"(history_size {plan.history_size:,}, history_ttl {plan.history_ttl:g} s; RedisBroker + RedisHistory on "
            f"the same Redis: the append script publishes). Target: server CPU per publication <= "
            f"{GOAL_CPU_RATIO:g}x. Cells: median (range over runs)"
        )
    return (
        f"The same with one subscriber on each node and {plan.small_count:,} publications back to back: the cost "
        f"of a publication itself, not spread over hundreds of deliveries"
    )


def publish_table(results: list[dict[str, Any]], shape: str) -> list[str]:
    lines = ["| figure | no history | history | history / no history |", "| --- | ---: | ---: | ---: |"]
    for key, label in PUBLISH_FIGURES[shape]:
        plain = _values(results, key, shape=shape, leg="plain")
        hist = _values(results, key, shape=shape, leg="history")
        if key == "lost":
            lines.append(f"| {label} | {fmt(sum(plain))} in all | {fmt(sum(hist))} in all | |")
            continue
        lines.append(f"| {label} | {_cell(plain)} | {_cell(hist)} | {_ratio(median(hist), median(plain))} |")
    return lines


def _per_run_ratios(results: list[dict[str, Any]], key: str, shape: str) -> list[float]:
    runs = sorted({int(r["run"]) for r in results if r.get("shape") == shape})
    out = []
    for run in runs:
        plain = [r[key] for r in results if r.get("shape") == shape and r["leg"] == "plain" and r["run"] == run]
        hist = [r[key] for r in results if r.get("shape") == shape and r["leg"] == "history" and r["run"] == run]
        if plain and hist and plain[0]:
            out.append(hist[0] / plain[0])
    return out


def publish_targets(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for shape in SHAPES:
        plain = median(_values(results, "server_cpu_us_per_pub", shape=shape, leg="plain"))
        hist = median(_values(results, "server_cpu_us_per_pub", shape=shape, leg="history"))
        if not (math.isfinite(plain) and math.isfinite(hist)) or plain <= 0:
            continue
        value = hist / plain
        runs = ", ".join(f"{v:.2f}x" for v in _per_run_ratios(results, "server_cpu_us_per_pub", shape))
        what = "fanout" if shape == "fanout" else "one subscriber per node"
        figures = f"{value:.2f}x ({fmt(hist)} vs {fmt(plain)} µs; per run {runs})"
        if shape == "fanout":
            verdict = "met" if value <= GOAL_CPU_RATIO else "MISSED"
            lines.append(
                f"Target history / no history <= {GOAL_CPU_RATIO:g}x server CPU per publication, {what}: "
                f"{figures}: {verdict}"
            )
        else:  # not the shape: what a publication itself costs more
            lines.append(f"(not a goal) history / no history server CPU per publication, {what}: {figures}")
        for leg, label, _ in LEGS:
            first = [r for r in results if r.get("shape") == shape and r["leg"] == leg][:1]
            for r in first:
                lines.append(
                    f"{what}, {label}, per publication (first run): node A's Redis round trips "
                    f"{r['a_redis_by_command']}; Redis commands (whole server) {r['redis_top_commands']}; "
                    f"Redis time (commandstats, µs) {r['redis_top_usec']}"
                )
    return lines


STORM_FIGURES = (
    ("clients", "clients that reconnected", False),
    ("answered", "clients with their subscribe reply (rt.reply / join ack)", False),
    ("recovered", "replies with recovered true", False),
    ("complete", "clients with recovered true, missed = gap, and every missed publication in order", False),
    ("received", "missed publications received, all clients", False),
    ("lost_per_client", "publications lost per client (of the gap)", True),
    ("duplicates", "duplicates", False),
    ("wall_s", "wall time, first reconnect to every client recovered (s)", True),
    ("last_reply_s", "wall time, first reconnect to every client's reply (s)", True),
    ("reply_p50_s", "reply after the first reconnect, p50 (s)", True),
    ("reply_p99_s", "reply after the first reconnect, p99 (s)", True),
    ("connect_p99_s", "WebSocket (Socket.IO: namespace) connected, p99 (s)", True),
    ("connect_max_s", "WebSocket (Socket.IO: namespace) connected, max (s)", True),
    ("listen_overflows", "handshakes dropped by a full listen queue during the storm (kernel, ListenOverflows)", True),
    ("node_cpu_us_per_client", "server CPU per reconnecting client (µs)", True),
    ("redis_writes_per_client", "server's Redis round trips per client (counted in the node)", True),
    ("history_reads_per_client", "history reads per client (counted in the node)", True),
    ("redis_commands_per_client", "Redis commands per client (whole server, scripts' included)", True),
    ("redis_cpu_us_per_client", "Redis server CPU per client (µs, whole server)", True),
    ("client_cpu_s", "client process CPU during the storm (s)", True),
    ("leave_errors", "errors the server logged before the storm (subscribing, everyone leaving, the gap)", True),
    ("storm_errors", "errors the server logged during the storm", True),
    ("live_in_order", "clients that then got the next live publications in order", False),
)


def storm_heading(plan: HistoryPlan) -> str:
    return (
        f"Reconnect storm: {plan.storm_clients:,} subscribers of one channel on one server receive {plan.warmup} "
        f"publications, all close, {plan.gap} publications of {plan.size} B are made while they are away, then all "
        f"reconnect at once (no limit on handshakes in flight) and subscribe again. rtgevent: `hist:` channel "
        f"(history_size {plan.history_size:,}), `rt.subscribe` with `since` = the last offset and epoch each client "
        f"saw; Flask-SocketIO: message_queue on the same Redis, `join` the room again. Cells: median (range over runs)"
    )


def storm_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| figure | rtgevent (history) | Flask-SocketIO (no history) |", "| --- | ---: | ---: |"]
    for key, label, ranges in STORM_FIGURES:
        cells = [_cell(_values(results, key, kind=kind), ranges) for kind in KINDS]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return lines


def storm_notes(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    by = [r["redis_by_command"] for r in results if r.get("kind") == "rtgevent"]
    if by:
        lines.append(f"rtgevent's Redis round trips per client during the storm, by command (first run): {by[0]}")
    for kind in KINDS:
        for r in [r for r in results if r.get("kind") == kind][:1]:
            lines.append(
                f"Redis commands per client during the storm, {LABELS[kind]} (first run, whole server): "
                f"{r['redis_top_commands']}; Redis time (commandstats, µs) {r['redis_top_usec']}"
            )
    return lines


def conditions(plan: HistoryPlan) -> str:
    return (
        f"history: nodes (`rtgevent serve bench.history_node:make_node()`, default Config; the Flask-SocketIO "
        f"process) pinned to CPU {SERVER_CPU}, clients and driver to CPU {LOADGEN_CPU}, Redis unpinned; publishing: "
        f"{plan.clients:,} subscribers x {plan.count} publications and 2 x {plan.small_count:,}, {plan.size} B, "
        f"{plan.warmup} warm-up publications; storm: {plan.storm_clients:,} clients, gap {plan.gap}, history_size "
        f"{plan.history_size:,}, history_ttl {plan.history_ttl:g} s; RedisBroker, RedisPresence, RedisHistory on "
        f"{REDIS_URL}; Flask-SocketIO message queue {SIO_QUEUE} on a pub/sub channel unique to the run; Redis' "
        f"figures are the whole server's (INFO), anything else using it counts too"
    )


def anomalies(publish: list[dict[str, Any]], storm: list[dict[str, Any]], plan: HistoryPlan) -> list[str]:
    notes: list[str] = []
    for r in publish:
        where = f"history publish {r['shape']} {r['leg']} run {r.get('run')}"
        if r["members"] != r["per_node"]:
            notes.append(f"{where}: the nodes counted {r['members']} subscribers, the client {r['per_node']}")
        if r["warmup_lost"]:
            notes.append(f"{where}: {r['warmup_lost']} warm-up deliveries lost")
        if r["published"] != r["count"] or r["publish_errors"]:
            notes.append(f"{where}: published {r['published']} of {r['count']}, errors {r['publish_errors']}")
        if r["lost"] or r["duplicates"] or r["unreadable"]:
            notes.append(
                f"{where}: {r['lost']} of {r['expected']} deliveries lost, {r['duplicates']} duplicates, "
                f"{r['unreadable']} frames without a stamp"
            )
        if r.get("paced_lost") or r.get("paced_duplicates"):
            notes.append(f"{where} paced: {r['paced_lost']} lost, {r['paced_duplicates']} duplicates")
        if r["readers_closed"]:
            notes.append(f"{where}: connections closed: {r['readers_closed'][:5]}")
        if r["server_messages_out"] != r["received"]:
            notes.append(
                f"{where}: the nodes wrote {r['server_messages_out']} frames, the client counted {r['received']}"
            )
        want = 1.0 if r["leg"] == "history" else 0.0
        if r["history_appends_per_pub"] != want or r["history_reads"]:
            notes.append(
                f"{where}: {r['history_appends_per_pub']:.2f} history appends per publication (want {want:g}), "
                f"{r['history_reads']} history reads (gap fills)"
            )
        if r["client_cpu_us_per_delivery"] >= r["server_cpu_us_per_delivery"]:
            notes.append(f"{where}: the client used as much CPU as the servers")
    for r in storm:
        where = f"history storm {LABELS[r['kind']]} run {r.get('run')}"
        if r["warmup_lost"] or r["warmup_errors"]:
            notes.append(f"{where}: warm-up lost {r['warmup_lost']}, errors {r['warmup_errors']}")
        if r["connections_after_leave"] != 0:
            notes.append(f"{where}: the server still counted {r['connections_after_leave']} connections after 30 s")
        if r["gap_published"] != plan.gap or r["gap_publish_errors"]:
            notes.append(f"{where}: {r['gap_published']} of {plan.gap} published, errors {r['gap_publish_errors']}")
        if r["errors"]:
            notes.append(f"{where}: client errors {r['errors']}")
        if r.get("node_errors"):
            notes.append(
                f"{where}: the server logged {r['node_errors']} errors; before the storm (subscribing, leaving, "
                f"the gap): {r['leave_error_kinds']}; during the storm: {r['storm_error_kinds']}; the first: "
                f"{r['node_first_error'][:240]}"
            )
        if r["answered"] != r["clients"]:
            notes.append(f"{where}: {r['answered']} of {r['clients']} clients got their reply")
        if r["kind"] == "rtgevent" and (r["complete"] != r["clients"] or r["lost"] or r["out_of_order"]):
            notes.append(
                f"{where}: {r['complete']} of {r['clients']} complete, {r['lost']} lost, "
                f"{r['out_of_order']} clients out of order"
            )
        if r["duplicates"] or r["stray"] or r["live_duplicates"] or r["live_stray"]:
            notes.append(
                f"{where}: duplicates {r['duplicates']} + {r['live_duplicates']} live, "
                f"stray frames {r['stray']} + {r['live_stray']} live"
            )
        if r["live_in_order"] != r["live_clients"] or r["live_errors"]:
            notes.append(
                f"{where} live: {r['live_in_order']} of {r['live_clients']} clients in order "
                f"({r['live_received']} of {r['live_expected']} received), errors {r['live_errors']}"
            )
    for r in [*publish, *storm]:
        where = f"{r['scenario']} {r.get('leg') or r.get('kind')} run {r.get('run')}"
        if r.get("left_keys", 0) != 0 or r.get("cleanup_errors"):
            notes.append(f"{where}: clean-up left {r.get('left_keys')} Redis keys, errors {r.get('cleanup_errors')}")
        for name, lines in r.get("logs", {}).items():
            if lines and not (r["scenario"] == "history-storm" and name != "client" and r.get("node_errors")):
                notes.append(f"{where} {name} stderr: " + " | ".join(lines[:5]))
    return notes


def run_all(run: int, plan: HistoryPlan, progress: Any, failures: list[str]) -> list[dict[str, Any]]:
    """Every leg of one run, back to back: publishing (per shape: no history, history), the storms."""
    out: list[dict[str, Any]] = []
    for shape in SHAPES:
        for leg, _, _ in LEGS:
            try:
                r = measure_publish(leg, shape, plan)
            except (BenchError, OSError, ValueError, KeyError) as exc:
                failures.append(f"run {run} history publish {shape} {leg}: {type(exc).__name__}: {exc}")
                progress(failures[-1])
                continue
            r["run"] = run
            out.append(r)
            progress(f"run {run} {publish_progress(r)}")
    for kind in KINDS:
        try:
            r = measure_storm(kind, plan)
        except (BenchError, OSError, ValueError, KeyError) as exc:
            failures.append(f"run {run} history storm {kind}: {type(exc).__name__}: {exc}")
            progress(failures[-1])
            continue
        r["run"] = run
        out.append(r)
        progress(f"run {run} {storm_progress(r)}")
    return out


def report(results: list[dict[str, Any]], plan: HistoryPlan) -> list[str]:
    publish = [r for r in results if r["scenario"] == "history-publish"]
    storm = [r for r in results if r["scenario"] == "history-storm"]
    out: list[str] = []
    for shape in SHAPES:
        if any(r["shape"] == shape for r in publish):
            out += [publish_heading(shape, plan), "", *publish_table(publish, shape), ""]
    if publish:
        out += [*publish_targets(publish), ""]
    if storm:
        out += [storm_heading(plan), "", *storm_table(storm), "", *storm_notes(storm), ""]
    return out

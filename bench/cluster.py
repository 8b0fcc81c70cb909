"""The ``cluster`` and ``emitter`` scenarios: delivery between processes through a real broker.

``cluster``: two gateway nodes (``rtgevent serve bench.cluster_node:make_node()``, both
``taskset -c 0``) share a broker and `RedisPresence`; a client (`bench.cluster_client`,
``taskset -c 1``) holds identity ``target`` on node B, and node A's ``/_bench/send`` calls
``rt.send_to_identity`` paced (latency) and then flat out (sustained rate).

``emitter``: one gateway node (``taskset -c 0``) holds 8 clients (identities ``t0``..``t7``);
a plain process (`bench.emitter_sender`, no gevent, ``taskset -c 1``) sends through one
`rtgevent.Emitter` from 8 threads, paced and then flat out.

For each broker (RedisBroker, KombuBroker on RabbitMQ, KombuBroker on Redis) and each run
everything is fresh: new processes, a new namespace (``rtgbench-<uuid>``).  Afterwards the
processes are stopped by PID and the namespace is removed from Redis (every key matching
``*<ns>*``, its members of ``_kombu.binding_deadlines``) and from RabbitMQ (exchanges
``<ns>.broadcast`` / ``<ns>.direct``, the nodes' queues), in ``finally`` blocks.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bench.common import (
    LOADGEN_CPU,
    ROOT,
    SERVER_CPU,
    BenchError,
    LineReader,
    child_env,
    fmt,
    median,
    read_log,
    stop,
)
from bench.proc import cpu_seconds, system_cpu

REDIS_URL = "redis://127.0.0.1:6379/0"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
PRESENCE_URL = REDIS_URL
#: broker key -> (label, URL)
BROKERS: dict[str, tuple[str, str]] = {
    "redis": ("RedisBroker", REDIS_URL),
    "kombu-amqp": ("KombuBroker (RabbitMQ)", AMQP_URL),
    "kombu-redis": ("KombuBroker (Redis)", "kombu+redis://127.0.0.1:6379/0"),
}
TARGET_P50_MS = 1.5
TARGET_P99_MS = 10.0
#: first sequence number of each phase: a late message of one phase never counts in the next
WARMUP_START, PACED_START, BURST_START = 0, 1_000_000, 2_000_000
#: processes of the broker servers, by /proc/PID/comm; their CPU is shared with whoever else uses them
SERVICE_COMMANDS = ("redis-server", "beam.smp")
_ACCESS_LOG = re.compile(r'^\S+ - \S+ \[[^]]*\] "')


@dataclass(frozen=True)
class ClusterPlan:
    """Message counts and bounds of both scenarios (``--quick`` or full)."""

    paced_messages: int
    paced_rate: float
    burst_messages: int
    burst_seconds: float
    emitter_threads: int = 8
    warmup_messages: int = 200
    #: collecting stops after this long without a new message (what is missing then is lost)
    quiet_seconds: float = 1.5


CLUSTER_FULL = ClusterPlan(paced_messages=1000, paced_rate=200.0, burst_messages=40000, burst_seconds=4.0)
CLUSTER_QUICK = ClusterPlan(paced_messages=400, paced_rate=200.0, burst_messages=10000, burst_seconds=2.0)


# ---------------------------------------------------------------------- processes


class Child:
    """A process we started (``taskset -c CPU python ARGS``): stdout lines, stderr kept, stopped by PID."""

    def __init__(self, name: str, args: Sequence[str], cpu: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in close())
        try:
            self.proc = subprocess.Popen(
                ["taskset", "-c", cpu, sys.executable, *args],
                stdout=subprocess.PIPE,
                stderr=self.log,
                stdin=subprocess.PIPE,
                cwd=ROOT,
                env=child_env(env),
            )
        except BaseException:
            self.log.close()
            raise
        self.lines = LineReader(self.proc, name)

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise BenchError(f"{self.name}: cannot be told {line!r}: {exc}") from exc

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def problems(self) -> list[str]:
        """What it wrote on stderr, except access-log lines: empty when all went well."""
        text = read_log(self.log)
        return [line for line in text.splitlines() if line.strip() and not _ACCESS_LOG.match(line)]

    def close(self) -> None:
        try:
            stop(self.proc)
        finally:
            self.log.close()


class Node(Child):
    """A gateway node: ``rtgevent serve APP`` (default `bench.cluster_node`'s) on 127.0.0.1, any free port."""

    def __init__(self, name: str, spec: dict[str, Any], app: str = "bench.cluster_node:make_node()") -> None:
        super().__init__(
            name,
            ["-m", "rtgevent", "serve", app, "--bind", "127.0.0.1:0"],
            SERVER_CPU,
            {"RTG_BENCH_NODE": json.dumps(spec)},
        )
        self.port = 0

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.line(max(0.0, deadline - time.monotonic()))
            m = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                return

    def call(self, action: str, timeout: float = 30.0, **query: Any) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/_bench/{action}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            value: dict[str, Any] = json.load(response)
        if "error" in value:
            raise BenchError(f"{self.name} /_bench/{action}: {value['error']}")
        return value


def service_pids(commands: Sequence[str] = SERVICE_COMMANDS) -> list[int]:
    """PIDs of the local Redis and RabbitMQ servers (read from /proc; nothing is signalled)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm", encoding="ascii", errors="replace") as comm:
                    if comm.read().strip() in commands:
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


#: what a `Meter` reads besides its processes: named figures of its own (a server's CPU, its commands)
Probe = Callable[[], dict[str, float]]


class Meter:
    """CPU seconds of our processes, of the broker servers and of the whole machine, between two marks.

    ``probes`` add figures of their own to each mark (and so to each delta), under the names
    they return: not counted in ``other_cpus`` (a Redis server's CPU is in ``services`` already).
    """

    def __init__(
        self, procs: dict[str, Child], services: Sequence[str] = SERVICE_COMMANDS, probes: Sequence[Probe] = ()
    ) -> None:
        self.procs = procs
        self.services = service_pids(services)
        self.probes = list(probes)
        #: the names the probes returned at the last mark
        self.probed: list[str] = []

    def mark(self) -> dict[str, float]:
        values = {name: child.cpu() for name, child in self.procs.items()}
        extra: dict[str, float] = {}
        for probe in self.probes:
            extra.update(probe())
        self.probed = list(extra)
        values.update(extra)
        services = 0.0
        for pid in self.services:
            try:
                services += cpu_seconds(pid)
            except (OSError, ValueError):
                services = float("nan")
        busy, steal = system_cpu()
        return {**values, "services": services, "busy": busy, "steal": steal, "wall": time.monotonic()}

    def delta(self, before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        d = {key: after[key] - before[key] for key in before}
        wall = max(d["wall"], 1e-9)
        ours = sum(d[name] for name in self.procs) + (d["services"] if math.isfinite(d["services"]) else 0.0)
        d["other_cpus"] = max(0.0, d["busy"] - ours) / wall
        d["steal_cpus"] = d["steal"] / wall
        return d


@contextlib.contextmanager
def pinned(cpu: str) -> Iterator[None]:
    """The driver itself on the client's CPU while it drives these scenarios (restored afterwards)."""
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {int(cpu)})
    except OSError:
        before = set()
    try:
        yield
    finally:
        if before:
            os.sched_setaffinity(0, before)


# ---------------------------------------------------------------------- clean-up


def cleanup(namespace: str, amqp: bool, queues: Sequence[str], redis_url: str = REDIS_URL) -> dict[str, Any]:
    """Remove everything of ``namespace`` from Redis (and RabbitMQ); what was left, what failed.

    ``redis_url`` may name a Redis Cluster (``redis+cluster://``): its keys are scanned on every master.
    """
    import redis

    from rtgevent.retry import CLUSTER_SCHEME, redis_cluster_client

    errors: list[str] = []
    left = -1
    cluster = redis_url.startswith(f"{CLUSTER_SCHEME}://")
    client = (
        redis_cluster_client(redis_url, socket_timeout=5)
        if cluster
        else redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    )
    try:
        pattern = f"*{namespace}*"
        keys = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])  # a cluster client splits a DEL by slot
        members = [] if cluster else client.zrange("_kombu.binding_deadlines", 0, -1)
        stale = [m for m in members if isinstance(m, bytes) and namespace.encode() in m]
        if stale:
            client.zrem("_kombu.binding_deadlines", *stale)
        left = sum(1 for _ in client.scan_iter(match=pattern, count=1000))
    except redis.RedisError as exc:
        errors.append(f"redis: {exc}")
    finally:
        client.close()
    if amqp:
        import kombu

        try:
            with kombu.Connection(AMQP_URL, connect_timeout=5) as conn:
                conn.ensure_connection(max_retries=1)
                for kind, name in [("queue", q) for q in queues] + [
                    ("exchange", f"{namespace}.{suffix}") for suffix in ("broadcast", "direct")
                ]:
                    channel = conn.channel()  # one per call: a failed delete closes its channel
                    try:
                        if kind == "queue":
                            channel.queue_delete(queue=name)
                        else:
                            channel.exchange_delete(exchange=name)
                    except Exception as exc:  # reported, never fatal
                        errors.append(f"rabbitmq {kind} {name}: {exc}")
                    finally:
                        with contextlib.suppress(Exception):
                            channel.close()
        except Exception as exc:  # reported, never fatal
            errors.append(f"rabbitmq: {exc}")
    return {"left_keys": left, "cleanup_errors": errors}


# ---------------------------------------------------------------------- phases


def collect(client: Child, expected: int, plan: ClusterPlan, limit: float = 20.0) -> dict[str, Any]:
    client.tell(f"collect {expected} {plan.quiet_seconds} {limit}")
    return client.lines.event("collected", limit + 30)


def run_phase(
    client: Child,
    meter: Meter,
    trigger: Callable[[int, int, float, float], dict[str, Any]],
    start: int,
    count: int,
    rate: float,
    limit: float,
    plan: ClusterPlan,
) -> dict[str, Any]:
    """Open the client's window, trigger the sends, collect what arrived; sender and client figures."""
    client.tell(f"window {start} {count}")
    client.lines.event("window", 30)
    before = meter.mark()
    sent = trigger(start, count, rate, limit)
    got = collect(client, int(sent["sent"]), plan)
    cpu = meter.delta(before, meter.mark())
    span = got["last_recv"] - sent["started"]
    return {
        **{k: got[k] for k in ("received", "duplicates", "out_of_order", "stray", "p50_ms", "p99_ms", "max_ms")},
        "client_errors": got["errors"],
        "other_routes": got["other"],
        "sent": sent["sent"],
        "planned": count,
        "send_errors": sent["errors"],
        "send_elapsed": sent["elapsed"],
        **{k: sent.get(k, float("nan")) for k in ("call_p50_ms", "call_p99_ms", "call_max_ms")},
        "lost": sent["sent"] - got["received"],
        "send_rate": sent["sent"] / sent["elapsed"] if sent["elapsed"] > 0 else float("nan"),
        "recv_rate": got["received"] / span if got["received"] and span > 0 else float("nan"),
        "cpu": cpu,
    }


def _flatten(
    result: dict[str, Any], prefix: str, phase: dict[str, Any], sender: str, receiver: str, probed: Sequence[str] = ()
) -> None:
    n = max(1, phase["received"])
    cpu = phase.pop("cpu")
    if probed:  # the probes' deltas over the phase, as they are
        result[f"{prefix}_probes"] = {name: cpu[name] for name in probed}
    for key, value in phase.items():
        result[f"{prefix}_{key}"] = value
    result[f"{prefix}_sender_cpu_us_per_msg"] = cpu[sender] / max(1, phase["sent"]) * 1e6
    result[f"{prefix}_receiver_cpu_us_per_msg"] = cpu[receiver] / n * 1e6
    result[f"{prefix}_services_cpu_us_per_msg"] = cpu["services"] / max(1, phase["sent"]) * 1e6
    for role, name in (("sender", sender), ("receiver", receiver), ("client", "client")):
        result[f"{prefix}_{role}_cpu_share"] = cpu[name] / max(cpu["wall"], 1e-9)
    result[f"{prefix}_other_cpus"] = cpu["other_cpus"]
    result[f"{prefix}_steal_cpus"] = cpu["steal_cpus"]


def _finish(result: dict[str, Any], plan: ClusterPlan) -> None:
    result["paced_rate_planned"] = plan.paced_rate
    result["other_cpus"] = max(result["paced_other_cpus"], result["burst_other_cpus"])
    result["steal_cpus"] = max(result["paced_steal_cpus"], result["burst_steal_cpus"])


def measure_cluster(
    broker: str,
    plan: ClusterPlan,
    urls: tuple[str, str] | None = None,
    probes: Sequence[Probe] = (),
) -> dict[str, Any]:
    """Two nodes, a client on node B, node A sending: paced, then flat out.

    ``urls``: (broker URL, presence URL) instead of ``BROKERS[broker]``'s and `PRESENCE_URL`
    (``broker`` is then only the result's label); ``probes``: more figures for the `Meter`,
    whose deltas come back per phase as ``paced_probes`` / ``burst_probes``.
    """
    url, presence = urls or (BROKERS[broker][1], PRESENCE_URL)
    namespace = f"rtgbench-{uuid.uuid4().hex[:12]}"
    spec = {"broker": url, "presence": presence, "namespace": namespace}
    result: dict[str, Any] = {"scenario": "cluster", "broker": broker, "namespace": namespace}
    queues: list[str] = []
    with pinned(LOADGEN_CPU), contextlib.ExitStack() as stack:
        stack.callback(lambda: result.update(cleanup(namespace, url.startswith("amqp"), queues, presence)))
        a = Node("node A", spec)
        stack.callback(a.close)
        b = Node("node B", spec)
        stack.callback(b.close)
        a.wait_serving()
        b.wait_serving()
        for node in (a, b):
            queue = node.call("stats").get("queue")
            if queue:
                queues.append(str(queue))
        client = Child(
            "client", ["-m", "bench.cluster_client", "--port", str(b.port), "--identities", "target"], LOADGEN_CPU
        )
        stack.callback(client.close)
        ready = client.lines.event("ready", 60)
        result["nodes"] = {"A": a.call("stats")["node"], "B": ready["nodes"]}
        meter = Meter({"A": a, "B": b, "client": client}, probes=probes)

        def trigger(start: int, count: int, rate: float, limit: float) -> dict[str, Any]:
            return a.call("send", timeout=limit + 60, count=count, rate=rate, start=start, time_limit=limit)

        warm = run_phase(client, meter, trigger, WARMUP_START, plan.warmup_messages, 0.0, 10.0, plan)
        result["warmup_lost"] = warm["lost"]
        result["warmup_errors"] = warm["send_errors"]
        paced_limit = plan.paced_messages / plan.paced_rate + 10
        paced = run_phase(client, meter, trigger, PACED_START, plan.paced_messages, plan.paced_rate, paced_limit, plan)
        out0 = b.call("stats")["messages_out"]
        burst = run_phase(client, meter, trigger, BURST_START, plan.burst_messages, 0.0, plan.burst_seconds, plan)
        result["receiver_messages_out"] = b.call("stats")["messages_out"] - out0
        _flatten(result, "paced", paced, "A", "B", meter.probed)
        _flatten(result, "burst", burst, "A", "B", meter.probed)
        client.tell("close")
        client.lines.event("closed", 30)
        result["logs"] = {"node A": a.problems()[:10], "node B": b.problems()[:10], "client": client.problems()[:10]}
    _finish(result, plan)
    return result


def measure_emitter(broker: str, plan: ClusterPlan) -> dict[str, Any]:
    """One node holding 8 clients; a gevent-free process sending through the Emitter from 8 threads."""
    url = BROKERS[broker][1]
    namespace = f"rtgbench-{uuid.uuid4().hex[:12]}"
    spec = {"broker": url, "presence": PRESENCE_URL, "namespace": namespace}
    identities = [f"t{i}" for i in range(plan.emitter_threads)]
    result: dict[str, Any] = {"scenario": "emitter", "broker": broker, "namespace": namespace}
    queues: list[str] = []
    with pinned(LOADGEN_CPU), contextlib.ExitStack() as stack:
        stack.callback(lambda: result.update(cleanup(namespace, url.startswith("amqp"), queues)))
        node = Node("node", spec)
        stack.callback(node.close)
        node.wait_serving()
        queue = node.call("stats").get("queue")
        if queue:
            queues.append(str(queue))
        client = Child(
            "client", ["-m", "bench.cluster_client", "--port", str(node.port), "--identities", *identities], LOADGEN_CPU
        )
        stack.callback(client.close)
        client.lines.event("ready", 60)
        sender = Child(
            "emitter",
            [
                "-m",
                "bench.emitter_sender",
                url,
                PRESENCE_URL,
                namespace,
                "--threads",
                str(plan.emitter_threads),
                "--identities",
                *identities,
            ],
            LOADGEN_CPU,
        )
        stack.callback(sender.close)
        sender.lines.event("ready", 60)
        meter = Meter({"node": node, "client": client, "emitter": sender})

        def trigger(start: int, count: int, rate: float, limit: float) -> dict[str, Any]:
            sender.tell(f"run {start} {count} {rate} {limit}")
            return sender.lines.event("done", limit + 120)

        warm = run_phase(client, meter, trigger, WARMUP_START, plan.warmup_messages, 0.0, 10.0, plan)
        result["warmup_lost"] = warm["lost"]
        result["warmup_errors"] = warm["send_errors"]
        paced_limit = plan.paced_messages / plan.paced_rate + 10
        paced = run_phase(client, meter, trigger, PACED_START, plan.paced_messages, plan.paced_rate, paced_limit, plan)
        out0 = node.call("stats")["messages_out"]
        burst = run_phase(client, meter, trigger, BURST_START, plan.burst_messages, 0.0, plan.burst_seconds, plan)
        result["receiver_messages_out"] = node.call("stats")["messages_out"] - out0
        _flatten(result, "paced", paced, "emitter", "node")
        _flatten(result, "burst", burst, "emitter", "node")
        sender.tell("close")
        result["gevent_free"] = bool(sender.lines.event("closed", 30).get("gevent_free"))
        client.tell("close")
        client.lines.event("closed", 30)
        result["logs"] = {
            "node": node.problems()[:10],
            "emitter": sender.problems()[:10],
            "client": client.problems()[:10],
        }
    _finish(result, plan)
    return result


# ---------------------------------------------------------------------- report


def _figures(scenario: str, plan: ClusterPlan) -> tuple[tuple[str, str, str], ...]:
    """(result key, row label, target) of each row of a table."""
    paced = f"paced {plan.paced_rate:g}/s"
    if scenario == "cluster":
        return (
            ("paced_p50_ms", f"latency p50, {paced} (ms)", f"≤ {TARGET_P50_MS:g}"),
            ("paced_p99_ms", f"latency p99, {paced} (ms)", f"≤ {TARGET_P99_MS:g}"),
            ("paced_call_p50_ms", f"send_to_identity call p50, {paced} (ms)", ""),
            ("paced_call_p99_ms", f"send_to_identity call p99, {paced} (ms)", ""),
            ("burst_recv_rate", "sustained sends/s, flat out (received by the client)", ""),
            ("burst_lost", "lost, flat out (sent - received)", ""),
            ("burst_p50_ms", "latency p50, flat out (ms)", ""),
            ("burst_p99_ms", "latency p99, flat out (ms)", ""),
            ("burst_sender_cpu_us_per_msg", "node A CPU per send, flat out (µs)", ""),
            ("burst_receiver_cpu_us_per_msg", "node B CPU per delivered message, flat out (µs)", ""),
            ("burst_services_cpu_us_per_msg", "Redis + RabbitMQ servers' CPU per send, flat out (µs)", ""),
        )
    threads = plan.emitter_threads
    return (
        ("burst_send_rate", f"Emitter sends/s, {threads} threads flat out", ""),
        ("burst_recv_rate", "received by the clients per second, flat out", ""),
        ("burst_lost", "lost, flat out (sent - received)", ""),
        ("paced_p50_ms", f"latency p50, {paced} (ms)", ""),
        ("paced_p99_ms", f"latency p99, {paced} (ms)", ""),
        ("paced_call_p50_ms", f"send_to_identity call p50, {paced} (ms)", ""),
        ("paced_call_p99_ms", f"send_to_identity call p99, {paced} (ms)", ""),
        ("burst_p50_ms", "latency p50, flat out (ms)", ""),
        ("burst_p99_ms", "latency p99, flat out (ms)", ""),
        ("burst_call_p50_ms", f"send_to_identity call p50, {threads} threads flat out (ms)", ""),
        ("burst_sender_cpu_us_per_msg", "Emitter process CPU per send, flat out (µs)", ""),
        ("burst_receiver_cpu_us_per_msg", "node CPU per delivered message, flat out (µs)", ""),
        ("burst_services_cpu_us_per_msg", "Redis + RabbitMQ servers' CPU per send, flat out (µs)", ""),
    )


def table(scenario: str, results: list[dict[str, Any]], plan: ClusterPlan) -> list[str]:
    brokers = [key for key in BROKERS if any(r["broker"] == key for r in results)]
    target = scenario == "cluster"
    head = "| figure | " + " | ".join(BROKERS[k][0] for k in brokers) + (" | target |" if target else " |")
    rule = "| --- |" + " ---: |" * len(brokers) + (" --- |" if target else "")
    lines = [head, rule]
    for key, label, goal in _figures(scenario, plan):
        values = [median([r[key] for r in results if r["broker"] == b]) for b in brokers]
        cells = [f"{v:,.0f}" if key.endswith("_lost") and math.isfinite(v) else fmt(v) for v in values]
        lines.append(f"| {label} | " + " | ".join(cells) + (f" | {goal} |" if target else " |"))
    return lines


def targets(results: list[dict[str, Any]]) -> list[str]:
    """Cross-node latency targets (paced): p50 <= 1.5 ms, p99 <= 10 ms, per broker."""
    lines = []
    for key, (label, _) in BROKERS.items():
        p50 = median([r["paced_p50_ms"] for r in results if r["broker"] == key])
        p99 = median([r["paced_p99_ms"] for r in results if r["broker"] == key])
        if not (math.isfinite(p50) and math.isfinite(p99)):
            continue
        missed = [
            name for name, value, goal in (("p50", p50, TARGET_P50_MS), ("p99", p99, TARGET_P99_MS)) if value > goal
        ]
        verdict = "met" if not missed else f"MISSED ({', '.join(missed)})"
        lines.append(
            f"Target cross-node latency p50 <= {TARGET_P50_MS:g} ms, p99 <= {TARGET_P99_MS:g} ms, {label}: "
            f"{fmt(p50)} / {fmt(p99)} ms: {verdict}"
        )
    return lines


def heading(scenario: str, plan: ClusterPlan) -> str:
    bound = f"at most {plan.burst_messages:,} messages or {plan.burst_seconds:g} s"
    if scenario == "cluster":
        return (
            f"Cross-node send_to_identity: node A -> broker -> node B -> 1 client; presence RedisPresence. "
            f"Latency: {plan.paced_messages:,} calls paced at {plan.paced_rate:g}/s; sustained: one greenlet "
            f"calling flat out, {bound} (targets: paced p50 <= {TARGET_P50_MS:g} ms, p99 <= {TARGET_P99_MS:g} ms)"
        )
    return (
        f"Emitter: {plan.emitter_threads} threads of a gevent-free process sharing one Emitter -> broker -> one "
        f"node -> {plan.emitter_threads} clients (thread t sends to identity t<t>). Latency: {plan.paced_messages:,} "
        f"sends paced at {plan.paced_rate:g}/s in total; sustained: every thread flat out, {bound}"
    )


def conditions(plan: ClusterPlan) -> str:
    return (
        f"cluster / emitter: nodes (rtgevent serve, default Config) pinned to CPU {SERVER_CPU}; client, Emitter "
        f"process and driver to CPU {LOADGEN_CPU}; Redis and RabbitMQ servers unpinned; {service_versions()}"
    )


NO_COUNTERPART = (
    "rtgevent's figures alone: Flask-SocketIO has no counterpart to measure here (its message queue, "
    "python-socketio's pub/sub client managers, is a different design)."
)


def anomalies(results: list[dict[str, Any]]) -> list[str]:
    """Everything that makes a figure suspect, one line each."""
    notes: list[str] = []
    for r in results:
        where = f"{r['scenario']} {BROKERS[r['broker']][0] if r['broker'] in BROKERS else r['broker']}"
        if r.get("warmup_lost") or r.get("warmup_errors"):
            notes.append(f"{where}: warm-up lost {r['warmup_lost']} messages, send errors {r['warmup_errors']}")
        for phase in ("paced", "burst"):
            if r[f"{phase}_send_errors"]:
                notes.append(f"{where} {phase}: send errors {r[f'{phase}_send_errors']}")
            if r[f"{phase}_lost"]:
                notes.append(f"{where} {phase}: {r[f'{phase}_lost']} of {r[f'{phase}_sent']} messages lost")
            if r[f"{phase}_client_errors"]:
                notes.append(f"{where} {phase}: client errors {r[f'{phase}_client_errors']}")
            for key in ("duplicates", "out_of_order", "stray"):
                if r[f"{phase}_{key}"]:
                    notes.append(f"{where} {phase}: {r[f'{phase}_{key}']} messages {key.replace('_', ' ')}")
            if r[f"{phase}_client_cpu_share"] >= 0.9:
                share = r[f"{phase}_client_cpu_share"]
                notes.append(f"{where} {phase}: the client used {share:.0%} of a CPU (it may limit the rate)")
        if r["paced_sent"] < r["paced_planned"]:
            notes.append(f"{where} paced: {r['paced_sent']}/{r['paced_planned']} sent within the time limit")
        if r["receiver_messages_out"] != r["burst_received"]:
            notes.append(
                f"{where} burst: the receiving node wrote {r['receiver_messages_out']} messages, "
                f"the client counted {r['burst_received']}"
            )
        if r["scenario"] == "emitter" and not r.get("gevent_free", False):
            notes.append(f"{where}: the Emitter process imported gevent")
        if r.get("left_keys", 0) != 0 or r.get("cleanup_errors"):
            notes.append(f"{where}: clean-up left {r.get('left_keys')} Redis keys, errors {r.get('cleanup_errors')}")
        for name, lines in r.get("logs", {}).items():
            if lines:
                notes.append(f"{where} {name} stderr: " + " | ".join(lines[:5]))
    return notes


def service_versions() -> str:
    """Versions of the Redis and RabbitMQ servers and of the client libraries, for the conditions."""
    from importlib import metadata

    parts = []
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
        try:
            parts.append(f"Redis server {client.info('server').get('redis_version', '?')}")
        finally:
            client.close()
    with contextlib.suppress(Exception):
        import kombu

        with kombu.Connection(AMQP_URL, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
            props = conn.connection.server_properties
            version = props.get("version", "?")
            parts.append(f"RabbitMQ {version.decode() if isinstance(version, bytes) else version}")
    for name in ("redis", "kombu", "amqp"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            parts.append(f"{name} {metadata.version(name)}")
    return ", ".join(parts)

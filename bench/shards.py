"""The ``shards`` scenario: rtgevent on a Redis Cluster against rtgevent on one Redis, in the same run.

Two setups, measured back to back in every run: **one Redis** (``redis://127.0.0.1:6379/0``,
`RedisBroker` + `RedisPresence`) and a **Redis Cluster** of three masters and three replicas
on loopback (``redis+cluster://...``: `RedisClusterBroker`'s sharded pub/sub + `RedisPresence`
on the cluster).  The cluster is started once per invocation the tests' way,
`tests.rediscluster.start_cluster` (so there is one way to start one), and stopped by PID in a
``finally`` block; its six ``redis-server`` processes are not pinned.  Per setup and run:

1. **send_to_identity**: `bench.cluster.measure_cluster` with the setup's URLs: two nodes
   (``taskset -c 0``), a client on node B (``taskset -c 1``), node A calling
   ``rt.send_to_identity`` paced (latency) and flat out (throughput).
2. **channels**: two `bench.channel_node` nodes (``taskset -c 0``); a `bench.channel_client`
   (``taskset -c 1``) holds ``per_channel`` subscribers of each of ``channels`` channels, all
   on node B; node A publishes round-robin over the channels, back to back (throughput) and
   then paced (latency).  The channels' shard channels hash to slots all over the cluster.
3. **Redis CPU per operation**: for every phase, each Redis server's CPU (the one Redis; each
   master and each replica of the cluster) over the phase divided by the phase's operations
   (sends, publications), and each master's share of the masters' total.  The figure is the
   process's own ``used_cpu_user + used_cpu_sys`` from ``INFO cpu`` (getrusage: microseconds),
   cross-checked against ``/proc/PID/stat`` (`bench.proc.cpu_seconds`, 10 ms ticks, too coarse
   for the smaller phases alone); ``INFO stats`` gives the commands each server processed.

Every measurement has a namespace of its own (``rtgbench-<uuid>``); its keys are removed from
the store that held them (`bench.cluster.cleanup`, on every master for the cluster) and its
processes stopped by PID, in ``finally`` blocks.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from bench.channel_node import channel_names
from bench.cluster import (
    CLUSTER_FULL,
    CLUSTER_QUICK,
    REDIS_URL,
    SERVICE_COMMANDS,
    Child,
    ClusterPlan,
    Meter,
    Node,
    cleanup,
    measure_cluster,
    pinned,
)
from bench.cluster import anomalies as cluster_anomalies
from bench.common import LOADGEN_CPU, SERVER_CPU, BenchError, delivery_figures, fmt, median
from bench.proc import cpu_seconds
from rtgevent.channels import channel_topic
from rtgevent.payload import node_topic

SETUPS = ("single", "cluster")
LABELS = {"single": "one Redis", "cluster": "Redis Cluster"}
NODE_APP = "bench.channel_node:make_node()"
#: the channels are CHANNEL0 ... CHANNEL<K-1>
CHANNEL = "shard:c"
#: slots of a Redis Cluster
SLOTS = 16384


@dataclass(frozen=True)
class ShardsPlan:
    """Counts and bounds of one invocation (``--quick`` or full)."""

    send: ClusterPlan
    #: channels published round-robin, and subscribers of each (all on node B)
    channels: int
    per_channel: int
    #: publications per channel: back to back, then paced at ``paced_rate`` in all
    rounds: int
    paced_rounds: int
    paced_rate: float
    size: int = 200
    warmup_rounds: int = 1
    time_limit: float = 60.0
    #: seconds with no load, before the first setup of each run: each server's background CPU
    idle_seconds: float = 2.0
    #: the cluster's cluster-node-timeout (ms): long, so a busy machine does not make it fail over
    node_timeout: int = 15000


SHARDS_FULL = ShardsPlan(send=CLUSTER_FULL, channels=128, per_channel=2, rounds=120, paced_rounds=4, paced_rate=256.0)
SHARDS_QUICK = ShardsPlan(send=CLUSTER_QUICK, channels=128, per_channel=2, rounds=40, paced_rounds=2, paced_rate=256.0)


# ---------------------------------------------------------------------- Redis servers


@dataclass
class RedisServer:
    """One redis-server we watch: where it listens, its PID, its role and slots."""

    port: int
    pid: int
    #: "single", "master" or "replica"
    role: str
    #: slot ranges of a master, ``[(first, last), ...]``
    slots: list[tuple[int, int]]
    client: Any = None

    @property
    def name(self) -> str:
        return f":{self.port}"

    def connect(self) -> None:
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, socket_connect_timeout=5)

    def probe(self) -> dict[str, float]:
        """CPU seconds from ``/proc`` and from ``INFO cpu``, and commands processed so far (NaN: unreadable)."""
        out = {f"{self.port}/proc": float("nan"), f"{self.port}/cpu": float("nan"), f"{self.port}/commands": math.nan}
        with contextlib.suppress(OSError, ValueError):
            out[f"{self.port}/proc"] = cpu_seconds(self.pid)
        with contextlib.suppress(Exception):  # a server that does not answer shows as n/a
            info = self.client.info("cpu", "stats")
            out[f"{self.port}/cpu"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
            out[f"{self.port}/commands"] = float(info["total_commands_processed"])
        return out

    def slot_label(self) -> str:
        return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in self.slots)

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="ascii", errors="replace") as comm:
            return comm.read().strip()
    except OSError:
        return ""


def single_server() -> RedisServer:
    """The one Redis of ``REDIS_URL``: its PID from ``INFO server``, checked against /proc."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        info = client.info("server")
    finally:
        client.close()
    pid, port = int(info["process_id"]), int(info["tcp_port"])
    if _comm(pid) not in SERVICE_COMMANDS:
        raise BenchError(f"Redis on {REDIS_URL} says it is PID {pid}, which is no redis-server here")
    return RedisServer(port, pid, "single", [(0, SLOTS - 1)])


def cluster_servers(cluster: Any) -> list[RedisServer]:
    """The cluster's masters (by their first slot), then its replicas (by port)."""
    servers = []
    for node in cluster.nodes(cluster.ports[0]):
        port = int(node["port"])
        slots = []
        for part in node["slots"].split():
            if part.startswith("["):  # a slot being migrated: none here
                continue
            first, _, last = part.partition("-")
            slots.append((int(first), int(last or first)))
        role = "master" if node["role"] == "master" else "replica"
        servers.append(RedisServer(port, cluster.procs[cluster.ports.index(port)].pid, role, sorted(slots)))
    masters = sorted((s for s in servers if s.role == "master"), key=lambda s: s.slots[0] if s.slots else (SLOTS, 0))
    replicas = sorted((s for s in servers if s.role == "replica"), key=lambda s: s.port)
    if len(masters) != 3 or len(replicas) != 3 or sum(b - a + 1 for s in masters for a, b in s.slots) != SLOTS:
        raise BenchError(
            f"the cluster is not 3 masters covering every slot and 3 replicas: {[(s.port, s.slots) for s in masters]}"
        )
    return masters + replicas


def _synced(server: RedisServer) -> bool:
    import redis

    with redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5, socket_connect_timeout=5) as client:
        return bool(client.info("replication").get("master_link_status") == "up")


def settled_servers(cluster: Any, timeout: float = 60.0) -> list[RedisServer]:
    """`cluster_servers` once the node asked sees every replica as one and each has synced with its master.

    Right after ``cluster_state:ok`` a node may still list the replicas as masters without
    slots (the roles travel by gossip): waited for, within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            servers = cluster_servers(cluster)
            if all(_synced(s) for s in servers if s.role == "replica"):
                return servers
            problem = "a replica has not synced with its master yet"
        except BenchError as exc:
            problem = str(exc)
        if time.monotonic() >= deadline:
            raise BenchError(f"after {timeout:g} s: {problem}")
        time.sleep(0.2)


def owner(servers: list[RedisServer], name: str) -> int:
    """The port of the master whose slots hold ``name`` (a key or shard channel); 0 if none."""
    from redis.crc import key_slot

    slot = key_slot(name.encode())
    for server in servers:
        if server.role != "replica" and any(a <= slot <= b for a, b in server.slots):
            return server.port
    return 0


@contextlib.contextmanager
def started_cluster(plan: ShardsPlan) -> Iterator[tuple[Any, list[RedisServer]]]:
    """A fresh 3 + 3 cluster for the whole invocation, its processes stopped by PID on the way out."""
    from tests.rediscluster import start_cluster  # the tests' way to start one, so there is one way

    cluster = start_cluster(plan.node_timeout, replicated=True)
    servers: list[RedisServer] = []
    try:
        servers = settled_servers(cluster)
        for server in servers:
            server.connect()
        yield cluster, servers
    finally:
        for server in servers:
            server.close()
        cluster.stop()


def _per_server(cpu: dict[str, float], servers: list[RedisServer], ops: float) -> dict[str, Any]:
    """Each server's figures over one phase: CPU (µs) and commands per operation, CPU share of the masters."""
    masters = [s for s in servers if s.role != "replica"]
    total = sum(cpu.get(f"{s.port}/cpu", math.nan) for s in masters)
    out: dict[str, Any] = {}
    n = max(1.0, ops)
    for s in servers:
        used = cpu.get(f"{s.port}/cpu", math.nan)
        out[s.name] = {
            "cpu_us_per_op": used / n * 1e6,
            "proc_cpu_s": cpu.get(f"{s.port}/proc", math.nan),
            "cpu_s": used,
            "commands_per_op": cpu.get(f"{s.port}/commands", math.nan) / n,
            "share": used / total if s.role != "replica" and total > 0 else math.nan,
        }
    replicas = [s for s in servers if s.role == "replica"]
    return {
        "servers": out,
        "masters_cpu_us_per_op": total / n * 1e6,
        "masters_commands_per_op": sum(cpu.get(f"{s.port}/commands", math.nan) for s in masters) / n,
        "replicas_cpu_us_per_op": (
            sum(cpu.get(f"{s.port}/cpu", math.nan) for s in replicas) / n * 1e6 if replicas else math.nan
        ),
    }


def idle_cpu(servers: list[RedisServer], seconds: float) -> dict[str, float]:
    """Each server's CPU over ``seconds`` with no load from us, in ms per second (others' traffic, its cron)."""
    before = {}
    for s in servers:
        before.update(s.probe())
    t0 = time.monotonic()
    time.sleep(seconds)
    after = {}
    for s in servers:
        after.update(s.probe())
    wall = time.monotonic() - t0
    return {s.name: (after[f"{s.port}/cpu"] - before[f"{s.port}/cpu"]) / wall * 1e3 for s in servers}


# ---------------------------------------------------------------------- measurements


def measure_send(setup: str, url: str, plan: ShardsPlan, servers: list[RedisServer]) -> dict[str, Any]:
    """`bench.cluster.measure_cluster` on the setup's URLs, with each Redis server's figures per phase."""
    r = measure_cluster(LABELS[setup], plan.send, (url, url), [s.probe for s in servers])
    r.update({"scenario": "shards-send", "setup": setup, "url": url})
    for phase, ops in (("paced", r["paced_sent"]), ("burst", r["burst_sent"])):
        r[f"{phase}_redis"] = _per_server(r.pop(f"{phase}_probes"), servers, ops)
    # where the traffic goes: node B's own topic (every send's publish) lives on one master
    receiver = r["nodes"]["B"][0] if r["nodes"]["B"] else ""
    r["direct_topic_on"] = owner(servers, f"{r['namespace']}.{node_topic(receiver)}") if setup == "cluster" else 0
    return r


def measure_channels(setup: str, url: str, plan: ShardsPlan, servers: list[RedisServer]) -> dict[str, Any]:
    """Node A publishing round-robin over the channels; every subscriber on node B."""
    namespace = f"rtgbench-{uuid.uuid4().hex[:12]}"
    spec = {"broker": url, "presence": url, "namespace": namespace}
    k = plan.channels
    clients = k * plan.per_channel
    result: dict[str, Any] = {"scenario": "shards-channels", "setup": setup, "broker": LABELS[setup]}
    result.update({"namespace": namespace, "url": url, "channels": k, "clients_planned": clients})
    with pinned(LOADGEN_CPU), contextlib.ExitStack() as stack:
        stack.callback(lambda: result.update(cleanup(namespace, False, [], url)))
        a = Node("node A", spec, NODE_APP)
        stack.callback(a.close)
        b = Node("node B", spec, NODE_APP)
        stack.callback(b.close)
        a.wait_serving()
        b.wait_serving()
        args = ["-m", "bench.channel_client", "rtgevent", "--ports", str(b.port), "--publisher", str(a.port)]
        args += ["--clients", str(clients), "--probes", str(clients), "--channel", CHANNEL, "--channels", str(k)]
        args += ["--count", str(k * plan.rounds), "--size", str(plan.size), "--warmup", str(k * plan.warmup_rounds)]
        args += ["--paced", str(k * plan.paced_rounds), "--paced-rate", str(plan.paced_rate)]
        args += ["--time-limit", str(plan.time_limit)]
        client = Child("client", args, LOADGEN_CPU)
        stack.callback(client.close)
        ready = client.lines.event("ready", 300)
        subscribed = b.call("stats")["subscribed"]
        meter = Meter({"A": a, "B": b, "client": client}, probes=[s.probe for s in servers])
        mark = meter.mark()
        client.tell("go")
        done = client.lines.event("done", plan.time_limit + 120)
        cpu = meter.delta(mark, meter.mark())
        stats_a = a.call("stats")
        client.tell("paced")
        paced = client.lines.event("paced", plan.paced_rounds * k / plan.paced_rate + plan.time_limit + 120)
        client.tell("close")
        client.lines.event("closed", 60)
        result["logs"] = {"node A": a.problems()[:10], "node B": b.problems()[:10], "client": client.problems()[:10]}
    published = int(stats_a.get("published") or 0)
    seconds = stats_a.get("publish_seconds") or math.nan
    n = max(1, done["received"])
    spread: dict[int, int] = {}
    if setup == "cluster":
        for name in channel_names(CHANNEL, k):
            port = owner(servers, f"{namespace}.{channel_topic(name)}")
            spread[port] = spread.get(port, 0) + 1
    result.update(
        {
            "clients": ready["clients"],
            "subscribed": subscribed,
            "warmup_lost": ready["warmup_lost"],
            "count": k * plan.rounds,
            "published": published,
            "publish_errors": stats_a.get("publish_errors", {}),
            "publish_rate": published / seconds if seconds > 0 else math.nan,
            **delivery_figures(done),
            "paced_expected": paced["expected"],
            "paced_lost": paced["lost"],
            "paced_p50_ms": paced["p50_ms"],
            "paced_p99_ms": paced["p99_ms"],
            "a_cpu_us_per_publication": cpu["A"] / max(1, published) * 1e6,
            "b_cpu_us_per_delivery": cpu["B"] / n * 1e6,
            "client_cpu_share": cpu["client"] / max(cpu["wall"], 1e-9),
            "redis": _per_server({key: cpu[key] for key in meter.probed}, servers, published),
            "channels_on": {f":{port}": count for port, count in sorted(spread.items())},
            "other_cpus": cpu["other_cpus"],
            "steal_cpus": cpu["steal_cpus"],
        }
    )
    return result


class Session:
    """The servers of one invocation: the one Redis, and the cluster started at the first run."""

    def __init__(self, plan: ShardsPlan) -> None:
        self.plan = plan
        self.stack = contextlib.ExitStack()
        self.single: RedisServer | None = None
        self.cluster: Any = None
        self.servers: list[RedisServer] = []
        self.affinity = ""

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.single is not None:
            self.single.close()
        self.stack.close()

    def start(self) -> None:
        if self.cluster is not None:
            return
        self.single = single_server()
        self.single.connect()
        self.cluster, self.servers = self.stack.enter_context(started_cluster(self.plan))
        with contextlib.suppress(OSError):
            cpus = sorted(os.sched_getaffinity(self.servers[0].pid))
            self.affinity = ",".join(map(str, cpus))

    def run(self, run: int, progress: Callable[[str], None], failures: list[str]) -> list[dict[str, Any]]:
        """One run: the background CPU of every server, then each setup's two measurements."""
        out: list[dict[str, Any]] = []
        try:
            self.start()
        except Exception as exc:  # no cluster: nothing of this scenario can run
            failures.append(f"run {run} shards: starting the cluster: {type(exc).__name__}: {exc}")
            progress(failures[-1])
            return out
        assert self.single is not None
        idle = idle_cpu([self.single, *self.servers], self.plan.idle_seconds)
        for setup in SETUPS:
            url = REDIS_URL if setup == "single" else self.cluster.url
            servers = [self.single] if setup == "single" else self.servers
            for what, measure in (("send", measure_send), ("channels", measure_channels)):
                try:
                    r = measure(setup, url, self.plan, servers)
                except (BenchError, OSError, ValueError, KeyError) as exc:
                    failures.append(f"run {run} shards {what} {LABELS[setup]}: {type(exc).__name__}: {exc}")
                    progress(failures[-1])
                    continue
                r["run"] = run
                r["idle_cpu_ms_per_s"] = {s.name: idle[s.name] for s in servers}
                r["cluster_affinity"] = self.affinity
                r["server_roles"] = {s.name: s.role for s in servers}
                r["server_slots"] = {s.name: s.slot_label() for s in servers if s.role == "master"}
                out.append(r)
                progress(f"run {run} {progress_line(r)}")
        return out


def run_all(runs: int, plan: ShardsPlan, progress: Callable[[str], None], failures: list[str]) -> list[dict[str, Any]]:
    """Every run of the scenario with one cluster, started at the first and stopped by PID at the end."""
    out: list[dict[str, Any]] = []
    with Session(plan) as session:
        for run in range(1, runs + 1):
            out += session.run(run, progress, failures)
    return out


def progress_line(r: dict[str, Any]) -> str:
    label = LABELS[r["setup"]]
    if r["scenario"] == "shards-send":
        redis = r["burst_redis"]
        return (
            f"shards send_to_identity {label:<13} paced p50 {r['paced_p50_ms']:5.2f} ms p99 {r['paced_p99_ms']:5.2f} "
            f"ms  flat out {r['burst_recv_rate']:6.0f}/s lost {r['burst_lost']}  node A "
            f"{r['burst_sender_cpu_us_per_msg']:4.0f} µs/send  Redis masters {redis['masters_cpu_us_per_op']:5.1f} "
            f"µs/send ({_shares(redis)})"
        )
    redis = r["redis"]
    return (
        f"shards channels {label:<13} {r['publish_rate']:6.0f} publications/s {r['rate']:6.0f} deliveries/s "
        f"p99 {r['p99_ms']:6.2f} ms paced p99 {r['paced_p99_ms']:5.2f} ms lost {r['lost']}  node A "
        f"{r['a_cpu_us_per_publication']:4.0f} µs/pub  Redis masters {redis['masters_cpu_us_per_op']:5.1f} "
        f"µs/pub ({_shares(redis)})"
    )


def _shares(redis: dict[str, Any]) -> str:
    shares = [v["share"] for v in redis["servers"].values() if math.isfinite(v["share"])]
    return " / ".join(f"{s:.0%}" for s in shares)


# ---------------------------------------------------------------------- report


def _cell(values: list[float], count: bool = False) -> str:
    """The median, and the range over runs when there is more than one."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return "n/a"

    def one(v: float) -> str:
        return f"{v:,.0f}" if count else fmt(v)

    cell = one(median(finite))
    if len(finite) > 1 and min(finite) != max(finite):
        cell += f" ({one(min(finite))}\N{EN DASH}{one(max(finite))})"
    return cell


def _ratio(a: float, b: float) -> str:
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def _get(r: dict[str, Any], key: str) -> float:
    """``a.b.c`` looks into nested dicts; NaN where something is missing."""
    value: Any = r
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return math.nan
        value = value[part]
    return float(value) if isinstance(value, (int, float)) else math.nan


def _values(results: list[dict[str, Any]], scenario: str, setup: str, key: str) -> list[float]:
    return [_get(r, key) for r in results if r["scenario"] == scenario and r["setup"] == setup]


def _figures(plan: ShardsPlan) -> tuple[tuple[str, str, str], ...]:
    """(scenario, result key, row label) of the main table."""
    paced = f"paced {plan.send.paced_rate:g}/s"
    cpaced = f"paced {plan.paced_rate:g}/s"
    return (
        ("shards-send", "paced_p50_ms", f"send_to_identity: latency p50, {paced} (ms)"),
        ("shards-send", "paced_p99_ms", f"send_to_identity: latency p99, {paced} (ms)"),
        ("shards-send", "paced_call_p50_ms", f"send_to_identity: call p50, {paced} (ms)"),
        ("shards-send", "burst_recv_rate", "send_to_identity: sends/s, flat out (received by the client)"),
        ("shards-send", "burst_lost", "send_to_identity: lost, flat out"),
        ("shards-send", "burst_p99_ms", "send_to_identity: latency p99, flat out (ms)"),
        ("shards-send", "burst_sender_cpu_us_per_msg", "send_to_identity: node A CPU per send, flat out (µs)"),
        ("shards-send", "burst_receiver_cpu_us_per_msg", "send_to_identity: node B CPU per message, flat out (µs)"),
        ("shards-send", "burst_redis.masters_cpu_us_per_op", "send_to_identity: Redis CPU per send, masters (µs)"),
        ("shards-send", "burst_redis.replicas_cpu_us_per_op", "send_to_identity: Redis CPU per send, replicas (µs)"),
        (
            "shards-send",
            "burst_redis.masters_commands_per_op",
            "send_to_identity: Redis commands per send, masters (scripts' own calls included)",
        ),
        ("shards-channels", "publish_rate", "channels: publications/s, back to back (node A's loop)"),
        ("shards-channels", "rate", "channels: deliveries/s, back to back"),
        ("shards-channels", "p50_ms", "channels: latency p50, back to back (ms)"),
        ("shards-channels", "p99_ms", "channels: latency p99, back to back (ms)"),
        ("shards-channels", "paced_p50_ms", f"channels: latency p50, {cpaced} (ms)"),
        ("shards-channels", "paced_p99_ms", f"channels: latency p99, {cpaced} (ms)"),
        ("shards-channels", "lost", "channels: lost, back to back"),
        ("shards-channels", "a_cpu_us_per_publication", "channels: node A CPU per publication (µs)"),
        ("shards-channels", "b_cpu_us_per_delivery", "channels: node B CPU per delivery (µs)"),
        ("shards-channels", "redis.masters_cpu_us_per_op", "channels: Redis CPU per publication, masters (µs)"),
        ("shards-channels", "redis.replicas_cpu_us_per_op", "channels: Redis CPU per publication, replicas (µs)"),
        (
            "shards-channels",
            "redis.masters_commands_per_op",
            "channels: Redis commands per publication, masters (scripts' own calls included)",
        ),
    )


def heading(plan: ShardsPlan) -> str:
    k = plan.channels
    return (
        f"Redis Cluster (3 masters + 3 replicas, RedisClusterBroker + RedisPresence on redis+cluster://) against "
        f"one Redis (RedisBroker + RedisPresence), measured in the same runs. send_to_identity: node A -> node B "
        f"-> 1 client, {plan.send.paced_messages:,} calls paced at {plan.send.paced_rate:g}/s, then one greenlet "
        f"flat out (at most {plan.send.burst_messages:,} calls or {plan.send.burst_seconds:g} s). channels: "
        f"{k * plan.per_channel} subscribers on node B, {plan.per_channel} on each of {k} channels; node A "
        f"publishes {k * plan.rounds:,} messages of {plan.size} B round-robin over the channels back to back, "
        f"then {k * plan.paced_rounds} paced at {plan.paced_rate:g}/s. Redis CPU: each server's own CPU "
        f"(INFO cpu) over the phase / operations; commands: INFO stats"
    )


def table(results: list[dict[str, Any]], plan: ShardsPlan) -> list[str]:
    lines = [
        f"| figure | {LABELS['single']} | {LABELS['cluster']} | cluster / one |",
        "| --- | ---: | ---: | ---: |",
    ]
    for scenario, key, label in _figures(plan):
        single = _values(results, scenario, "single", key)
        cluster = _values(results, scenario, "cluster", key)
        if not any(math.isfinite(v) for v in single + cluster):
            continue
        count = key.endswith("lost")
        ratio = "" if count else _ratio(median(cluster), median(single))
        lines.append(f"| {label} | {_cell(single, count)} | {_cell(cluster, count)} | {ratio} |")
    return lines


def spread_table(results: list[dict[str, Any]]) -> list[str]:
    """Per Redis server: CPU per operation and share of the masters', for each flat-out phase."""
    names: list[tuple[str, str]] = []  # (setup, server name) in the order first seen
    roles: dict[str, str] = {}
    slots: dict[str, str] = {}
    for r in results:
        for name in (r.get("burst_redis") or r.get("redis") or {}).get("servers", {}):
            if (r["setup"], name) not in names:
                names.append((r["setup"], name))
        for key in ("slots", "roles"):
            for name, value in r.get(f"server_{key}", {}).items():
                (slots if key == "slots" else roles)[name] = value
    lines = [
        "| server | role (slots) | send_to_identity flat out: CPU per send (µs) | share of the masters' CPU "
        "| commands per send | channels: channels on it | CPU per publication (µs) | share of the masters' CPU "
        "| commands per publication |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for setup, name in names:
        send = [r for r in results if r["scenario"] == "shards-send" and r["setup"] == setup]
        chan = [r for r in results if r["scenario"] == "shards-channels" and r["setup"] == setup]
        role = roles.get(name, "")
        where = f"{role} ({slots[name]})" if slots.get(name) and role != "replica" else role

        def cells(rs: list[dict[str, Any]], base: str, name: str = name, role: str = role) -> list[str]:
            return [
                _cell([_get(r, f"{base}.servers.{name}.cpu_us_per_op") for r in rs]),
                "" if role == "replica" else _pct([_get(r, f"{base}.servers.{name}.share") for r in rs]),
                _cell([_get(r, f"{base}.servers.{name}.commands_per_op") for r in rs]),
            ]

        on = "" if role == "replica" else _cell([_get(r, f"channels_on.{name}") for r in chan], count=True)
        if setup == "single":
            on = str(chan[0]["channels"]) if chan else ""
        row = [f"{LABELS[setup]} {name}", where, *cells(send, "burst_redis"), on, *cells(chan, "redis")]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _pct(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "n/a"
    cell = f"{median(finite):.0%}"
    if len(finite) > 1 and min(finite) != max(finite):
        cell += f" ({min(finite):.0%}\N{EN DASH}{max(finite):.0%})"
    return cell


def notes(results: list[dict[str, Any]]) -> list[str]:
    """Where send_to_identity's traffic went, and each server's background CPU."""
    out = []
    direct = sorted(
        {r["direct_topic_on"] for r in results if r["scenario"] == "shards-send" and r["setup"] == "cluster"}
    )
    if direct:
        out.append(
            "send_to_identity sends every message to node B's own topic, one shard channel: on the cluster "
            f"it lived on master {', '.join(f':{p}' for p in direct)} (per run); the identity's presence "
            "lookups go to the one master of its hash slot, so one identity's sends do not spread."
        )
    idle: dict[str, list[float]] = {}
    for r in results:
        for name, value in r.get("idle_cpu_ms_per_s", {}).items():
            if r["scenario"] == "shards-send":
                idle.setdefault(name, []).append(value)
    if idle:
        out.append(
            "Background CPU of each Redis server before the run's first setup (ms per second: its cron, cluster "
            "bus, replication pings, and on the one Redis other users' traffic): "
            + ", ".join(f"{name} {_cell(values)}" for name, values in idle.items())
        )
    return out


def conditions(plan: ShardsPlan, results: list[dict[str, Any]]) -> str:
    affinity = next((r["cluster_affinity"] for r in results if r.get("cluster_affinity")), "")
    where = f"allowed CPUs {affinity}" if affinity else "unpinned"
    return (
        f"shards: nodes (rtgevent serve, default Config) pinned to CPU {SERVER_CPU}, clients and driver to CPU "
        f"{LOADGEN_CPU}; the one Redis (127.0.0.1:6379, shared with whoever else uses it) and the cluster's six "
        f"redis-server processes (started by the bench, cluster-node-timeout {plan.node_timeout} ms, no "
        f"persistence) are not pinned ({where}): they run wherever the scheduler puts them, beside the nodes "
        f"and clients"
    )


def anomalies(results: list[dict[str, Any]]) -> list[str]:
    """Everything that makes a figure suspect, one line each."""
    out = cluster_anomalies([r for r in results if r["scenario"] == "shards-send"])
    for r in results:
        where = f"shards {r['scenario'].removeprefix('shards-')} {LABELS[r['setup']]}"
        phases = (("paced", "paced_redis"), ("burst", "burst_redis"))
        for phase, key in phases if r["scenario"] == "shards-send" else (("back to back", "redis"),):
            for name, f in r.get(key, {}).get("servers", {}).items():
                proc, info = f["proc_cpu_s"], f["cpu_s"]
                if not (math.isfinite(proc) and math.isfinite(info)):
                    out.append(f"{where} {phase}: CPU of Redis {name} unreadable")
                elif abs(proc - info) > 0.03 + 0.1 * info:
                    out.append(f"{where} {phase}: Redis {name} used {info:.3f} s (INFO) but {proc:.3f} s (/proc)")
        if r["scenario"] != "shards-channels":
            continue
        if r["warmup_lost"]:
            out.append(f"{where}: warm-up lost {r['warmup_lost']}")
        if r["published"] < r["count"] or r["publish_errors"]:
            out.append(f"{where}: {r['published']}/{r['count']} published, errors {r['publish_errors']}")
        if r["lost"] or r["duplicates"] or r["unreadable"] or r["paced_lost"]:
            out.append(
                f"{where}: lost {r['lost']} of {r['expected']}, duplicates {r['duplicates']}, unreadable "
                f"{r['unreadable']}, paced lost {r['paced_lost']} of {r['paced_expected']}"
            )
        if r["readers_closed"]:
            out.append(f"{where}: connections closed while reading: {r['readers_closed'][:5]}")
        if r["clients"] != r["clients_planned"] or r["subscribed"] < r["channels"]:
            out.append(f"{where}: {r['clients']} clients, node B subscribed {r['subscribed']} of {r['channels']}")
        if r["client_cpu_share"] >= 0.9:
            out.append(f"{where}: the client used {r['client_cpu_share']:.0%} of a CPU (it may limit the rate)")
        if r.get("left_keys", 0) != 0 or r.get("cleanup_errors"):
            out.append(f"{where}: clean-up left {r.get('left_keys')} Redis keys, errors {r.get('cleanup_errors')}")
        for name, lines in r.get("logs", {}).items():
            if lines:
                out.append(f"{where} {name} stderr: " + " | ".join(lines[:5]))
    return out


def report(results: list[dict[str, Any]], plan: ShardsPlan) -> list[str]:
    if not results:
        return []
    return [
        heading(plan),
        "",
        *table(results, plan),
        "",
        "Per Redis server (flat-out send_to_identity, back-to-back channel publications; medians over runs):",
        "",
        *spread_table(results),
        "",
        *notes(results),
        "",
    ]

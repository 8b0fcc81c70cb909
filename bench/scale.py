"""The ``scale`` scenario: tens of thousands of idle connections on one node, then one broadcast.

One rtgevent server (``rtgevent-full``, ``Config(heartbeat_interval=30)``, CPU 0) and several
load generator processes (`bench.scale_client`, all on CPU 1: one process cannot hold more
sockets than its ``RLIMIT_NOFILE``) whose clients connect from source addresses
``127.0.0.2`` ... (one address has one range of ephemeral ports towards the server), at most
``concurrency`` handshakes in flight in all.  Per run:

1. the server's RSS and CPU with no connection (after the clients' warm-up, a ``gc.collect()``
   in the server and a second's settle);
2. every client connects; after ``settle`` seconds, a ``gc.collect()`` and a second's settle,
   the RSS again: RSS per connection = (RSS with N - RSS with 0) / N;
3. an idle window of ``idle_seconds``: the server's CPU over it, as a percentage of one core,
   and the pings the clients answered in it (with a 30 s heartbeat, about two per connection);
4. ``broadcasts`` broadcasts of ``size`` B, ``interval`` seconds apart (the first is the one the
   goal is about; the next shows a warm one): every client's arrival latency (its
   ``CLOCK_MONOTONIC`` at arrival minus the server's, stamped in the data just before
   ``rt.broadcast``), p50 / p99 / max over all clients, and the time until the last one had it.

The server may hold no more connections than its open-files limit allows: the driver asks for
``connections + 1000`` (``bench.servers --nofile``), reads what it got from ``/proc/PID/limits``
and, when that is less, measures the largest count that fits (the limit minus the server's
open files at start minus ``FD_HEADROOM``, rounded down to a hundred) and says why.
Before each run it waits (up to ``load_wait`` seconds, polling every 20 s) for a 1-minute load
average below ``max_load``, and notes the load.  Every process is stopped by PID in ``finally``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.common import (
    LOADGEN_CPU,
    ROOT,
    BenchError,
    LineReader,
    child_env,
    fmt,
    median,
    read_log,
    server_command,
    stop,
)
from bench.proc import cpu_seconds, rss_kib, system_cpu

KIND = "rtgevent-full"
#: file descriptors left free in the server for the driver's HTTP requests and closing warm-ups
FD_HEADROOM = 100
#: goals of issue 16, item 3 (at 50,000 connections)
GOAL_CONNECTIONS = 50_000
GOAL_RSS_KIB = 20.0
GOAL_IDLE_CPU_PERCENT = 5.0
GOAL_P99_MS = 1000.0
#: CAP_SYS_RESOURCE's bit in ``CapEff`` (capabilities(7)): what lets a process raise its hard limits
CAP_SYS_RESOURCE = 24


@dataclass(frozen=True)
class ScalePlan:
    connections: int = GOAL_CONNECTIONS
    #: clients per load generator process (each holds fewer sockets than its open-files limit)
    per_client: int = 12_500
    #: connections per source address (an address pair has ~28,000 ephemeral ports)
    per_source: int = 10_000
    concurrency: int = 200
    heartbeat: float = 30.0
    settle: float = 5.0
    idle_seconds: float = 60.0
    broadcasts: int = 2
    interval: float = 2.0
    size: int = 100
    max_load: float = 0.6
    load_wait: float = 600.0


SCALE_FULL = ScalePlan()
SCALE_QUICK = ScalePlan(connections=5_000, idle_seconds=30.0)


# ---------------------------------------------------------------------- the server's limits


def nofile_limits(pid: int) -> tuple[int, int]:
    """(soft, hard) ``Max open files`` of ``pid``, from ``/proc/PID/limits``."""
    with open(f"/proc/{pid}/limits", encoding="ascii") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise BenchError(f"no 'Max open files' for pid {pid}")


def has_cap_sys_resource(pid: int) -> bool:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def nr_open() -> int:
    """``fs.nr_open``: the ceiling of any process's open-files limit."""
    with open("/proc/sys/fs/nr_open", encoding="ascii") as value:
        return int(value.read())


def feasible(wanted: int, soft: int, open_fds: int) -> int:
    """How many connections a server with ``soft`` open files, ``open_fds`` in use, can hold."""
    room = soft - open_fds - FD_HEADROOM
    return wanted if room >= wanted else max(0, room // 100 * 100)


# ---------------------------------------------------------------------- the machine's load


def load_average() -> float:
    with open("/proc/loadavg", encoding="ascii") as value:
        return float(value.read().split()[0])


def wait_quiet(plan: ScalePlan, progress: Callable[[str], None]) -> tuple[float, float]:
    """Wait for a 1-minute load average below ``max_load`` (polling every 20 s); (load, seconds waited)."""
    started = time.monotonic()
    load = load_average()
    while load >= plan.max_load and time.monotonic() - started < plan.load_wait:
        progress(f"scale: load average {load:.2f} >= {plan.max_load:g}, waiting")
        time.sleep(20)
        load = load_average()
    return load, time.monotonic() - started


# ---------------------------------------------------------------------- one run


def _get(port: int, path: str, method: str = "GET") -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        value: dict[str, Any] = json.load(response)
        return value


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


class Clients:
    """The load generator processes, driven together."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.readers: list[LineReader] = []

    def start(self, port: int, shares: list[int], sources: list[str], concurrency: int, plan: ScalePlan) -> None:
        offset = 0
        for i, share in enumerate(shares):
            command = ["taskset", "-c", LOADGEN_CPU, sys.executable, "-m", "bench.scale_client", "--port", str(port)]
            command += ["--conns", str(share), "--sources", ",".join(sources), "--offset", str(offset)]
            command += ["--concurrency", str(concurrency), "--time-limit", str(plan.interval * plan.broadcasts + 30)]
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.PIPE, cwd=ROOT, env=child_env())
            self.procs.append(proc)
            self.readers.append(LineReader(proc, f"load generator {i + 1}"))
            offset += share

    def tell(self, word: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(word.encode() + b"\n")
            proc.stdin.flush()

    def events(self, name: str, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        return [r.event(name, max(1.0, deadline - time.monotonic())) for r in self.readers]

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc)


def measure(plan: ScalePlan, progress: Callable[[str], None]) -> dict[str, Any]:
    load, waited = wait_quiet(plan, progress)
    server: subprocess.Popen[bytes] | None = None
    clients = Clients()
    log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in the finally block)
    try:
        asked = plan.connections + 1000
        server = subprocess.Popen(
            server_command(KIND, ["--heartbeat-interval", f"{plan.heartbeat:g}", "--nofile", str(asked)]),
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=child_env(),
        )
        ready = LineReader(server, "server").line(60)
        if not ready.startswith("READY "):
            raise BenchError(f"server: unexpected first line {ready!r}")
        port, pid = int(ready.split()[1]), server.pid
        soft, hard = nofile_limits(pid)
        open_fds = len(os.listdir(f"/proc/{pid}/fd"))
        capable = has_cap_sys_resource(pid)
        n = feasible(plan.connections, soft, open_fds)
        if n <= 0:
            raise BenchError(f"the server's open-files limit ({soft}) leaves no room for connections")
        shares = [n // math.ceil(n / plan.per_client)] * math.ceil(n / plan.per_client)
        shares[-1] += n - sum(shares)
        sources = [f"127.0.0.{2 + i}" for i in range(max(2, math.ceil(n / plan.per_source)))]
        clients.start(port, shares, sources, math.ceil(plan.concurrency / len(shares)), plan)
        clients.events("ready", 120)

        _get(port, "/_bench/gc")
        time.sleep(1.0)
        rss0, cpu0, gen0 = rss_kib(pid), cpu_seconds(pid), clients.cpu()
        clients.tell("go")
        connected = clients.events("connected", 300)
        held = sum(c["connected"] for c in connected)
        connect_seconds = max(c["elapsed"] for c in connected)
        cpu1, gen1 = cpu_seconds(pid), clients.cpu()
        time.sleep(plan.settle)
        collected = _get(port, "/_bench/gc")["collected"]
        time.sleep(1.0)
        rss1 = rss_kib(pid)
        server_count = int(_get(port, "/_bench/stats")["connections"])
        progress(
            f"scale: {held:,} connected in {connect_seconds:.1f} s, RSS {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB"
        )

        # the idle window
        clients.tell("mark")
        before = clients.events("mark", 30)
        idle0, busy0, steal0, gen_idle0, t0 = cpu_seconds(pid), *system_cpu(), clients.cpu(), time.monotonic()
        time.sleep(plan.idle_seconds)
        idle1, busy1, steal1, gen_idle1, t1 = cpu_seconds(pid), *system_cpu(), clients.cpu(), time.monotonic()
        clients.tell("mark")
        after = clients.events("mark", 30)
        window = t1 - t0
        pings = sum(a["pings"] for a in after) - sum(b["pings"] for b in before)
        ours = (idle1 - idle0) + (gen_idle1 - gen_idle0)
        progress(
            f"scale: idle {window:.0f} s, server {(idle1 - idle0) / window * 100:.2f} % of a core, {pings:,} pings"
        )

        # the broadcasts
        clients.tell(f"arm {plan.broadcasts}")
        clients.events("armed", 30)
        b_cpu0, b_gen0 = cpu_seconds(pid), clients.cpu()
        started = _get(
            port, f"/_bench/broadcast?count={plan.broadcasts}&interval={plan.interval}&size={plan.size}", "POST"
        )
        if not started.get("started"):
            raise BenchError(f"the server refused the broadcast: {started}")
        done = clients.events("done", plan.interval * plan.broadcasts + 60)
        b_cpu1, b_gen1 = cpu_seconds(pid), clients.cpu()
        stats = _get(port, "/_bench/stats")
        clients.tell("close")
        clients.events("closed", 120)
        server_log = [line for line in read_log(log).splitlines() if line.strip()]
    finally:
        try:
            clients.stop()
        finally:
            try:
                stop(server)
            finally:
                log.close()

    broadcasts = []
    for i in range(plan.broadcasts):
        lat = sorted(v for d in done for v in d["latencies_ms"][i])
        sent = min(d["sent"][i] for d in done)
        last = max(d["last_arrival"][i] for d in done)
        calls = stats.get("broadcast_calls", [])
        broadcasts.append(
            {
                "received": len(lat),
                "p50_ms": _percentile(lat, 0.50),
                "p99_ms": _percentile(lat, 0.99),
                "max_ms": lat[-1] if lat else float("nan"),
                "last_ms": (last - sent) * 1000 if lat else float("nan"),
                "call_ms": calls[i] * 1000 if i < len(calls) else float("nan"),
            }
        )
    deliveries = max(1, sum(b["received"] for b in broadcasts))
    return {
        "load_before": load,
        "max_load": plan.max_load,
        "load_waited_s": waited,
        "wanted": plan.connections,
        "nofile_asked": asked,
        "nofile_soft": soft,
        "nofile_hard": hard,
        "server_open_fds_at_start": open_fds,
        "cap_sys_resource": capable,
        "nr_open": nr_open(),
        "conns": n,
        "clients": len(shares),
        "sources": sorted({s for c in connected for s in c["sources"]}),
        "connected": held,
        "failed": sum(c["failed"] for c in connected),
        "errors": {k: v for c in connected for k, v in c["errors"].items()},
        "server_connections": server_count,
        "connect_seconds": connect_seconds,
        "rate": held / connect_seconds if connect_seconds > 0 else 0.0,
        "server_cpu_us_per_conn": (cpu1 - cpu0) / max(1, held) * 1e6,
        "loadgen_cpu_us_per_conn": (gen1 - gen0) / max(1, held) * 1e6,
        "gc_collected": collected,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "mem_kib_per_conn": (rss1 - rss0) / max(1, held),
        "idle_window_s": window,
        "idle_cpu_percent": (idle1 - idle0) / window * 100,
        "idle_loadgen_cpu_percent": (gen_idle1 - gen_idle0) / window * 100,
        "pings": pings,
        "pings_per_conn": pings / max(1, held),
        "server_cpu_us_per_ping": (idle1 - idle0) / pings * 1e6 if pings else float("nan"),
        "idle_other_cpus": max(0.0, (busy1 - busy0) - ours) / window,
        "idle_steal_cpus": (steal1 - steal0) / window,
        "closed_while_idle": {k: v for a in after for k, v in a["closed"].items()},
        "broadcasts": broadcasts,
        "open_after_broadcasts": sum(d["open"] for d in done),
        "duplicates": sum(d["duplicates"] for d in done),
        "unreadable": sum(d["unreadable"] for d in done),
        "closed_at_end": {k: v for d in done for k, v in d["closed"].items()},
        "broadcast_sent": stats.get("broadcast_sent"),
        "server_cpu_us_per_delivery": (b_cpu1 - b_cpu0) / deliveries * 1e6,
        "loadgen_cpu_us_per_delivery": sum(d["loadgen_cpu"] for d in done) / deliveries * 1e6,
        "loadgen_cpu_broadcast_s": b_gen1 - b_gen0,
        "server_log": server_log[:20],
    }


def progress_line(r: dict[str, Any]) -> str:
    first = r["broadcasts"][0]
    return (
        f"scale {r['connected']:,} conns {r['mem_kib_per_conn']:.1f} KiB/conn, idle {r['idle_cpu_percent']:.2f} % "
        f"({r['pings_per_conn']:.2f} pings/conn), broadcast reached {first['received']:,} p50 {first['p50_ms']:.0f} "
        f"ms p99 {first['p99_ms']:.0f} ms last {first['last_ms']:.0f} ms (load before {r['load_before']:.2f})"
    )


# ---------------------------------------------------------------------- report


def heading(plan: ScalePlan, results: list[dict[str, Any]]) -> str:
    n = results[0]["conns"] if results else plan.connections
    return (
        f"Scale: {n:,} idle rtgevent connections on one node (Config(heartbeat_interval={plan.heartbeat:g})), "
        f"an idle window of {plan.idle_seconds:g} s, then {plan.broadcasts} broadcasts of {plan.size} B "
        f"{plan.interval:g} s apart (goals at {GOAL_CONNECTIONS:,}: RSS per connection <= {GOAL_RSS_KIB:g} KiB, "
        f"idle CPU <= {GOAL_IDLE_CPU_PERCENT:g} % of a core, the broadcast's p99 <= {GOAL_P99_MS / 1000:g} s)"
    )


FIGURES: tuple[tuple[str, str], ...] = (
    ("connected", "connections held"),
    ("rate", "connect rate (connections/s)"),
    ("mem_kib_per_conn", "server RSS per connection (KiB)"),
    ("rss_after_mib", "server RSS with all connections (MiB)"),
    ("idle_cpu_percent", "server CPU at idle (% of a core)"),
    ("pings_per_conn", "pings answered per connection in the window"),
    ("server_cpu_us_per_ping", "server CPU per ping at idle (µs)"),
    ("idle_loadgen_cpu_percent", "load generators' CPU at idle (% of a core)"),
)
BROADCAST_FIGURES: tuple[tuple[str, str], ...] = (
    ("received", "clients reached"),
    ("p50_ms", "latency p50 (ms)"),
    ("p99_ms", "latency p99 (ms)"),
    ("max_ms", "latency max (ms)"),
    ("last_ms", "until the last client had it (ms)"),
    ("call_ms", "the rt.broadcast call (ms)"),
)
COUNTS = frozenset({"connected", "received"})


def _cell(value: float, key: str) -> str:
    if key in COUNTS and math.isfinite(value):
        return f"{value:,.0f}"
    return fmt(value)


def table(results: list[dict[str, Any]]) -> list[str]:
    """One row per figure: the median, then each run."""
    runs = sorted(results, key=lambda r: r["run"])
    for r in runs:
        r["rss_after_mib"] = r["rss_after_kib"] / 1024
    head = ["median", *(f"run {r['run']}" for r in runs)]
    lines = ["| figure | " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(head)]

    def row(label: str, values: list[float], key: str) -> None:
        lines.append(f"| {label} | " + " | ".join(_cell(v, key) for v in [median(values), *values]) + " |")

    for key, label in FIGURES:
        row(label, [r[key] for r in runs], key)
    count = min(len(r["broadcasts"]) for r in runs) if runs else 0
    for i in range(count):
        which = "first broadcast" if i == 0 else f"broadcast {i + 1}"
        for key, label in BROADCAST_FIGURES:
            row(f"{which}: {label}", [r["broadcasts"][i][key] for r in runs], key)
    row("server CPU per delivery (µs)", [r["server_cpu_us_per_delivery"] for r in runs], "")
    row("load generators' CPU per delivery (µs)", [r["loadgen_cpu_us_per_delivery"] for r in runs], "")
    row("load average before the run (1 min)", [r["load_before"] for r in runs], "")
    row("other CPU use during the idle window (CPUs)", [r["idle_other_cpus"] for r in runs], "")
    return lines


def targets(results: list[dict[str, Any]]) -> list[str]:
    """The goals, at the count measured; below 50,000 also a linear projection, marked as such."""
    if not results:
        return []
    n = int(median([r["connected"] for r in results]))
    rss = median([r["mem_kib_per_conn"] for r in results])
    cpu = median([r["idle_cpu_percent"] for r in results])
    p99 = median([r["broadcasts"][0]["p99_ms"] for r in results])
    reached = all(r["broadcasts"][0]["received"] == r["connected"] == r["conns"] for r in results)

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = [
        f"Target RSS per connection <= {GOAL_RSS_KIB:g} KiB at {n:,}: {fmt(rss)} KiB: {verdict(rss <= GOAL_RSS_KIB)}",
        f"Target server CPU at idle <= {GOAL_IDLE_CPU_PERCENT:g} % of a core at {n:,}: {fmt(cpu)} %: "
        f"{verdict(cpu <= GOAL_IDLE_CPU_PERCENT)}",
        f"Target the broadcast reaches all {n:,} with p99 <= {GOAL_P99_MS:g} ms: {fmt(p99)} ms, "
        f"{'all' if reached else 'NOT all'} reached in every run: {verdict(reached and p99 <= GOAL_P99_MS)}",
    ]
    if n < GOAL_CONNECTIONS:
        scale = GOAL_CONNECTIONS / n
        capped = any(r["conns"] < r["wanted"] for r in results)
        why = "the server's open-files limit, see the conditions above" if capped else "--connections"
        lines.append(
            f"Not measured at {GOAL_CONNECTIONS:,} ({why}). Projected linearly "
            f"(x{scale:.2f}; pings and the broadcast's sweep are per connection, the RSS figure is already one): "
            f"idle CPU {fmt(cpu * scale)} % ({verdict(cpu * scale <= GOAL_IDLE_CPU_PERCENT)}), the first "
            f"broadcast's p99 {fmt(p99 * scale)} ms ({verdict(p99 * scale <= GOAL_P99_MS)}), a projection, "
            "not a measurement"
        )
    return lines


def conditions(plan: ScalePlan, results: list[dict[str, Any]]) -> str:
    if not results:
        return "scale: no run completed"
    r = results[0]
    text = (
        f"scale: rtgevent-full with Config(heartbeat_interval={plan.heartbeat:g}), asked for {r['wanted']:,} "
        f"connections; {r['clients']} load generator process(es) on CPU {LOADGEN_CPU}, source addresses "
        f"{', '.join(r['sources'])}, {plan.concurrency} handshakes in flight in all; server RLIMIT_NOFILE asked "
        f"{r['nofile_asked']:,}, got soft {r['nofile_soft']:,} / hard {r['nofile_hard']:,} "
        f"(fs.nr_open {r['nr_open']:,}; CAP_SYS_RESOURCE {'present' if r['cap_sys_resource'] else 'absent'}, "
        f"so the hard limit {'can' if r['cap_sys_resource'] else 'cannot'} be raised from inside)"
    )
    if r["conns"] < r["wanted"]:
        text += (
            f"; measured at {r['conns']:,}: the limit minus the server's {r['server_open_fds_at_start']} open files "
            f"at start minus {FD_HEADROOM} kept free, rounded down to a hundred"
        )
    return text


def anomalies(results: list[dict[str, Any]]) -> list[str]:
    notes: list[str] = []
    for r in results:
        where = f"scale run {r['run']}"
        if r["connected"] != r["conns"] or r["failed"]:
            notes.append(f"{where}: {r['connected']:,}/{r['conns']:,} connected, errors {r['errors']}")
        if r["server_connections"] != r["connected"]:
            notes.append(
                f"{where}: the server counted {r['server_connections']} connections, the clients {r['connected']}"
            )
        if r["closed_while_idle"] or r["closed_at_end"]:
            notes.append(f"{where}: connections ended while held: {r['closed_at_end'] or r['closed_while_idle']}")
        for i, b in enumerate(r["broadcasts"], 1):
            if b["received"] != r["connected"]:
                notes.append(f"{where}: broadcast {i} reached {b['received']:,} of {r['connected']:,}")
        if r["broadcast_sent"] != len(r["broadcasts"]):
            notes.append(f"{where}: the server broadcast {r['broadcast_sent']} of {len(r['broadcasts'])}")
        if r["duplicates"] or r["unreadable"]:
            notes.append(f"{where}: {r['duplicates']} duplicates, {r['unreadable']} frames without a stamp")
        if r["loadgen_cpu_us_per_delivery"] >= r["server_cpu_us_per_delivery"]:
            notes.append(f"{where}: the load generators used as much CPU per delivery as the server")
        if r["load_before"] >= r["max_load"]:
            notes.append(f"{where}: started with a load average of {r['load_before']:.2f}")
        if r["server_log"]:
            notes.append(f"{where} server stderr: " + " | ".join(r["server_log"][:5]))
    return notes

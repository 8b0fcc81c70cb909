"""``python -m bench [idle] [echo] [fanout] [fanout-node] [fanout-burst] [slow] [cluster] [emitter] [channels]
[churn] [history] [scale] [shards] [--quick] [--runs N] [--connections N] [--json PATH]``: the table.

For every measurement a fresh server process (``taskset -c 0``) and a fresh load generator
(``taskset -c 1``) are started, driven phase by phase over the load generator's stdin and
stdout, and both are stopped by PID in a ``finally`` block.  Within one run the servers under
test are measured back to back (rtgevent, then Flask-SocketIO) so they share the same
conditions; each figure in the table is the median over ``--runs`` runs.  The ``fanout`` and
``slow`` scenarios live in `bench.fanout`; ``cluster`` and ``emitter`` (`bench.cluster`) measure
rtgevent alone, once per broker; ``channels`` (against Flask-SocketIO's rooms over a Redis message
queue) and ``churn`` (rtgevent alone, per broker) live in `bench.channels`; ``history`` (publishing with
and without history, a reconnect storm that recovers, against Flask-SocketIO's) in `bench.history`;
``scale`` (tens of thousands of idle connections on one node, then a broadcast; rtgevent alone) in
`bench.scale`; ``shards`` (a Redis Cluster against one Redis: cross-node sends, channels, each Redis
server's CPU) in `bench.shards`, whose runs come after the other scenarios' (one cluster for all of them).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import channels as ch
from bench import cluster as cl
from bench import fanout as fo
from bench import history as hi
from bench import nodejs
from bench import scale as sc
from bench import shards as sh
from bench.common import LOADGEN_CPU, ROOT, SERVER_CPU, BenchError, Measurement, fmt, median, wait_connections
from bench.proc import raise_nofile

SCENARIOS = (
    "idle",
    "echo",
    "fanout",
    "fanout-node",
    "fanout-burst",
    "slow",
    "cluster",
    "emitter",
    "channels",
    "churn",
    "history",
    "scale",
    "shards",
)
#: what runs when no scenario is named (cluster, emitter, channels and churn need Redis and RabbitMQ, history
#: Redis; scale takes minutes per run and a quiet machine; shards starts a Redis Cluster)
DEFAULT_SCENARIOS = ("idle", "echo", "fanout", "fanout-node", "fanout-burst", "slow")
LABELS = {"rtgevent-bare": "rtgevent bare", "rtgevent-full": "rtgevent full", "socketio": "Flask-SocketIO"}
IDLE_LABELS = {"rtgevent-full": "rtgevent", "reference": "reference", "socketio": "Flask-SocketIO"}
KIB = 1024
#: issue 16's goals for rtgevent full / bare server CPU per message in echo, by payload size
ECHO_GOALS = {100: 1.2, 16 * KIB: 1.3}


@dataclass(frozen=True)
class Plan:
    """Sizes and counts of one invocation (``--quick`` or full)."""

    idle_sizes: tuple[int, ...]
    echo_sizes: tuple[int, ...]
    #: measured messages per run, by payload size and server kind (bounded by ``echo_time_limit`` too)
    echo_messages: dict[int, dict[str, int]]
    echo_time_limit: float
    echo_clients: int = 50
    idle_concurrency: int = 100


FULL = Plan(
    idle_sizes=(2000, 10000),
    echo_sizes=(100, 16 * KIB),
    echo_messages={
        100: {"rtgevent-bare": 60000, "rtgevent-full": 60000, "socketio": 20000},
        16 * KIB: {"rtgevent-bare": 30000, "rtgevent-full": 20000, "socketio": 2000},
    },
    echo_time_limit=60.0,
)
QUICK = Plan(
    idle_sizes=(2000,),
    echo_sizes=(100, 16 * KIB),
    echo_messages={
        100: {"rtgevent-bare": 10000, "rtgevent-full": 10000, "socketio": 5000},
        16 * KIB: {"rtgevent-bare": 3000, "rtgevent-full": 3000, "socketio": 600},
    },
    echo_time_limit=20.0,
)


# ---------------------------------------------------------------------- scenarios


def idle_kinds(compression: bool) -> tuple[str, ...]:
    """The servers of ``idle``: gevent-websocket (Flask-SocketIO) cannot negotiate permessage-deflate."""
    return ("rtgevent-full", "reference") if compression else ("rtgevent-full", "reference", "socketio")


def measure_idle(kind: str, conns: int, plan: Plan, compression: bool = False) -> dict[str, Any]:
    args = ["idle", "--conns", str(conns), "--concurrency", str(plan.idle_concurrency)]
    args += ["--compression"] if compression else []
    with Measurement(kind, args, server_args=["--compression"] if compression else ()) as m:
        m.events.event("ready", 120)
        cpu0, rss0, gen0 = m.sample()
        m.tell("go")
        connected = m.events.event("connected", 300)
        time.sleep(1.0)  # let the server finish what the last handshakes started
        cpu1, rss1, gen1 = m.sample()
        server_count = wait_connections(m, connected["connected"], 10)
        m.tell("close")
        closed = m.events.event("closed", 120)
        log = m.log_lines()
        load = m.foreign_load()
    n = max(1, connected["connected"])
    return {
        "kind": kind,
        "conns": conns,
        "compression": compression,
        "connected": connected["connected"],
        "failed": connected["failed"],
        "errors": connected["errors"],
        "server_connections": server_count,
        "dropped": closed["dropped"],
        "drop_reasons": closed["drop_reasons"],
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "mem_kib_per_conn": (rss1 - rss0) / n,
        "rate": connected["rate"],
        "connect_seconds": connected["elapsed"],
        "server_cpu_us_per_conn": (cpu1 - cpu0) / n * 1e6,
        "loadgen_cpu_us_per_conn": (gen1 - gen0) / n * 1e6,
        "server_log": log[:20],
        **load,
    }


def measure_echo(kind: str, size: int, plan: Plan) -> dict[str, Any]:
    messages = plan.echo_messages[size][kind]
    args = [
        "echo",
        "--clients",
        str(plan.echo_clients),
        "--size",
        str(size),
        "--messages",
        str(messages),
        "--time-limit",
        str(plan.echo_time_limit),
    ]
    with Measurement(kind, args) as m:
        ready = m.events.event("ready", 120)
        before = m.stats()
        cpu0, _, gen0 = m.sample()
        m.tell("go")
        done = m.events.event("done", plan.echo_time_limit + 120)
        cpu1, rss1, gen1 = m.sample()
        after = m.stats()
        m.tell("close")
        m.events.event("closed", 60)
        log = m.log_lines()
        load = m.foreign_load()
    n = max(1, done["messages"])
    result = {
        "kind": kind,
        "size": size,
        "messages_planned": messages,
        "messages": done["messages"],
        "sent": done["sent"],
        "elapsed": done["elapsed"],
        "rate": done["rate"],
        "p50_ms": done["p50_ms"],
        "p99_ms": done["p99_ms"],
        "max_ms": done["max_ms"],
        "errors": done["errors"],
        "mismatches": done["mismatches"],
        "warmup_errors": ready.get("warmup_errors", {}),
        "server_cpu_us_per_msg": (cpu1 - cpu0) / n * 1e6,
        "loadgen_cpu_us_per_msg": (gen1 - gen0) / n * 1e6,
        "server_rss_kib": rss1,
        "server_log": log[:20],
        **load,
    }
    if "messages_in" in before:  # rtgevent counts what it received and sent
        result["server_messages_in"] = after["messages_in"] - before["messages_in"]
        result["server_messages_out"] = after["messages_out"] - before["messages_out"]
    return result


# ---------------------------------------------------------------------- report


def ratio(a: float, b: float) -> str:
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def size_label(size: int) -> str:
    return f"{size // KIB} KiB" if size % KIB == 0 else f"{size} B"


IDLE_FIGURES = (
    ("mem_kib_per_conn", "server memory per connection (KiB)"),
    ("rate", "connect rate (connections/s)"),
    ("server_cpu_us_per_conn", "server CPU per connection (µs)"),
    ("loadgen_cpu_us_per_conn", "load generator CPU per connection (µs)"),
)
ECHO_FIGURES = (
    ("rate", "messages/s"),
    ("p50_ms", "latency p50 (ms)"),
    ("p99_ms", "latency p99 (ms)"),
    ("server_cpu_us_per_msg", "server CPU per message (µs)"),
    ("loadgen_cpu_us_per_msg", "load generator CPU per message (µs)"),
)


def idle_table(results: list[dict[str, Any]], sizes: Sequence[int]) -> list[str]:
    """A column per server measured, then rtgevent's ratio to each of the others."""
    kinds = [k for k in IDLE_LABELS if any(r["kind"] == k for r in results)] or ["rtgevent-full"]
    others = [k for k in kinds if k != "rtgevent-full"]
    head = [IDLE_LABELS[k] for k in kinds] + [f"rtgevent / {IDLE_LABELS[k]}" for k in others]
    lines = ["| connections | figure | " + " | ".join(head) + " |", "| ---: | --- |" + " ---: |" * len(head)]
    for conns in sizes:
        for key, label in IDLE_FIGURES:
            values = {k: median([r[key] for r in results if r["conns"] == conns and r["kind"] == k]) for k in kinds}
            rt = values["rtgevent-full"]
            cells = [fmt(values[k]) for k in kinds] + [ratio(rt, values[k]) for k in others]
            lines.append(f"| {conns:,} | {label} | " + " | ".join(cells) + " |")
    return lines


def echo_table(results: list[dict[str, Any]], sizes: Sequence[int]) -> list[str]:
    lines = [
        "| payload | figure | rtgevent bare | rtgevent full | Flask-SocketIO "
        "| bare / Flask-SocketIO | full / Flask-SocketIO | full / bare |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in sizes:
        for key, label in ECHO_FIGURES:
            values = {
                kind: median([r[key] for r in results if r["size"] == size and r["kind"] == kind]) for kind in LABELS
            }
            bare, full, sio = values["rtgevent-bare"], values["rtgevent-full"], values["socketio"]
            lines.append(
                f"| {size_label(size)} | {label} | {fmt(bare)} | {fmt(full)} | {fmt(sio)} "
                f"| {ratio(bare, sio)} | {ratio(full, sio)} | {ratio(full, bare)} |"
            )
    return lines


def targets(results: list[dict[str, Any]], sizes: Sequence[int]) -> list[str]:
    """The full / bare target of server CPU per message (`ECHO_GOALS`), per payload size."""
    lines = []
    for size in sizes:
        cpu = {
            kind: median([r["server_cpu_us_per_msg"] for r in results if r["size"] == size and r["kind"] == kind])
            for kind in ("rtgevent-bare", "rtgevent-full")
        }
        bare, full = cpu["rtgevent-bare"], cpu["rtgevent-full"]
        if not (math.isfinite(bare) and math.isfinite(full)) or bare <= 0:
            continue
        goal = ECHO_GOALS.get(size, 1.2)
        verdict = "met" if full / bare <= goal else "MISSED"
        lines.append(
            f"Target full / bare <= {goal:g}x server CPU, {size_label(size)}: {full / bare:.2f}x "
            f"({fmt(full)} vs {fmt(bare)} µs per message): {verdict}"
        )
    return lines


def anomalies(idle: list[dict[str, Any]], echo: list[dict[str, Any]]) -> list[str]:
    """Everything that makes a figure suspect, one line each."""
    notes: list[str] = []
    for r in idle:
        where = f"idle {r['conns']:,} {IDLE_LABELS.get(r['kind'], r['kind'])}"
        if r["failed"] or r["connected"] != r["conns"]:
            notes.append(f"{where}: {r['connected']}/{r['conns']} connected, errors {r['errors']}")
        if r["server_connections"] != r["connected"]:
            notes.append(f"{where}: server counted {r['server_connections']} connections, client {r['connected']}")
        if r["dropped"]:
            notes.append(f"{where}: {r['dropped']} connections dropped while held: {r['drop_reasons']}")
        if r["loadgen_cpu_us_per_conn"] >= r["server_cpu_us_per_conn"]:
            notes.append(f"{where}: the load generator used as much CPU as the server")
    for r in echo:
        where = f"echo {size_label(r['size'])} {LABELS.get(r['kind'], r['kind'])}"
        if r["messages"] < r["messages_planned"]:
            notes.append(f"{where}: {r['messages']}/{r['messages_planned']} messages within the time limit")
        if r["errors"] or r["warmup_errors"]:
            notes.append(f"{where}: client errors {r['errors'] or r['warmup_errors']}")
        if r["mismatches"]:
            notes.append(f"{where}: {r['mismatches']} answers did not match their request")
        if "server_messages_in" in r and not (r["server_messages_in"] == r["server_messages_out"] == r["sent"]):
            notes.append(
                f"{where}: server counted {r['server_messages_in']} in / {r['server_messages_out']} out, "
                f"client sent {r['sent']}"
            )
        if r["loadgen_cpu_us_per_msg"] >= r["server_cpu_us_per_msg"]:
            notes.append(f"{where}: the load generator used as much CPU as the server")
    for r in [*idle, *echo]:
        if r["server_log"]:
            notes.append(f"{r['kind']} server stderr: " + " | ".join(r["server_log"][:5]))
    return notes


def source_state() -> str:
    """Which rtgevent source is measured: the commit, and whether rtgevent/ differs from it."""
    if not (ROOT / ".git").exists():
        return f"rtgevent from {ROOT} (not a git checkout)"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "rtgevent"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "rtgevent at an unknown commit"
    return f"rtgevent at commit {head or '?'}" + (" with uncommitted changes under rtgevent/" if dirty else "")


def conditions(runs: int, quick: bool, source: str) -> list[str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    except OSError:
        pass

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "?"

    versions = ", ".join(
        f"{name} {version(name)}"
        for name in (
            "rtgevent",
            "gevent",
            "greenlet",
            "gevent-websocket",
            "websockets",
            "Flask-SocketIO",
            "python-socketio",
            "python-engineio",
            "Flask",
        )
    )
    return [
        f"date {datetime.date.today().isoformat()}, {platform.node()}, CPU {model}, {os.cpu_count()} CPUs; {source}",
        f"Python {platform.python_version()}; {versions}",
        f"server pinned to CPU {SERVER_CPU}, load generator to CPU {LOADGEN_CPU}; "
        f"{'--quick, ' if quick else ''}{runs} run(s), medians shown",
    ]


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="scenario",
        help=f"any of {', '.join(SCENARIOS)} (default: {' '.join(DEFAULT_SCENARIOS)}; cluster, emitter, "
        f"channels, churn, history and shards need Redis on 127.0.0.1:6379, cluster, emitter, channels and churn "
        f"RabbitMQ on 127.0.0.1:5672; shards starts a Redis Cluster with redis-server and redis-cli)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer connections and messages")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each measurement (median shown)")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this file")
    parser.add_argument(
        "--compression",
        action="store_true",
        help="idle: negotiate permessage-deflate and exchange one compressed message per connection "
        "(rtgevent and the reference only)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        help=f"scale: idle connections wanted (default {sc.SCALE_FULL.connections:,}, --quick "
        f"{sc.SCALE_QUICK.connections:,}; fewer if the server's open-files limit does not allow them)",
    )
    parser.add_argument(
        "--max-load",
        type=float,
        default=sc.SCALE_FULL.max_load,
        help="scale: before each run, wait (up to 10 min) for a 1-minute load average below this (0: do not wait)",
    )
    args = parser.parse_args(argv)
    scenarios = args.scenarios or list(DEFAULT_SCENARIOS)
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.connections is not None and not 1 <= args.connections <= 200_000:
        parser.error("--connections must be from 1 to 200,000")
    if sys.platform != "linux":
        parser.error("the benchmark reads /proc and uses taskset: Linux only")
    plan = QUICK if args.quick else FULL
    cplan = cl.CLUSTER_QUICK if args.quick else cl.CLUSTER_FULL
    chplan = ch.CHANNELS_QUICK if args.quick else ch.CHANNELS_FULL
    chuplan = ch.CHURN_QUICK if args.quick else ch.CHURN_FULL
    hiplan = hi.HISTORY_QUICK if args.quick else hi.HISTORY_FULL
    shplan = sh.SHARDS_QUICK if args.quick else sh.SHARDS_FULL
    scplan = sc.SCALE_QUICK if args.quick else sc.SCALE_FULL
    scplan = dataclasses.replace(
        scplan,
        connections=args.connections or scplan.connections,
        max_load=args.max_load if args.max_load > 0 else math.inf,
    )
    bplans = {
        "fanout": fo.FANOUT_QUICK if args.quick else fo.FANOUT_FULL,
        "fanout-node": fo.FANOUT_QUICK if args.quick else fo.FANOUT_FULL,
        "fanout-burst": fo.BURST_QUICK if args.quick else fo.BURST_FULL,
        "slow": fo.SLOW_QUICK if args.quick else fo.SLOW_FULL,
    }
    raise_nofile(1024)

    source = source_state()
    # asked once, before the first run: it may have to install ws (npm ci)
    node_missing = nodejs.unavailable() if fo.FANOUTS & set(scenarios) else None
    if node_missing:
        print(node_missing, file=sys.stderr, flush=True)
    idle: list[dict[str, Any]] = []
    echo: list[dict[str, Any]] = []
    multi: dict[str, list[dict[str, Any]]] = {"cluster": [], "emitter": []}
    broadcasts: dict[str, list[dict[str, Any]]] = {"fanout": [], "fanout-node": [], "fanout-burst": [], "slow": []}
    rooms: dict[str, list[dict[str, Any]]] = {"channels": [], "churn": []}
    history: list[dict[str, Any]] = []
    scaled: list[dict[str, Any]] = []
    shards: list[dict[str, Any]] = []
    failures: list[str] = []
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    for run in range(1, args.runs + 1):
        if "idle" in scenarios:
            for conns in plan.idle_sizes:
                for kind in idle_kinds(args.compression):
                    try:
                        r = measure_idle(kind, conns, plan, args.compression)
                    except (BenchError, OSError) as exc:
                        failures.append(f"run {run} idle {conns} {kind}: {exc}")
                        progress(failures[-1])
                        continue
                    r["run"] = run
                    idle.append(r)
                    progress(
                        f"run {run} idle {conns:>6,} {IDLE_LABELS[kind]:<15} {r['mem_kib_per_conn']:7.1f} KiB/conn "
                        f"{r['rate']:7.0f} conn/s  server {r['server_cpu_us_per_conn']:6.0f} µs/conn  "
                        f"loadgen {r['loadgen_cpu_us_per_conn']:6.0f} µs/conn  ({r['connected']} connected)"
                    )
        if "echo" in scenarios:
            for size in plan.echo_sizes:
                for kind in LABELS:
                    try:
                        r = measure_echo(kind, size, plan)
                    except (BenchError, OSError) as exc:
                        failures.append(f"run {run} echo {size} {kind}: {exc}")
                        progress(failures[-1])
                        continue
                    r["run"] = run
                    echo.append(r)
                    progress(
                        f"run {run} echo {size_label(size):>6} {LABELS[kind]:<15} {r['rate']:7.0f} msg/s "
                        f"p50 {r['p50_ms']:6.2f} ms p99 {r['p99_ms']:6.2f} ms  "
                        f"server {r['server_cpu_us_per_msg']:6.1f} µs/msg  "
                        f"loadgen {r['loadgen_cpu_us_per_msg']:6.1f} µs/msg"
                    )
        for scenario, bplan in bplans.items():
            if scenario not in scenarios:
                continue
            for kind in fo.kinds(scenario, node_missing is None):
                try:
                    r = fo.measure(kind, scenario, bplan)
                except (BenchError, OSError) as exc:
                    failures.append(f"run {run} {scenario} {kind}: {exc}")
                    progress(failures[-1])
                    continue
                r["run"] = run
                broadcasts[scenario].append(r)
                progress(f"run {run} {fo.progress_line(r)}")
        for scenario, measure in (("cluster", cl.measure_cluster), ("emitter", cl.measure_emitter)):
            if scenario not in scenarios:
                continue
            for broker, (label, _) in cl.BROKERS.items():
                try:
                    r = measure(broker, cplan)
                except (BenchError, OSError, ValueError, KeyError) as exc:
                    failures.append(f"run {run} {scenario} {broker}: {type(exc).__name__}: {exc}")
                    progress(failures[-1])
                    continue
                r["run"] = run
                multi[scenario].append(r)
                progress(
                    f"run {run} {scenario:<7} {label:<22} paced p50 {r['paced_p50_ms']:5.2f} ms "
                    f"p99 {r['paced_p99_ms']:5.2f} ms  flat out {r['burst_send_rate']:6.0f} sent/s "
                    f"{r['burst_recv_rate']:6.0f} received/s, lost {r['burst_lost']}  "
                    f"sender {r['burst_sender_cpu_us_per_msg']:4.0f} µs/msg  "
                    f"receiver {r['burst_receiver_cpu_us_per_msg']:4.0f} µs/msg"
                )
        if "channels" in scenarios:
            for kind in ch.KINDS:
                try:
                    r = ch.measure_channels(kind, chplan)
                except (BenchError, OSError, ValueError, KeyError) as exc:
                    failures.append(f"run {run} channels {kind}: {type(exc).__name__}: {exc}")
                    progress(failures[-1])
                    continue
                r["run"] = run
                rooms["channels"].append(r)
                progress(f"run {run} {ch.channels_progress(r)}")
        if "churn" in scenarios:
            for broker in ch.CHURN_BROKERS:
                try:
                    r = ch.measure_churn(broker, chuplan)
                except (BenchError, OSError, ValueError, KeyError) as exc:
                    failures.append(f"run {run} churn {broker}: {type(exc).__name__}: {exc}")
                    progress(failures[-1])
                    continue
                r["run"] = run
                rooms["churn"].append(r)
                progress(f"run {run} {ch.churn_progress(r)}")
        if "history" in scenarios:
            history += hi.run_all(run, hiplan, progress, failures)
        if "scale" in scenarios:
            try:
                r = sc.measure(scplan, progress)
            except (BenchError, OSError, ValueError, KeyError) as exc:
                failures.append(f"run {run} scale: {type(exc).__name__}: {exc}")
                progress(failures[-1])
            else:
                r["run"] = run
                scaled.append(r)
                progress(f"run {run} {sc.progress_line(r)}")
    if "shards" in scenarios:
        shards = sh.run_all(args.runs, shplan, progress, failures)

    after = source_state()
    if after != source:
        source = f"{source} at the start, {after} at the end"
    conds = conditions(args.runs, args.quick, source)
    if any(r["kind"] == "node" for scenario in fo.FANOUTS for r in broadcasts[scenario]):
        conds.append(nodejs.versions() + " (bench/node/server.js, pinned like the other servers)")
    if multi["cluster"] or multi["emitter"]:
        conds.append(cl.conditions(cplan))
    if rooms["channels"] or rooms["churn"]:
        conds.append(ch.conditions(chplan if rooms["channels"] else None, chuplan if rooms["churn"] else None))
    if history:
        conds.append(hi.conditions(hiplan))
    if scaled:
        conds.append(sc.conditions(scplan, scaled))
    if shards:
        conds.append(sh.conditions(shplan, shards))
    if (rooms["channels"] or rooms["churn"] or history or shards) and not (multi["cluster"] or multi["emitter"]):
        conds.append(cl.service_versions())
    out: list[str] = ["", *(f"- {line}" for line in conds), ""]
    if idle:
        if args.compression:
            out += [
                "Idle connections with permessage-deflate (each negotiated it and exchanged one compressed "
                "message; Flask-SocketIO's gevent-websocket has no compression)",
                "",
            ]
        else:
            out += [
                "Idle connections (rtgevent, reference: a plain WebSocket upgrade; Flask-SocketIO: EIO4 + SIO5)",
                "",
            ]
        out += [*idle_table(idle, plan.idle_sizes), ""]
    if echo:
        out += [
            f"Echo, {plan.echo_clients} clients in closed loop (targets for full / bare server CPU: "
            "<= 1.2x at 100 B, <= 1.3x at 16 KiB)",
            "",
        ]
        out += [*echo_table(echo, plan.echo_sizes), ""]
        out += [*targets(echo, plan.echo_sizes), ""]
    for scenario, results in broadcasts.items():
        if results:
            out += [fo.heading(scenario, bplans[scenario]), ""]
            out += [*fo.table(scenario, results), ""]
            out += [*fo.targets(scenario, results, bplans[scenario]), ""]
            if scenario in fo.FANOUTS and node_missing:
                out += [node_missing, ""]
    if multi["cluster"]:
        out += [cl.heading("cluster", cplan), ""]
        out += [*cl.table("cluster", multi["cluster"], cplan), ""]
        out += [*cl.targets(multi["cluster"]), cl.NO_COUNTERPART, ""]
    if multi["emitter"]:
        out += [cl.heading("emitter", cplan), ""]
        out += [*cl.table("emitter", multi["emitter"], cplan), "", cl.NO_COUNTERPART, ""]
    if rooms["channels"]:
        out += [ch.channels_heading(chplan), ""]
        out += [*ch.channels_table(rooms["channels"]), ""]
        out += [*ch.channels_targets(rooms["channels"]), ""]
    if rooms["churn"]:
        out += [ch.churn_heading(chuplan), ""]
        out += [*ch.churn_table(rooms["churn"], chuplan), ""]
        out += [*ch.churn_targets(rooms["churn"]), ""]
    if history:
        out += hi.report(history, hiplan)
    if scaled:
        out += [sc.heading(scplan, scaled), "", *sc.table(scaled), "", *sc.targets(scaled), ""]
    out += sh.report(shards, shplan)
    multi_any = bool(multi["cluster"] or multi["emitter"] or rooms["channels"] or rooms["churn"] or history or shards)
    everything = [
        *idle,
        *echo,
        *broadcasts["fanout"],
        *broadcasts["fanout-node"],
        *broadcasts["fanout-burst"],
        *broadcasts["slow"],
        *multi["cluster"],
        *multi["emitter"],
        *rooms["channels"],
        *rooms["churn"],
        *history,
        *shards,
    ]
    if everything:
        other = [r["other_cpus"] for r in everything]
        steal = [r["steal_cpus"] for r in everything]
        services = (
            "; cluster, emitter, channels, churn, history and shards: not counting the Redis and RabbitMQ servers"
            if multi_any
            else ""
        )
        out.append(
            f"Other CPU use during the measured phases (other processes, kernel softirq{services}), in CPUs: median "
            f"{fmt(median(other))}, max {fmt(max(other))}; hypervisor steal: median {fmt(median(steal))}, "
            f"max {fmt(max(steal))}"
        )
    notes = (
        anomalies(idle, echo)
        + fo.anomalies([r for results in broadcasts.values() for r in results], bplans)
        + cl.anomalies([*multi["cluster"], *multi["emitter"]])
        + ch.anomalies(rooms["channels"], rooms["churn"], chuplan)
        + hi.anomalies(
            [r for r in history if r["scenario"] == "history-publish"],
            [r for r in history if r["scenario"] == "history-storm"],
            hiplan,
        )
        + sc.anomalies(scaled)
        + sh.anomalies(shards)
        + failures
    )
    out += ["Checks: " + ("none failed" if not notes else f"{len(notes)} problem(s)"), *(f"- {n}" for n in notes)]
    out.append(f"(total {time.monotonic() - started:.0f} s)")
    print("\n".join(out))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "conditions": conds,
                    "idle": idle,
                    "echo": echo,
                    **broadcasts,
                    **multi,
                    **rooms,
                    "history": history,
                    "scale": scaled,
                    "shards": shards,
                    "failures": failures,
                },
                indent=1,
            )
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""What the driver's scenario modules share: child processes, their output, medians, number formatting.

`bench.__main__` and `bench.cluster` both import from here (``python -m bench`` runs
``bench/__main__.py`` as ``__main__``, so the scenario modules must not import it back).
"""

from __future__ import annotations

import json
import math
import os
import select
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = "0"
LOADGEN_CPU = "1"


class BenchError(Exception):
    """A measurement could not be completed (a process died, a phase timed out)."""


class LineReader:
    """Lines from a child's stdout, with a timeout, without Python's buffering in the way."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.name = name
        self.buf = b""

    def line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{self.name}: no output within {timeout:.0f} s")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise BenchError(f"{self.name}: exited (status {self.proc.wait(5)}) before answering")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def event(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            text = self.line(max(0.0, deadline - time.monotonic()))
            try:
                value = json.loads(text)
            except ValueError:
                continue  # not ours
            if isinstance(value, dict) and value.get("event") == name:
                return value


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop one process we started, by its PID: SIGTERM, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: the repository on PYTHONPATH, unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.median(finite) if finite else float("nan")


def fmt(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def call_figures(durations: list[float]) -> dict[str, float]:
    """p50 / p99 / max of sorted call durations (seconds), in ms, as ``call_p50_ms`` ...; NaN when empty."""
    if not durations:
        return {"call_p50_ms": float("nan"), "call_p99_ms": float("nan"), "call_max_ms": float("nan")}

    def at(q: float) -> float:
        return durations[min(len(durations) - 1, round(q * (len(durations) - 1)))] * 1000

    return {"call_p50_ms": at(0.50), "call_p99_ms": at(0.99), "call_max_ms": durations[-1] * 1000}

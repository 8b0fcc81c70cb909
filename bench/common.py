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
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from bench import nodejs
from bench.proc import cpu_seconds, raise_nofile, rss_kib, system_cpu

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


Control = Callable[[str, dict[str, str]], Any]
WSGIApp = Callable[..., Iterable[bytes]]


def with_control(
    rt: WSGIApp, control: Control, errors: tuple[type[Exception], ...] = (KeyError, ValueError)
) -> WSGIApp:
    """A node of the bench: ``/_bench/<action>?...`` answered by ``control`` as JSON, the rest by ``rt``.

    ``control(action, query)`` returns what to send; one of ``errors`` raised there is a
    400 (a driver's bad request), anything else a crash of the node, as it should be.
    """

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_bench/"):
            query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
            try:
                answer = control(path.removeprefix("/_bench/"), query)
                status = "200 OK"
            except errors as exc:
                answer, status = {"error": f"bad request: {exc!r}"}, "400 Bad Request"
            body = json.dumps(answer).encode()
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return rt(environ, start_response)

    return app


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


def read_log(log: Any) -> str:
    """Everything a child has written so far to ``log``, the temporary file that is its stderr.

    Read with ``pread``: the child shares the file's offset, so a ``seek`` here would make its
    next lines overwrite the start of the file while it is still running.
    """
    fd = log.fileno()
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0).decode(errors="replace")


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


#: what a load generator's "done" line says of the deliveries, reported as it is by every scenario
DELIVERY_FIGURES = ("expected", "received", "lost", "duplicates", "unreadable", "readers_closed")
DELIVERY_FIGURES += ("rate", "p50_ms", "p99_ms", "max_ms")


def delivery_figures(done: dict[str, Any]) -> dict[str, Any]:
    """The `DELIVERY_FIGURES` of a load generator's "done" line."""
    return {key: done[key] for key in DELIVERY_FIGURES}


def call_figures(durations: list[float]) -> dict[str, float]:
    """p50 / p99 / max of sorted call durations (seconds), in ms, as ``call_p50_ms`` ...; NaN when empty."""
    if not durations:
        return {"call_p50_ms": float("nan"), "call_p99_ms": float("nan"), "call_max_ms": float("nan")}

    def at(q: float) -> float:
        return durations[min(len(durations) - 1, round(q * (len(durations) - 1)))] * 1000

    return {"call_p50_ms": at(0.50), "call_p99_ms": at(0.99), "call_max_ms": durations[-1] * 1000}


def server_command(kind: str, server_args: Sequence[str] = ()) -> list[str]:
    """The command of a server under test, pinned to `SERVER_CPU`: `bench.servers`, or the Node one."""
    if kind == "node":
        return ["taskset", "-c", SERVER_CPU, *nodejs.server_command(), *server_args]
    return ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "bench.servers", kind, "--port", "0", *server_args]


def _node_nofile() -> None:
    """In the Node server's child before ``exec``: Node does not raise its open-files limit itself."""
    raise_nofile(20000)


class Measurement:
    """One server process and one load generator process, stopped on exit."""

    def __init__(
        self,
        kind: str,
        loadgen_args: Sequence[str],
        loadgen_module: str = "bench.loadgen",
        server_args: Sequence[str] = (),
        loadgen_command: Sequence[str] | None = None,
    ) -> None:
        """``loadgen_command``: the load generator's command before its arguments, instead of
        ``python -m loadgen_module`` (the Node receiver); it is pinned to `LOADGEN_CPU` alike."""
        self.kind = kind
        self.loadgen_args = list(loadgen_args)
        self.loadgen_command = list(loadgen_command or (sys.executable, "-m", loadgen_module))
        self.server_args = list(server_args)
        self.server: subprocess.Popen[bytes] | None = None
        self.loadgen: subprocess.Popen[bytes] | None = None
        self.server_log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in __exit__)
        self.port = 0
        self._marks: list[tuple[float, float, float, float]] = []

    def __enter__(self) -> Measurement:
        try:
            self.server = subprocess.Popen(
                server_command(self.kind, self.server_args),
                stdout=subprocess.PIPE,
                stderr=self.server_log,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=child_env(),
                preexec_fn=_node_nofile if self.kind == "node" else None,
            )
            ready = LineReader(self.server, f"server {self.kind}").line(60)
            if not ready.startswith("READY "):
                raise BenchError(f"server {self.kind}: unexpected first line {ready!r}")
            self.port = int(ready.split()[1])
            self.loadgen = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    LOADGEN_CPU,
                    *self.loadgen_command,
                    self.kind,
                    "--port",
                    str(self.port),
                    *self.loadgen_args,
                ],
                stdout=subprocess.PIPE,
                stdin=subprocess.PIPE,
                cwd=ROOT,
                env=child_env(),
            )
            self.events = LineReader(self.loadgen, f"load generator ({self.kind})")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            stop(self.loadgen)
        finally:
            try:
                stop(self.server)
            finally:
                self.server_log.close()

    def tell(self, word: str) -> None:
        assert self.loadgen is not None and self.loadgen.stdin is not None
        self.loadgen.stdin.write(word.encode() + b"\n")
        self.loadgen.stdin.flush()

    def sample(self) -> tuple[float, int, float]:
        """(server CPU seconds, server RSS KiB, load generator CPU seconds); marks the machine's load."""
        assert self.server is not None and self.loadgen is not None
        server, rss, loadgen = cpu_seconds(self.server.pid), rss_kib(self.server.pid), cpu_seconds(self.loadgen.pid)
        self._marks.append((time.monotonic(), *system_cpu(), server + loadgen))
        return server, rss, loadgen

    def foreign_load(self) -> dict[str, float]:
        """Between the first and last `sample`: CPUs used by other processes, and stolen by the hypervisor."""
        if len(self._marks) < 2:
            return {"other_cpus": float("nan"), "steal_cpus": float("nan")}
        (t0, busy0, steal0, ours0), (t1, busy1, steal1, ours1) = self._marks[0], self._marks[-1]
        wall = max(t1 - t0, 1e-9)
        return {
            "other_cpus": max(0.0, (busy1 - busy0) - (ours1 - ours0)) / wall,
            "steal_cpus": (steal1 - steal0) / wall,
        }

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_bench/stats", timeout=10) as response:
            value: dict[str, Any] = json.load(response)
            return value

    def log_lines(self) -> list[str]:
        """What the server wrote on stderr (tracebacks, warnings): empty when all went well."""
        return [line for line in read_log(self.server_log).splitlines() if line.strip()]


def wait_connections(m: Measurement, want: int, timeout: float) -> int:
    """Poll the server until it counts ``want`` connections (or the timeout); the last count."""
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        count = int(m.stats().get("connections", -1))
        if count >= want:
            break
        time.sleep(0.25)
    return count

"""A real Redis Cluster for the tests: three masters and three replicas on loopback ports.

``redis_cluster`` (session-scoped: started once, on first use) runs six ``redis-server
--cluster-enabled yes`` processes in a temporary directory, joins them with ``redis-cli
--cluster create ... --cluster-replicas 1``, waits until every node reports
``cluster_state:ok``, and stops every process it started, by PID, at the end of the run.
Skipped where ``redis-server`` or ``redis-cli`` is missing.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from tests.waiting import WAIT, wait_until

MASTERS = 3


@dataclasses.dataclass
class RedisCluster:
    """The running cluster: its nodes' ports, and the URL rtgevent takes for it."""

    ports: list[int]
    procs: list[subprocess.Popen[bytes]]
    folder: str

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:MASTERS]) + "/"

    def info(self, port: int) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True, text=True, timeout=WAIT
        )
        return done.stdout

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=WAIT)
        shutil.rmtree(self.folder, ignore_errors=True)


def _cluster_ports(count: int) -> list[int]:
    """Ports whose cluster bus port (10,000 higher, as Redis fixes it) is free too.

    The kernel's ephemeral ports are too high for that, so they are drawn below them.
    """
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 30000)
        if port not in ports and all(_free(p) for p in (port, port + 10000)):
            ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_cluster() -> RedisCluster:
    folder = tempfile.mkdtemp(prefix="rtg-cluster-")
    ports = _cluster_ports(2 * MASTERS)
    procs: list[subprocess.Popen[bytes]] = []
    cluster = RedisCluster(ports, procs, folder)
    try:
        for port in ports:
            procs.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        *("--port", str(port), "--bind", "127.0.0.1", "--dir", folder),
                        *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
                        *("--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        for port in ports:
            wait_until(lambda port=port: "cluster_enabled" in _info(port), f"redis-server :{port} to listen")
        nodes = [f"127.0.0.1:{port}" for port in ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True,
            timeout=WAIT * 3,
            check=True,
        )
        for port in ports:
            wait_until(lambda port=port: "cluster_state:ok" in cluster.info(port), f"node :{port} to report ok")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _info(port: int) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), "info", "cluster"], capture_output=True, text=True, timeout=WAIT
    )
    return done.stdout


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed for a Redis Cluster")
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()

"""A real Redis Cluster for the tests: three masters and three replicas on loopback ports.

``redis_cluster`` (session-scoped: started once, on first use) runs six ``redis-server
--cluster-enabled yes`` processes in a temporary directory, joins them with ``redis-cli
--cluster create ... --cluster-replicas 1``, waits until every node reports
``cluster_state:ok``, and stops every process it started, by PID, at the end of the run.
Skipped where ``redis-server`` or ``redis-cli`` is missing.

A test that breaks a cluster (kills a master, moves a slot) starts a private one with
`start_cluster` instead -- a short ``node_timeout`` makes its failovers quick -- so that
the shared cluster is never disturbed; `RedisCluster` tells which master owns a slot, when
a replica took over, and kills one node by its PID.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
import redis
from redis.crc import key_slot

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

    def client(self, port: int) -> redis.Redis:
        """A plain client of one node (close it after use)."""
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=WAIT)

    def nodes(self, port: int) -> list[dict[str, str]]:
        """``CLUSTER NODES`` as node ``port`` sees it: id, port, role (master/slave), failed, master id, slots."""
        with self.client(port) as client:
            text = client.execute_command("CLUSTER", "NODES")
        listing = text.decode() if isinstance(text, bytes) else str(text)
        nodes = []
        for line in listing.splitlines():
            fields = line.split()
            flags = fields[2].split(",")
            nodes.append(
                {
                    "id": fields[0],
                    "port": fields[1].split("@")[0].rsplit(":", 1)[1],
                    "role": "master" if "master" in flags else "slave",
                    "failed": "yes" if "fail" in flags else "",
                    "master": fields[3],
                    "slots": " ".join(fields[8:]),
                }
            )
        return nodes

    def owner(self, slot: int, via: int) -> int:
        """The port of the master that owns ``slot``, as node ``via`` sees it (``CLUSTER SLOTS``)."""
        with self.client(via) as client:
            shards = client.execute_command("CLUSTER", "SLOTS")
        for start, end, master, *_ in shards:
            if int(start) <= slot <= int(end):
                return int(master[1])
        raise AssertionError(f"slot {slot} is not covered, as node :{via} sees it")

    def keyslot(self, key: str) -> int:
        """The slot of ``key`` (or of a shard channel's name), computed here as every node does:
        asking a node would fail once that node is killed."""
        return int(key_slot(key.encode()))

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (by its PID) and reap it: a master that dies, no goodbye."""
        proc = self.procs[self.ports.index(port)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=WAIT)

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


def start_cluster(node_timeout: int = 2000, *, replicated: bool = False) -> RedisCluster:
    """Six nodes, three masters with a replica each; ``node_timeout`` (ms) is how long a
    master may be silent before its replica takes over.

    ``replicated``: return only once every replica has synced with its master (a replica
    that never did refuses to take over), with no wait before a sync (Redis otherwise
    waits 5 s for more replicas to share it).
    """
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
                        *("--cluster-node-timeout", str(node_timeout), "--save", "", "--appendonly", "no"),
                        *(("--repl-diskless-sync-delay", "0") if replicated else ()),
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
        if replicated:  # each node asked itself: another's view of the roles may lag behind
            wait_until(
                lambda: sum(_synced(cluster, port) for port in ports) == MASTERS,
                "every replica to sync with its master",
            )
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _synced(cluster: RedisCluster, port: int) -> bool:
    with cluster.client(port) as client:
        return client.info("replication").get("master_link_status") == "up"


def _info(port: int) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), "info", "cluster"], capture_output=True, text=True, timeout=WAIT
    )
    return done.stdout


#: the issue's bound on how long delivery through a failed-over slot may stay broken once the
#: replica took over (the broker's consumer backs off to 5 s at most: this is generous)
RECOVERY_BOUND = 10.0


@contextlib.contextmanager
def running_cluster(node_timeout: int = 2000, *, replicated: bool = False) -> Iterator[RedisCluster]:
    """`start_cluster`, stopped at the end; the test is skipped where Redis's programs are missing."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed for a Redis Cluster")
    cluster = start_cluster(node_timeout, replicated=replicated)
    try:
        yield cluster
    finally:
        cluster.stop()


def breakable_cluster() -> contextlib.AbstractContextManager[RedisCluster]:
    """A cluster of a test module's own, to break: a master may be killed, a slot moved.

    A one-second node timeout makes a failover take seconds, not the default fifteen, and
    every replica has synced before it is handed out (one that never did refuses to take over).
    """
    return running_cluster(node_timeout=1000, replicated=True)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    with running_cluster() as cluster:
        yield cluster

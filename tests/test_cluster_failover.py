"""Gateways on a Redis Cluster that loses a master (SPEC section 15).

A private cluster for this module, with a one-second node timeout (a failover takes
seconds), never the shared one: these tests break it.

* Under traffic, SIGKILL the master that owns a channel's slot: its replica is promoted, no
  gateway crashes, delivery through that slot is back within 10 s of the promotion, and
  the sessions of the surviving gateways are all online again (presence converges: what a
  lost write took, the nodes' self-healing writes again).
* What asynchronous replication can lose, shown: a replica that has not seen the master's
  last writes is promoted.  A history append Redis acknowledged is gone from the stream,
  and the next append gets its offset again; a session registration is gone too, until the
  node's next renewal writes it again.
"""

from __future__ import annotations

import datetime
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.event
import pytest
from redis.crc import key_slot

from rtgevent.channels import channel_topic
from rtgevent.history import RedisHistory
from rtgevent.presence.redis import RedisPresence
from rtgevent.retry import redis_cluster_client
from rtgevent.types import SessionInfo
from tests.clusterkit import Client
from tests.procs import ServeProcess
from tests.rediscluster import RECOVERY_BOUND, RedisCluster, breakable_cluster
from tests.waiting import WAIT, wait_until


@pytest.fixture(scope="module")
def private() -> Iterator[RedisCluster]:
    with breakable_cluster() as cluster:
        yield cluster


def _survivor(cluster: RedisCluster, *dead: int) -> int:
    return next(
        port
        for port, proc in zip(cluster.ports, cluster.procs, strict=True)
        if proc.poll() is None and port not in dead
    )


def _replica_of(cluster: RedisCluster, master: int) -> int | None:
    nodes = cluster.nodes(_survivor(cluster, master))
    master_id = next(n["id"] for n in nodes if int(n["port"]) == master)
    return next((int(n["port"]) for n in nodes if n["master"] == master_id and not n["failed"]), None)


def _owner(cluster: RedisCluster, key: str, *dead: int) -> int:
    return cluster.owner(key_slot(key.encode()), via=_survivor(cluster, *dead))


def _kill_and_wait_for_promotion(cluster: RedisCluster, master: int, slot_key: str) -> tuple[float, float]:
    """SIGKILL ``master``; wait until another node owns ``slot_key``'s slot; (kill, promotion) times."""
    killed = time.monotonic()
    cluster.kill(master)
    wait_until(
        lambda: _owner(cluster, slot_key, master) != master,
        "the replica to be promoted",
        timeout=WAIT * 2,
        interval=0.05,
    )
    return killed, time.monotonic()


class Reader:
    """Reads one client's frames in a greenlet: when each ``(route, data)`` arrived."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.got: list[tuple[str, Any, float]] = []
        self.arrived = gevent.event.Event()
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            msg = self.client.next()
            self.got.append((msg["route"], msg.get("data"), time.monotonic()))
            self.arrived.set()

    def first(self, route: str, after: float) -> float | None:
        return next((at for r, _, at in self.got if r == route and at > after), None)


def test_a_killed_master_is_survived_and_delivery_comes_back_within_10_s(
    private: RedisCluster, cluster: Callable[..., list[ServeProcess]]
) -> None:
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    url = private.url
    a, b = cluster(2, broker=url, presence=url, namespace=namespace, presence_ttl=6)
    rooms = [f"room:{i}" for i in range(12)]  # their slots fall on every shard
    victim_room = rooms[0]
    victim_key = f"{namespace}.{channel_topic(victim_room)}"  # the sharded channel: its slot is the room's
    victim = _owner(private, victim_key)
    on_b = [Client(b, f"user-{i}") for i in range(20)]  # identities whose keys spread over the shards too
    listener = Client(b, "listener")
    for room in rooms:
        listener.subscribe(room)
    reader = Reader(listener)
    errors: list[str] = []
    stop = gevent.event.Event()

    def traffic() -> None:
        n = 0
        while not stop.is_set() and n < 20_000:
            reply = a.control("publish", channel=rooms[n % len(rooms)], data=f"p{n}")
            if isinstance(reply, dict) and "error" in reply:
                errors.append(reply["error"])
            n += 1
            gevent.sleep(0.02)  # paced traffic, not a synchronisation

    publisher = gevent.spawn(traffic)
    try:
        wait_until(lambda: reader.first("pub", 0) is not None, "traffic to flow")
        _, promoted = _kill_and_wait_for_promotion(private, victim, victim_key)

        def victim_arrivals() -> list[float]:  # publications to the victim's room (p0, p12, p24, ...)
            return [at for r, d, at in reader.got if r == "pub" and at > promoted and int(d[1:]) % len(rooms) == 0]

        wait_until(lambda: bool(victim_arrivals()), "a publication to the failed-over room to arrive", timeout=WAIT * 2)
        back = min(victim_arrivals())
        print(f"delivery through the failed-over slot back {back - promoted:.2f} s after the promotion")
        assert back - promoted <= RECOVERY_BOUND
        assert a.proc.poll() is None and b.proc.poll() is None  # no gateway crashed
        # presence converges: every session of the surviving gateways is found again
        wait_until(
            lambda: all(a.control("online", identity=c.identity)["online"] for c in on_b),
            "every session to be online again",
            timeout=WAIT * 2,
        )
        assert a.control("online", identity="listener")["online"]
    finally:
        stop.set()
        publisher.join(WAIT)
        reader.greenlet.kill()
    print(f"publish errors during the failover: {len(errors)} ({sorted(set(errors))})")
    for node in (a, b):
        drops = [line for line in node.lines if "WARNING" in line and "broker" in line.lower()]
        assert len(drops) <= 2, drops  # one line per state change, not one per retry
    for client in [*on_b, listener]:
        client.close()


def _pause(cluster: RedisCluster, port: int) -> None:
    os.kill(cluster.procs[cluster.ports.index(port)].pid, signal.SIGSTOP)


def _resume(cluster: RedisCluster, port: int) -> None:
    os.kill(cluster.procs[cluster.ports.index(port)].pid, signal.SIGCONT)


def test_what_asynchronous_replication_loses_in_a_failover(private: RedisCluster) -> None:
    """A replica that missed the master's last writes is promoted: an acknowledged history
    append is lost and its offset is handed out again; a lost registration comes back at
    the node's next renewal (self-healing), so presence converges."""
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    client = redis_cluster_client(private.url, socket_timeout=5)
    masters = [int(n["port"]) for n in private.nodes(_survivor(private)) if n["role"] == "master" and not n["failed"]]
    history = RedisHistory(private.url, namespace=namespace)
    presence = RedisPresence(private.url, 30, namespace=namespace)
    try:
        # a stream and an identity whose keys live on the same master, one that still has a replica
        stream, identity, master = "", "", 0
        for i in range(10_000):
            candidate = f"ch:lost:{i}"
            owner = _owner(private, history.keys(candidate)[0])
            if owner in masters and _replica_of(private, owner) is not None:
                stream, master = candidate, owner
                break
        for i in range(10_000):
            if _owner(private, presence._ident_key("acme", f"u{i}")) == master:
                identity = f"u{i}"
                break
        replica = _replica_of(private, master)
        assert replica is not None
        presence.renew("node-a", 30)
        for n in range(1, 4):
            assert history.append(stream, f"kept {n}", 100, 300).offset == n
        wait_until(lambda: _replicated(private, replica, history.keys(stream)[0], 3), "the replica to have 1..3")
        _pause(private, replica)  # it stops taking the master's writes ...
        with private.client(master) as node:
            # ... and the master drops its link, so what follows is not sent (were it sent, it would
            # wait in the paused replica's socket buffer and arrive after all)
            node.client_kill_filter(_type="replica")
        try:
            lost = history.append(stream, "acknowledged, then lost", 100, 300)
            assert lost.offset == 4  # Redis said yes
            info = SessionInfo("s-lost", identity, "acme", "node-a", "127.0.0.1", datetime.datetime.now(datetime.UTC))
            presence.register(info)
            assert presence.is_online("acme", identity)
            private.kill(master)
        finally:
            _resume(private, replica)
        wait_until(
            lambda: _owner(private, history.keys(stream)[0], master) == replica,
            "the lagging replica to be promoted",
            timeout=WAIT * 2,
            interval=0.05,
        )
        # history: the acknowledged append is gone, and its offset is given again
        position = _eventually(lambda: history.position(stream))
        assert position.offset == 3 and position.epoch == lost.epoch
        again = _eventually(lambda: history.append(stream, "next", 100, 300))
        assert (again.offset, again.epoch) == (4, lost.epoch)
        recovery = history.since(stream, 3, lost.epoch, 10)
        assert [p for p in recovery.publications] and "acknowledged, then lost" not in str(recovery.publications)
        # presence: the registration is gone from the promoted replica ...
        assert not _eventually(lambda: presence.is_online("acme", identity))
        # ... until the node's next renewal sees the failover and writes what it knows again
        _eventually(lambda: presence.renew("node-a", 30))
        assert presence.is_online("acme", identity)
    finally:
        history.close()
        presence.close()
        client.close()


def _replicated(cluster: RedisCluster, replica: int, key: str, entries: int) -> bool:
    with cluster.client(replica) as node:
        node.execute_command("READONLY")
        return int(node.xlen(key)) >= entries


def _eventually(op: Callable[[], Any]) -> Any:
    """``op()`` once the cluster answers again (right after a promotion, clients may still be refreshing)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return op()
        except Exception:
            if time.monotonic() > deadline:
                raise
            gevent.sleep(0.1)  # a retry loop's pause, not a wait for an event

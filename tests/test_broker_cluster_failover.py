"""RedisClusterBroker while the cluster changes under it: a slot moved, a master killed.

A private cluster for this module (`breakable_cluster`, with a one-second node timeout so that
a failover takes seconds, not the default fifteen), never the shared one: these tests
break it.  Two brokers are two nodes of one deployment, both subscribed to topics on
every shard; traffic goes on while the cluster changes, and what is checked is that the
brokers come back by themselves -- soon, and with one log line each way.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator

import gevent
import gevent.event
import pytest

from rtgevent.broker.redis_cluster import RedisClusterBroker
from rtgevent.errors import BrokerUnavailable
from tests.rediscluster import MASTERS, RECOVERY_BOUND, RedisCluster, breakable_cluster
from tests.waiting import WAIT, wait_until


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with breakable_cluster() as private:
        yield private


class Received:
    """A handler that records when each message arrived: ``(topic, n, monotonic time)``."""

    def __init__(self) -> None:
        self.items: list[tuple[str, int, float]] = []
        self.changed = gevent.event.Event()

    def __call__(self, payload: bytes) -> None:
        message = json.loads(payload)
        self.items.append((message["topic"], message["n"], time.monotonic()))
        self.changed.set()

    def since(self, topic: str, moment: float) -> list[int]:
        """The numbers of the messages on ``topic`` that arrived after ``moment``."""
        return [n for name, n, at in self.items if name == topic and at > moment]

    def first_after(self, topic: str, moment: float) -> float | None:
        return next((at for name, _, at in self.items if name == topic and at > moment), None)


def masters(cluster: RedisCluster) -> list[int]:
    """The ports of the live masters that own slots, as the first live node sees them.

    Slots, not the role flag: right after the cluster was made, a node's view may still show
    a replica as a master (without slots) until gossip catches up.
    """
    alive = [port for port, proc in zip(cluster.ports, cluster.procs, strict=True) if proc.poll() is None]
    return sorted(
        int(node["port"])
        for node in cluster.nodes(alive[0])
        if node["role"] == "master" and node["slots"] and not node["failed"]
    )


def topics_on_every_master(cluster: RedisCluster, namespace: str, each: int = 2) -> dict[int, list[str]]:
    """Topics whose channels' slots are owned by each master, ``each`` per master."""
    live = masters(cluster)
    assert len(live) == MASTERS
    by_master: dict[int, list[str]] = {port: [] for port in live}
    n = 0
    while any(len(topics) < each for topics in by_master.values()):
        topic = f"room.{n}"
        owner = cluster.owner(cluster.keyslot(f"{namespace}.{topic}"), via=live[0])
        if len(by_master[owner]) < each:
            by_master[owner].append(topic)
        n += 1
    return by_master


def broker_lines(caplog: pytest.LogCaptureFixture, namespace: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "rtgevent.broker" and namespace in r.getMessage()]


def assert_one_line_each_way(
    caplog: pytest.LogCaptureFixture, namespace: str, brokers: list[RedisClusterBroker]
) -> None:
    """Each broker logged its outage once: one WARNING when it dropped, one INFO when back, nothing per retry."""
    lines = broker_lines(caplog, namespace)
    shown = [f"{logging.getLevelName(r.levelno)} {r.getMessage()}" for r in lines]
    lost = [r for r in lines if r.levelno == logging.WARNING and "connection lost" in r.getMessage()]
    back = [r for r in lines if r.levelno == logging.INFO and "connection restored" in r.getMessage()]
    # the brokers share a namespace (two nodes of one deployment), so their lines look alike:
    # each reconnected exactly once, and there are exactly as many lines as brokers each way
    assert [b.reconnects for b in brokers] == [1] * len(brokers), shown
    assert (len(lost), len(back)) == (len(brokers), len(brokers)), shown
    assert len(lines) == 2 * len(brokers), shown  # no other warning, no error


def test_a_moved_slot_is_followed(cluster: RedisCluster, caplog: pytest.LogCaptureFixture) -> None:
    """A topic's slot moves to another master (a resharding): Redis unsubscribes its channel,
    and the consumer resubscribes it where the slot is now; publishing follows MOVED."""
    caplog.set_level(logging.INFO, logger="rtgevent.broker")
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    by_master = topics_on_every_master(cluster, namespace, each=1)
    source, target = sorted(by_master)[:2]
    topic = by_master[source][0]
    slot = cluster.keyslot(f"{namespace}.{topic}")
    consumer = RedisClusterBroker(cluster.url, namespace=namespace, socket_timeout=2.0)
    publisher = RedisClusterBroker(cluster.url, namespace=namespace, socket_timeout=2.0)
    try:
        inbox = Received()
        for name in (t for topics in by_master.values() for t in topics):
            consumer.subscribe(name, inbox)
        publisher.publish(topic, json.dumps({"topic": topic, "n": 0}).encode())
        wait_until(lambda: inbox.since(topic, 0), "the first message")

        ids = {int(node["port"]): node["id"] for node in cluster.nodes(source)}
        with cluster.client(target) as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        with cluster.client(source) as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        moved = time.monotonic()
        for port in [target, source, *(p for p in masters(cluster) if p not in (source, target))]:
            with cluster.client(port) as client:  # the slot holds no key: nothing to migrate
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
        assert cluster.owner(slot, via=source) == target

        sent = iter(range(1, 10_000))

        def delivered_again() -> bool:
            publisher.publish(topic, json.dumps({"topic": topic, "n": next(sent)}).encode(), expect_receiver=False)
            return bool(inbox.since(topic, moved)) and consumer.connected

        wait_until(delivered_again, "delivery on the moved slot", interval=0.1)
    finally:
        consumer.close()
        publisher.close()
    lines = broker_lines(caplog, namespace)
    assert any("slot moved" in r.getMessage() for r in lines), [r.getMessage() for r in lines]
    assert_one_line_each_way(caplog, namespace, [consumer])


def test_delivery_through_a_failed_over_slot_is_back_soon(
    cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A master is SIGKILLed mid-traffic: its replica takes over, and both nodes' brokers
    resubscribe there by themselves, within seconds of the promotion, logging it once."""
    caplog.set_level(logging.INFO, logger="rtgevent.broker")
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    by_master = topics_on_every_master(cluster, namespace)
    topics = [topic for names in by_master.values() for topic in names]
    victim = sorted(by_master)[-1]
    survivor = next(port for port in by_master if port != victim)
    affected = by_master[victim][0]
    slot = cluster.keyslot(f"{namespace}.{affected}")
    nodes = [RedisClusterBroker(cluster.url, namespace=namespace, socket_timeout=2.0) for _ in range(2)]
    inboxes = [Received() for _ in nodes]
    stop = gevent.event.Event()
    failed: list[BrokerUnavailable] = []

    def traffic() -> None:
        """Every topic in turn, from the first node, until stopped (at most two minutes)."""
        deadline = time.monotonic() + 6 * WAIT
        n = 0
        while not stop.is_set() and time.monotonic() < deadline:
            for topic in topics:
                try:
                    nodes[0].publish(topic, json.dumps({"topic": topic, "n": n}).encode(), expect_receiver=False)
                except BrokerUnavailable as exc:  # the dead master's topics, until its replica took over
                    failed.append(exc)
            n += 1
            stop.wait(0.02)  # the pace of the traffic

    publisher = None
    try:
        for node, inbox in zip(nodes, inboxes, strict=True):
            for topic in topics:
                node.subscribe(topic, inbox)
        publisher = gevent.spawn(traffic)
        for inbox in inboxes:
            wait_until(lambda inbox=inbox: all(inbox.since(t, 0) for t in topics), "traffic on every topic")

        cluster.kill(victim)
        killed = time.monotonic()
        wait_until(
            lambda: cluster.owner(slot, via=survivor) != victim and "cluster_state:ok" in cluster.info(survivor),
            "a replica to take over the killed master's slots",
            timeout=3 * WAIT,
        )
        promoted = time.monotonic()
        wait_until(
            lambda: all(inbox.first_after(affected, promoted) for inbox in inboxes),
            "delivery through the failed-over slot on both nodes",
            timeout=3 * WAIT,
        )
        back = max(inbox.first_after(affected, killed) or 0.0 for inbox in inboxes)
        wait_until(lambda: all(node.connected for node in nodes), "both brokers to report connected")
        stop.set()
        publisher.join(WAIT)
        assert publisher.dead and publisher.exception is None, publisher.exception

        # nothing crashed: every topic of every shard reaches both nodes again, a receiver required
        marker = time.monotonic()
        for topic in topics:
            nodes[1].publish(topic, json.dumps({"topic": topic, "n": -1}).encode())
        for inbox in inboxes:
            wait_until(lambda inbox=inbox: all(-1 in inbox.since(t, marker) for t in topics), "the markers")
    finally:
        stop.set()
        if publisher is not None:
            publisher.kill()
        for node in nodes:
            node.close()

    recovery = back - promoted
    print(
        f"\nfailover: replica promoted {promoted - killed:.1f} s after the kill; delivery through the slot"
        f" back {max(recovery, 0.0):.2f} s after the promotion ({back - killed:.1f} s after the kill);"
        f" {len(failed)} publish(es) failed meanwhile"
    )
    assert recovery <= RECOVERY_BOUND, f"delivery came back {recovery:.1f} s after the promotion"
    assert_one_line_each_way(caplog, namespace, nodes)

"""Channels across the cluster (SPEC section 13): three ``rtgevent serve`` nodes per broker.

Subscribers on two nodes get every publication exactly once and in publish order, from any
node and from an Emitter; the third node, with no subscriber, receives nothing of the
channel (counted at the node, and at the broker: Redis ``PUBSUB NUMSUB``, RabbitMQ's bindings); ``exclude`` skips
exactly the excluded session; the last subscriber to leave unsubscribes the node.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid

import pytest
import redis

from rtgevent import Emitter
from rtgevent.channels import channel_topic
from rtgevent.retry import redis_cluster_client
from tests.clusterkit import BROKERS, ON_CLUSTER, REDIS, Backend, Client
from tests.procs import ROOT, ServeProcess
from tests.waiting import wait_until

CHANNEL_BROKERS = BROKERS


def _rabbit_bindings(exchange: str, routing_key: str) -> int:
    """How many queues RabbitMQ binds to ``exchange`` with ``routing_key`` (rabbitmqctl on this host)."""
    listing = subprocess.run(
        ["rabbitmqctl", "list_bindings", "-q", "source_name", "destination_name", "routing_key"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return sum(1 for line in listing.splitlines() if line.split("\t")[::2] == [exchange, routing_key])


def _channel_payloads(node: ServeProcess) -> int:
    return int(node.control("counts").get("channel", 0))


@pytest.mark.parametrize("kind", [*CHANNEL_BROKERS, ON_CLUSTER])
def test_channel_reaches_its_subscribers_once_in_order_and_only_their_nodes(
    cluster, kind: str, backend: Backend
) -> None:
    broker_url, presence_url = backend.broker, backend.presence
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    a, b, c = cluster(3, broker=broker_url, presence=presence_url, namespace=namespace)
    room = f"room:{uuid.uuid4().hex[:8]}"
    on_a, on_b, bystander = Client(a, "ann"), Client(b, "bea"), Client(c, "cid")
    for client in (on_a, on_b):
        assert client.subscribe(room) == {"channel": room, "offset": 0, "epoch": "", "recovered": False, "missed": 0}
    before_c = _channel_payloads(c)

    # from a node, from an Emitter in this process, and from an Emitter in a gevent-free process
    for n in range(20):
        a.control("publish", channel=room, data=f"a{n}")
    with Emitter(broker_url, presence_url, namespace=namespace) as emitter:
        for n in range(20):
            emitter.publish(room, "pub", f"e{n}")

    # 8 native threads in a process without gevent
    script = [sys.executable, "-m", "tests.emitter_script", broker_url, presence_url, namespace, "8", "10", f"#{room}"]
    done = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "gevent-free: ok" in done.stdout, done.stderr
    expected = 20 + 20 + 80
    for client in (on_a, on_b):
        got = [client.next() for _ in range(expected)]
        assert all(m["route"] == "pub" and m["metadata"] == {"channel": room} for m in got)
        data = [m["data"] for m in got]
        assert sorted(data) == sorted(
            [f"a{n}" for n in range(20)]
            + [f"e{n}" for n in range(20)]
            + [f"t{t}-{n}" for t in range(8) for n in range(10)]
        )
        assert [d for d in data if d.startswith("a")] == [f"a{n}" for n in range(20)]  # one publisher, in order
        assert [d for d in data if d.startswith("e")] == [f"e{n}" for n in range(20)]
        for t in range(8):
            assert [d for d in data if d.startswith(f"t{t}-")] == [f"t{t}-{n}" for n in range(10)]

    # exclude: a node publishes, skipping the subscriber on another node
    a.control("publish", channel=room, data="not for bea", exclude=on_b.session_id)
    on_a.expect("pub", "not for bea")
    a.control("broadcast", route="marker")
    for client in (on_a, on_b, bystander):
        assert client.next()["route"] == "marker"  # bea got nothing before the marker
    assert _channel_payloads(c) == before_c  # the node without a subscriber saw none of it
    assert a.control("subscribed") == [room] and c.control("subscribed") == []

    if kind == "redis":
        client = redis.Redis.from_url(REDIS)
        topic = f"{namespace}.{channel_topic(room)}"
        assert client.pubsub_numsub(topic) == [(topic.encode(), 2)]  # one SUBSCRIBE per node, not per session
        on_b.unsubscribe(room)
        wait_until(lambda: client.pubsub_numsub(topic) == [(topic.encode(), 1)], "node b to unsubscribe the channel")
        client.close()
    elif kind == ON_CLUSTER:
        # sharded pub/sub: one SSUBSCRIBE per node, on the master that owns the channel's slot
        shards = redis_cluster_client(broker_url, socket_timeout=5)
        topic = f"{namespace}.{channel_topic(room)}"
        owner = shards.get_node_from_key(topic)
        shards.close()
        client = redis.Redis(host=owner.host, port=owner.port, socket_timeout=5)

        def shard_subscribers() -> int:
            _name, count = client.execute_command("PUBSUB", "SHARDNUMSUB", topic)
            return int(count)

        assert shard_subscribers() == 2
        on_b.unsubscribe(room)
        wait_until(lambda: shard_subscribers() == 1, "node b to unsubscribe the channel")
        client.close()
    elif kind == "kombu-amqp" and shutil.which("rabbitmqctl"):
        exchange = f"{namespace}.direct"
        assert _rabbit_bindings(exchange, channel_topic(room)) == 2  # one binding per node, not per session
        on_b.unsubscribe(room)
        wait_until(lambda: _rabbit_bindings(exchange, channel_topic(room)) == 1, "node b to unbind the channel")
    else:
        on_b.unsubscribe(room)
        wait_until(lambda: b.control("subscribed") == [], "node b to unsubscribe the channel")
    for client in (on_a, on_b, bystander):
        client.close()

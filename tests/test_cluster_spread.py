"""Keys and traffic really spread over a Redis Cluster's shards (SPEC section 15).

After 10,000 identities and 1,000 channels every master holds between 20 % and 50 % of the
namespace's keys, and each channel's publications go to one shard only: the master that owns
its slot, counted with ``INFO commandstats`` (``SPUBLISH`` calls) on every master.
"""

from __future__ import annotations

import datetime
import uuid
from collections import Counter
from typing import Any

import gevent.pool
import redis

from rtgevent.broker import broker_from_url
from rtgevent.channels import channel_topic
from rtgevent.presence import presence_from_url
from rtgevent.presence.redis import RedisPresence
from rtgevent.types import SessionInfo
from tests.waiting import WAIT

IDENTITIES = 10_000
CHANNELS = 1_000


def _masters(cluster: Any) -> list[int]:
    return [int(n["port"]) for n in cluster.nodes(cluster.ports[0]) if n["role"] == "master" and not n["failed"]]


def _keys_on(port: int, pattern: str) -> int:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=WAIT)
    try:
        return sum(1 for _ in client.scan_iter(match=pattern, count=1000))
    finally:
        client.close()


def _spublish_calls(port: int) -> int:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=WAIT)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_spublish", {}).get("calls", 0))


def test_presence_keys_spread_over_every_master(redis_cluster: Any) -> None:
    """10,000 identities with a session each and 1,000 channels with a member each: every
    master holds 20-50 % of the namespace's keys."""
    ns = f"rtgtest-{uuid.uuid4().hex[:10]}"
    store = presence_from_url(redis_cluster.url, ttl=60, namespace=ns)
    assert isinstance(store, RedisPresence) and store.cluster
    try:
        store.renew("node-a", 60)
        now = datetime.datetime.now(datetime.UTC)

        def session(i: int) -> SessionInfo:
            return SessionInfo(f"s{i}", f"user-{i}", "acme", "node-a", "127.0.0.1", now)

        pool = gevent.pool.Pool(32)
        pool.map(lambda i: store.register(session(i)), range(IDENTITIES))
        pool.map(lambda i: store.channel_join(f"room:{i}", session(i)), range(CHANNELS))
        assert store.is_online("acme", f"user-{IDENTITIES - 1}")
        assert store.channel_count(f"room:{CHANNELS - 1}") == 1
        per_master = {port: _keys_on(port, f"{{{ns}:*") for port in _masters(redis_cluster)}
        total = sum(per_master.values())
        shares = {port: count / total for port, count in per_master.items()}
        print(f"keys per master: {per_master} of {total} ({', '.join(f'{s:.0%}' for s in shares.values())})")
        assert len(per_master) == 3
        # an identity hash each, a channel's members and counts, the node's sets, lease and the directory
        assert total >= IDENTITIES + 2 * CHANNELS
        assert all(0.20 <= share <= 0.50 for share in shares.values()), shares
    finally:
        store.close()


def test_each_channels_publications_go_to_the_shard_of_its_slot_only(redis_cluster: Any) -> None:
    """1,000 channels, 3 publications each through the cluster broker: each master's ``SPUBLISH``
    count grows by exactly 3 per channel whose slot it owns, and by nothing else."""
    ns = f"rtgtest-{uuid.uuid4().hex[:10]}"
    broker = broker_from_url(redis_cluster.url, namespace=ns)
    admin = redis.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0], socket_timeout=WAIT)
    try:
        masters = _masters(redis_cluster)
        owners: Counter[int] = Counter()
        for i in range(CHANNELS):
            channel = f"{ns}.{channel_topic(f'room:{i}')}"
            owners[int(admin.get_node_from_key(channel).port)] += 1
        before = {port: _spublish_calls(port) for port in masters}
        for i in range(CHANNELS):
            for _ in range(3):
                broker.publish(channel_topic(f"room:{i}"), b'{"n":1}', expect_receiver=False)
        grown = {port: _spublish_calls(port) - before[port] for port in masters}
        print(f"SPUBLISH per master: {grown}; channels per master: {dict(owners)}")
        assert grown == {port: 3 * owners[port] for port in masters}
        assert all(owners[port] > 0 for port in masters), (masters, owners)
    finally:
        admin.close()
        broker.close()

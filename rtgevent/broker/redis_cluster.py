"""RedisClusterBroker: broker payloads over a Redis Cluster's sharded pub/sub (SPUBLISH / SSUBSCRIBE).

``redis+cluster://host1:port1,host2:port2/`` (SPEC section 15): the nodes named are where
the client starts, it learns the rest from them.  A topic is the shard channel
``<namespace>.<topic>``, and the slot of that name (CRC16, as for a key) decides which
master carries it: channels spread over the shards, and a message travels only within
its shard, where plain ``PUBLISH`` on a cluster is forwarded to every node.  The
broadcast topic is one shard channel like any other, so every broadcast goes through the
one master that owns its slot (and its replicas): sharding spreads the channels, not one
channel's traffic.  Delivery is at most once, as with `RedisBroker`.

Publishing: ``SPUBLISH`` through redis-py's ``RedisCluster`` client, which routes by slot
and follows ``MOVED`` / ``ASK``.  Its own retries are off (it would try ten times, with
its own backoff): the loop of `RedisChannelBroker` retries instead, ``publish_retries``
times within ``publish_timeout``, and a failed attempt lets the client refresh its slot
map before the next.  A cluster in the middle of a failover (a dead master, no master
for the slot yet, ``CLUSTERDOWN``) fails an attempt like a lost connection.  ``SPUBLISH``
counts the receivers on the slot's master, where every consumer subscribes, so a publish
that nobody takes raises `BrokerUnavailable` exactly as on one Redis.  The client is made
at the first publish, not in the constructor (making one connects).

In the steady state a publish skips most of that client's machinery (its command
policies, locks and bookkeeping cost about a third more CPU per publish than the
``SPUBLISH`` itself): it reads the slot's master from the client's map and sends on a
plain client of that master.  Any failure there turns this direct path off; the next
attempt goes through the cluster client, which refreshes its map, and its first success
turns the direct path back on.  A ``MOVED`` or ``ASK`` answer is followed at once the
same way, within the attempt.

Consuming: the `ConsumerBroker` machinery (one greenlet, the handler table, subscribe
waiting for the server's confirmation, reconnect with backoff, one log line per state
change), over one pub/sub connection per master that owns the slot of a subscribed
channel: plain connections to that node (named `consumer_name`), opened when the first
channel of the shard is subscribed and closed when its last one is unsubscribed.
``SSUBSCRIBE`` / ``SUNSUBSCRIBE`` are sent one command per slot (a command's channels
must share one).  The greenlet waits on all its connections at once -- one hub watcher
per socket, each setting one event, which `_wake` sets too, so a new subscription is sent
at once -- and PINGs each connection that has been silent for ``health_check_interval``
(a half-open connection otherwise looks idle forever).  The slot map comes from a
``RedisCluster`` client of the consumer's own.

A failover or a resharding shows as a shard's connection failing (its master is dead),
a ``MOVED`` answer to an ``SSUBSCRIBE``, or a ``sunsubscribe`` the consumer did not ask
for (Redis sends one when a channel's slot leaves the node).  Each is handled like a lost
connection: the consumer drops every connection, refreshes its slot map, backs off
(0.1 s doubling to 5 s) and subscribes every topic again, where the slots are now;
``rtgevent.broker`` logs one WARNING when it drops and one INFO once every topic is
subscribed again, however many attempts that takes.  Dropping every shard, not only the
failed one, keeps one state per broker (``connected``, the one WARNING and INFO per
outage) and one way to recover; the price is that while a master is being replaced
(about ``cluster-node-timeout`` plus an election) this node receives nothing from the
healthy shards either.  Delivery is back at the first attempt after the promotion: within
the backoff's cap of it, 5 s (the failover test measures a few seconds at most).

``connect_timeout`` bounds connecting to a shard; the ``RedisCluster`` clients connect
within ``socket_timeout``.  Threads: `publish` from any thread; `subscribe`,
`Subscription.close` and `close` from the gevent hub's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterError, MovedError, RedisClusterException, TryAgainError

from ..errors import BrokerUnavailable
from ..retry import parse_cluster_url, redis_client, redis_cluster_client
from ._consumer import IDLE_EVERY
from .redis import RedisChannelBroker, _ConnectionDead

if TYPE_CHECKING:
    import gevent.event

__all__ = ["RedisClusterBroker"]

log = logging.getLogger("rtgevent.broker")


class _SlotMoved(redis.ConnectionError):
    """Redis unsubscribed a shard channel itself: its slot now belongs to another master."""


class _Shard:
    """The consumer's pub/sub connection to one master, and what it subscribed there."""

    __slots__ = ("client", "last_heard", "leaving", "name", "ping_sent", "pubsub", "topics", "unconfirmed", "watcher")

    def __init__(self, name: str, client: redis.Redis) -> None:
        self.name = name
        self.client = client
        self.pubsub: Any = client.pubsub(ignore_subscribe_messages=False)  # redis-py's PubSub is untyped
        #: the hub's watcher of the socket, started only while the consumer waits
        self.watcher: Any = None
        #: topics SSUBSCRIBEd here (confirmed or not), and the commands not confirmed yet
        self.topics: set[str] = set()
        self.unconfirmed: dict[str, int] = {}
        #: SUNSUBSCRIBEs sent whose confirmation has not come yet
        self.leaving: dict[str, int] = {}
        self.last_heard = time.monotonic()
        self.ping_sent: float | None = None

    def idle(self) -> bool:
        """Nothing subscribed and nothing on the way: the connection can go."""
        return not self.topics and not self.unconfirmed and not self.leaving

    def readable(self) -> bool:
        connection = self.pubsub.connection
        return connection is not None and bool(connection.can_read(timeout=0))

    def watch(self, loop: Any, callback: Callable[[], object]) -> None:
        """Call ``callback`` (in the hub) once the socket is readable."""
        connection = self.pubsub.connection
        sock = None if connection is None else connection._sock  # redis-py keeps it here once connected
        if sock is None:
            return
        fileno = sock.fileno()
        if self.watcher is None or self.watcher.fd != fileno:
            if self.watcher is not None:
                self.watcher.close()
            self.watcher = loop.io(fileno, 1)
        self.watcher.start(callback)

    def unwatch(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        for closing in (self.pubsub, self.client):
            try:
                closing.close()
            except Exception:
                log.debug("closing the pub/sub connection to %s failed", self.name, exc_info=True)


class RedisClusterBroker(RedisChannelBroker):
    """A `Broker` over a Redis Cluster's sharded pub/sub: shard channel ``<namespace>.<topic>`` per topic.

    The options are `RedisBroker`'s but ``pool_size`` (redis-py's cluster client keeps a
    pool per node of its own).
    """

    _retryable = (redis.RedisError, OSError, RedisClusterException)
    _publish_retry_on = (
        redis.ConnectionError,
        redis.TimeoutError,
        OSError,
        ClusterError,  # CLUSTERDOWN: no master for the slot yet, mid-failover
        TryAgainError,  # a slot in migration
        RedisClusterException,  # no node reachable, a slot not covered
    )

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "rtgevent",
        publish_retries: int = 3,
        publish_timeout: float = 10.0,
        socket_timeout: float = 5.0,
        connect_timeout: float | None = None,
        health_check_interval: float = 10.0,
        poll_interval: float = 0.1,
        subscribe_timeout: float = 10.0,
    ) -> None:
        # checked now (making the broker does not connect): a typo fails at start
        self._address = parse_cluster_url(url, "broker_url")
        super().__init__(
            url,
            "redis cluster broker",
            namespace=namespace,
            publish_retries=publish_retries,
            publish_timeout=publish_timeout,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
            health_check_interval=health_check_interval,
            poll_interval=poll_interval,
            subscribe_timeout=subscribe_timeout,
        )
        #: the publishers' client, made by the first publish (publishers may be OS threads)
        self._client: Any = None
        self._client_lock = threading.Lock()
        #: the direct path: one plain client per master, ``SPUBLISH`` sent to the slot's
        #: master as the cluster client's map says; off after a failed attempt until the
        #: cluster client's own path has succeeded again (see `_send`)
        self._publishers: dict[str, redis.Redis] = {}
        self._direct = False
        #: the consumer's client: its slot map, refreshed whenever the consumer starts over
        self._topology: Any = None
        #: set by a shard's socket becoming readable, or by `_wake`; and whether the consumer waits on it
        self._ready: gevent.event.Event | None = None
        self._waiting = False

    def _cluster_client(self) -> Any:
        """A ``RedisCluster`` for this broker's URL without retries of its own (connects: it learns the slots)."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis_cluster_client(self._url, socket_timeout=self._socket_timeout, field="broker_url")
        client.set_retry(Retry(NoBackoff(), 0))  # the caller's loop retries, within its deadline
        return client

    # ------------------------------------------------------------------ publishing

    def _send(self, channel: str, payload: bytes) -> int:
        client = self._client
        if client is None:
            with self._client_lock:
                if self._closed:
                    raise BrokerUnavailable(f"{self._what}: broker is closed")
                if self._client is None:
                    self._client = self._cluster_client()
                client = self._client
        if not self._direct:
            # the cluster client's own path: it follows MOVED / ASK and refreshes its slot map
            # after an error, which the direct path below reads
            receivers = int(client.spublish(channel, payload))
            self._direct = True
            return receivers
        node = client.nodes_manager.get_node_from_slot(key_slot(channel.encode()))
        try:
            return int(self._node_client(node.name, node.host, node.port).spublish(channel, payload))
        except (MovedError, AskError):
            # the slot moved (a resharding, a failed-over master back as a replica): this very
            # attempt goes the cluster client's way, which follows the redirect
            self._direct = False
            return int(client.spublish(channel, payload))
        except Exception:
            self._direct = False  # a failover: the next attempt goes the cluster client's way
            raise

    def _node_client(self, name: str, host: str, port: int) -> redis.Redis:
        """The publishers' plain client of one master (a pool of its own), made at its first use."""
        client = self._publishers.get(name)
        if client is None:
            with self._client_lock:
                if self._closed:
                    raise BrokerUnavailable(f"{self._what}: broker is closed")
                client = self._publishers.get(name)
                if client is None:
                    client = self._publishers[name] = redis_client(
                        self._address.node_url(host, port),
                        socket_timeout=self._socket_timeout,
                        connect_timeout=self._connect_timeout,
                        client_name=f"{self.namespace}.publisher.{self._instance}",
                        field="broker_url",
                    )
        return client

    # ------------------------------------------------------------------ the consumer greenlet

    def _consume_once(self) -> None:
        import gevent.event

        shards: dict[str, _Shard] = {}  # node name -> the connection to that master
        self._ready = gevent.event.Event()
        try:
            if self._topology is None:
                self._topology = self._cluster_client()
            else:  # starting over: the slots may have moved (a failover, a resharding)
                self._topology.nodes_manager.initialize()
            self._listen(shards)
        finally:
            for shard in shards.values():
                shard.close()

    def _listen(self, shards: dict[str, _Shard]) -> None:
        """Serve the shards' connections until one fails, a slot moves or the broker closes."""
        route: dict[str, _Shard] = {}  # topic -> the shard it is SSUBSCRIBEd on
        self._start_over()
        restoring = True  # "restored" once every wanted channel is confirmed again
        everything = True  # starting over: every topic is to be subscribed
        while not self._closed:
            if self._dirty:
                self._sync(shards, route, everything=everything)
                everything = False
            if restoring and self._restored():
                restoring = False
            self._check_health(shards)
            for shard in self._wait(shards):
                self._drain(shard, shards, route)

    def _check_health(self, shards: dict[str, _Shard]) -> None:
        """PING each connection silent for ``health_check_interval``; fail one that did not answer in time."""
        now = time.monotonic()
        for shard in shards.values():
            if shard.ping_sent is not None:
                if now - shard.ping_sent > self._socket_timeout:
                    raise _ConnectionDead(f"{shard.name}: no answer to PING within {self._socket_timeout:g} s")
            elif now - shard.last_heard > self._health_check_interval:
                shard.pubsub.ping()
                shard.ping_sent = now

    def _wait(self, shards: dict[str, _Shard]) -> list[_Shard]:
        """The shards with a reply waiting: at once, or within ``poll_interval`` (cut short by `_wake`)."""
        ready = [shard for shard in shards.values() if shard.readable()]
        if ready:
            return ready
        import gevent

        event = self._ready
        assert event is not None
        event.clear()
        loop = gevent.get_hub().loop
        for shard in shards.values():
            shard.watch(loop, event.set)
        self._waiting = True
        try:
            woken = event.wait(self._poll_interval)
        finally:
            self._waiting = False
            for shard in shards.values():
                shard.unwatch()
        return [shard for shard in shards.values() if shard.readable()] if woken else []

    def _wake(self) -> None:
        event = self._ready
        if self._waiting and event is not None:
            self._waiting = False  # one wake-up per wait
            event.set()

    def _drain(self, shard: _Shard, shards: dict[str, _Shard], route: dict[str, _Shard]) -> None:
        """Handle the replies waiting on one connection, at most `IDLE_EVERY`: then the others' turn."""
        for _ in range(IDLE_EVERY):
            # a reply that has started to arrive is read with the full socket timeout: a
            # 256 KiB message comes in many pieces
            response = shard.pubsub.parse_response(block=False, timeout=self._socket_timeout)
            if response is None:
                # only part of a reply came in time: the rest is read in a later round, after
                # the health check (a connection stalled mid-reply is as dead as a silent one)
                return
            shard.last_heard = time.monotonic()
            shard.ping_sent = None
            self._handle(shard, response, shards, route)
            if shards.get(shard.name) is not shard or not shard.readable():  # closed: its last channel left
                return

    def _handle(self, shard: _Shard, response: Any, shards: dict[str, _Shard], route: dict[str, _Shard]) -> None:
        message = shard.pubsub.handle_message(response)
        if message is None:
            return
        kind = message["type"]
        if kind == "smessage":
            self._deliver(message)
        elif kind == "ssubscribe":
            self._confirmed(self._topic_of(message["channel"]), shard.unconfirmed, lambda t: route.get(t) is shard)
        elif kind == "sunsubscribe":
            topic = self._topic_of(message["channel"])
            pending = shard.leaving.get(topic, 0)
            if pending > 1:
                shard.leaving[topic] = pending - 1
            elif pending == 1:
                del shard.leaving[topic]
                if shard.idle():
                    del shards[shard.name]
                    shard.close()
            elif topic in shard.topics:
                # not asked for: Redis moved the channel's slot to another master
                raise _SlotMoved(f"{shard.name} unsubscribed {self.redis_channel(topic)!r}: its slot moved")

    def _sync(self, shards: dict[str, _Shard], route: dict[str, _Shard], *, everything: bool) -> None:
        """SSUBSCRIBE new topics on their slots' masters, SUNSUBSCRIBE abandoned ones; one command per slot.

        Confirmations arrive as messages.  Only the topics that changed since the last round
        are looked at (a node may hold tens of thousands), except when starting over.
        """
        topology = self._topology
        changed, wanted = self._take_changes(everything=everything)
        joining: dict[tuple[_Shard, int], list[str]] = {}
        for topic in sorted(topic for topic in wanted if topic not in route):
            channel = self.redis_channel(topic)
            slot = topology.keyslot(channel)
            node = topology.nodes_manager.get_node_from_slot(slot)  # the master
            shard = shards.get(node.name)
            if shard is None:
                shard = shards[node.name] = self._open_shard(node.host, node.port, node.name)
            route[topic] = shard
            shard.topics.add(topic)
            shard.unconfirmed[topic] = shard.unconfirmed.get(topic, 0) + 1
            joining.setdefault((shard, slot), []).append(channel)
        for (shard, _), channels in joining.items():
            # the command itself, not PubSub.ssubscribe: that keeps its own record of every
            # channel for a reconnect this consumer never asks of it
            shard.pubsub.execute_command("SSUBSCRIBE", *channels)
        if gone := sorted(topic for topic in changed - wanted if topic in route):
            with self._lock:  # before sending: a subscribe() meanwhile must wait for the re-SSUBSCRIBE
                self._bound.difference_update(gone)
            leaving: dict[tuple[_Shard, int], list[str]] = {}
            for topic in gone:
                shard = route.pop(topic)
                shard.topics.discard(topic)
                shard.leaving[topic] = shard.leaving.get(topic, 0) + 1
                channel = self.redis_channel(topic)
                leaving.setdefault((shard, topology.keyslot(channel)), []).append(channel)
            for (shard, _), channels in leaving.items():
                shard.pubsub.execute_command("SUNSUBSCRIBE", *channels)

    def _open_shard(self, host: str, port: int, name: str) -> _Shard:
        client = redis_client(
            self._address.node_url(host, port),
            socket_timeout=self._socket_timeout,
            connect_timeout=self._connect_timeout,
            client_name=self.consumer_name,
            max_connections=1,
            field="broker_url",
        )
        return _Shard(name, client)

    # ------------------------------------------------------------------ closing

    def _close_connections(self) -> None:
        with self._client_lock:
            clients = [self._client, self._topology, *self._publishers.values()]
            self._client = self._topology = None
            self._publishers.clear()
        for client in clients:
            if client is not None:
                try:
                    client.close()
                except Exception:
                    log.debug("%s: closing a cluster client failed", self._what, exc_info=True)

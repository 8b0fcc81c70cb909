"""The Broker contract, run against every implementation and a real server for each.

LocalBroker (in-process), RedisBroker (Redis native pub/sub), RedisClusterBroker (a real
Redis Cluster's sharded pub/sub, the session's `redis_cluster`), KombuBroker on RabbitMQ and
KombuBroker on kombu's Redis transport.  Each test gets its own namespace, so tests never
see each other's traffic, and removes whatever it declared on the servers.  A "node" is a
broker instance, as in production (one per process); the in-process broker is shared by
its nodes instead.  Absence of a delivery is proven with a later marker message on the
same path, never by sleeping.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.event
import pytest
import redis
from kombu import Connection

from rtgevent.broker import Broker, LocalBroker, broker_from_url
from rtgevent.broker.kombu import DEFAULT_BROADCAST_TOPIC, KombuBroker
from rtgevent.broker.redis import RedisBroker
from rtgevent.broker.redis_cluster import RedisClusterBroker
from rtgevent.errors import BrokerUnavailable, InvalidOption
from rtgevent.payload import BROADCAST_TOPIC, node_topic
from rtgevent.retry import redis_cluster_client
from tests.conftest import ROOT
from tests.services import AMQP_URL, REDIS_URL, LiveServices
from tests.waiting import WAIT

KOMBU_REDIS_URL = "kombu+" + REDIS_URL
#: each kind's server; the cluster's is known once the `redis_cluster` fixture started it (see `_require`)
URLS = {"redis": REDIS_URL, "kombu-amqp": AMQP_URL, "kombu-redis": KOMBU_REDIS_URL}
UNREACHABLE = {
    "redis": "redis://127.0.0.1:1/0",
    "redis-cluster": "redis+cluster://127.0.0.1:1/",
    "kombu-amqp": "amqp://guest:guest@127.0.0.1:1//",
    "kombu-redis": "kombu+redis://127.0.0.1:1/0",
}
REAL = ["redis", "redis-cluster", "kombu-amqp", "kombu-redis"]
ALL = ["local", *REAL]
TEXT = 'héllo wörld ✓ 日本語 🎉 "quoted" \\ \u2028'


def make_broker(kind: str, namespace: str, url: str | None = None, **kwargs: Any) -> Broker:
    url = url or URLS[kind]
    if kind == "redis":
        return RedisBroker(url, namespace=namespace, **kwargs)
    if kind == "redis-cluster":
        return RedisClusterBroker(url, namespace=namespace, **kwargs)
    return KombuBroker(url, namespace=namespace, **kwargs)


class Inbox:
    """A handler that records payloads; `wait_for(n)` blocks (gevent) until n arrived."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self._changed = gevent.event.Event()

    def __call__(self, payload: bytes) -> None:
        self.items.append(payload)
        self._changed.set()

    def wait_for(self, count: int, timeout: float = WAIT) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.items) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"got {len(self.items)} of {count} messages in {timeout:g} s: {self.items[:3]}")
            self._changed.clear()
            if len(self.items) < count:
                self._changed.wait(remaining)
        return self.items


def payload(n: int, **extra: Any) -> bytes:
    return json.dumps({"v": 1, "n": n, "text": TEXT, **extra}, ensure_ascii=False).encode()


def cleanup(namespace: str, brokers: list[Broker]) -> None:
    """Remove what the brokers of one test may have left on the servers."""
    kombu = [b for b in brokers if isinstance(b, KombuBroker)]
    if any(not b._redis for b in kombu):
        with Connection(AMQP_URL, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
            for b in kombu:
                if not b._redis:
                    _amqp_quietly(conn, lambda ch, b=b: ch.queue_delete(queue=b.queue_name))
            for suffix in ("broadcast", "direct"):
                _amqp_quietly(conn, lambda ch, s=suffix: ch.exchange_delete(exchange=f"{namespace}.{s}"))
    if any(b._redis for b in kombu) or any(isinstance(b, RedisBroker) for b in brokers):
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        try:
            for key in client.scan_iter(match=f"*{namespace}*"):
                client.delete(key)
            for member in client.zrange("_kombu.binding_deadlines", 0, -1):
                if namespace.encode() in member:
                    client.zrem("_kombu.binding_deadlines", member)
        finally:
            client.close()


def _amqp_quietly(conn: Connection, op: Callable[[Any], Any]) -> None:
    channel = conn.channel()
    try:
        op(channel)
    except conn.channel_errors:
        pass  # already gone; the channel is closed by the error
    else:
        channel.close()


@pytest.fixture
def namespace() -> str:
    return f"rtgtest-{uuid.uuid4().hex[:12]}"


def _require(request: pytest.FixtureRequest, live: LiveServices, kind: str) -> str:
    """Skip unless ``kind``'s server is there; the Redis Cluster is started (once per run) on first use."""
    if kind == "redis-cluster":
        URLS[kind] = request.getfixturevalue("redis_cluster").url
    else:
        live.require(URLS.get(kind))
    return kind


@pytest.fixture(params=ALL)
def kind(request: pytest.FixtureRequest, live: LiveServices) -> str:
    """Each implementation in turn; a real server's kind is skipped where its server is down."""
    return _require(request, live, str(request.param))


@pytest.fixture(params=REAL)
def real_kind(request: pytest.FixtureRequest, live: LiveServices) -> str:
    return _require(request, live, str(request.param))


@pytest.fixture(params=["redis", "redis-cluster"])
def redis_kind(request: pytest.FixtureRequest, live: LiveServices) -> str:
    """The two native Redis brokers, for what only they do."""
    return _require(request, live, str(request.param))


def shard_client(channel: str) -> redis.Redis:
    """A plain client of the cluster master that owns ``channel``'s slot (where its subscribers are)."""
    with redis_cluster_client(URLS["redis-cluster"], socket_timeout=5) as cluster:
        node = cluster.get_node_from_key(channel)
        return redis.Redis(host=node.host, port=node.port, socket_timeout=5)


@pytest.fixture
def brokers(namespace: str) -> Iterator[list[Broker]]:
    """Every broker a test makes is appended here, closed and cleaned up after it."""
    made: list[Broker] = []
    yield made
    gevent.joinall([gevent.spawn(b.close) for b in made], timeout=WAIT, raise_error=True)
    cleanup(namespace, made)


@pytest.fixture
def node(kind: str, namespace: str, brokers: list[Broker]) -> Callable[..., Broker]:
    """``node()`` is the broker of one more node; in-process nodes share one LocalBroker."""
    shared = LocalBroker()

    def factory(**kwargs: Any) -> Broker:
        broker = shared if kind == "local" else make_broker(kind, namespace, **kwargs)
        brokers.append(broker)
        return broker

    return factory


@pytest.fixture
def real_node(real_kind: str, namespace: str, brokers: list[Broker]) -> Callable[..., Broker]:
    def factory(**kwargs: Any) -> Broker:
        broker = make_broker(real_kind, namespace, **kwargs)
        brokers.append(broker)
        return broker

    return factory


# ---------------------------------------------------------------------- the contract


@pytest.mark.parametrize("topic", [BROADCAST_TOPIC, node_topic("n1")], ids=["broadcast", "directed"])
def test_subscriber_receives_in_order_bytes_intact(node: Callable[..., Broker], topic: str) -> None:
    """What is published to a topic reaches its subscriber in order, byte for byte (non-ASCII, 256 KiB)."""
    broker = node()
    inbox = Inbox()
    broker.subscribe(topic, inbox)
    big = json.dumps({"v": 1, "blob": "é" * (128 * 1024 - 20)}, ensure_ascii=False).encode()
    assert len(big) >= 256 * 1024 - 64
    sent = [payload(n) for n in range(20)]
    sent.insert(10, big)
    sent.append(b'{"v":1,"raw":"\\u0000\\ud83c\\udf89 \xf0\x9f\x8e\x89"}')
    for item in sent:
        broker.publish(topic, item)
    assert inbox.wait_for(len(sent)) == sent


def test_broadcast_reaches_every_node_once(node: Callable[..., Broker]) -> None:
    """Two nodes subscribed to the broadcast topic both get exactly one copy of each broadcast."""
    a, b = node(), node()
    inbox_a, inbox_b = Inbox(), Inbox()
    a.subscribe(BROADCAST_TOPIC, inbox_a)
    b.subscribe(BROADCAST_TOPIC, inbox_b)
    sent = [payload(n) for n in range(5)]
    for item in sent:
        a.publish(BROADCAST_TOPIC, item)
    b.publish(BROADCAST_TOPIC, marker := payload(-1, marker=True))
    assert inbox_a.wait_for(6) == [*sent, marker]
    assert inbox_b.wait_for(6) == [*sent, marker]


def test_directed_topic_reaches_only_its_subscriber(node: Callable[..., Broker]) -> None:
    """A node's topic reaches that node only: the other node's handler counts zero."""
    a, b = node(), node()
    inbox_a, inbox_b = Inbox(), Inbox()
    a.subscribe(node_topic("a"), inbox_a)
    b.subscribe(node_topic("b"), inbox_b)
    for n in range(3):
        b.publish(node_topic("a"), payload(n))
    # sent after, on b's own path: had b been sent a's messages, they would come first
    a.publish(node_topic("b"), marker := payload(-1, marker=True))
    assert inbox_a.wait_for(3) == [payload(n) for n in range(3)]
    assert inbox_b.wait_for(1) == [marker]


def test_publish_nobody_receives(node: Callable[..., Broker], kind: str) -> None:
    """A publish no subscriber can take never hangs; where the server tells (RabbitMQ returns a
    mandatory message, Redis counts receivers) it raises BrokerUnavailable instead of vanishing."""
    broker = node()
    with gevent.Timeout(30, AssertionError("publish hung")):
        if kind in ("local", "kombu-redis"):  # neither can tell: dropped
            broker.publish(node_topic("nobody"), payload(99))
        else:
            with pytest.raises(BrokerUnavailable, match=r"nobody|no queue"):
                broker.publish(node_topic("nobody"), payload(99))


def test_subscription_close_stops_delivery(node: Callable[..., Broker]) -> None:
    """Closing a subscription stops its handler at once; other handlers and topics go on."""
    broker = node()
    topic, other = node_topic("t"), node_topic("other")
    first, second, marker_inbox = Inbox(), Inbox(), Inbox()
    sub_first = broker.subscribe(topic, first)
    sub_second = broker.subscribe(topic, second)
    broker.subscribe(other, marker_inbox)
    broker.publish(topic, payload(1))
    first.wait_for(1)
    second.wait_for(1)

    sub_first.close()
    sub_first.close()  # idempotent
    broker.publish(topic, payload(2))
    assert second.wait_for(2)[-1] == payload(2)

    sub_second.close()  # the topic's last handler: unbound
    with contextlib.suppress(BrokerUnavailable):  # raised where the broker knows nobody listens
        broker.publish(topic, payload(3))
    broker.publish(other, marker := payload(-1, marker=True))
    assert marker_inbox.wait_for(1) == [marker]
    assert first.items == [payload(1)]
    assert second.items == [payload(1), payload(2)]

    again = Inbox()  # and the topic can be subscribed again
    broker.subscribe(topic, again)
    broker.publish(topic, payload(4))
    assert again.wait_for(1) == [payload(4)]


def subscriber_counts(kind: str, channels: list[str]) -> list[int]:
    """How many subscribers each Redis channel has (on the cluster: on its slot's master, sharded)."""
    if kind == "redis":
        with redis.Redis.from_url(REDIS_URL) as client:
            return [count for _, count in client.pubsub_numsub(*channels)]
    counts = []
    for channel in channels:
        with shard_client(channel) as client:
            counts.append(int(client.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1]))
    return counts


def test_redis_subscriptions_do_not_wait_out_the_poll(redis_kind: str, namespace: str, brokers: list[Broker]) -> None:
    """A new subscription (or its end) reaches Redis at once, not after the consumer's poll.

    The poll is 60 s here: a consumer that noticed a new topic only when its wait for
    messages ended would make each subscribe below wait a minute (and log that it did).
    On the cluster the five channels spread over the shards: the wait on all of them is cut short.
    """
    broker = make_broker(redis_kind, namespace, poll_interval=60.0, health_check_interval=120.0, subscribe_timeout=60.0)
    brokers.append(broker)
    inbox, subscriptions = Inbox(), []
    with gevent.Timeout(WAIT, AssertionError("subscribing waited for the consumer's poll")):
        for n in range(5):
            subscriptions.append(broker.subscribe(node_topic(f"quick{n}"), inbox))
            broker.publish(node_topic(f"quick{n}"), payload(n))  # raises if nobody subscribes yet
        assert inbox.wait_for(5) == [payload(n) for n in range(5)]
        for subscription in subscriptions:
            subscription.close()
        channels = [f"{namespace}.{node_topic(f'quick{n}')}" for n in range(5)]
        while any(subscriber_counts(redis_kind, channels)):
            gevent.sleep(0.01)  # polling Redis, bounded by the timeout above


def test_close_is_idempotent(node: Callable[..., Broker]) -> None:
    """close() twice is fine, and so is closing a subscription after its broker."""
    broker = node()
    inbox = Inbox()
    sub = broker.subscribe(node_topic("x"), inbox)
    broker.publish(node_topic("x"), payload(1))
    inbox.wait_for(1)
    with gevent.Timeout(WAIT, AssertionError("close() hung")):
        broker.close()
        broker.close()
    sub.close()


def test_broadcast_topic_constant_matches_delivery() -> None:
    """KombuBroker's fanout routing keys off the topic Realtime really uses."""
    assert DEFAULT_BROADCAST_TOPIC == BROADCAST_TOPIC


# ---------------------------------------------------------------------- broker_from_url


@pytest.mark.parametrize(
    ("url", "cls"),
    [
        ("memory://", LocalBroker),
        ("redis://127.0.0.1:6379/0", RedisBroker),
        ("rediss://127.0.0.1:6380/0", RedisBroker),
        ("amqp://guest:guest@127.0.0.1:5672//", KombuBroker),
        ("amqps://guest:guest@127.0.0.1:5671//", KombuBroker),
        ("kombu+redis://127.0.0.1:6379/0", KombuBroker),
        ("REDIS://127.0.0.1:6379/0", RedisBroker),
        ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/", RedisClusterBroker),
        ("REDIS+CLUSTER://[::1]:7000/", RedisClusterBroker),
    ],
)
def test_broker_from_url_picks_the_implementation(url: str, cls: type) -> None:
    """Each scheme maps to its broker; constructing one does not connect."""
    broker = broker_from_url(url)
    try:
        assert type(broker) is cls
    finally:
        broker.close()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "nonsense",
        "ftp://example.com/",
        "http://127.0.0.1:5672/",
        "kafka://x:9092",
        "redis:/no-slashes",
        "kombu+sqs://x",
        "redis+cluster://127.0.0.1/",
        "redis+cluster://127.0.0.1:7000,nohost/",
    ],
)
def test_broker_from_url_rejects_unknown_schemes(url: str) -> None:
    """A malformed URL or an unknown scheme is an InvalidOption, raised at once."""
    with pytest.raises(InvalidOption):
        broker_from_url(url)


def test_broker_options_are_checked() -> None:
    """Bad options and namespaces fail at construction, not at the first publish."""
    with pytest.raises(InvalidOption):
        broker_from_url("redis://127.0.0.1:6379/0", namespace="has space")
    with pytest.raises(InvalidOption):
        broker_from_url("amqp://127.0.0.1//", namespace="a/b")
    with pytest.raises(InvalidOption):
        broker_from_url("amqp://127.0.0.1//", publish_timeout=0)
    with pytest.raises(InvalidOption):
        broker_from_url("memory://", pool_size=3)
    broker_from_url("memory://", namespace="app").close()  # callers pass one whatever the URL


# ---------------------------------------------------------------------- real servers only


def test_publish_to_unreachable_server_raises(real_kind: str, namespace: str, brokers: list[Broker]) -> None:
    """Publishing while the server is unreachable raises BrokerUnavailable after bounded retries."""
    broker = make_broker(real_kind, namespace, UNREACHABLE[real_kind])
    brokers.append(broker)
    with gevent.Timeout(30, AssertionError("publish hung")), pytest.raises(BrokerUnavailable) as info:
        broker.publish(node_topic("x"), payload(1))
    assert "127.0.0.1" in str(info.value) and "attempt" in str(info.value)


def test_subscribe_while_server_is_away_does_not_block(
    real_kind: str, namespace: str, brokers: list[Broker], caplog: pytest.LogCaptureFixture
) -> None:
    """A node can start while the broker is away: subscribe returns, retries are logged once."""
    caplog.set_level(logging.INFO, logger="rtgevent.broker")
    accepted = gevent.event.Event()
    attempts = []
    listener = socket.create_server(("127.0.0.1", 0))

    def refuse() -> None:  # a "server" that hangs up on every connection
        while True:
            conn, _ = listener.accept()
            conn.close()
            attempts.append(1)
            if len(attempts) >= 4:
                accepted.set()

    acceptor = gevent.spawn(refuse)
    port = listener.getsockname()[1]
    url = UNREACHABLE[real_kind].replace("127.0.0.1:1/", f"127.0.0.1:{port}/")
    broker = make_broker(real_kind, namespace, url, connect_timeout=2, socket_timeout=2)
    brokers.append(broker)
    try:
        with gevent.Timeout(WAIT, AssertionError("subscribe blocked")):
            broker.subscribe(node_topic("x"), Inbox())
        assert accepted.wait(WAIT), "the consumer did not keep retrying"
        broker.close()
    finally:
        acceptor.kill()
        listener.close()
    lines = [r for r in caplog.records if r.name == "rtgevent.broker" and namespace in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.WARNING], [r.getMessage() for r in lines]
    assert "cannot connect" in lines[0].getMessage()


def test_handler_error_is_logged_and_consuming_goes_on(
    real_node: Callable[..., Broker], caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raises is logged; the consumer and the other handlers keep going."""
    broker = real_node()
    inbox = Inbox()

    def boom(payload: bytes) -> None:
        raise RuntimeError("handler bug")

    broker.subscribe(node_topic("x"), boom)
    broker.subscribe(node_topic("x"), inbox)
    broker.publish(node_topic("x"), payload(1))
    broker.publish(node_topic("x"), payload(2))
    assert inbox.wait_for(2) == [payload(1), payload(2)]
    logged = [r for r in caplog.records if r.name == "rtgevent.broker" and r.exc_info is not None]
    assert [str(r.exc_info[1]) for r in logged if r.exc_info] == ["handler bug", "handler bug"]
    assert all("handler for topic" in r.getMessage() for r in logged)


class _Restored(logging.Handler):
    def __init__(self, namespace: str) -> None:
        super().__init__(logging.INFO)
        self.namespace = namespace
        self.event = gevent.event.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.namespace in message and "connection restored" in message:
            self.event.set()


def kill_consumer_connection(kind: str, broker: Broker) -> None:
    """Close the broker's consumer connection from the server's side."""
    name = broker.consumer_name  # type: ignore[attr-defined]
    if kind == "kombu-amqp":
        ctl = shutil.which("rabbitmqctl")
        if ctl is None:
            pytest.skip("rabbitmqctl is not available to close a connection server-side")
        listing = subprocess.run(
            [ctl, "-q", "list_connections", "--no-table-headers", "pid", "client_properties"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        pids = [line.split("\t", 1)[0] for line in listing.splitlines() if f'{{"connection_name","{name}"}}' in line]
        assert len(pids) == 1, listing
        subprocess.run(
            [ctl, "-q", "close_connection", pids[0], "contract test"], check=True, timeout=60, capture_output=True
        )
        return
    if kind == "redis-cluster":
        # one pub/sub connection per master that owns a subscribed channel: all of them go
        # at once, and the broker drops, reconnects and resubscribes them as one
        with redis_cluster_client(URLS[kind], socket_timeout=5) as cluster:
            masters = [(node.host, node.port) for node in cluster.get_primaries()]
        killed = 0
        for host, port in masters:
            with redis.Redis(host=host, port=port, socket_timeout=5) as client:
                victims = [c for c in client.client_list() if c.get("name") == name]
                killed += sum(client.client_kill_filter(_id=victim["id"], _type="pubsub") for victim in victims)
        assert killed >= 1, f"no Redis client named {name} on the masters"
        return
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        victims = [c for c in client.client_list() if c.get("name") == name]
        assert victims, f"no Redis client named {name}"
        # the native broker's consumer is a pub/sub client: TYPE narrows the kill to it.  kombu's
        # has two connections; once one is killed the broker may close the other itself.
        kill_type = "pubsub" if kind == "redis" else None
        killed = sum(client.client_kill_filter(_id=victim["id"], _type=kill_type) for victim in victims)
        assert killed >= 1
    finally:
        client.close()


def test_delivery_resumes_after_consumer_connection_is_killed(
    real_kind: str, real_node: Callable[..., Broker], namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The consumer reconnects and re-subscribes by itself; "lost" and "restored" are logged once each."""
    caplog.set_level(logging.INFO, logger="rtgevent.broker")
    restored = _Restored(namespace)
    logging.getLogger("rtgevent.broker").addHandler(restored)
    try:
        broker = real_node()
        direct, broadcast = Inbox(), Inbox()
        broker.subscribe(node_topic("me"), direct)
        broker.subscribe(BROADCAST_TOPIC, broadcast)
        broker.publish(node_topic("me"), payload(1))
        direct.wait_for(1)

        kill_consumer_connection(real_kind, broker)
        assert restored.event.wait(WAIT), "the consumer did not reconnect"
        broker.publish(node_topic("me"), payload(2))
        broker.publish(BROADCAST_TOPIC, payload(3))
        assert direct.wait_for(2)[-1] == payload(2)
        assert broadcast.wait_for(1) == [payload(3)]
    finally:
        logging.getLogger("rtgevent.broker").removeHandler(restored)
    mine = [r for r in caplog.records if r.name == "rtgevent.broker" and namespace in r.getMessage()]
    lost = [r for r in mine if "connection lost" in r.getMessage()]
    back = [r for r in mine if "connection restored" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelno == logging.WARNING, [r.getMessage() for r in mine]
    assert len(back) == 1 and back[0].levelno == logging.INFO, [r.getMessage() for r in mine]


class FreezingProxy:
    """A TCP proxy whose current connections can be frozen: open, but silent both ways.

    A half-open connection (a dead peer, a NAT that forgot us) looks exactly like this;
    connections made after `freeze` flow normally.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[dict[str, Any]] = []
        self.greenlets = [gevent.spawn(self._accept)]

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(self.upstream)
            pair: dict[str, Any] = {"frozen": False, "socks": (client, server)}
            self.pairs.append(pair)
            self.greenlets += [
                gevent.spawn(self._pump, pair, client, server),
                gevent.spawn(self._pump, pair, server, client),
            ]

    @staticmethod
    def _pump(pair: dict[str, Any], src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not pair["frozen"]:
                    dst.sendall(data)
        except OSError:
            pass
        for sock in pair["socks"]:
            sock.close()

    def freeze(self) -> None:
        for pair in self.pairs:
            pair["frozen"] = True

    def close(self) -> None:
        gevent.killall(self.greenlets)
        self.listener.close()
        for pair in self.pairs:
            for sock in pair["socks"]:
                sock.close()


# not on the cluster: its nodes announce their own addresses (CLUSTER SLOTS) and the broker
# connects to those, around any proxy; the test after this one silences a shard there instead
@pytest.mark.parametrize("kind", ["redis", "kombu-amqp"])
def test_silent_consumer_connection_is_detected(
    kind: str, namespace: str, brokers: list[Broker], caplog: pytest.LogCaptureFixture, live: LiveServices
) -> None:
    """A consumer connection that goes silent is noticed (PING / heartbeats) and replaced."""
    live.require(URLS[kind])
    caplog.set_level(logging.INFO, logger="rtgevent.broker")
    proxy = FreezingProxy(("127.0.0.1", 6379 if kind == "redis" else 5672))
    try:
        url = (
            URLS[kind]
            .replace("127.0.0.1:6379", f"127.0.0.1:{proxy.port}")
            .replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
        )
        options: dict[str, Any] = (
            {"health_check_interval": 0.5, "socket_timeout": 1.0} if kind == "redis" else {"heartbeat": 1.0}
        )
        restored = _Restored(namespace)
        logging.getLogger("rtgevent.broker").addHandler(restored)
        try:
            consumer = make_broker(kind, namespace, url, **options)
            publisher = make_broker(kind, namespace)  # straight to the server, not through the proxy
            brokers += [consumer, publisher]
            inbox = Inbox()
            consumer.subscribe(node_topic("me"), inbox)
            publisher.publish(node_topic("me"), payload(1))
            inbox.wait_for(1)
            proxy.freeze()
            assert restored.event.wait(WAIT), "the silent connection was not replaced"
        finally:
            logging.getLogger("rtgevent.broker").removeHandler(restored)
        publisher.publish(node_topic("me"), payload(2))
        assert inbox.wait_for(2)[-1] == payload(2)
    finally:
        proxy.close()


def test_silent_cluster_shard_connection_is_detected(
    redis_cluster: Any, namespace: str, brokers: list[Broker], caplog: pytest.LogCaptureFixture
) -> None:
    """A shard's connection that goes silent is noticed (PING) and replaced, the others' with it.

    ``CLIENT PAUSE ... ALL`` on the master of the topic's slot: its connections stay open and
    answer nothing, PINGs included, while the cluster bus goes on (no failover); the pause
    ends by itself, and the consumer is back once it can subscribe there again.
    """
    URLS["redis-cluster"] = redis_cluster.url
    caplog.set_level(logging.INFO, logger="rtgevent.broker")
    restored = _Restored(namespace)
    logging.getLogger("rtgevent.broker").addHandler(restored)
    try:
        consumer = make_broker("redis-cluster", namespace, health_check_interval=0.5, socket_timeout=1.0)
        publisher = make_broker("redis-cluster", namespace)
        brokers += [consumer, publisher]
        inbox = Inbox()
        consumer.subscribe(node_topic("me"), inbox)
        publisher.publish(node_topic("me"), payload(1))
        inbox.wait_for(1)
        with shard_client(f"{namespace}.{node_topic('me')}") as client:
            client.execute_command("CLIENT", "PAUSE", 3000, "ALL")
        assert restored.event.wait(WAIT), "the silent connection was not replaced"
    finally:
        logging.getLogger("rtgevent.broker").removeHandler(restored)
    publisher.publish(node_topic("me"), payload(2))
    assert inbox.wait_for(2)[-1] == payload(2)
    mine = [r.getMessage() for r in caplog.records if r.name == "rtgevent.broker" and namespace in r.getMessage()]
    assert any("no answer to PING" in line for line in mine), mine


def test_close_removes_what_the_broker_declared(real_kind: str, namespace: str) -> None:
    """A closed broker leaves no queue, list or binding of its own behind."""
    broker = make_broker(real_kind, namespace)
    try:
        broker.subscribe(BROADCAST_TOPIC, Inbox())
        broker.subscribe(node_topic("n"), Inbox())
        broker.close()
        if real_kind == "kombu-amqp":
            assert isinstance(broker, KombuBroker)
            with Connection(AMQP_URL, connect_timeout=5) as conn:
                channel = conn.channel()
                with pytest.raises(conn.channel_errors):
                    channel.queue_declare(queue=broker.queue_name, passive=True)
        elif real_kind == "redis-cluster":
            with redis_cluster_client(URLS[real_kind], socket_timeout=5) as cluster:
                assert list(cluster.scan_iter(match=f"*{namespace}*")) == []  # every master
        else:
            client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
            try:
                assert list(client.scan_iter(match=f"*{namespace}*")) == []
            finally:
                client.close()
    finally:
        cleanup(namespace, [broker])


def test_rabbitmq_topology(namespace: str, live: LiveServices) -> None:
    """One queue per broker with x-expires, x-message-ttl, x-max-length/drop-head; fanout + direct bindings."""
    live.require(AMQP_URL)
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.skip("rabbitmqctl is not available")
    broker = KombuBroker(AMQP_URL, namespace=namespace, queue_ttl=30, message_ttl=5, max_length=100)
    try:
        broker.subscribe(BROADCAST_TOPIC, Inbox())
        broker.subscribe(node_topic("n1"), Inbox())
        queues = subprocess.run(
            [ctl, "-q", "list_queues", "--no-table-headers", "name", "arguments", "exclusive", "durable"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        line = next(line for line in queues.splitlines() if line.startswith(broker.queue_name))
        for arg in (
            '{"x-expires",30000}',
            '{"x-message-ttl",5000}',
            '{"x-max-length",100}',
            '{"x-overflow","drop-head"}',
        ):
            assert arg in line, line
        assert line.endswith("\tfalse\tfalse"), line  # neither exclusive nor durable
        assert [q for q in queues.splitlines() if q.startswith(f"{namespace}.q.")] == [line]
        bindings = subprocess.run(
            [ctl, "-q", "list_bindings", "--no-table-headers", "source_name", "destination_name", "routing_key"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        mine = sorted(b for b in bindings.splitlines() if b.startswith(f"{namespace}."))
        assert mine == sorted(
            [
                f"{namespace}.broadcast\t{broker.queue_name}\t",
                f"{namespace}.direct\t{broker.queue_name}\t{node_topic('n1')}",
            ]
        )
    finally:
        broker.close()
        cleanup(namespace, [broker])


CHILD = """
import json, sys, threading
from gevent import monkey
from rtgevent.broker import broker_from_url
url, namespace, topic = sys.argv[1:4]
broker = broker_from_url(url, namespace=namespace)
errors = []
def work(t):
    try:
        for n in range(25):
            broker.publish(topic, json.dumps({"t": t, "n": n}).encode())
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
for t in threads: t.start()
for t in threads: t.join()
broker.close()
print(json.dumps({"errors": errors, "patched": monkey.is_anything_patched()}))
"""


def test_publish_from_plain_threads_without_gevent(
    real_node: Callable[..., Broker], real_kind: str, namespace: str
) -> None:
    """publish() is thread-safe and needs no monkey-patching (the Emitter's use)."""
    inbox = Inbox()
    real_node().subscribe(node_topic("emit"), inbox)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, URLS[real_kind], namespace, node_topic("emit")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"errors": [], "patched": False}
    got = [json.loads(item) for item in inbox.wait_for(100)]
    assert sorted((m["t"], m["n"]) for m in got) == [(t, n) for t in range(4) for n in range(25)]
    for t in range(4):  # one thread's messages in its order, whichever pooled connection each took
        assert [m["n"] for m in got if m["t"] == t] == list(range(25))

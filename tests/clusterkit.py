"""Shared pieces of the many-node tests: broker URLs, the ``cluster`` fixture, a logged-in client."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import websocket

from rtgevent.retry import CLUSTER_SCHEME, redis_cluster_client
from tests.procs import ServeProcess
from tests.services import AMQP_URL, REDIS_URL, LiveServices
from tests.waiting import WAIT

REDIS = REDIS_URL
AMQP = AMQP_URL
BROKERS = {"redis": REDIS, "kombu-amqp": AMQP, "kombu-redis": "kombu+" + REDIS}
#: the kind of a test run on the shared Redis Cluster (`tests.rediscluster`): broker, presence
#: and history all on it (SPEC section 15)
ON_CLUSTER = "redis-cluster"


@dataclasses.dataclass(frozen=True)
class Backend:
    """Where one parametrized run's nodes keep their state: the broker, presence and history URLs."""

    kind: str
    broker: str
    presence: str
    history: str

    @property
    def cluster(self) -> bool:
        return self.kind == ON_CLUSTER


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Backend:
    """The URLs of the test's ``kind`` parameter: a broker of `BROKERS` with the shared Redis for
    presence and history, or ``redis-cluster``, everything on the shared Redis Cluster."""
    kind = str(request.node.callspec.params["kind"])
    if kind == ON_CLUSTER:
        url = str(request.getfixturevalue("redis_cluster").url)
        return Backend(kind, url, url, url)
    return Backend(kind, BROKERS[kind], REDIS, REDIS)


def _cleanup(namespace: str, redis_url: str = REDIS, amqp_url: str | None = AMQP) -> None:
    with contextlib.suppress(Exception):
        client: Any = (
            redis_cluster_client(redis_url, socket_timeout=5)
            if redis_url.startswith(CLUSTER_SCHEME)
            else redis.Redis.from_url(redis_url, socket_timeout=5)
        )
        # our keys, and kombu's Redis-transport bindings (``_kombu.binding.<namespace>...``)
        keys = list(client.scan_iter(match=f"*{namespace}*", count=1000))
        if keys:
            client.delete(*keys)
        stale = [m for m in client.zrange("_kombu.binding_deadlines", 0, -1) if namespace.encode() in m]
        if stale:
            client.zrem("_kombu.binding_deadlines", *stale)
        client.close()
    if amqp_url:
        import kombu

        with contextlib.suppress(Exception), kombu.Connection(amqp_url, connect_timeout=5) as conn:
            channel = conn.default_channel
            for suffix in ("broadcast", "direct"):
                with contextlib.suppress(Exception):
                    channel.exchange_delete(f"{namespace}.{suffix}")


@pytest.fixture
def cluster(live: LiveServices) -> Iterator[Callable[..., list[ServeProcess]]]:
    """``cluster(n, broker=URL, presence=URL, **spec)`` starts n nodes in one fresh namespace.

    The test is skipped where a shared server the nodes would use is down.
    """
    nodes: list[ServeProcess] = []
    namespaces: list[tuple[str, str]] = []

    def factory(
        n: int, *, broker: str, presence: str = REDIS, namespace: str | None = None, **spec: Any
    ) -> list[ServeProcess]:
        live.require(broker, presence, spec.get("events_url"))
        ns = namespace or f"rtgtest-{uuid.uuid4().hex[:10]}"
        namespaces.append((ns, presence))
        env = {"RTG_CLUSTER": json.dumps({"broker": broker, "presence": presence, "namespace": ns, **spec})}
        started = [ServeProcess("tests.cluster_app:make_node()", env=env) for _ in range(n)]
        nodes.extend(started)
        return started

    yield factory
    for node in nodes:
        node.stop()
    for ns, presence in namespaces:
        _cleanup(ns, presence if presence.startswith("redis") else REDIS)  # redis:// or redis+cluster://


class Client:
    """A logged-in WebSocket client of one node."""

    def __init__(self, node: ServeProcess, identity: str) -> None:
        self.identity = identity
        self.ws = websocket.create_connection(f"{node.ws_base}/?access_token={identity}", timeout=WAIT)
        self.ws.send(json.dumps({"id": "who", "route": "whoami"}))
        reply = json.loads(self.ws.recv())
        assert reply["data"]["identity"] == identity  # registered: hub and presence
        self.node_id = reply["data"]["node"]
        self.session_id = reply["data"]["session"]

    def next(self) -> dict[str, Any]:
        return json.loads(self.ws.recv())

    def expect(self, route: str, data: Any) -> None:
        msg = self.next()
        assert (msg["route"], msg.get("data")) == (route, data), msg

    def subscribe(self, channel: str) -> dict[str, Any]:
        self.ws.send(json.dumps({"id": f"sub:{channel}", "route": "rt.subscribe", "data": {"channel": channel}}))
        reply = self.next()
        assert reply["route"] == "rt.reply" and reply["metadata"]["in_reply_to"] == f"sub:{channel}", reply
        return dict(reply["data"])

    def unsubscribe(self, channel: str) -> None:
        self.ws.send(json.dumps({"id": "unsub", "route": "rt.unsubscribe", "data": {"channel": channel}}))
        assert self.next()["route"] == "rt.reply"

    def ping(self) -> None:
        self.ws.send(json.dumps({"id": "p", "route": "whoami"}))
        assert self.next()["route"] == "rt.reply"

    def close(self) -> None:
        self.ws.close()

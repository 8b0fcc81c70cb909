"""Many nodes: real gateway processes sharing a real broker and Redis presence.

Each node is an ``rtgevent serve`` process running tests/cluster_app.py; a namespace
unique to the test keeps its exchanges, channels and keys apart from every other test.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
import redis
import websocket

from tests.clusterkit import BROKERS, ON_CLUSTER, REDIS, Backend, Client
from tests.procs import ServeProcess
from tests.services import RabbitServer, RedisServer
from tests.waiting import WAIT, wait_until


def _counts(node: ServeProcess) -> dict[str, int]:
    return dict(node.control("counts"))


@pytest.mark.parametrize("kind", [*BROKERS, ON_CLUSTER])
def test_broadcast_once_and_identity_routed_to_its_nodes_only(cluster, kind: str, backend: Backend) -> None:
    """Three nodes: broadcasts reach every client once; identity sends reach only nodes that hold it."""
    a, b, c = cluster(3, broker=backend.broker, presence=backend.presence)
    ann, alice_b, alice_c, bob = Client(a, "ann"), Client(b, "alice"), Client(c, "alice"), Client(c, "bob")
    everyone = [ann, alice_b, alice_c, bob]
    for node in (a, b, c):
        assert node.control("broadcast", data=f"from-{node.port}") == {"ok": True}
    for client in everyone:
        got = sorted(client.next()["data"] for _ in range(3))
        assert got == sorted(f"from-{n.port}" for n in (a, b, c))
    before = {n.port: _counts(n) for n in (a, b, c)}
    assert a.control("send", identity="alice", data="hi alice") == {"ok": True}
    alice_b.expect("dm", "hi alice")
    alice_c.expect("dm", "hi alice")
    assert a.control("send", identity="bob", data="hi bob") == {"ok": True}
    bob.expect("dm", "hi bob")
    assert a.control("send", identity="nobody")["error"] == "SessionClosed"
    # marker: anything else delivered would arrive before it
    a.control("broadcast", route="marker")
    for client in everyone:
        assert client.next()["route"] == "marker"
    after = {n.port: _counts(n) for n in (a, b, c)}

    def identity_payloads(node: ServeProcess) -> int:
        return after[node.port].get("identity", 0) - before[node.port].get("identity", 0)

    assert identity_payloads(b) == 1  # alice
    assert identity_payloads(c) == 2  # alice, bob
    assert identity_payloads(a) == 0  # the sender holds neither
    status = a.control("online", identity="alice")
    assert status["online"] and sorted(status["sessions"]) == sorted([alice_b.node_id, alice_c.node_id])
    for client in everyone:
        client.close()


def test_killed_node_vanishes_from_presence_within_ttl(cluster) -> None:
    """SIGKILL a node: its identities go offline everywhere within presence_ttl; the rest is undisturbed."""
    ttl = 3.0
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    a, b = cluster(2, broker=REDIS, presence_ttl=ttl, namespace=namespace)
    ann, dave = Client(a, "ann"), Client(b, "dave")
    assert a.control("online", identity="dave")["online"]
    b.kill()
    killed = time.monotonic()
    a.control("node")  # still answering
    wait_until(lambda: not a.control("online", identity="dave")["online"], "dave to go offline", interval=0.1)
    elapsed = time.monotonic() - killed
    print(f"offline {elapsed:.2f} s after SIGKILL (presence_ttl {ttl} s)")
    assert elapsed <= ttl + 2.0
    assert a.control("send", identity="dave")["error"] == "SessionClosed"
    ann.ping()  # the surviving node and its client are undisturbed
    # the dead node's entries are purged from Redis soon after
    client = redis.Redis.from_url(REDIS)
    wait_until(
        lambda: not any(b"dave" in key for key in client.scan_iter(match=f"{namespace}*")),
        "the dead node's keys to be purged",
        interval=0.2,
    )
    client.close()
    ann.close()
    dave.ws.close()


def _restart_scenario(nodes: list[ServeProcess], stop: Callable[[], None], start: Callable[[], None]) -> float:
    """Traffic through a broker restart; returns seconds from the broker's return to cross-node delivery."""
    a, b = nodes
    erin, alice = Client(a, "erin"), Client(b, "alice")
    room = f"room:{uuid.uuid4().hex[:8]}"
    alice.subscribe(room)
    assert a.control("send", identity="alice", data="before") == {"ok": True}
    alice.expect("dm", "before")
    a.control("publish", channel=room, data="before")
    alice.expect("pub", "before")
    stop()
    # local delivery never depends on the broker
    for i in range(3):
        a.control("send", identity="erin", data=f"local {i}")
        erin.expect("dm", f"local {i}")
        erin.ping()
        alice.ping()
    start()
    back = time.monotonic()

    def delivered() -> bool:
        if a.control("send", identity="alice", data="after") != {"ok": True}:
            return False
        return bool(alice.next().get("data") == "after")

    wait_until(delivered, "cross-node delivery to come back", interval=0.2)
    recovered = time.monotonic() - back

    def channel_back() -> bool:
        # the node subscribed its channel again by itself: a publication reaches it
        a.control("publish", channel=room, data="after")
        alice.ws.settimeout(1.0)
        try:
            return bool(alice.next().get("data") == "after")
        except websocket.WebSocketTimeoutException:
            return False
        finally:
            alice.ws.settimeout(WAIT)

    wait_until(channel_back, "the channel subscription to come back", interval=0.2)
    assert a.proc.poll() is None and b.proc.poll() is None  # no gateway crashed

    def logged(node: ServeProcess, what: str) -> int:
        return sum(1 for line in node.lines if what in line)

    for node in (a, b):
        # a node whose consumer sat in its backoff when the broker came back logs later
        wait_until(
            lambda node=node: logged(node, "connection restored") == logged(node, "connection lost"),
            "every lost connection to be logged restored",
        )
        assert logged(node, "connection lost") <= 2, node.lines[-20:]
    erin.close()
    alice.close()
    return recovered


def test_redis_restart_mid_traffic(cluster) -> None:
    """Restart Redis (broker and presence): local delivery goes on; cross-node delivery is back within 10 s."""
    server = RedisServer()
    server.start()
    try:
        nodes = cluster(2, broker=server.url, presence=server.url, presence_ttl=6)
        recovered = _restart_scenario(nodes, server.stop, server.start)
        print(f"redis restart: cross-node delivery back {recovered:.2f} s after redis answered")
        assert recovered <= 10.0
    finally:
        server.stop() if server.proc and server.proc.poll() is None else None


def test_rabbitmq_restart_mid_traffic(cluster) -> None:
    """Restart RabbitMQ: queues are declared again, cross-node delivery is back within 10 s."""
    server = RabbitServer()
    server.start()
    try:
        nodes = cluster(2, broker=server.url, presence=REDIS)
        recovered = _restart_scenario(nodes, server.stop, server.start)
        print(f"rabbitmq restart: cross-node delivery back {recovered:.2f} s after rabbitmq answered")
        assert recovered <= 10.0
    finally:
        server.stop()
        server.remove()


def test_replace_policy_closes_the_older_session_on_another_node(cluster) -> None:
    """session_policy=replace: a login on node B closes the one on node A with 4001, initiator replaced."""
    a, b = cluster(2, broker=REDIS, session_policy="replace")
    first = Client(a, "frank")
    second_started = time.monotonic()
    second = Client(b, "frank")
    opcode, data = first.ws.recv_data(control_frame=True)
    elapsed = time.monotonic() - second_started
    assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(data[:2], "big") == 4001
    print(f"replaced after {elapsed:.3f} s")
    [info] = wait_until(lambda: a.control("disconnects"), "node A to report the close", interval=0.05)
    assert (info["code"], info["initiator"]) == (4001, "replaced")
    second.ping()
    assert [s for s in b.control("online", identity="frank")["sessions"]] == [second.node_id]
    second.close()

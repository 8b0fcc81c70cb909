"""History across the cluster (SPEC section 14): ``rtgevent serve`` nodes on a real broker and Redis.

Offsets stay one gap-free sequence however many publishers append at once (nodes and an
Emitter); a node that sees an offset jump (a publication whose broker message was lost)
fills the gap from history before delivering further; a client that reconnects to another
node with its last position gets exactly what it missed, in order, for a channel and for
its personal stream.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import pytest
import websocket

from rtgevent import ChannelOptions, Emitter
from rtgevent.history import RedisHistory
from rtgevent.history.base import Stamp
from rtgevent.streams import channel_stream
from tests.clusterkit import BROKERS, ON_CLUSTER, REDIS, Backend, Client
from tests.procs import ServeProcess
from tests.waiting import WAIT, wait_until

#: RedisBroker (the append script publishes) and RabbitMQ (published after the append: nodes
#: put crossed publications back in order)
HISTORY_BROKERS = {"redis": BROKERS["redis"], "kombu-amqp": BROKERS["kombu-amqp"]}


def publications(client: Client, count: int) -> list[dict[str, Any]]:
    """The next ``count`` channel publications the client receives (other envelopes skipped)."""
    got: list[dict[str, Any]] = []
    with gevent.Timeout(WAIT * 3, AssertionError(f"got {len(got)} of {count}")):
        while len(got) < count:
            msg = client.next()
            if "offset" in (msg.get("metadata") or {}):
                got.append(msg)
    return got


def offsets(messages: list[dict[str, Any]]) -> list[int]:
    return [int(m["metadata"]["offset"]) for m in messages]


@pytest.mark.parametrize("kind", [*HISTORY_BROKERS, ON_CLUSTER])
def test_offsets_have_no_gap_under_concurrent_publishers_on_two_nodes_and_an_emitter(
    cluster, kind: str, backend: Backend
) -> None:
    """Eight publishers (four per node) and an Emitter at once: every subscriber, on either
    node, gets offsets 1..N exactly once, in order, and each publisher's messages in its order."""
    broker_url, store = backend.broker, backend.history
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    a, b = cluster(2, broker=broker_url, presence=backend.presence, namespace=namespace, history=store)
    channel = f"hist:{uuid.uuid4().hex[:8]}"
    on_a, on_b = Client(a, "ann"), Client(b, "bea")
    for client in (on_a, on_b):
        reply = client.subscribe(channel)
        assert (reply["offset"], reply["epoch"], reply["recovered"]) == (0, "", False)
    each = 25

    def node_publisher(node: ServeProcess, name: str) -> None:
        for n in range(each):
            node.control("publish", channel=channel, data=f"{name}.{n}")

    def emitter_publisher() -> None:
        with Emitter(broker_url, backend.presence, namespace=namespace, history_url=store) as emitter:
            emitter.channel_namespace("hist:", ChannelOptions(history_size=2000, history_ttl=300))
            for n in range(each):
                emitter.publish(channel, "pub", f"emitter.{n}")

    greenlets = [gevent.spawn(node_publisher, node, f"{node.port}-{i}") for node in (a, b) for i in range(4)]
    thread = threading.Thread(target=emitter_publisher)  # a native thread, as a worker pool would
    thread.start()
    total = 9 * each
    got_a, got_b = publications(on_a, total), publications(on_b, total)
    gevent.joinall(greenlets, raise_error=True)
    thread.join(WAIT)
    for got in (got_a, got_b):
        assert offsets(got) == list(range(1, total + 1))
        assert len({m["metadata"]["epoch"] for m in got}) == 1
        by_publisher: dict[str, list[int]] = {}
        for m in got:
            name, _, n = m["data"].rpartition(".")
            by_publisher.setdefault(name, []).append(int(n))
        assert len(by_publisher) == 9 and all(ns == list(range(each)) for ns in by_publisher.values())
    assert [m["data"] for m in got_a] == [m["data"] for m in got_b]


@pytest.mark.parametrize("kind", list(HISTORY_BROKERS))
def test_a_node_fills_a_gap_from_history_before_delivering_further(cluster, kind: str) -> None:
    """A publication that reached history but never the broker (a lost broker message): the next
    publication shows a gap to the nodes, and they deliver the lost one from history first."""
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    a, b = cluster(2, broker=HISTORY_BROKERS[kind], namespace=namespace, history=REDIS)
    channel = f"hist:{uuid.uuid4().hex[:8]}"
    on_a, on_b = Client(a, "ann"), Client(b, "bea")
    for client in (on_a, on_b):
        client.subscribe(channel)
    a.control("publish", channel=channel, data="first")
    history = RedisHistory(REDIS, namespace=namespace)
    try:
        stamp = Stamp()
        envelope = {
            "route": "pub",
            "data": "lost on the way",
            "metadata": {"channel": channel, "offset": stamp.offset_token, "epoch": stamp.epoch_token},
        }
        lost = history.append(channel_stream(channel), stamp.cut(json.dumps(envelope)), 2000, 300)
    finally:
        history.close()
    assert lost.offset == 2
    b.control("publish", channel=channel, data="third")
    for client in (on_a, on_b):
        got = publications(client, 3)
        assert [(int(m["metadata"]["offset"]), m["data"]) for m in got] == [
            (1, "first"),
            (2, "lost on the way"),
            (3, "third"),
        ]


class PersonalClient(Client):
    """A logged-in client of a node that keeps personal streams: ``rt.personal`` comes first."""

    def __init__(self, node: ServeProcess, identity: str, since: str = "") -> None:
        query = f"access_token={identity}" + (f"&since={since}" if since else "")
        self.identity = identity
        self.ws = websocket.create_connection(f"{node.ws_base}/?{query}", timeout=WAIT)
        self.before: list[dict[str, Any]] = []  # what came before rt.personal (the missed messages)
        while True:
            msg = self.next()
            if msg["route"] == "rt.personal":
                self.personal: dict[str, Any] = msg["data"]
                break
            self.before.append(msg)


@pytest.mark.parametrize("kind", ["redis", ON_CLUSTER])
def test_a_client_that_moves_to_another_node_gets_what_it_missed_once_in_order(
    cluster, kind: str, backend: Backend
) -> None:
    """Channel and personal stream: the client leaves node A, publications and sends go on, it
    comes back on node B with its positions and gets exactly what it missed, then live ones."""
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    a, b = cluster(
        2,
        broker=backend.broker,
        presence=backend.presence,
        namespace=namespace,
        history=backend.history,
        identity_history=500,
    )
    channel = f"hist:{uuid.uuid4().hex[:8]}"
    first = PersonalClient(a, "ann")
    assert (first.before, first.personal["recovered"]) == ([], False)
    first.subscribe(channel)
    for n in range(5):
        a.control("publish", channel=channel, data=f"before.{n}")
        a.control("send", identity="ann", route="dm", data=f"dm.{n}")
    seen = publications(first, 10)
    last_channel = next(m for m in reversed(seen) if "channel" in m["metadata"])["metadata"]
    last_personal = next(m for m in reversed(seen) if "channel" not in m["metadata"])["metadata"]
    first.close()
    wait_until(lambda: a.control("node")["sessions"] == 0, what="node A to see the session end")

    with Emitter(
        backend.broker,
        backend.presence,
        namespace=namespace,
        history_url=backend.history,
        identity_history_size=500,
        identity_history_ttl=300,
    ) as emitter:
        emitter.channel_namespace("hist:", ChannelOptions(history_size=2000, history_ttl=300))
        for n in range(20):
            emitter.publish(channel, "pub", f"away.{n}")
            emitter.send_to_identity("acme", "ann", "dm", f"dm.away.{n}")

    back = PersonalClient(b, "ann", since=f"{last_personal['offset']}:{last_personal['epoch']}")
    assert [m["data"] for m in back.before] == [f"dm.away.{n}" for n in range(20)]
    assert (back.personal["recovered"], back.personal["missed"]) == (True, 20)
    since = {"offset": int(last_channel["offset"]), "epoch": last_channel["epoch"]}
    back.ws.send(json.dumps({"id": "again", "route": "rt.subscribe", "data": {"channel": channel, "since": since}}))
    missed = [back.next() for _ in range(20)]
    assert [m["data"] for m in missed] == [f"away.{n}" for n in range(20)]
    assert offsets(missed) == list(range(6, 26))
    reply = back.next()
    assert reply["route"] == "rt.reply" and reply["data"]["recovered"] is True and reply["data"]["missed"] == 20
    a.control("publish", channel=channel, data="live")
    live = publications(back, 1)
    assert (live[0]["data"], int(live[0]["metadata"]["offset"])) == ("live", 26)
    back.close()


_OFFSET = re.compile(r'"offset":"(\d+)"')


class StormClient:
    """One of many subscribers: a greenlet that reads, and reconnects with its last position."""

    def __init__(self, index: int, channel: str, targets: Callable[[int], list[str]]) -> None:
        self.index = index
        self.channel = channel
        self.targets = targets
        self.offsets: list[int] = []
        self.epoch = ""
        self.replies: list[dict[str, Any]] = []
        self.reconnected = gevent.event.Event()
        self.subscribed = gevent.event.Event()
        self.done = False
        self.greenlet = gevent.spawn(self.run)

    def run(self) -> None:
        attempt = 0
        while not self.done:
            urls = self.targets(attempt + self.index)
            try:
                ws = websocket.create_connection(f"{urls[0]}/?access_token=u{self.index}", timeout=WAIT * 3)
            except OSError:
                attempt += 1
                gevent.sleep(0.05 * min(attempt, 10))  # a reconnect backoff, not a wait for an event
                continue
            try:
                self.session(ws)
            except (OSError, websocket.WebSocketException):
                attempt += 1
            finally:
                ws.close()

    def session(self, ws: websocket.WebSocket) -> None:
        data: dict[str, Any] = {"channel": self.channel}
        if self.replies:
            data["since"] = {
                "offset": self.offsets[-1] if self.offsets else self.replies[-1]["offset"],
                "epoch": self.epoch,
            }
        ws.send(json.dumps({"id": "s", "route": "rt.subscribe", "data": data}))
        while not self.done:
            frame = ws.recv()
            if not frame:
                raise websocket.WebSocketConnectionClosedException("closed")
            found = _OFFSET.search(frame)
            if found is not None and '"route":"pub"' in frame:
                self.offsets.append(int(found.group(1)))
                if not self.epoch:
                    self.epoch = json.loads(frame)["metadata"]["epoch"]
            elif '"rt.reply"' in frame:
                reply = json.loads(frame)["data"]
                self.replies.append(reply)
                self.epoch = self.epoch or reply["epoch"]
                (self.reconnected if len(self.replies) > 1 else self.subscribed).set()


def test_a_reconnect_storm_after_a_node_is_killed_loses_and_repeats_nothing(cluster) -> None:
    """1,000 subscribers on node A, an Emitter publishing 200/s; A is SIGKILLed and started again;
    every client reconnects (to the new A or to B) and ends with every publication once, in order."""
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    a, b = cluster(2, broker=BROKERS["redis"], namespace=namespace, history=REDIS)
    channel = f"hist:storm-{uuid.uuid4().hex[:6]}"
    nodes: dict[str, ServeProcess] = {"a": a, "b": b}

    def targets(n: int) -> list[str]:
        return [nodes["a" if n % 2 else "b"].ws_base]

    clients = [StormClient(i, channel, lambda n: [a.ws_base]) for i in range(1000)]
    for client in clients:
        assert client.subscribed.wait(WAIT * 3), f"client {client.index} not subscribed"
    for client in clients:
        client.targets = targets
    published = [0]
    stop = gevent.event.Event()

    def publish() -> None:
        with Emitter(BROKERS["redis"], REDIS, namespace=namespace, history_url=REDIS) as emitter:
            emitter.channel_namespace("hist:", ChannelOptions(history_size=2000, history_ttl=300))
            started = time.monotonic()
            while not stop.is_set() and published[0] < 600:
                emitter.publish(channel, "pub", published[0])
                published[0] += 1
                ahead = started + published[0] / 200 - time.monotonic()
                if ahead > 0:
                    stop.wait(ahead)  # paced at 200/s

    publisher = gevent.spawn(publish)
    wait_until(lambda: published[0] >= 150, what="the first publications")
    a.kill()
    killed = time.monotonic()
    nodes["a"] = cluster(1, broker=BROKERS["redis"], namespace=namespace, history=REDIS)[0]
    for client in clients:
        assert client.reconnected.wait(WAIT * 3), f"client {client.index} did not reconnect"
    recovered_in = time.monotonic() - killed
    publisher.join(WAIT * 3)
    total = published[0]
    wait_until(
        lambda: all(len(c.offsets) >= total for c in clients),
        what="every client to get every publication",
        timeout=WAIT * 6,
    )
    for client in clients:
        client.done = True
    for client in clients:
        assert client.offsets == list(range(1, total + 1)), (client.index, client.offsets[:5], len(client.offsets))
        assert client.replies[-1]["recovered"] is True, client.replies
    print(
        f"\n{len(clients)} clients, {total} publications at 200/s: all reconnected and recovered"
        f" {recovered_in:.1f} s after the kill"
    )
    gevent.killall([c.greenlet for c in clients], timeout=WAIT)


def test_a_quiet_stream_gets_a_lost_last_publication_at_the_next_renewal(cluster) -> None:
    """The stream's last publication reached history but never the broker, and nothing follows
    it: each node compares its streams with history when it renews its lease, and delivers it."""
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    a, b = cluster(2, broker=BROKERS["redis"], namespace=namespace, history=REDIS, presence_ttl=3)
    channel = f"hist:{uuid.uuid4().hex[:8]}"
    on_a, on_b = Client(a, "ann"), Client(b, "bea")
    for client in (on_a, on_b):
        client.subscribe(channel)
    a.control("publish", channel=channel, data="first")
    for client in (on_a, on_b):
        assert [m["data"] for m in publications(client, 1)] == ["first"]
    history = RedisHistory(REDIS, namespace=namespace)
    try:
        stamp = Stamp()
        meta = {"channel": channel, "offset": stamp.offset_token, "epoch": stamp.epoch_token}
        envelope = json.dumps({"route": "pub", "data": "lost, and the last", "metadata": meta})
        assert history.append(channel_stream(channel), stamp.cut(envelope), 2000, 300).offset == 2
    finally:
        history.close()
    for client in (on_a, on_b):  # a renewal every presence_ttl / 3 = 1 s
        got = publications(client, 1)
        assert [(int(m["metadata"]["offset"]), m["data"]) for m in got] == [(2, "lost, and the last")]

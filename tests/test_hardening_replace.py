"""``session_policy="replace"`` under concurrent logins: exactly one session survives, the newest.

Each round opens N WebSocket logins of one identity at the same moment and waits (on the
close frames, bounded by `WAIT`) until every session but one was closed with 4001; then the
one left must be the login presence numbered last, live on the server and answering.  Thirty
rounds per topology: one node on `MemoryPresence`, one node on `RedisPresence`, and two
``rtgevent serve`` processes sharing Redis presence and the Redis broker.

``make_node()`` is the node the two-process topology serves (``rtgevent serve
tests.test_hardening_replace:make_node()``), configured by ``RTG_REPLACE`` (JSON).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import gevent
import pytest
import websocket
from gevent.event import AsyncResult, Event
from gevent.queue import Queue

from rtgevent import (
    BearerTokenAuthenticator,
    Config,
    Emitter,
    Identity,
    LocalBroker,
    MemoryPresence,
    Message,
    Realtime,
    Session,
)
from rtgevent.broker import Broker, broker_from_url
from rtgevent.broker.redis import RedisBroker
from rtgevent.delivery import REPLACED_CODE, REPLACED_REASON
from rtgevent.presence import Presence, presence_from_url
from rtgevent.presence.redis import RedisPresence
from rtgevent.types import SessionInfo, utcnow
from tests.app import with_control
from tests.services import REDIS_URL
from tests.waiting import WAIT, wait_until

ROUNDS = 30
TENANT = "acme"


# ---------------------------------------------------------------------------- the node


def build(broker: Broker, presence: Presence) -> tuple[Realtime, Callable[[str, dict[str, str]], Any]]:
    """A replace-policy node, and the observations the tests make of it."""
    rt = Realtime(
        Config(session_policy="replace", heartbeat_interval=None),
        authenticator=BearerTokenAuthenticator(lambda token: Identity(token, tenant_id=TENANT)),
        broker=broker,
        presence=presence,
    )
    logins: dict[str, list[dict[str, Any]]] = {}

    @rt.on_connect
    def numbered(session: Session) -> None:
        # registered in presence before on_connect runs: the login number is known here
        logins.setdefault(session.identity.id, []).append({"session": session.id, "sequence": session.sequence})

    @rt.route("whoami")
    def whoami(session: Session, msg: Message) -> Any:
        return {"session": session.id, "sequence": session.sequence}

    def control(action: str, q: dict[str, str]) -> Any:
        identity = q["identity"]
        if action == "logins":
            return logins.get(identity, [])
        if action == "live":  # sessions of the identity still in this node's hub
            return [{"session": s.id, "sequence": s.sequence} for s in rt.hub.of_identity(TENANT, identity)]
        return {"error": f"unknown action {action}"}

    return rt, control


def make_node() -> Callable[..., Iterable[bytes]]:
    spec = json.loads(os.environ["RTG_REPLACE"])
    broker = broker_from_url(spec["broker"], namespace=spec["namespace"])
    presence = presence_from_url(spec["presence"], namespace=spec["namespace"])
    rt, control = build(broker, presence)
    return with_control(rt, control)


# ---------------------------------------------------------------------------- topologies


class Node(Protocol):
    ws_base: str

    def control(self, action: str, **query: Any) -> Any: ...


class InProcess:
    """A node served by pywsgi in the test process."""

    def __init__(self, broker: Broker, presence: Presence) -> None:
        from gevent.pywsgi import WSGIServer

        self.rt, self._control = build(broker, presence)
        self.server = WSGIServer(("127.0.0.1", 0), self.rt, log=None, error_log=None)
        self.server.start()
        self.ws_base = f"ws://127.0.0.1:{self.server.server_port}"

    def control(self, action: str, **query: Any) -> Any:
        return self._control(action, {k: str(v) for k, v in query.items()})

    def stop(self) -> None:
        self.rt.shutdown(timeout=5)
        self.server.stop(timeout=5)


@pytest.fixture
def in_process() -> Iterator[Callable[[Broker, Presence], InProcess]]:
    made: list[InProcess] = []

    def factory(broker: Broker, presence: Presence) -> InProcess:
        node = InProcess(broker, presence)
        made.append(node)
        return node

    yield factory
    for node in made:
        node.stop()


# ---------------------------------------------------------------------------- one round


class Login:
    """One client: connects when told to, then records what it is sent and how it was closed."""

    def __init__(self, url: str, go: Event) -> None:
        self.url = url
        self.go = go
        self.ws: websocket.WebSocket | None = None
        self.closed: AsyncResult = AsyncResult()  # the close code the server sent
        self.inbox: Queue[dict[str, Any]] = Queue()
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        self.go.wait()
        try:
            self.ws = websocket.create_connection(self.url, timeout=3 * WAIT)
            while True:
                opcode, data = self.ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:  # websocket-client answered it already
                    self.closed.set(int.from_bytes(data[:2], "big") if len(data) >= 2 else None)
                    self.ws.shutdown()  # and the TCP connection goes too, as a browser's would
                    return
                self.inbox.put(json.loads(data))
        except Exception as exc:
            if not self.closed.ready():
                self.closed.set_exception(exc)

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        self.greenlet.kill()


def one_round(nodes: list[Node], identity: str, logins: int) -> dict[str, Any]:
    """``logins`` simultaneous logins of ``identity`` spread over ``nodes``; the one left, checked."""
    go = Event()
    clients = [Login(f"{nodes[i % len(nodes)].ws_base}/?access_token={identity}", go) for i in range(logins)]
    try:
        go.set()

        def replaced() -> list[Login]:
            return [c for c in clients if c.closed.ready()]

        wait_until(
            lambda: len(replaced()) >= logins - 1,
            lambda: f"{logins - 1} of {logins} logins of {identity} to be replaced ({len(replaced())} were)",
            timeout=2 * WAIT,
        )
        closed_with = [c.closed.get() for c in replaced()]
        assert closed_with == [4001] * (logins - 1), closed_with
        [survivor] = [c for c in clients if not c.closed.ready()]

        # server side: every other session ended, the one left is the newest login
        def live_sessions() -> list[dict[str, Any]]:
            return [s for node in nodes for s in node.control("live", identity=identity)]

        wait_until(lambda: len(live_sessions()) == 1, lambda: f"one live session of {identity}: {live_sessions()}")
        numbered = [entry for node in nodes for entry in node.control("logins", identity=identity)]
        assert len(numbered) == logins, numbered
        newest = max(numbered, key=lambda entry: entry["sequence"])
        assert sorted(entry["sequence"] for entry in numbered) == list(range(1, logins + 1)), numbered
        [left] = live_sessions()
        assert left == newest, (left, numbered)

        # client side: the survivor is that session, and it still answers
        assert survivor.ws is not None
        survivor.ws.send(json.dumps({"id": "who", "route": "whoami"}))
        reply = survivor.inbox.get(timeout=WAIT)
        assert reply["route"] == "rt.reply" and reply["data"] == newest, reply
        assert not survivor.closed.ready()
        return newest
    finally:
        for client in clients:
            client.close()


def run_rounds(nodes: list[Node], logins: int, tag: str) -> None:
    for n in range(ROUNDS):
        one_round(nodes, f"{tag}-user-{n}", logins)
    print(f"[replace] {tag}: {ROUNDS} of {ROUNDS} rounds left exactly the newest of {logins} logins")


# ---------------------------------------------------------------------------- the tests


def test_concurrent_logins_on_one_node_with_memory_presence(
    in_process: Callable[[Broker, Presence], InProcess],
) -> None:
    """One node, MemoryPresence: after 3 simultaneous logins only the newest is left, 30 rounds out of 30."""
    node = in_process(LocalBroker(), MemoryPresence())
    run_rounds([node], logins=3, tag="memory")


def test_concurrent_logins_on_one_node_with_redis_presence(
    in_process: Callable[[Broker, Presence], InProcess], namespace: str
) -> None:
    """One node, RedisPresence: after 3 simultaneous logins only the newest is left, 30 rounds out of 30."""
    node = in_process(LocalBroker(), RedisPresence(REDIS_URL, namespace=namespace))
    run_rounds([node], logins=3, tag="redis-presence")


def test_concurrent_logins_on_two_nodes(namespace: str) -> None:
    """Two serve processes, Redis presence and broker: of 4 simultaneous logins only the newest is left."""
    from tests.procs import ServeProcess

    env = {"RTG_REPLACE": json.dumps({"broker": REDIS_URL, "presence": REDIS_URL, "namespace": namespace})}
    nodes = [ServeProcess("tests.test_hardening_replace:make_node()", env=env) for _ in range(2)]
    try:
        run_rounds(list(nodes), logins=4, tag="two-nodes")
    finally:
        for node in nodes:
            node.stop()


# ---------------------------------------------------------------------------- the replace kick


def test_the_replace_kick_closes_only_what_is_older_than_the_newest_login(
    in_process: Callable[[Broker, Presence], InProcess], namespace: str
) -> None:
    """A replace kick through the broker spares the newest login; once presence numbers a newer one, it goes."""
    node = in_process(RedisBroker(REDIS_URL, namespace=namespace), RedisPresence(REDIS_URL, namespace=namespace))
    first = Login(f"{node.ws_base}/?access_token=alice", Event())
    elsewhere = RedisPresence(REDIS_URL, namespace=namespace)  # another node's presence
    emitter = Emitter(broker=RedisBroker(REDIS_URL, namespace=namespace, publish_timeout=1), presence=elsewhere)
    try:
        first.go.set()
        wait_until(lambda: node.control("live", identity="alice"), "alice's login")
        [mine] = node.control("live", identity="alice")
        emitter.kick_identity(TENANT, "alice", REPLACED_CODE, REPLACED_REASON)
        assert first.ws is not None
        first.ws.send(json.dumps({"id": "who", "route": "whoami"}))  # answered after the kick was handled
        assert first.inbox.get(timeout=WAIT)["data"] == mine and not first.closed.ready()
        newer = SessionInfo("s-elsewhere", "alice", TENANT, "node-elsewhere", "203.0.113.9", utcnow())
        assert elsewhere.register(newer) == mine["sequence"] + 1
        emitter.kick_identity(TENANT, "alice", REPLACED_CODE, REPLACED_REASON)
        assert first.closed.get(timeout=WAIT) == 4001
        elsewhere.unregister(newer.session_id)
    finally:
        first.close()
        emitter.close()

"""send_to_identity tells the truth: SessionClosed when nothing took the message, else how far it went.

`Realtime.send_to_identity` and `Emitter.send_to_identity` return the same `Reach`: local
sessions that took the message, other nodes it was published to, and as a number their sum
(an Emitter's is its node count, the number it always returned).  Real sockets throughout;
the Emitter test uses the machine's Redis as broker and presence.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import websocket

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
    SessionClosed,
)
from rtgevent.broker.redis import RedisBroker
from rtgevent.presence.redis import RedisPresence
from tests.conftest import Server
from tests.services import REDIS_URL
from tests.waiting import WAIT


def make_rt(**kwargs: Any) -> Realtime:
    auth = BearerTokenAuthenticator(lambda token: Identity(token, tenant_id="acme"))
    rt = Realtime(Config(), authenticator=auth, **kwargs)

    @rt.route("hello")
    def hello(session: Session, msg: Message) -> Any:
        return session.identity.id

    return rt


def login(server: Server, user: str) -> websocket.WebSocket:
    ws = websocket.create_connection(f"ws://{server.host}:{server.port}/?access_token={user}", timeout=WAIT)
    ws.send(json.dumps({"id": 1, "route": "hello"}))
    assert json.loads(ws.recv())["route"] == "rt.reply"  # registered and serving
    return ws


def test_an_identity_whose_only_session_is_closing_raises(serve_realtime: Callable[[Any], Server]) -> None:
    """Nothing took the message (the one session is closing): SessionClosed, not a silent success."""
    rt = make_rt()
    outcome: list[Any] = []

    @rt.route("leave_and_write")
    def leave_and_write(session: Session, msg: Message) -> Any:
        session.close(4000, "bye")  # closing, still in the hub until its reader returns
        try:
            outcome.append(rt.send_to_identity("acme", session.identity.id, "note", "to nobody"))
        except SessionClosed as exc:
            outcome.append(exc)
        return None

    server = serve_realtime(rt)
    ws = login(server, "alice")
    ws.send(json.dumps({"route": "leave_and_write"}))
    opcode, data = ws.recv_data()
    assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(data[:2], "big") == 4000
    [result] = outcome
    assert isinstance(result, SessionClosed), result


def test_realtime_send_returns_its_reach(serve_realtime: Callable[[Any], Server]) -> None:
    """Two local sessions and one on another node: Reach(found=2, sessions=2, nodes=1), worth 3."""
    broker, presence = LocalBroker(), MemoryPresence()
    node_a, node_b = make_rt(broker=broker, presence=presence), make_rt(broker=broker, presence=presence)
    for rt in (node_a, node_b):
        rt.start()
    server_a, server_b = serve_realtime(node_a), serve_realtime(node_b)
    clients = [login(server_a, "alice"), login(server_a, "alice"), login(server_b, "alice")]
    reach = node_a.send_to_identity("acme", "alice", "dm", "hi")
    assert (reach.found, reach.sessions, reach.nodes) == (2, 2, 1)
    assert reach == 3 and int(reach) == 3 and str(reach) == "3"
    for ws in clients:
        assert json.loads(ws.recv()) == {"route": "dm", "data": "hi"}
    only_remote = node_b.send_to_identity("acme", "alice", "dm", "from b")
    assert (only_remote.sessions, only_remote.nodes) == (1, 1)
    for ws in clients:
        assert json.loads(ws.recv()) == {"route": "dm", "data": "from b"}
    with pytest.raises(SessionClosed):
        node_a.send_to_identity("acme", "carol", "dm", "nobody")
    for ws in clients:
        ws.close()


def test_emitter_and_realtime_return_the_same_reach(serve_realtime: Callable[[Any], Server], namespace: str) -> None:
    """Emitter.send_to_identity returns a Reach too: sessions 0, nodes 1, equal to 1 as it always was."""
    rt = make_rt(
        broker=RedisBroker(REDIS_URL, namespace=namespace),
        presence=RedisPresence(REDIS_URL, namespace=namespace),
    )
    server = serve_realtime(rt)
    ws = login(server, "alice")
    with Emitter(REDIS_URL, REDIS_URL, namespace=namespace) as emitter:
        reach = emitter.send_to_identity("acme", "alice", "invoice", {"id": 7})
        assert json.loads(ws.recv()) == {"route": "invoice", "data": {"id": 7}}
        assert (reach.found, reach.sessions, reach.nodes) == (0, 0, 1)
        assert reach == 1
        local = rt.send_to_identity("acme", "alice", "invoice", {"id": 8})
        assert json.loads(ws.recv()) == {"route": "invoice", "data": {"id": 8}}
        assert type(local) is type(reach) and (local.sessions, local.nodes) == (1, 0)
        with pytest.raises(SessionClosed):
            emitter.send_to_identity("acme", "nobody", "invoice", {})
    ws.close()

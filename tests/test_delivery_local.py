"""Local delivery: broadcast, send_to_identity, presence queries, nodes sharing an in-process broker."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
import websocket
from websockets.sync.client import connect as ws_connect

from rtgevent import (
    BearerTokenAuthenticator,
    Config,
    Identity,
    LocalBroker,
    MemoryPresence,
    Realtime,
    RealtimeClosed,
    SessionClosed,
)
from tests.conftest import Server
from tests.waiting import WAIT


def make_rt(**kwargs: Any) -> Realtime:
    auth = BearerTokenAuthenticator(lambda token: Identity(token, tenant_id="acme"))
    return Realtime(Config(**kwargs.pop("config", {})), authenticator=auth, **kwargs)


def login(server: Server, user: str) -> websocket.WebSocket:
    ws = websocket.create_connection(f"{server.ws_url.removesuffix('/ws')}/?access_token={user}", timeout=WAIT)
    ws.send(json.dumps({"id": 1, "route": "hello"}))
    assert json.loads(ws.recv())["route"] == "rt.reply"  # registered and serving
    return ws


def hello(rt: Realtime) -> None:
    @rt.route("hello")
    def _hello(session: Any, msg: Any) -> str:
        return session.identity.id


def test_send_to_identity_reaches_exactly_that_identity(serve_realtime: Callable[[Any], Server]) -> None:
    """send_to_identity reaches every session of the identity and nobody else."""
    rt = make_rt()
    hello(rt)
    server = serve_realtime(rt)
    a1, a2, b = login(server, "alice"), login(server, "alice"), login(server, "bob")
    assert rt.is_online("acme", "alice") and not rt.is_online("acme", "carol")
    assert len(rt.get_identity_sessions("acme", "alice")) == 2
    rt.send_to_identity("acme", "alice", "note", {"n": 1})
    for ws in (a1, a2):
        assert json.loads(ws.recv()) == {"route": "note", "data": {"n": 1}}
    rt.broadcast("all", "x")
    for ws in (a1, a2, b):  # bob's first message is the broadcast: he never got the note
        assert json.loads(ws.recv()) == {"route": "all", "data": "x"}
    with pytest.raises(SessionClosed):
        rt.send_to_identity("acme", "carol", "note", {})
    with pytest.raises(SessionClosed):
        rt.send_to_identity("other-tenant", "alice", "note", {})
    for ws in (a1, a2, b):
        ws.close()


def test_sessions_write_without_waiting_for_the_clients_ack(serve_realtime: Callable[[Any], Server]) -> None:
    """TCP_NODELAY on every session: a small frame never waits for the client's delayed ACK (~40 ms)."""
    rt = make_rt()
    hello(rt)
    server = serve_realtime(rt)
    ws = login(server, "alice")
    try:
        [session] = rt.get_identity_sessions("acme", "alice")
        conn = rt.hub.get(session.session_id)._conn  # the socket is not public
        assert conn is not None and conn._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        ws.close()


def test_broadcast_reaches_every_session_once_even_with_compression(serve_realtime: Callable[[Any], Server]) -> None:
    """A broadcast reaches plain and permessage-deflate sessions alike, exactly once."""
    rt = make_rt(config={"compression": True})
    hello(rt)
    server = serve_realtime(rt)
    plain = login(server, "p")
    with ws_connect(f"ws://{server.host}:{server.port}/?access_token=d") as deflate:
        assert deflate.protocol.extensions  # negotiated
        deflate.send(json.dumps({"id": 1, "route": "hello"}))
        assert json.loads(deflate.recv(timeout=WAIT))["data"] == "d"
        rt.broadcast("big", "z" * 100_000)
        assert json.loads(deflate.recv(timeout=WAIT)) == {"route": "big", "data": "z" * 100_000}
        assert json.loads(plain.recv()) == {"route": "big", "data": "z" * 100_000}
        rt.broadcast("end")
        assert json.loads(deflate.recv(timeout=WAIT)) == {"route": "end"}
        assert json.loads(plain.recv()) == {"route": "end"}
    plain.close()


def test_nodes_sharing_a_broker_deliver_across(serve_realtime: Callable[[Any], Server]) -> None:
    """Two started nodes sharing a broker and presence: broadcast once each, identity sends cross over."""
    broker, presence = LocalBroker(), MemoryPresence()
    node_a, node_b = make_rt(broker=broker, presence=presence), make_rt(broker=broker, presence=presence)
    for rt in (node_a, node_b):
        hello(rt)
        rt.start()
    server_a, server_b = serve_realtime(node_a), serve_realtime(node_b)
    alice_on_b = login(server_b, "alice")
    bob_on_a = login(server_a, "bob")
    node_a.send_to_identity("acme", "alice", "dm", "from a")
    assert json.loads(alice_on_b.recv()) == {"route": "dm", "data": "from a"}
    node_a.broadcast("news", 1)
    node_b.broadcast("news", 2)
    got_b = [json.loads(alice_on_b.recv())["data"] for _ in range(2)]
    got_a = [json.loads(bob_on_a.recv())["data"] for _ in range(2)]
    assert sorted(got_a) == sorted(got_b) == [1, 2]
    # nothing more was delivered: the next message is the marker
    node_a.broadcast("marker")
    assert json.loads(alice_on_b.recv())["route"] == "marker"
    assert json.loads(bob_on_a.recv())["route"] == "marker"
    alice_on_b.close()
    bob_on_a.close()


def test_after_shutdown_operations_raise_realtime_closed(serve_realtime: Callable[[Any], Server]) -> None:
    """shutdown() is idempotent; afterwards delivery raises RealtimeClosed."""
    rt = make_rt()
    serve_realtime(rt)
    rt.shutdown()
    rt.shutdown()
    for call in (
        lambda: rt.broadcast("x"),
        lambda: rt.send_to_identity("acme", "a", "x"),
        lambda: rt.is_online("acme", "a"),
        lambda: rt.get_identity_sessions("acme", "a"),
    ):
        with pytest.raises(RealtimeClosed):
            call()

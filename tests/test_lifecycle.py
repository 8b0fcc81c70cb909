"""Session lifecycle end to end: backpressure, refusals, shutdown, leaks, in every server setup."""

from __future__ import annotations

import gc
import os
import socket

import gevent
import pytest
import websocket
from greenlet import greenlet

from tests import rawws
from tests.conftest import Server
from tests.waiting import WAIT, wait_until


def slow_client(server: Server) -> tuple[rawws.RawClient, str]:
    """A client with a tiny receive buffer that will never read; returns it and its session id."""
    client = rawws.RawClient.__new__(rawws.RawClient)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(WAIT)
    sock.connect((server.host, server.port))
    client.sock, client.host, client.port, client.path = sock, server.host, server.port, "/ws"
    client.buf, client.status, client.headers = b"", None, {}
    before = set(server.control("sessions"))
    assert client.handshake() == 101
    [session_id] = server.wait_for(lambda: set(server.control("sessions")) - before, what="the session")
    return client, session_id


def test_slow_consumer_closed_1008_while_others_get_everything(serve) -> None:
    """Under CLOSE a client that never reads is closed with 1008; a reading client misses nothing."""
    server = serve(send_queue_size=16, write_timeout=60)
    normal = websocket.create_connection(server.ws_url, timeout=WAIT)
    normal.send("hi")
    assert normal.recv() == "hi"
    slow, slow_id = slow_client(server)
    received = 0
    for _round in range(400):
        server.control("broadcast", size=65536, count=8)
        for _ in range(8):
            assert normal.recv() == str(received % 8 % 10) * 65536
            received += 1
        if server.control("stats")["backpressure_closes"]:
            break
    # the close frame waits (write_timeout) for the slow client to read; it goes away instead
    slow.close()
    info = server.wait_for(
        lambda: [d for d in server.control("disconnects") if d["session"] == slow_id], what="the slow session's end"
    )[0]
    assert (info["code"], info["reason"], info["initiator"]) == (1008, "send queue full", "backpressure")
    assert server.control("stats")["backpressure_closes"] == 1
    # the reading client is still served
    normal.send("still here")
    assert normal.recv() == "still here"
    normal.close()


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_drop_policies_hold_the_queue_at_its_bound(serve, policy: str) -> None:
    """DROP_NEWEST raises and DROP_OLDEST evicts: the queue stays at its bound, stats count drops."""
    server = serve(send_queue_size=8, backpressure=policy, write_timeout=60)
    slow, slow_id = slow_client(server)
    result = {"sent": 0, "errors": []}
    for _ in range(400):
        # Early rounds fill the kernel's buffers; once they are full the writer stalls.
        result = server.control("send", session=slow_id, count=50, size=65536)
        if server.control("queued")[slow_id] == 8:
            break
    result = server.control("send", session=slow_id, count=50, size=65536)
    assert server.control("queued")[slow_id] == 8
    stats = server.control("stats")
    assert stats["queue_drops"] > 0
    assert stats["backpressure_closes"] == 0
    if policy == "drop_newest":
        assert "BackpressureError" in result["errors"]
    else:
        assert result["errors"] == []
    assert server.control("disconnects") == []  # nobody was closed
    slow.close()


def test_drop_oldest_delivers_the_newest(serve_local) -> None:
    """After a flood under DROP_OLDEST that dropped messages, the client that finally reads gets the newest last."""
    server = serve_local(send_queue_size=4, backpressure="drop_oldest", write_timeout=60)
    slow, slow_id = slow_client(server)
    sent = 0

    def flood() -> bool:
        nonlocal sent
        result = server.control("send", session=slow_id, count=100, size=65536)
        assert result["errors"] == []  # DROP_OLDEST never refuses a send
        sent += result["sent"]
        return server.control("stats")["queue_drops"] > 0

    wait_until(flood, "the full queue to drop a message", interval=0)
    session = next(s for s in server.app.rt.sessions() if s.id == slow_id)
    session.send("x", "last")
    drops = server.control("stats")["queue_drops"]
    before: list[bytes] = []

    def last_arrived() -> bool:
        payload = slow.recv_data().payload  # the socket's own timeout bounds each read too
        if payload == b"last":
            return True
        before.append(payload)
        return False

    wait_until(last_arrived, lambda: f"the newest message ({len(before)} older ones read so far)", interval=0)
    assert all(payload == b"y" * 65536 for payload in before)
    # each older message was written or dropped, never both: the drops are what is missing
    assert len(before) == sent - drops
    slow.close()


def test_disallowed_origin_refused(serve) -> None:
    """A foreign Origin is refused before upgrade (403), or with 1008 where the 101 came first."""
    server = serve(origin_patterns=["*.example.com"])
    for origin, allowed in [
        ("https://evil.test", False),
        ("https://app.example.com", True),
        (f"http://{server.host}:{server.port}", True),  # same origin
        (None, True),  # not a browser
    ]:
        client = rawws.RawClient(server.host, server.port)
        status = client.handshake(headers={"Origin": origin} if origin else None)
        if allowed:
            assert status == 101, origin
        elif server.kind == "geventwebsocket":
            assert status == 101  # gevent-websocket answers before the application runs
            assert client.expect_close().close_code == 1008
        else:
            assert status == 403
            assert b"origin" in client.read_body()
        client.close()


def test_over_max_connections_refused(serve) -> None:
    """The connection over max_connections gets 503 (1013 under gevent-websocket); a free slot is reused."""
    server = serve(max_connections=2)
    first = websocket.create_connection(server.ws_url, timeout=WAIT)
    second = websocket.create_connection(server.ws_url, timeout=WAIT)
    extra = rawws.RawClient(server.host, server.port)
    status = extra.handshake()
    if server.kind == "geventwebsocket":
        assert status == 101
        assert extra.expect_close().close_code == 1013
    else:
        assert status == 503
    extra.close()
    first.close()
    server.disconnects(1)
    again = websocket.create_connection(server.ws_url, timeout=WAIT)
    again.send("ok")
    assert again.recv() == "ok"
    again.close()
    second.close()


def test_shutdown_sends_1001_and_runs_every_hook_first(serve) -> None:
    """shutdown(): every client gets 1001 and on_disconnect ran for each before it returned."""
    server = serve()
    clients = [rawws.RawClient(server.host, server.port) for _ in range(5)]
    for c in clients:
        assert c.handshake() == 101
    server.wait_for(lambda: len(server.control("sessions")) == 5, what="5 sessions")
    answer = gevent.spawn(server.control, "shutdown")
    for c in clients:
        close = c.expect_close()
        assert close.close_code == 1001
        c.send(rawws.frame(rawws.CLOSE, close.payload))
        assert c.at_eof()
    assert answer.get(timeout=WAIT) == {"disconnects": 5}
    assert {d["initiator"] for d in server.control("disconnects")} == {"shutdown"}
    # afterwards new upgrades are refused
    late = rawws.RawClient(server.host, server.port)
    status = late.handshake()
    if server.kind == "geventwebsocket":
        assert late.expect_close().close_code == 1013
    else:
        assert status == 503
    late.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _greenlets() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet) and not o.dead)


def test_thousand_connect_disconnect_cycles_leave_nothing(serve_local) -> None:
    """1,000 connect/disconnect cycles leave no greenlet, socket or hub entry behind."""
    server = serve_local(heartbeat_interval=5)
    rt = server.app.rt
    warm = websocket.create_connection(server.ws_url, timeout=WAIT)
    warm.close()
    server.wait_for(lambda: rt.stats()["connections"] == 0, what="warm-up session to end")
    fds, greenlets = _open_fds(), _greenlets()
    for i in range(1000):
        ws = websocket.create_connection(server.ws_url, timeout=WAIT)
        if i % 2:
            ws.send("x")
            assert ws.recv() == "x"
        ws.close()
    server.wait_for(lambda: rt.stats()["connections"] == 0, what="every session to end")
    server.wait_for(lambda: _open_fds() <= fds and _greenlets() <= greenlets, what="fds and greenlets to be freed")
    assert rt.sessions() == []
    assert rt.hub.identities() == []
    assert rt.stats()["connections_total"] == 1001


def test_write_timeout_drops_a_stalled_client(serve_local) -> None:
    """A write that cannot finish within write_timeout drops the connection, reported as an error."""
    server = serve_local(send_queue_size=10000, write_timeout=0.5)
    slow, slow_id = slow_client(server)
    for _ in range(400):
        server.control("send", session=slow_id, count=20, size=65536)
        if server.control("disconnects"):
            break
    [info] = server.disconnects()
    assert (info["session"], info["initiator"], info["reason"], info["expected"]) == (
        slow_id,
        "error",
        "write timeout",
        False,
    )
    slow.close()

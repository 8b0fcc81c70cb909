"""End-to-end behaviour of the engine, in every server setup (gevent-websocket, pywsgi, gunicorn)."""

from __future__ import annotations

import os

import pytest
import websocket

from tests import rawws
from tests.conftest import Server
from tests.waiting import WAIT

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 1 << 20]


def connect(server: Server, **kwargs: object) -> websocket.WebSocket:
    return websocket.create_connection(server.ws_url, timeout=WAIT, **kwargs)


@pytest.mark.parametrize("size", SIZES)
def test_text_and_binary_echo_intact(serve, size: int) -> None:
    """Text and binary messages of 0 B to 1 MiB come back byte for byte."""
    server = serve(read_limit=2 << 20)
    ws = connect(server)
    text = "é" * (size // 2) + "x" * (size % 2)
    ws.send(text)
    assert ws.recv() == text
    blob = os.urandom(size)
    ws.send_binary(blob)
    opcode, data = ws.recv_data()
    assert opcode == websocket.ABNF.OPCODE_BINARY
    assert data == blob
    ws.close()


def test_frame_pipelined_with_upgrade_is_not_lost(serve) -> None:
    """A frame sent in the same write as the upgrade request is echoed."""
    server = serve()
    client = rawws.RawClient(server.host, server.port)
    assert client.handshake(extra=rawws.frame(rawws.TEXT, b"early bird")) == 101
    got = client.recv_data()
    assert (got.opcode, got.payload) == (rawws.TEXT, b"early bird")
    client.close()


def test_fragmented_message_with_ping_in_the_middle(serve) -> None:
    """Fragments with a ping between them arrive as one message; the ping gets its pong."""
    server = serve()
    client = rawws.RawClient(server.host, server.port)
    assert client.handshake() == 101
    client.send(
        rawws.frame(rawws.TEXT, b"hello ", fin=False)
        + rawws.frame(rawws.PING, b"are you there")
        + rawws.frame(rawws.CONT, b"fragmented ", fin=False)
        + rawws.frame(rawws.CONT, b"world")
    )
    first = client.recv_frame()
    assert (first.opcode, first.payload) == (rawws.PONG, b"are you there")
    got = client.recv_data()
    assert (got.opcode, got.payload) == (rawws.TEXT, b"hello fragmented world")
    client.close()


def test_client_close_code_and_reason_reach_on_disconnect(serve) -> None:
    """The client's close code and reason are echoed and reported with initiator client."""
    server = serve()
    client = rawws.RawClient(server.host, server.port)
    assert client.handshake() == 101
    client.send(rawws.frame(rawws.CLOSE, rawws.close_payload(4321, "see you")))
    echo = client.expect_close()
    assert (echo.close_code, echo.close_reason) == (4321, "see you")
    assert client.at_eof()
    [info] = server.disconnects()
    assert info["code"] == 4321 and info["reason"] == "see you"
    assert info["initiator"] == "client"


def test_server_close_code_and_reason_reach_the_client(serve) -> None:
    """session.close(code, reason) reaches the client and on_disconnect, initiator server."""
    server = serve(codec="raw")
    client = rawws.RawClient(server.host, server.port)
    assert client.handshake() == 101
    client.send(rawws.frame(rawws.TEXT, b"cmd:close 4000 done here"))
    got = client.expect_close()
    assert (got.close_code, got.close_reason) == (4000, "done here")
    client.send(rawws.frame(rawws.CLOSE, got.payload))
    assert client.at_eof()
    [info] = server.disconnects()
    assert (info["code"], info["reason"], info["initiator"], info["expected"]) == (4000, "done here", "server", True)


def test_read_limit_plus_one_closes_1009(serve) -> None:
    """A message one byte over read_limit is refused with 1009, reported as an error."""
    server = serve(read_limit=1000)
    client = rawws.RawClient(server.host, server.port)
    assert client.handshake() == 101
    client.send(rawws.frame(rawws.TEXT, b"a" * 1000))
    assert client.recv_data().payload == b"a" * 1000
    client.send(rawws.frame(rawws.BINARY, b"b" * 1001))
    assert client.expect_close().close_code == 1009
    assert client.at_eof()
    [info] = server.disconnects()
    assert (info["code"], info["initiator"]) == (1009, "error")


def test_read_limit_is_checked_at_the_frame_header(serve) -> None:
    """A header declaring 2**62 bytes is refused at once, before any payload arrives."""
    server = serve(read_limit=1 << 20)
    client = rawws.RawClient(server.host, server.port)
    assert client.handshake() == 101
    header = bytes([0x82, 0x80 | 127]) + (1 << 62).to_bytes(8, "big") + os.urandom(4)
    client.send(header)
    assert client.expect_close().close_code == 1009


def test_unanswered_pings_close_1011(serve) -> None:
    """A client that never answers pings is closed with 1011 within interval + pong_timeout."""
    server = serve(heartbeat_interval=0.3, pong_timeout=0.3)
    client = rawws.RawClient(server.host, server.port)
    assert client.handshake() == 101
    frames = []
    while True:
        f = client.recv_frame()
        frames.append(f.opcode)
        if f.opcode == rawws.CLOSE:
            break
    assert rawws.PING in frames
    assert f.close_code == 1011
    assert client.at_eof()
    [info] = server.disconnects()
    assert (info["code"], info["initiator"]) == (1011, "heartbeat")


def test_answered_pings_keep_the_session(serve) -> None:
    """websocket-client answers pings: the session outlives several heartbeat periods."""
    server = serve(heartbeat_interval=0.2, pong_timeout=0.5)
    ws = connect(server)
    for i in range(5):
        ws.send(f"still here {i}")
        assert ws.recv() == f"still here {i}"
        import gevent

        gevent.sleep(0.2)
    assert server.control("disconnects") == []
    ws.close()


def test_broadcast_1mib_while_client_pings_never_interleaves(serve) -> None:
    """1 MiB broadcasts while the client pings: every message intact, every pong whole."""
    server = serve(send_queue_size=64)
    client = rawws.RawClient(server.host, server.port)
    assert client.handshake() == 101
    # make sure the session is registered before broadcasting
    client.send(rawws.frame(rawws.TEXT, b"ready"))
    assert client.recv_data().payload == b"ready"
    import gevent

    count = 12
    pinger_done = gevent.event.Event()

    def pinger() -> None:
        for i in range(40):
            client.send(rawws.frame(rawws.PING, f"p{i}".encode()))
            gevent.sleep(0.005)
        pinger_done.set()

    g = gevent.spawn(pinger)
    server_g = gevent.spawn(server.control, "broadcast", size=1 << 20, count=count)
    got, pongs = [], []
    while len(got) < count:
        f = client.recv_frame()
        if f.opcode == rawws.PONG:
            pongs.append(f.payload)
        else:
            assert f.opcode == rawws.TEXT
            got.append(f.payload)
    server_g.get(timeout=WAIT)
    g.join(timeout=WAIT)
    for i, payload in enumerate(got):
        assert payload == str(i % 10).encode() * (1 << 20)
    assert all(p.startswith(b"p") for p in pongs)
    client.close()

"""Writes coalesced within one pass of the hub (``Config.write_delay``): frames a burst queues
for one socket go out together when the hub turns; a lone frame on an idle socket leaves at once.
With ``write_delay=0`` every frame leaves at once (the last test)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import gevent

from rtgevent import Realtime
from tests import rawws
from tests.conftest import Server
from tests.waiting import WAIT


def _ready(server: Server) -> rawws.RawClient:
    client = rawws.RawClient(server.host, server.port)
    assert client.handshake() == 101
    client.send(rawws.frame(rawws.TEXT, b"ready"))
    assert client.recv_data().payload == b"ready"  # registered; its reply went out
    return client


def _arrived(client: rawws.RawClient) -> bytes:
    """What the kernel holds for the client right now, read without letting the hub run."""
    client.sock.settimeout(0.0)
    data = b""
    try:
        while chunk := client.sock.recv(65536):
            data += chunk
    except BlockingIOError:
        pass
    finally:
        client.sock.settimeout(WAIT)
    client.buf += data
    return data


def _text(payload: bytes) -> bytes:
    """A short unmasked text frame, as the server writes it."""
    return bytes([0x81, len(payload)]) + payload


def _in_one_pass(call: Callable[[], None]) -> None:
    """Run ``call`` in a greenlet of its own and wait for it (the hub turns after it)."""
    gevent.spawn(call).get(timeout=WAIT)


def test_lone_frame_leaves_at_once_followers_at_the_turn(serve_local) -> None:
    """The first frame of a pass is in the client's kernel at once; the next wait for the turn."""
    server = serve_local(write_delay=0.005)
    rt: Realtime = server.app.rt
    client = _ready(server)
    seen: list[bytes] = []

    def burst() -> None:
        rt.broadcast("bench", "a")
        seen.append(_arrived(client))
        rt.broadcast("bench", "b")
        rt.broadcast("bench", "c")
        seen.append(_arrived(client))

    _in_one_pass(burst)
    assert seen == [_text(b"a"), b""]
    assert [client.recv_data().payload for _ in range(3)] == [b"a", b"b", b"c"]
    client.close()


def test_burst_arrives_whole_and_in_order(serve_local) -> None:
    """Broadcasts back to back (yielding now and then) reach the client in order, each counted."""
    server = serve_local(write_delay=0.005)
    rt: Realtime = server.app.rt
    client = _ready(server)
    before = rt.stats()["messages_out"]
    count = 500

    def burst() -> None:
        for i in range(count):
            rt.broadcast("bench", f"{i}:" + "x" * (i % 300))
            if i % 7 == 6:
                gevent.sleep(0)

    _in_one_pass(burst)
    got = [client.recv_data().payload for _ in range(count)]
    assert got == [f"{i}:{'x' * (i % 300)}".encode() for i in range(count)]
    server.wait_for(lambda: rt.stats()["messages_out"] - before == count, what="messages_out counted")
    client.close()


def test_size_bound_writes_a_cork_at_once(serve_local) -> None:
    """Corked frames that add up to the size bound leave without waiting for the turn."""
    server = serve_local(write_delay=0.005)
    rt: Realtime = server.app.rt
    client = _ready(server)
    arrived: list[bytes] = []

    def burst() -> None:
        rt.broadcast("bench", "first")
        for _ in range(40):
            rt.broadcast("bench", "y" * 1000)  # 40 KB: past the 32 KiB bound
        arrived.append(_arrived(client))

    _in_one_pass(burst)
    assert len(arrived[0]) > 32 * 1024
    got = [client.recv_data().payload for _ in range(41)]
    assert got == [b"first"] + [b"y" * 1000] * 40
    client.close()


def test_corked_frames_precede_the_close_frame(serve_local) -> None:
    """A close requested in the same pass as a burst comes after every frame of the burst."""
    server = serve_local(write_delay=0.005)
    rt: Realtime = server.app.rt
    client = _ready(server)

    def burst_then_close() -> None:
        for i in range(20):
            rt.broadcast("bench", str(i))
        for session in rt.sessions():
            session.close(4000, "done")

    _in_one_pass(burst_then_close)
    got = [client.recv_data() for _ in range(21)]
    assert [f.payload for f in got[:20]] == [str(i).encode() for i in range(20)]
    assert got[20].opcode == rawws.CLOSE and got[20].close_code == 4000
    client.close()


def test_corked_frames_precede_a_ping(serve_local) -> None:
    """A heartbeat ping due while frames are corked is written after them, never between."""
    server = serve_local(heartbeat_interval=0.05, pong_timeout=5.0)
    rt: Realtime = server.app.rt
    client = _ready(server)
    pinged = threading.Event()

    def bursts() -> int:
        """Bursts until a ping came (bounded), then an end marker; how many were sent."""
        for i in range(200_000):
            rt.broadcast("bench", str(i))
            if i % 50 == 49:
                if pinged.is_set():
                    rt.broadcast("bench", "end")
                    return i + 1
                gevent.sleep(0.001)  # let the heartbeat's deadline come between bursts
        raise AssertionError("no ping within 200,000 broadcasts")

    g = gevent.spawn(bursts)
    got: list[bytes] = []
    while True:
        f = client.recv_frame()
        if f.opcode == rawws.PING:
            pinged.set()
            client.send(rawws.frame(rawws.PONG, f.payload))
        elif f.payload == b"end":
            break
        else:
            got.append(f.payload)
    sent = g.get(timeout=WAIT)
    assert got == [str(i).encode() for i in range(sent)]
    assert server.control("disconnects") == []
    client.close()


def test_client_gone_mid_cork_ends_cleanly(serve_local) -> None:
    """A client that vanishes while frames are corked ends its session; the others keep theirs."""
    server = serve_local(write_delay=0.005)
    rt: Realtime = server.app.rt
    gone, stays = _ready(server), _ready(server)
    gone.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def burst() -> None:
        rt.broadcast("bench", "one")
        rt.broadcast("bench", "two")
        gone.close()  # RST: the corked write will fail
        rt.broadcast("bench", "three")

    _in_one_pass(burst)
    assert [stays.recv_data().payload for _ in range(3)] == [b"one", b"two", b"three"]
    server.disconnects(1)
    assert len(rt.sessions()) == 1
    stays.close()


def test_corked_frames_leave_when_the_hub_is_slow_to_turn(serve_local) -> None:
    """A pass that outlasts the cork's time bound writes the corked frames without the turn."""
    server = serve_local(write_delay=0.005)
    rt: Realtime = server.app.rt
    client = _ready(server)
    seen: list[bytes] = []

    def burst() -> None:
        rt.broadcast("bench", "a")
        rt.broadcast("bench", "b")
        deadline = time.monotonic() + 0.02  # the hub cannot turn: this greenlet does not yield
        while time.monotonic() < deadline:
            pass
        rt.broadcast("bench", "c")
        seen.append(_arrived(client))

    _in_one_pass(burst)
    assert seen == [_text(b"a") + _text(b"b") + _text(b"c")]
    client.close()


def test_corked_frames_leave_when_every_greenlet_then_waits(serve_local) -> None:
    """The hub does not sleep in its poll while frames are corked: they leave at the next turn."""
    server = serve_local(heartbeat_interval=None)
    rt: Realtime = server.app.rt
    client = _ready(server)

    def burst() -> None:
        rt.broadcast("bench", "a")
        rt.broadcast("bench", "b")

    started = time.monotonic()
    _in_one_pass(burst)
    client.sock.settimeout(1.0)  # no timer is due: a hub blocked in its poll would not wake in time
    assert [client.recv_data().payload for _ in range(2)] == [b"a", b"b"]
    assert time.monotonic() - started < 0.5
    client.close()


def test_without_write_delay_every_frame_leaves_at_once(serve_local) -> None:
    """``write_delay=0``: nothing is corked, each frame is in the client's kernel as it is sent."""
    server = serve_local(write_delay=0)
    rt: Realtime = server.app.rt
    client = _ready(server)
    seen: list[bytes] = []

    def burst() -> None:
        for text in ("a", "b", "c"):
            rt.broadcast("bench", text)
            seen.append(_arrived(client))

    _in_one_pass(burst)
    assert seen == [_text(b"a"), _text(b"b"), _text(b"c")]
    client.close()

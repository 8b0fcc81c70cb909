"""permessage-deflate over real sockets (RFC 7692): what was negotiated is what is used.

A server with ``Config(compression=...)`` on pywsgi, and websockets' client, which offers
permessage-deflate with ``client_max_window_bits`` and sizes its own decompressor by the
``server_max_window_bits`` the 101 names.  Messages whose repeats lie further back than 4 KiB
show that each side kept to its window: with a larger one, the other side could not decode.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from typing import Any

from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.sync.client import connect as ws_connect

from rtgevent import Config, Message, Realtime, Session
from rtgevent.config import Deflate
from tests import rawws
from tests.conftest import Server
from tests.waiting import WAIT

#: 3 KiB of random text, twice: the second copy is a match 6 KiB back, beyond a 12-bit window
FAR_REPEAT = os.urandom(1536).hex() * 2


class FrameCodec:
    """Every frame is a message and a message's data is its frame: the test sees the wire text."""

    def decode(self, frame: str | bytes) -> Message:
        return Message("echo", frame)

    def encode(self, message: Message) -> str | bytes:
        data: str | bytes = message.data
        return data


def echo_server(serve_realtime: Callable[[Any], Server], compression: Any) -> Server:
    rt = Realtime(Config(compression=compression), codec=FrameCodec())

    @rt.on_message
    def echo(session: Session, msg: Message) -> None:
        if isinstance(msg.data, str) and msg.data.startswith("all:"):
            rt.broadcast("all", msg.data[4:])  # the codec sends the data as it is
        else:
            session.send_message(msg)

    return serve_realtime(rt)


def _inflate(payload: bytes, window_bits: int) -> bytes:
    """A compressed message's bytes, decompressed on their own (no earlier context)."""
    return zlib.decompressobj(wbits=-window_bits).decompress(payload + b"\x00\x00\xff\xff")


def _raw_deflate_client(server: Server) -> rawws.RawClient:
    client = rawws.RawClient(server.host, server.port)
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    assert client.handshake(headers=offer) == 101
    assert "server_no_context_takeover" in client.headers["sec-websocket-extensions"]
    client.send(rawws.frame(rawws.TEXT, b"ready"))  # uncompressed (RSV1 clear) is allowed too
    answer = client.recv_data()
    assert answer.rsv == 4 and _inflate(answer.payload, 12) == b"ready"
    return client


def test_messages_go_both_ways_compressed_within_12_bit_windows(serve_realtime: Callable[[Any], Server]) -> None:
    """compression=True: the 101 limits both windows to 12 bits, and messages round-trip within them."""
    server = echo_server(serve_realtime, True)
    with ws_connect(f"ws://{server.host}:{server.port}/ws", open_timeout=WAIT) as ws:
        header = ws.response.headers["Sec-WebSocket-Extensions"]
        assert (
            header
            == "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=12"
        )
        [deflate] = ws.protocol.extensions
        assert isinstance(deflate, PerMessageDeflate)
        assert (deflate.remote_max_window_bits, deflate.local_max_window_bits) == (12, 12)
        for text in ("hello", FAR_REPEAT, FAR_REPEAT[::-1]):
            ws.send(text)
            assert ws.recv(timeout=WAIT) == text


def test_a_broadcast_is_compressed_once_for_every_compressed_client(serve_realtime: Callable[[Any], Server]) -> None:
    """By default each message is compressed on its own (server_no_context_takeover), so every
    client that negotiated the same settings gets the same bytes; a client without compression
    gets the plain frame, and websockets' client reads the compressed one."""
    server = echo_server(serve_realtime, True)
    raw = [_raw_deflate_client(server) for _ in range(2)]
    with (
        ws_connect(f"ws://{server.host}:{server.port}/ws", open_timeout=WAIT) as compressed,
        ws_connect(f"ws://{server.host}:{server.port}/ws", open_timeout=WAIT, compression=None) as plain,
    ):
        [deflate] = compressed.protocol.extensions
        assert isinstance(deflate, PerMessageDeflate) and deflate.remote_no_context_takeover
        for ws in (compressed, plain):
            ws.send("ready")
            assert ws.recv(timeout=WAIT) == "ready"
        text = FAR_REPEAT[:1000] * 4  # repeats within the 12-bit window: it compresses
        compressed.send("all:" + text)
        assert compressed.recv(timeout=WAIT) == text
        assert plain.recv(timeout=WAIT) == text
        frames = [client.recv_data() for client in raw]
        assert frames[0] == frames[1]
        assert frames[0].rsv == 4 and len(frames[0].payload) < len(text) // 2
        assert _inflate(frames[0].payload, 12).decode() == text
        # a later message does not lean on an earlier one: each inflates on its own
        compressed.send("all:" + text[::-1])
        assert compressed.recv(timeout=WAIT) == text[::-1]
        assert _inflate(raw[0].recv_data().payload, 12).decode() == text[::-1]
    for client in raw:
        client.close()


def test_context_takeover_can_be_chosen_both_ways(serve_realtime: Callable[[Any], Server]) -> None:
    """``server_no_context_takeover=False`` keeps the server's context (its protocol compresses);
    ``client_no_context_takeover=True`` asks the client to drop its own: both round-trip."""
    settings = Deflate(server_no_context_takeover=False, client_no_context_takeover=True)
    server = echo_server(serve_realtime, settings)
    with ws_connect(f"ws://{server.host}:{server.port}/ws", open_timeout=WAIT) as ws:
        header = ws.response.headers["Sec-WebSocket-Extensions"]
        assert "client_no_context_takeover" in header and "server_no_context_takeover" not in header
        [deflate] = ws.protocol.extensions
        assert isinstance(deflate, PerMessageDeflate)
        assert deflate.local_no_context_takeover and not deflate.remote_no_context_takeover
        for text in ("hello", FAR_REPEAT, "hello", FAR_REPEAT[::-1]):
            ws.send(text)
            assert ws.recv(timeout=WAIT) == text


def test_chosen_settings_are_negotiated_and_used(serve_realtime: Callable[[Any], Server]) -> None:
    """A `Deflate` with a 15-bit server window and no client limit: the 101 says so, messages still round-trip."""
    server = echo_server(serve_realtime, Deflate(server_max_window_bits=15, client_max_window_bits=None))
    with ws_connect(f"ws://{server.host}:{server.port}/ws", open_timeout=WAIT) as ws:
        assert ws.response.headers["Sec-WebSocket-Extensions"] == (
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=15"
        )
        [deflate] = ws.protocol.extensions
        assert isinstance(deflate, PerMessageDeflate)
        assert (deflate.remote_max_window_bits, deflate.local_max_window_bits) == (15, 15)
        ws.send(FAR_REPEAT)
        assert ws.recv(timeout=WAIT) == FAR_REPEAT


def test_compression_off_negotiates_nothing(serve_realtime: Callable[[Any], Server]) -> None:
    """The default Config accepts no extension: the 101 names none."""
    server = echo_server(serve_realtime, False)
    with ws_connect(f"ws://{server.host}:{server.port}/ws", open_timeout=WAIT) as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("plain")
        assert ws.recv(timeout=WAIT) == "plain"

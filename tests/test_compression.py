"""permessage-deflate over real sockets (RFC 7692): what was negotiated is what is used.

A server with ``Config(compression=...)`` on pywsgi, and websockets' client, which offers
permessage-deflate with ``client_max_window_bits`` and sizes its own decompressor by the
``server_max_window_bits`` the 101 names.  Messages whose repeats lie further back than 4 KiB
show that each side kept to its window: with a larger one, the other side could not decode.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.sync.client import connect as ws_connect

from rtgevent import Config, Message, Realtime, Session
from rtgevent.config import Deflate
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
        session.send_message(msg)

    return serve_realtime(rt)


def test_messages_go_both_ways_compressed_within_12_bit_windows(serve_realtime: Callable[[Any], Server]) -> None:
    """compression=True: the 101 limits both windows to 12 bits, and messages round-trip within them."""
    server = echo_server(serve_realtime, True)
    with ws_connect(f"ws://{server.host}:{server.port}/ws", open_timeout=WAIT) as ws:
        header = ws.response.headers["Sec-WebSocket-Extensions"]
        assert header == "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        [deflate] = ws.protocol.extensions
        assert isinstance(deflate, PerMessageDeflate)
        assert (deflate.remote_max_window_bits, deflate.local_max_window_bits) == (12, 12)
        for text in ("hello", FAR_REPEAT, FAR_REPEAT[::-1]):
            ws.send(text)
            assert ws.recv(timeout=WAIT) == text


def test_chosen_settings_are_negotiated_and_used(serve_realtime: Callable[[Any], Server]) -> None:
    """A `Deflate` with a 15-bit server window and no client limit: the 101 says so, messages still round-trip."""
    server = echo_server(serve_realtime, Deflate(server_max_window_bits=15, client_max_window_bits=None))
    with ws_connect(f"ws://{server.host}:{server.port}/ws", open_timeout=WAIT) as ws:
        assert ws.response.headers["Sec-WebSocket-Extensions"] == "permessage-deflate; server_max_window_bits=15"
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

"""The server protocol alone (pure: no socket): which reads `ServerProtocol.lone_pong` may
take past websockets' parser, and that everything else still reaches it."""

from __future__ import annotations

import logging

from websockets.frames import Frame, Opcode

from rtgevent.transport.protocol import ServerProtocol
from tests import rawws


def _protocol() -> ServerProtocol:
    return ServerProtocol(max_size=1 << 20, logger=logging.getLogger("test"))


def test_a_whole_masked_pong_between_frames_skips_the_parser() -> None:
    protocol = _protocol()
    for payload in (b"", b"\x00\x00\x00\x07", b"p" * 125):
        assert protocol.lone_pong(rawws.frame(rawws.PONG, payload))
    # between two messages too: the parser waits at a frame boundary again
    protocol.receive_data(rawws.frame(rawws.TEXT, b"hello"))
    assert [f.data for f in protocol.events_received() if isinstance(f, Frame)] == [b"hello"]
    assert protocol.lone_pong(rawws.frame(rawws.PONG, b"x"))


def test_anything_else_goes_to_the_parser() -> None:
    protocol = _protocol()
    pong = rawws.frame(rawws.PONG, b"1234")
    assert not protocol.lone_pong(rawws.frame(rawws.PING, b"1234"))
    assert not protocol.lone_pong(rawws.frame(rawws.PONG, b"1234", mask=False))  # clients must mask
    assert not protocol.lone_pong(rawws.frame(rawws.PONG, b"1234", rsv=4))
    assert not protocol.lone_pong(rawws.frame(rawws.PONG, b"1234", fin=False))
    assert not protocol.lone_pong(pong + rawws.frame(rawws.TEXT, b"and a message"))
    assert not protocol.lone_pong(pong[:-1])
    assert not protocol.lone_pong(rawws.frame(rawws.PONG, b"p" * 126))  # an extended length: the parser refuses it


def test_a_pong_completing_a_frame_in_progress_is_parsed() -> None:
    """Bytes that end a frame the parser has begun are never taken for a pong of their own."""
    protocol = _protocol()
    pong = rawws.frame(rawws.PONG, b"1234")
    protocol.receive_data(pong[:2])  # the header: the parser is inside a frame now
    assert not protocol.lone_pong(pong[2:])
    protocol.receive_data(pong[2:])
    [event] = protocol.events_received()
    assert isinstance(event, Frame) and event.opcode is Opcode.PONG
    # a text frame whose payload reads like a pong (a zero mask leaves it as it is) is the text's
    looks_like_pong = bytes([0x8A, 0x80]) + b"abcd"
    text = bytes([0x81, 0x80 | len(looks_like_pong)]) + b"\x00" * 4 + looks_like_pong
    protocol.receive_data(text[:6])
    assert not protocol.lone_pong(text[6:])
    protocol.receive_data(text[6:])
    [event] = protocol.events_received()
    assert isinstance(event, Frame) and event.opcode is Opcode.TEXT and event.data == looks_like_pong


def test_no_pong_is_taken_once_the_connection_is_closing() -> None:
    protocol = _protocol()
    protocol.receive_data(rawws.frame(rawws.CLOSE, rawws.close_payload(1000)))
    protocol.events_received()
    assert not protocol.lone_pong(rawws.frame(rawws.PONG, b"late"))

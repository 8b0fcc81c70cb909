"""Server frames as plain bytes (pure: no socket, no greenlet).

Kept apart from the frame engine so that code outside the gevent world (the broker
payload format, the Emitter) can use them without importing gevent.
"""

from __future__ import annotations

import functools
import zlib

from websockets.frames import Close, Frame, Opcode

__all__ = ["DeflateFrames", "OutItem", "close_frame", "deflater", "encode_frame"]


def _header(opcode: int, length: int, rsv1: bool = False) -> bytes:
    first = 0x80 | 0x40 * rsv1 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def encode_frame(payload: str | bytes) -> bytes:
    """A complete, unmasked, unfragmented server frame (RFC 6455 section 5.2).

    Server frames are never masked, so one frame can be written to every session that
    negotiated no extension: a broadcast is framed once, not once per session.
    """
    if isinstance(payload, str):
        data = payload.encode()
        return _header(0x1, len(data)) + data
    return _header(0x2, len(payload)) + payload


class DeflateFrames:
    """Compressed server frames of messages each compressed on its own (RFC 7692, with
    ``server_no_context_takeover``).

    Without context takeover a message's compressed bytes depend only on the message and the
    compressor's settings, not on the connection: a broadcast is compressed once for every
    session that negotiated the same settings, as gorilla/websocket's ``PreparedMessage``
    does, instead of once per session by its protocol.  The last message is remembered (a
    broadcast asks for the same one a thousand times in a row); the compressor lives only
    while it compresses.
    """

    __slots__ = ("_frame", "_memory_level", "_payload", "_window_bits")

    def __init__(self, window_bits: int, memory_level: int) -> None:
        self._window_bits = window_bits
        self._memory_level = memory_level
        self._payload: str | bytes | None = None
        self._frame = b""

    def frame(self, payload: str | bytes) -> bytes:
        """The complete frame of ``payload``: RSV1 set, the deflate stream without its final
        empty block (RFC 7692 section 7.2.1), as websockets' own encoder writes it."""
        if payload is self._payload or (type(payload) is type(self._payload) and payload == self._payload):
            return self._frame
        data = payload.encode() if isinstance(payload, str) else payload
        compressor = zlib.compressobj(wbits=-self._window_bits, memLevel=self._memory_level)
        body = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        body = body[:-4]  # a sync flush ends with 00 00 ff ff, which the receiver adds back
        frame = _header(0x1 if isinstance(payload, str) else 0x2, len(body), rsv1=True) + body
        self._payload, self._frame = payload, frame
        return frame


@functools.lru_cache(maxsize=32)
def deflater(window_bits: int, memory_level: int) -> DeflateFrames:
    """The process's `DeflateFrames` for these settings (one per settings, shared by sessions)."""
    return DeflateFrames(window_bits, memory_level)


def close_frame(code: int, reason: str) -> bytes:
    """A complete server close frame, for refusing a connection before it runs."""
    return Frame(Opcode.CLOSE, Close(code, reason).serialize()).serialize(mask=False)


# An outbox item: a ready frame (no extension negotiated), or (is_text, payload) to be
# framed (and compressed) by the protocol.
OutItem = bytes | tuple[bool, bytes]

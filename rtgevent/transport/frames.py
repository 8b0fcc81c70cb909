"""Server frames as plain bytes (pure: no socket, no greenlet).

Kept apart from the frame engine so that code outside the gevent world (the broker
payload format, the Emitter) can use them without importing gevent.
"""

from __future__ import annotations

from websockets.frames import Close, Frame, Opcode

__all__ = ["OutItem", "close_frame", "encode_frame"]


def _header(opcode: int, length: int) -> bytes:
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 1 << 16:
        return bytes((0x80 | opcode, 126)) + length.to_bytes(2, "big")
    return bytes((0x80 | opcode, 127)) + length.to_bytes(8, "big")


def encode_frame(payload: str | bytes) -> bytes:
    """A complete, unmasked, unfragmented server frame (RFC 6455 section 5.2).

    Server frames are never masked, so one frame can be written to every session that
    negotiated no extension: a broadcast is framed once, not once per session.
    """
    if isinstance(payload, str):
        data = payload.encode()
        return _header(0x1, len(data)) + data
    return _header(0x2, len(payload)) + payload


def close_frame(code: int, reason: str) -> bytes:
    """A complete server close frame, for refusing a connection before it runs."""
    return Frame(Opcode.CLOSE, Close(code, reason).serialize()).serialize(mask=False)


# An outbox item: a ready frame (no extension negotiated), or (is_text, payload) to be
# framed (and compressed) by the protocol.
OutItem = bytes | tuple[bool, bytes]

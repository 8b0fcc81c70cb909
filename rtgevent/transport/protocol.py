"""websockets' sans-I/O `Protocol`, server side, with two points of RFC 6455 kept to the letter.

Pure: no socket, no greenlet; `Connection` drives it.  Everything else (framing, masking,
control frames, the close handshake, the size limit at the frame header) is websockets'.

* **A close frame may arrive inside a fragmented message** (RFC 6455 section 5.4: control
  frames may be injected between fragments).  websockets fails such a connection with 1002
  "incomplete fragmented message"; here the close ends the unfinished message and is echoed
  like any other close (Autobahn 7.1.5).
* **Frames before a bad frame are still handled.**  When one read holds a valid message and
  then a frame that breaks the protocol, websockets queues its close frame at once, ahead
  of the reply the application is about to give to the valid message.  Here a failure found
  while parsing is *held*: parsing stops (nothing after the bad frame is processed, section
  7.1.7), the events before it are handed out as usual, and the connection fails only when
  its owner calls `fail_held` after handling them, so the replies go out first (Autobahn
  3.2 to 3.4, 4.1.3 to 4.1.5, 4.2.3 to 4.2.5, 5.15).
* **A pong alone skips the parser** (`lone_pong`): the one frame an idle connection
  receives every heartbeat is recognised from its two header bytes when the parser waits
  between frames.
* **A text frame still arriving can be checked.**  websockets hands out a frame only once
  all of its payload is there; `arriving_payload` gives the payload bytes of a data frame
  received so far, unmasked, so that invalid UTF-8 fails the connection at the first bad
  chunk rather than at the frame's end (Autobahn 6.4.3, 6.4.4).  It reads the parser's
  state (the header websockets already consumed): when that is not as expected (another
  websockets version), it answers None and the check happens when the frame is complete.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import OPEN, Protocol, Side
from websockets.streams import StreamReader
from websockets.utils import apply_mask

__all__ = ["ServerProtocol"]

#: where websockets' parser waits between two frames (`Protocol.parse` in ``reader.at_eof()``)
_PARSE = Protocol.parse.__code__
_AT_EOF = StreamReader.at_eof.__code__
#: FIN + opcode 0xA: the first byte of an unfragmented pong
_PONG = 0x8A


class ServerProtocol(Protocol):
    """The server side of one connection; see the module docstring for what differs."""

    def __init__(self, *, max_size: int | None, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        super().__init__(Side.SERVER, state=OPEN, max_size=max_size, logger=logger)
        self._parsing = False
        #: the failure the parser found in the last `receive_data`, not yet acted on
        self.held: tuple[CloseCode | int, str] | None = None
        #: the frame parser whose payload `arriving_payload` reported on, and how far
        self._arriving: Any = None
        self._arrived = 0

    def receive_data(self, data: bytes | bytearray) -> None:
        self._parsing = True
        try:
            super().receive_data(data)
        finally:
            self._parsing = False

    def fail(self, code: CloseCode | int, reason: str = "") -> None:
        if self._parsing and self.state is OPEN:
            # called by the parser on a bad frame: the frames before it are still to be handled
            self.held = (code, reason)
            self.stop_parsing()
            return
        super().fail(code, reason)

    def fail_held(self) -> None:
        """Fail the connection for the bad frame `receive_data` found (if it still is open)."""
        held, self.held = self.held, None
        if held is not None:
            super().fail(*held)

    def stop_parsing(self) -> None:
        """Process nothing more from the peer (the connection is failing); input is dropped."""
        self.parser = self._ignore()
        next(self.parser)

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE and self.current_size is not None:
            self.current_size = None  # the close ends the unfinished message: echoed, not an error
        super().recv_frame(frame)

    def lone_pong(self, data: bytes) -> bool:
        """True when ``data`` is exactly one whole, masked pong, arriving between two frames
        of an open connection: nothing for websockets to do (a pong changes none of its
        state), so the caller counts the pong itself and the parser is not run.

        A pong every heartbeat is most of what an idle connection receives, and websockets'
        generator-based parser cost more than the rest of the ping's round trip.  Anything
        else, a pong in the same read as other bytes included, goes to the parser as usual.
        """
        if len(data) < 6 or data[0] != _PONG or not data[1] & 0x80 or len(data) != (data[1] & 0x7F) + 6:
            return False  # also refuses extended lengths: 126 and 127 would need more header bytes
        if self.state is not OPEN or self.reader.buffer or self.held is not None:
            return False
        parser = self.parser
        if getattr(parser, "gi_code", None) is not _PARSE:
            return False
        waiting = getattr(parser, "gi_yieldfrom", None)
        return getattr(waiting, "gi_code", None) is _AT_EOF

    def arriving_payload(self) -> tuple[Opcode, bool, bytes] | None:
        """Of an uncompressed data frame whose payload is still arriving: its opcode, whether
        it is a new frame since the last call, and the payload bytes (unmasked) that arrived
        since then.  None when no such frame is in progress or its state cannot be read.
        """
        parse = getattr(self.parser, "gi_yieldfrom", None)  # Frame.parse, if a frame is in progress
        read = getattr(parse, "gi_yieldfrom", None)  # the StreamReader.read_exact it waits in
        frame = getattr(parse, "gi_frame", None)
        if read is None or frame is None or read.gi_frame is None:
            return None
        state = frame.f_locals
        head1, length, mask = state.get("head1"), state.get("length"), state.get("mask_bytes")
        if not isinstance(head1, int) or head1 & 0x70 or mask is None or read.gi_frame.f_locals.get("n") != length:
            return None  # header still arriving, reserved bits (compressed or failing), or not the payload read
        opcode = head1 & 0x0F
        if opcode not in (Opcode.TEXT, Opcode.CONT):
            return None
        new = parse is not self._arriving
        if new:
            self._arriving, self._arrived = parse, 0
        start, end = self._arrived, len(self.reader.buffer)
        self._arrived = end
        shift = start % 4
        rotated = bytes(mask[shift:]) + bytes(mask[:shift])
        return Opcode(opcode), new, apply_mask(bytes(self.reader.buffer[start:end]), rotated)

    def _ignore(self) -> Generator[None]:
        while True:
            self.reader.discard()
            yield

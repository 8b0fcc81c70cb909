"""Data frames in, whole messages out: fragment reassembly under one size bound.

Pure logic (websockets' ``sync/messages.py`` Assembler is the model, without its queue and
threads): `Connection` hands every TEXT, BINARY and CONTINUATION frame to `Assembler.feed`
in the order the protocol parsed them, and gets back a complete message or ``None``.

Why it exists rather than a list of fragments joined at the end:

* **Memory.**  A fragmented message is held in one ``bytearray``, so a fragment costs its
  bytes and nothing more; a list of ``bytes`` cost ~40 bytes of object per fragment, and half
  a million two-byte fragments held 26 MB against a 1 MiB limit.
* **A bound that counts fragments.**  Each fragment is charged `FRAGMENT_COST` bytes on top of
  its payload against ``max_size``: a stream of empty continuation frames, which never grows
  the payload, still reaches the limit and ends with 1009 instead of running forever.
* **UTF-8 checked as it arrives.**  A text message goes through an incremental decoder
  fragment by fragment, so invalid UTF-8 fails the connection (1007) at the first bad
  fragment, as RFC 6455 section 8.1 asks, not when the message completes.  The decoded text
  is thrown away and the whole message decoded once at the end: keeping the pieces as
  ``str`` would cost up to four bytes per character (one astral character in a fragment
  makes CPython store all of it as UCS-4).

The caller relies on the protocol for the frame order (a CONTINUATION only inside a message,
no new message before the last one ended); the assembler does not re-check it.
"""

from __future__ import annotations

import codecs

from websockets.exceptions import PayloadTooBig
from websockets.frames import Frame, Opcode

__all__ = ["FRAGMENT_COST", "Assembler"]

#: Bytes each fragment of a fragmented message counts against ``max_size`` beyond its payload:
#: a client frame costs at least 6 bytes on the wire (header and mask) and some bookkeeping
#: here, so 16 keeps a legitimate message close to its limit while bounding empty fragments.
FRAGMENT_COST = 16

_Decoder = codecs.getincrementaldecoder("utf-8")


class Assembler:
    """Reassembles one connection's messages; see the module docstring."""

    __slots__ = ("_arriving", "_buffer", "_charged", "_decoder", "_max_size")

    def __init__(self, max_size: int | None) -> None:
        self._max_size = max_size
        #: the message in progress, or None between messages
        self._buffer: bytearray | None = None
        #: its payload bytes plus `FRAGMENT_COST` per fragment so far
        self._charged = 0
        #: the UTF-8 checker of a text message in progress, None for binary
        self._decoder: codecs.IncrementalDecoder | None = None
        #: the UTF-8 checker of a text frame still arriving (see `check_arriving`)
        self._arriving: codecs.IncrementalDecoder | None = None

    @property
    def in_progress(self) -> bool:
        """True between the first fragment of a message and its last."""
        return self._buffer is not None

    @property
    def held(self) -> int:
        """Bytes charged to the message in progress (payload and per-fragment cost)."""
        return self._charged

    def feed(self, frame: Frame) -> str | bytes | None:
        """Take one data frame; return the message it completes, or ``None``.

        Raises `PayloadTooBig` when the message in progress passes ``max_size`` (close
        with 1009) and `UnicodeDecodeError` at the first fragment of a text message that is
        not UTF-8 (close with 1007).  After either, the message in progress is dropped.
        """
        opcode = frame.opcode
        data = frame.data
        self._arriving = None
        if opcode is not Opcode.CONT:
            if frame.fin:  # a whole message in one frame: the common case, no copy
                if opcode is Opcode.TEXT:
                    return str(data, "utf-8")
                return data if type(data) is bytes else bytes(data)
            self._buffer = bytearray()
            self._charged = 0
            self._decoder = _Decoder() if opcode is Opcode.TEXT else None
        buffer = self._buffer
        if buffer is None:
            return None  # a stray continuation: the protocol fails the connection on it already
        try:
            self._charge(len(data))
            decoder = self._decoder
            if decoder is not None:
                decoder.decode(data, frame.fin)
        except (PayloadTooBig, UnicodeDecodeError):
            self.reset()
            raise
        buffer += data
        if not frame.fin:
            return None
        self.reset()
        # the decoder has seen every byte with final=True: this decode cannot fail
        return buffer.decode("utf-8") if decoder is not None else bytes(buffer)

    def check_arriving(self, opcode: Opcode, new_frame: bool, chunk: bytes) -> None:
        """Check the UTF-8 of part of a frame whose payload is still arriving.

        Raises `UnicodeDecodeError` at the first bad byte: a text message fails as soon as
        the bytes that make it invalid arrive, not when its frame is complete.  Binary
        frames, and continuations of binary messages, are not checked.
        """
        if new_frame:
            self._arriving = None
            if opcode is Opcode.TEXT:
                self._arriving = _Decoder()
            elif opcode is Opcode.CONT and self._decoder is not None:
                self._arriving = _Decoder()
                self._arriving.setstate(self._decoder.getstate())
        if self._arriving is not None:
            self._arriving.decode(chunk)

    def reset(self) -> None:
        """Drop the message in progress (the connection is failing or ending)."""
        self._buffer = None
        self._charged = 0
        self._decoder = None

    def _charge(self, size: int) -> None:
        charged = self._charged + size + FRAGMENT_COST
        limit = self._max_size
        if limit is not None and charged > limit:
            # websockets reports the limit as what was left plus what was read (its set_current_size)
            raise PayloadTooBig(size + FRAGMENT_COST, limit - self._charged, self._charged)
        self._charged = charged

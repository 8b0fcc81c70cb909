"""History, the contract (SPEC section 14): bounded, expiring streams with offsets and an epoch.

A stream is a channel whose namespace keeps history, or an identity's personal stream.
Every publication appended to a stream gets the next ``offset`` (1, 2, 3, ... with no gap)
and the stream has an ``epoch``, a random string that changes whenever the store lost the
stream (a Redis restarted empty, the stream expired): an offset means something only
together with its epoch.

The envelope a client receives carries its own offset and epoch in its metadata, and the
store is what hands out both.  So a publisher does not append a finished envelope but a
`Stamp`: the envelope encoded with two random tokens where the offset and the epoch go,
cut at those tokens.  The store renders it once it knows the offset (inside its Lua script
for `RedisHistory`), so the envelope is still encoded once per publication.

Pure: no socket, no gevent, so an Emitter in any process can append.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import NamedTuple, Protocol, runtime_checkable

from ..errors import InvalidOption

__all__ = [
    "EPOCH",
    "OFFSET",
    "History",
    "Position",
    "Publication",
    "Recovery",
    "Stamp",
    "as_stamp",
    "check_stream_bounds",
    "reaches_back",
]

#: the slot markers of a `Stamp`'s parts
OFFSET = "o"
EPOCH = "e"


@dataclasses.dataclass(frozen=True, slots=True)
class Publication:
    """One entry of a stream: its offset and the envelope as clients receive it."""

    offset: int
    envelope: str | bytes


class Position(NamedTuple):
    """Where a stream stands: its last offset (0: nothing yet) and its epoch ("": no stream)."""

    offset: int
    epoch: str


class Recovery(NamedTuple):
    """What `History.since` found: the publications after the asked offset (at most ``limit``,
    oldest first), where the stream stands (``offset``, ``epoch``), and whether history
    reaches back to the asked position (``complete``: same epoch, nothing trimmed or expired
    in between).  Unpacks as SPEC section 14's ``(publications, top_offset, epoch, complete)``.
    """

    publications: list[Publication]
    offset: int
    epoch: str
    complete: bool


def as_stamp(payload: Stamp | str | bytes) -> Stamp:
    """A finished envelope is a stamp with no slot."""
    return payload if isinstance(payload, Stamp) else Stamp().cut(payload)


class Stamp:
    """An envelope (or broker payload) waiting for its offset and epoch.

    ``parts`` alternate literal text (even indexes) and slot names (odd indexes, `OFFSET` or
    `EPOCH`).  Made by `Stamp.encode`: the caller encodes once with ``stamp.offset_token``
    and ``stamp.epoch_token`` where the values go; the tokens are random per stamp, so no
    application data can forge a slot.  Binary text, or text where the tokens did not
    survive encoding (a codec that drops metadata), is one literal: it renders as it is.
    """

    __slots__ = ("epoch_token", "offset_token", "parts", "text")

    def __init__(self) -> None:
        token = secrets.token_hex(8)
        self.offset_token = f"rtgo{token}"
        self.epoch_token = f"rtge{token}"
        self.parts: tuple[str | bytes, ...] = ("",)
        #: the text as encoded, tokens and all
        self.text: str | bytes = ""

    def cut(self, text: str | bytes) -> Stamp:
        """Cut ``text`` at this stamp's tokens (which it must have been encoded with); returns self."""
        self.text = text
        if isinstance(text, bytes):
            self.parts = (text,)
            return self
        # two plain splits, not a regex: the tokens are new for every stamp, so a pattern
        # built from them would be compiled anew each time (most of a publication's cost)
        pieces: list[str | bytes] = []
        for i, chunk in enumerate(text.split(self.offset_token)):
            if i:
                pieces.append(OFFSET)
            for j, piece in enumerate(chunk.split(self.epoch_token)):
                if j:
                    pieces.append(EPOCH)
                pieces.append(piece)
        self.parts = tuple(pieces)
        return self

    def sibling(self, text: str | bytes) -> Stamp:
        """Another text encoded with this stamp's tokens (the broker payload around an envelope)."""
        other = Stamp.__new__(Stamp)
        other.offset_token, other.epoch_token = self.offset_token, self.epoch_token
        return other.cut(text)

    def render(self, offset: int, epoch: str) -> str | bytes:
        """The text with the offset and the epoch in their slots."""
        if len(self.parts) == 1:
            return self.parts[0]
        values = {OFFSET: str(offset), EPOCH: epoch}
        return "".join(str(p) if i % 2 == 0 else values[str(p)] for i, p in enumerate(self.parts))

    def __repr__(self) -> str:
        return f"Stamp({self.parts!r})"


@runtime_checkable
class History(Protocol):
    """Where streams are kept: `MemoryHistory` (one node) or `RedisHistory` (a cluster)."""

    def append(self, stream: str, payload: Stamp | str | bytes, size: int, ttl: float) -> Position:
        """Add ``payload`` to ``stream``, keeping its last ``size`` entries for ``ttl`` seconds
        after this append; the offset it got and the stream's epoch."""
        ...

    def since(self, stream: str, offset: int, epoch: str, limit: int) -> Recovery:
        """The publications after ``offset`` of ``epoch`` (at most ``limit``, oldest first).

        Epoch "" with offset 0 means "nothing seen yet": it matches any epoch.
        """
        ...

    def position(self, stream: str) -> Position:
        """Where ``stream`` stands now (``Position(0, "")`` for a stream that does not exist)."""
        ...

    def close(self) -> None: ...


def check_stream_bounds(size: object, ttl: object, *, field: str) -> None:
    """Validate a stream's ``size`` and ``ttl`` (both set, or size 0 and ttl None)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidOption(f"{field}_size", f"must be an int >= 0, got {size!r}")
    if size == 0:
        if ttl is not None:
            raise InvalidOption(f"{field}_ttl", "needs a history size above 0")
        return
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
        raise InvalidOption(f"{field}_ttl", f"must be a positive number of seconds with a history size, got {ttl!r}")


def reaches_back(offset: int, epoch: str, top: Position, first: int) -> bool:
    """Whether a reader at ``offset`` of ``epoch`` misses nothing the stream lost.

    ``first`` is the oldest offset the stream still holds (``top.offset + 1`` when it holds
    none).  The same epoch (or "nothing seen yet": offset 0, epoch ""), an offset not past
    the top, and nothing trimmed between the reader's offset and the oldest kept entry.
    """
    if offset < 0 or offset > top.offset:
        return False
    if epoch != top.epoch and not (epoch == "" and offset == 0):
        return False
    return offset + 1 >= first

"""A client's half of history (SPEC section 14): the last position of each stream, and its rules.

Pure, so that `rtgevent.client.Client` and `rtgevent.testing.TestClient` keep streams by
the same rules (and rtgevent.js by their twin): a publication in the kept epoch at or below
the kept offset is a duplicate; an answer (``rt.subscribe``'s reply, ``rt.personal``) sets
the position when nothing was kept or its epoch is new, and says when the application must
reload (``rt.recovery_failed``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidOption
from .history.base import Position
from .message import Message

__all__ = ["RECOVERY_FAILED", "Positions", "since_data"]

#: local event: the server could not give back everything a stream missed (reload)
RECOVERY_FAILED = "rt.recovery_failed"


def _position(offset: object, epoch: object) -> Position | None:
    """A position as the wire spells it (the offset may be a string), or None if it is none."""
    if isinstance(offset, str) and offset.isascii() and offset.isdigit() and len(offset) < 20:
        offset = int(offset)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or not isinstance(epoch, str):
        return None
    return Position(offset, epoch)


def since_data(position: Position) -> dict[str, Any]:
    """The ``since`` object of ``rt.subscribe`` and ``rt.auth`` for ``position``."""
    return {"offset": position.offset, "epoch": position.epoch}


class Positions:
    """The last position handed to the application, per stream: a client's half of SPEC section 14.

    Without I/O, so that `Client` and `rtgevent.testing.TestClient` keep streams by the
    same rules: a publication in the kept epoch at or below the kept offset is dropped;
    an answer (``rt.subscribe``'s reply, ``rt.personal``) sets the position when nothing
    was kept or its epoch is new, and says whether the application must reload.
    Streams are keyed by channel name, ``None`` for the personal stream.
    """

    __slots__ = ("_kept",)

    def __init__(self, initial: Mapping[str | None, Sequence[Any]] | None = None) -> None:
        self._kept: dict[str | None, Position] = {}
        for stream, value in (initial or {}).items():
            if not (stream is None or isinstance(stream, str)):
                raise InvalidOption("positions", f"{stream!r}: streams are channel names, or None (personal)")
            self.seed(stream, value)

    def get(self, stream: str | None) -> Position | None:
        return self._kept.get(stream)

    def seed(self, stream: str | None, since: Sequence[Any]) -> None:
        """Resume ``stream`` from ``since``: an ``(offset, epoch)`` the application kept (a list
        too, which is what a position persisted as JSON comes back as)."""
        position = _position(*since) if isinstance(since, (tuple, list)) and len(since) == 2 else None
        if position is None:
            raise InvalidOption("since", f"needs (offset >= 0, epoch), got {since!r}")
        self._kept[stream] = position

    def forget(self, stream: str | None) -> None:
        self._kept.pop(stream, None)

    def snapshot(self) -> dict[str | None, Position]:
        return dict(self._kept)

    def admit(self, msg: Message) -> bool:
        """False for a publication the application already had; keeps the position of the others."""
        meta = msg.metadata
        if not meta or "offset" not in meta:
            return True  # not a publication of a stream
        position = _position(meta.get("offset"), meta.get("epoch"))
        stream = meta.get("channel")
        if position is None or not (stream is None or isinstance(stream, str)):
            return True
        kept = self._kept.get(stream)
        if kept is not None and kept.epoch == position.epoch and position.offset <= kept.offset:
            return False
        self._kept[stream] = position
        return True

    def answered(self, stream: str | None, data: Any, *, asked: bool) -> Message | None:
        """An answer saying where ``stream`` stands; the ``rt.recovery_failed`` event it calls for, if any.

        ``asked``: the client had asked with a ``since``.  Then a failed recovery also
        moves the position forward to where the stream stands: the application reloads from
        there, and the next reconnect must not ask for what is gone again.
        """
        if not isinstance(data, dict):
            return None
        position = _position(data.get("offset"), data.get("epoch"))
        if position is None:
            return None  # a server without history streams
        kept = self._kept.get(stream)
        # The flag alone does not say something was lost: a client that stands at or past
        # where the stream is, in its epoch, has it all (a channel the session was in
        # already; a channel without history, epoch "" on both sides, has nothing to lose).
        behind = kept is None or kept.epoch != position.epoch or kept.offset < position.offset
        failed = asked and data.get("recovered") is not True and behind
        if kept is None or kept.epoch != position.epoch or failed:
            self._kept[stream] = position
        if not failed:
            return None
        return Message(RECOVERY_FAILED, {"channel": stream, "offset": position.offset, "epoch": position.epoch})

"""This node's streams: every publication once, in offset order, and sessions catching up.

A stream (a channel with history, an identity's personal stream: SPEC section 14) reaches a
node by two roads: its own publishers, and the broker.  Both go through `Streams.admit`,
which keeps the last offset this node delivered for each stream it has sessions of:

* the next offset is delivered; one already delivered (the broker's copy of a publication
  this node delivered when a publisher here appended it, or a late copy) is dropped;
* an offset past the next one means something is missing (a broker message lost, or two
  publishers whose appends and publishes crossed): the missing range is read from history
  first, then delivered in order, then this one;
* a new epoch (history lost the stream) starts again from the offset it brings.

A session that asks for what it missed (``since``) is *catching up* while history is read:
what is delivered to the stream meanwhile is kept for it (`begin`), and `finish` hands it
the recovered publications, then what was kept, each offset once.  Until this node has
delivered past the last offset history gave it, later arrivals at or below that offset are
dropped for it (a publication can be in history before its broker copy reaches this node).

Greenlet-agnostic: it yields only inside history reads, and re-checks what it knows after
each.  The one room that decides, for every stream, what a session receives and in which
order; `Fanout` pushes the frames.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING

from .history.base import History, Position, Publication, Recovery

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Catchup", "Streams", "channel_stream", "identity_stream", "stream_owner"]

ErrorSink = Callable[[BaseException], None]
Push = Callable[[list["Session"], "str | bytes"], int]

#: the most publications one gap fill reads (a larger gap is what history no longer has)
GAP_LIMIT = 10_000


def channel_stream(channel: str) -> str:
    """The stream name of a channel with history."""
    return f"ch:{channel}"


def identity_stream(tenant_id: str, identity_id: str) -> str:
    """The stream name of an identity's personal stream (tenants never share one)."""
    return f"id:{urllib.parse.quote(tenant_id, safe='')}:{identity_id}"


def stream_owner(stream: str) -> tuple[str, str] | str:
    """Whose stream it is: a channel's name, or an identity's ``(tenant_id, identity_id)``."""
    kind, _, rest = stream.partition(":")
    if kind == "ch":
        return rest
    tenant, _, identity = rest.partition(":")
    return urllib.parse.unquote(tenant), identity


class _Top:
    __slots__ = ("epoch", "offset")

    def __init__(self, offset: int, epoch: str) -> None:
        self.offset = offset
        self.epoch = epoch


class Catchup:
    """One session catching up on one stream: what arrived meanwhile, or the offset it is at."""

    __slots__ = ("floor", "kept")

    def __init__(self) -> None:
        #: publications delivered to the stream while history was read (None once finished)
        self.kept: list[Publication] | None = []
        #: once finished: the last offset the session has; later arrivals up to it are dropped
        self.floor = 0


class Streams:
    """The streams of one node; see the module docstring."""

    def __init__(self, history: History, push: Push, report: ErrorSink) -> None:
        self.history = history
        self._push = push
        #: where this node's errors go (the node's report)
        self.report = report
        self._tops: dict[str, _Top] = {}
        self._catching: dict[str, dict[Session, Catchup]] = {}

    # ------------------------------------------------------------------ delivery

    def admit(self, stream: str, offset: int, epoch: str, envelope: str | bytes) -> list[Publication]:
        """What this node delivers now for one arrival on ``stream``, in order (maybe nothing)."""
        top = self._tops.get(stream)
        if top is not None and not top.epoch and not top.offset:
            top.epoch = epoch  # the stream did not exist when this node looked: it starts at 1
        if top is None or top.epoch != epoch:
            self._tops[stream] = _Top(offset, epoch)
            return [Publication(offset, envelope)]
        if offset <= top.offset:
            return []
        if offset == top.offset + 1:
            top.offset = offset
            return [Publication(offset, envelope)]
        found = self._fill(stream, top.offset, epoch, offset)
        top = self._tops.get(stream)  # the read yielded: others may have delivered meanwhile
        if top is None or top.epoch != epoch:
            return [Publication(offset, envelope)]
        out = [p for p in found if top.offset < p.offset < offset]
        if offset > top.offset:
            out.append(Publication(offset, envelope))
        if out:
            top.offset = out[-1].offset
        return out

    def deliver(self, stream: str, publications: list[Publication], sessions: list[Session]) -> int:
        """Push ``publications`` (from `admit`) to ``sessions``; catching-up ones keep them.

        Returns how many sessions took the last of them.
        """
        if not publications:
            return 0
        delivered = 0
        catching = self._catching.get(stream)
        if catching:
            sessions = [s for s in sessions if s not in catching]
            for session, catchup in list(catching.items()):
                if catchup.kept is not None:
                    catchup.kept.extend(publications)
                    continue
                rest = [p for p in publications if p.offset > catchup.floor]
                if rest:  # this node is past what history gave the session: it is live now
                    del catching[session]
                    for p in rest:
                        took = self._push([session], p.envelope)
                    delivered += took
            if not catching:
                del self._catching[stream]
        for p in publications:
            took = self._push(sessions, p.envelope)
        return delivered + took

    def check(self, sessions_of: Callable[[str], list[Session]]) -> int:
        """Compare every stream this node delivers with where history stands; deliver what it lacks.

        A publication whose broker message was lost is otherwise noticed only with the
        stream's next one (`admit`): a stream that stays quiet would keep its subscribers
        short until they reconnect.  The node calls this every lease renewal; one history
        read per stream, and a range read only for those behind.  Returns how many
        publications it delivered.
        """
        caught = 0
        for stream, top in list(self._tops.items()):
            try:
                position = self.history.position(stream)
                if position.epoch != top.epoch or position.offset <= top.offset:
                    continue
                missed = self.history.since(stream, top.offset, top.epoch, GAP_LIMIT).publications
            except Exception as exc:
                self.report(exc)
                continue
            sessions = sessions_of(stream)
            for p in missed:
                admitted = self.admit(stream, p.offset, top.epoch, p.envelope)
                self.deliver(stream, admitted, sessions)
                caught += len(admitted)
        return caught

    def forget(self, stream: str) -> None:
        """This node has no session of ``stream`` any more."""
        self._tops.pop(stream, None)
        self._catching.pop(stream, None)

    # ------------------------------------------------------------------ catching up

    def begin(self, stream: str, session: Session) -> None:
        """``session`` is about to read what it missed: keep what arrives meanwhile."""
        self._catching.setdefault(stream, {})[session] = Catchup()

    def finish(self, stream: str, session: Session, since: Position | None, size: int) -> Recovery:
        """Read history after ``since`` and hand the session what it missed, then what was kept.

        ``since`` None (a new subscriber) reads only where the stream stands.  Returns what
        history said (``publications`` are those the session got from it); on a store that
        does not answer, the session gets what was kept and the error is reported.
        """
        catchup = self._catching.get(stream, {}).get(session)
        try:
            if since is None:
                position = self.history.position(stream)
                recovery = Recovery([], position.offset, position.epoch, False)
            else:
                recovery = self.history.since(stream, since.offset, since.epoch, max(1, size))
        except Exception as exc:
            self.report(exc)
            recovery = Recovery([], 0, "", False)
        kept = catchup.kept if catchup is not None and catchup.kept is not None else []
        # what the session has: the asked offset once history reaches back to it, else
        # where the stream stands (the reply tells the client it did not recover)
        last = since.offset if recovery.complete and since is not None else recovery.offset
        recovered = 0
        for p in recovery.publications:
            if p.offset > last:
                self._push([session], p.envelope)
                last = p.offset
                recovered += 1
        for p in kept:
            if p.offset > last:
                self._push([session], p.envelope)
                last = p.offset
        self._settle(stream, session, last, recovery.epoch)
        return Recovery(recovery.publications[:recovered], recovery.offset, recovery.epoch, recovery.complete)

    def abandon(self, stream: str, session: Session) -> None:
        """The session left the stream before it finished catching up."""
        catching = self._catching.get(stream)
        if catching is not None:
            catching.pop(session, None)
            if not catching:
                del self._catching[stream]

    def _settle(self, stream: str, session: Session, last: int, epoch: str) -> None:
        """The session has everything up to ``last``: it is live, or waits for this node to pass it.

        A node that has delivered nothing of the stream yet starts from there: history just
        said the stream stands at least at ``last`` (0 with no epoch: it did not exist), so a
        later jump past it is a gap to fill.
        """
        catching = self._catching.get(stream)
        if catching is None or session not in catching:
            return
        top = self._tops.get(stream)
        if top is None:
            top = self._tops[stream] = _Top(last, epoch)
        if top is not None and top.offset >= last:
            self.abandon(stream, session)
            return
        catchup = catching[session]
        catchup.kept = None
        catchup.floor = last

    def _fill(self, stream: str, after: int, epoch: str, before: int) -> list[Publication]:
        """The publications between two offsets, from history (a gap this node saw)."""
        try:
            return self.history.since(stream, after, epoch, min(before - after - 1, GAP_LIMIT)).publications
        except Exception as exc:
            self.report(exc)
            return []

"""The session lifecycle as data: its states, the moves between them, and how it ended.

Theory of operation
-------------------
Two machines run side by side for every session, each in the room that drives it:

* **The session** (this table, driven by the core in ``app.py``): a session is *admitted*
  when its upgrade was accepted.  With in-band authentication it first waits for its
  ``rt.auth`` message (``AUTHENTICATING``).  It is ``OPEN`` once it is in the hub and
  presence and every ``on_connect`` hook accepted it; a hook that raises rolls the
  registration back (``REJECTED``), as does a failed in-band authentication.  Whatever
  the state, the stream ending moves it to ``ENDED``; only a session that was ``OPEN``
  leaves hub and presence and runs ``on_disconnect`` (a rejected session never counted
  as connected, Flask-SocketIO's rule).
* **The connection** (``transport/connection.py``): OPEN → CLOSING → CLOSED, where the
  first close request wins: it decides who initiated the end.

The moves are a table (h11's ``_state.py`` is the model), so an impossible move is a
bug that raises at once instead of a flag combination nobody thought of.

When the connection is over, the facts it collected (`Ending`: the first close request,
the close frames sent and received, the protocol or socket error) go through one
function, `disconnect_info`, to the `DisconnectInfo` the hooks see: who ended it, with
which code, and whether anybody needs to be alerted.  Pure: no socket, no greenlet.
"""

from __future__ import annotations

import dataclasses
import enum

from .types import DisconnectInfo, Initiator

__all__ = [
    "TRANSITIONS",
    "Closing",
    "Ending",
    "Event",
    "InvalidTransition",
    "Lifecycle",
    "State",
    "disconnect_info",
    "kick_initiator",
]


class State(enum.Enum):
    AUTHENTICATING = "authenticating"
    ADMITTED = "admitted"
    OPEN = "open"
    REJECTED = "rejected"
    ENDED = "ended"


class Event(enum.Enum):
    AUTHENTICATED = "authenticated"
    REGISTERED = "registered"
    REJECTED = "rejected"
    ENDED = "ended"


#: (state, event) → next state; anything missing is an impossible move
TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.AUTHENTICATING, Event.AUTHENTICATED): State.ADMITTED,
    (State.AUTHENTICATING, Event.REJECTED): State.REJECTED,
    (State.AUTHENTICATING, Event.ENDED): State.ENDED,
    (State.ADMITTED, Event.REGISTERED): State.OPEN,
    (State.ADMITTED, Event.REJECTED): State.REJECTED,
    (State.ADMITTED, Event.ENDED): State.ENDED,
    (State.OPEN, Event.ENDED): State.ENDED,
    (State.REJECTED, Event.ENDED): State.ENDED,
}


class InvalidTransition(RuntimeError):
    """A move the table does not allow: a bug in the framework, never the peer's doing."""


class Lifecycle:
    """One session's position in the table, and what its end must undo."""

    __slots__ = ("state", "was_open")

    def __init__(self, *, in_band: bool) -> None:
        self.state = State.AUTHENTICATING if in_band else State.ADMITTED
        #: True once the session was OPEN: its end leaves hub and presence and runs on_disconnect
        self.was_open = False

    def advance(self, event: Event) -> State:
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise InvalidTransition(f"rtgevent: session cannot go from {self.state.value} on {event.value}")
        self.state = nxt
        if nxt is State.OPEN:
            self.was_open = True
        return nxt

    @property
    def authenticating(self) -> bool:
        return self.state is State.AUTHENTICATING


class Closing:
    """A close request: who asked, with which code, and whether queued data goes first."""

    __slots__ = ("abort", "code", "error", "flush", "initiator", "reason")

    def __init__(
        self,
        initiator: Initiator,
        code: int,
        reason: str,
        *,
        flush: bool,
        error: BaseException | None = None,
        abort: bool = False,
    ) -> None:
        #: True when the stream failed under us (no close handshake was possible)
        self.abort = abort
        self.initiator = initiator
        self.code = code
        self.reason = reason
        self.flush = flush
        self.error = error


@dataclasses.dataclass(frozen=True)
class Ending:
    """What a connection saw as it ended; `disconnect_info` makes the verdict."""

    #: the first close request (any side of ours), or None
    closing: Closing | None = None
    #: the client's close frame (code, reason), or None
    received: tuple[int, str] | None = None
    #: our close frame (code, reason), or None
    sent: tuple[int, str] | None = None
    #: the peer broke the protocol (bad frame, oversize, invalid UTF-8): the exception
    protocol_error: BaseException | None = None
    #: the socket failed (reset, write timeout): the exception
    failure: BaseException | None = None


#: client close codes that are a normal goodbye or an ordinary network drop
_EXPECTED_CLIENT_CODES = frozenset({1000, 1001, 1005, 1006})
#: closes we asked for on purpose: nobody needs to be alerted
_EXPECTED_INITIATORS = frozenset({Initiator.SERVER, Initiator.SHUTDOWN, Initiator.REPLACED})


def disconnect_info(ending: Ending) -> DisconnectInfo:
    """Who ended the session, with which code and reason, and whether it was expected.

    Rules, in order: a close request of ours that ran its course decides; a protocol error
    by the peer is ``error`` with the code we sent (1002 if none went out); the client's
    close frame is ``client``; a request of ours that met a failed stream keeps its
    initiator; otherwise the client dropped the connection (1006).
    """
    closing = ending.closing
    initiator: Initiator
    error: BaseException | None
    if closing is not None and not closing.abort:
        initiator, code, reason, error = closing.initiator, closing.code, closing.reason, closing.error
    elif ending.protocol_error is not None:
        code, reason = ending.sent if ending.sent is not None else (1002, "")
        initiator, error = Initiator.ERROR, ending.protocol_error
    elif ending.received is not None:
        (code, reason), initiator, error = ending.received, Initiator.CLIENT, None
    elif closing is not None:
        initiator, code, reason = closing.initiator, closing.code, closing.reason
        error = closing.error or ending.failure
    else:
        initiator, code, reason, error = Initiator.CLIENT, 1006, "connection dropped", ending.failure
    expected = initiator in _EXPECTED_INITIATORS or (initiator is Initiator.CLIENT and code in _EXPECTED_CLIENT_CODES)
    return DisconnectInfo(error, code, reason, expected, initiator)


def kick_initiator(code: int) -> Initiator:
    """The initiator of a kick that arrived through the broker: 4001 is the replace policy."""
    return Initiator.REPLACED if code == 4001 else Initiator.SERVER

"""The rtgevent exception tree: one root, each class knows its wire error code.

::

    RealtimeError                 (root; never raised by itself)
    ├── RealtimeClosed            the Realtime was shut down
    ├── UnknownRoute              no handler for a client's route       wire: unknown_route
    ├── BackpressureError         a send queue is full (DROP_NEWEST)
    ├── SessionClosed             the session (or every session of an identity) is gone
    ├── AlreadyStarted            start() called twice
    ├── InvalidOption             the application misused the API (bad Config field, ...)
    ├── Unauthorized              authentication failed                 wire: unauthorized
    ├── InvalidBrokerMessage      a broker payload could not be understood
    ├── BrokerUnavailable         the broker or presence store did not answer in time
    ├── ConnectionLimit           max_connections reached
    ├── BadMessage                a client frame is not a valid envelope wire: bad_message
    ├── HandlerError              a handler raised                      wire: handler_error
    └── HandlerTimeout            a handler ran past its time          wire: timeout

Like h11, the tree separates "you misused the API" (`InvalidOption`, `AlreadyStarted`)
from "the peer misbehaved" (`BadMessage`, `Unauthorized`): the first is a bug to fix, the
second is answered on the wire and the connection stays up.  Messages start with
``rtgevent:`` so they are easy to find in mixed logs.
"""

from __future__ import annotations

__all__ = [
    "AlreadyStarted",
    "BackpressureError",
    "BadMessage",
    "BrokerUnavailable",
    "ConnectionLimit",
    "HandlerError",
    "HandlerTimeout",
    "InvalidBrokerMessage",
    "InvalidOption",
    "RealtimeClosed",
    "RealtimeError",
    "SessionClosed",
    "Unauthorized",
    "UnknownRoute",
]


class RealtimeError(Exception):
    """Root of every error rtgevent raises on purpose."""

    #: Code sent in ``rt.error`` envelopes when this error answers a client message.
    wire_code: str = "handler_error"
    #: Text used when the error is raised without a message.
    default_message: str = "error"

    def __init__(self, message: str | None = None) -> None:
        text = message if message is not None else self.default_message
        if not text.startswith("rtgevent:"):
            text = f"rtgevent: {text}"
        super().__init__(text)

    @property
    def message(self) -> str:
        """The text without the ``rtgevent:`` prefix (what a client may be shown)."""
        return str(self).removeprefix("rtgevent:").strip()


class RealtimeClosed(RealtimeError):
    default_message = "realtime is shut down"


class UnknownRoute(RealtimeError):
    wire_code = "unknown_route"
    default_message = "unknown route"

    def __init__(self, route: str = "") -> None:
        self.route = route
        super().__init__(f"unknown route {route!r}" if route else None)


class BackpressureError(RealtimeError):
    default_message = "send queue full"


class SessionClosed(RealtimeError):
    default_message = "session closed"


class AlreadyStarted(RealtimeError):
    default_message = "already started"


class InvalidOption(RealtimeError, ValueError):
    default_message = "invalid option"

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"invalid option {field}: {problem}")


class Unauthorized(RealtimeError):
    wire_code = "unauthorized"
    default_message = "unauthorized"


class InvalidBrokerMessage(RealtimeError):
    default_message = "invalid broker message"


class BrokerUnavailable(RealtimeError):
    """A publish or a presence query failed after its bounded retries (never hangs)."""

    default_message = "broker unavailable"


class ConnectionLimit(RealtimeError):
    default_message = "connection limit reached"


class BadMessage(RealtimeError):
    wire_code = "bad_message"
    default_message = "bad message"


class HandlerError(RealtimeError):
    wire_code = "handler_error"
    default_message = "handler error"


class HandlerTimeout(RealtimeError):
    wire_code = "timeout"
    default_message = "handler timed out"

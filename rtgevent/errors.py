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

What a client is shown: the text of an error about what the client did (a bad envelope,
an unknown route, a refusal, an application's own `RealtimeError` subclass), but of an
error about this server's insides (``internal = True``: its broker, its presence store,
its state) only `public_message`, unless ``Config.debug`` is on: a broker URL, an errno
or a vhost is nobody's business on the wire.  Whatever a client sent is quoted through
`quote`, never whole, so an error answer cannot grow with the request that caused it.
"""

from __future__ import annotations

__all__ = [
    "QUOTE_LIMIT",
    "AlreadyStarted",
    "BackpressureError",
    "BadMessage",
    "BrokerUnavailable",
    "ConnectionLimit",
    "HandlerError",
    "HandlerTimeout",
    "InvalidBrokerMessage",
    "InvalidOption",
    "LimitExceeded",
    "RealtimeClosed",
    "RealtimeError",
    "SessionClosed",
    "Unauthorized",
    "UnknownRoute",
    "quote",
]

#: How many characters of client-supplied text an error message quotes at most.
QUOTE_LIMIT = 100


def quote(text: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr`` of client-supplied text, cut to its first ``limit`` characters.

    Every error text that names what a client sent goes through here: an unknown route of
    1 MiB of U+0085 (four characters of ``repr`` each, five once JSON escapes the
    backslash) was once answered with 2.5 MB.  A cut quote says how long the original was.
    """
    value = text if isinstance(text, str) else str(text)
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


class RealtimeError(Exception):
    """Root of every error rtgevent raises on purpose."""

    #: Code sent in ``rt.error`` envelopes when this error answers a client message.
    wire_code: str = "handler_error"
    #: Text used when the error is raised without a message.
    default_message: str = "error"
    #: True for errors about this server's insides (broker, presence, its own state): a
    #: client is shown `public_message` instead of their text unless ``Config.debug`` is on.
    internal: bool = False
    #: What a client is shown of an internal error.
    public_message: str = "internal error"

    def __init__(self, message: str | None = None) -> None:
        text = message if message is not None else self.default_message
        if not text.startswith("rtgevent:"):
            text = f"rtgevent: {text}"
        super().__init__(text)

    @property
    def message(self) -> str:
        """The text without the ``rtgevent:`` prefix (what a client may be shown)."""
        return str(self).removeprefix("rtgevent:").strip()

    def client_text(self, debug: bool = False) -> str:
        """The text an ``rt.error`` may carry: `message`, or `public_message` for an internal error."""
        return self.message if debug or not self.internal else self.public_message


class RealtimeClosed(RealtimeError):
    internal = True
    default_message = "realtime is shut down"


class UnknownRoute(RealtimeError):
    wire_code = "unknown_route"
    default_message = "unknown route"

    def __init__(self, route: str = "") -> None:
        self.route = route
        super().__init__(f"unknown route {quote(route)}" if route else None)


class BackpressureError(RealtimeError):
    internal = True
    default_message = "send queue full"


class SessionClosed(RealtimeError):
    internal = True
    default_message = "session closed"


class AlreadyStarted(RealtimeError):
    internal = True
    default_message = "already started"


class InvalidOption(RealtimeError, ValueError):
    internal = True
    default_message = "invalid option"

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"invalid option {field}: {problem}")


class LimitExceeded(InvalidOption):
    """A per-session bound was reached (too many channels, a full channel): ``rt.error limit``."""

    internal = False
    wire_code = "limit"
    default_message = "limit reached"


class Unauthorized(RealtimeError):
    wire_code = "unauthorized"
    default_message = "unauthorized"


class InvalidBrokerMessage(RealtimeError):
    internal = True
    default_message = "invalid broker message"


class BrokerUnavailable(RealtimeError):
    """A publish or a presence query failed after its bounded retries (never hangs)."""

    internal = True
    wire_code = "unavailable"
    default_message = "broker unavailable"
    # SPEC section 2: "the broker or presence store did not answer; the text says only that"
    public_message = "the broker or presence store did not answer"


class ConnectionLimit(RealtimeError):
    internal = True
    default_message = "connection limit reached"


class BadMessage(RealtimeError):
    wire_code = "bad_message"
    default_message = "bad message"

    def __init__(self, message: str | None = None) -> None:
        # A codec's text may carry what it could not parse (a number literal of a million
        # digits): it is about the client's input, so it is cut like a quote of it.
        if message is not None and len(message) > 2 * QUOTE_LIMIT:
            message = f"{message[: 2 * QUOTE_LIMIT]}... ({len(message)} characters)"
        super().__init__(message)


class HandlerError(RealtimeError):
    wire_code = "handler_error"
    default_message = "handler error"


class HandlerTimeout(RealtimeError):
    wire_code = "timeout"
    default_message = "handler timed out"

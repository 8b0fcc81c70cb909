"""The envelope: `Message`, and the reply / error envelopes of SPEC section 2.

The framework reads only ``route`` (to dispatch) and ``id`` (to answer); ``data`` belongs
to the application and is never inspected.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AUTH_ROUTE", "ERROR_ROUTE", "REPLY_ROUTE", "Message", "error_message", "reply_message"]

REPLY_ROUTE = "rt.reply"
ERROR_ROUTE = "rt.error"
AUTH_ROUTE = "rt.auth"
SUBSCRIBE_ROUTE = "rt.subscribe"
UNSUBSCRIBE_ROUTE = "rt.unsubscribe"
#: where the session's personal stream stands, sent once it is open (SPEC section 14)
PERSONAL_ROUTE = "rt.personal"
#: Routes under this prefix belong to the framework; applications may not register them.
RESERVED_PREFIX = "rt."

MessageId = str | int


class Message:
    """One envelope.  ``id`` is the client's and goes back exactly as received."""

    __slots__ = ("data", "id", "metadata", "route")

    def __init__(
        self,
        route: str,
        data: Any = None,
        *,
        id: MessageId | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.route = route
        self.data = data
        self.id = id
        self.metadata = metadata

    def __repr__(self) -> str:
        extra = f", id={self.id!r}" if self.id is not None else ""
        return f"Message({self.route!r}, {self.data!r}{extra})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.route, self.data, self.id, self.metadata) == (
            other.route,
            other.data,
            other.id,
            other.metadata,
        )

    __hash__ = None  # type: ignore[assignment]


def reply_message(request_id: MessageId, value: Any) -> Message:
    """The ``rt.reply`` answering a request that carried ``request_id``."""
    return Message(REPLY_ROUTE, value, metadata={"in_reply_to": request_id})


def error_message(request_id: MessageId | None, code: str, text: str) -> Message:
    """An ``rt.error`` envelope; ``in_reply_to`` is ``""`` when the request had no id."""
    return Message(
        ERROR_ROUTE,
        {"message": text},
        metadata={"in_reply_to": "" if request_id is None else request_id, "code": code},
    )

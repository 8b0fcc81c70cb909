"""Value types shared by every room: Identity, SessionInfo, DisconnectInfo, Initiator.

They are plain immutable data: anything that crosses a boundary (a hook, the broker,
presence) is a snapshot, never a live object the receiver could mutate.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .errors import InvalidOption

__all__ = ["DisconnectInfo", "Identity", "Initiator", "SessionInfo", "utcnow"]


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Initiator(enum.StrEnum):
    """Who (or which subsystem) ended a session.  Compares equal to its string value."""

    CLIENT = "client"
    SERVER = "server"
    SHUTDOWN = "shutdown"
    BACKPRESSURE = "backpressure"
    ERROR = "error"
    HEARTBEAT = "heartbeat"
    REPLACED = "replaced"


@dataclasses.dataclass(frozen=True)
class Identity:
    """An authenticated caller: an immutable snapshot.

    ``roles`` is stored as a tuple and ``claims`` behind a read-only mapping, so a hook
    cannot change the identity other code sees; `copy` gives mutable-free copies of the
    outer containers (claim values themselves are not deep-copied, as in the seed).
    """

    id: str
    tenant_id: str = ""
    roles: tuple[str, ...] = ()
    claims: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidOption("Identity.id", f"must be a non-empty string, got {self.id!r}")
        object.__setattr__(self, "roles", tuple(self.roles))
        object.__setattr__(self, "claims", MappingProxyType(dict(self.claims)))

    def copy(self) -> Identity:
        return Identity(self.id, self.tenant_id, tuple(self.roles), dict(self.claims))

    def __hash__(self) -> int:
        return hash((self.id, self.tenant_id, self.roles))


@dataclasses.dataclass(frozen=True)
class SessionInfo:
    """What presence knows of one live session (a snapshot, never the Session)."""

    session_id: str
    identity_id: str
    tenant_id: str
    node_id: str
    remote_addr: str
    connected_at: datetime.datetime
    expires_at: datetime.datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "identity_id": self.identity_id,
            "tenant_id": self.tenant_id,
            "node_id": self.node_id,
            "remote_addr": self.remote_addr,
            "connected_at": self.connected_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


@dataclasses.dataclass(frozen=True)
class DisconnectInfo:
    """Why a session ended; `on_disconnect` receives it, `Session.close_info` keeps it.

    ``code`` is the WebSocket close code (1006 when the connection dropped without a
    close frame), ``expected`` is true for normal closes, server closes, shutdown and
    ordinary network drops: the cases nobody needs to be alerted about.
    """

    error: BaseException | None
    code: int
    reason: str
    expected: bool
    initiator: Initiator
    at: datetime.datetime = dataclasses.field(default_factory=utcnow)

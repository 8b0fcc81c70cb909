"""The `Presence` protocol every presence store implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..types import SessionInfo

__all__ = ["Presence"]


@runtime_checkable
class Presence(Protocol):
    """Which sessions are live on which node, for the whole cluster.

    An implementation may set ``shared = False`` when it reaches no other process (the
    in-process `MemoryPresence`); without the attribute a store counts as shared.
    """

    def register(self, info: SessionInfo) -> int:
        """Add (or update) a session; its login number for the identity (1, 2, 3, ...).

        Numbers are given per tenant and identity in one total order every node agrees on,
        atomically with the registration: the highest is the newest login, which is what
        ``session_policy="replace"`` keeps.  Registering a session id again keeps its number.
        """
        ...

    def unregister(self, session_id: str) -> None:
        """Remove a session; it leaves every channel it was in as well (a closing session leaves all)."""
        ...

    def get_identity_sessions(self, tenant_id: str, identity_id: str) -> list[SessionInfo]: ...

    def is_online(self, tenant_id: str, identity_id: str) -> bool: ...

    def sequence(self, tenant_id: str, identity_id: str) -> int:
        """The login number last given to the identity (0 once it has no session left)."""
        ...

    def channel_join(self, channel: str, info: SessionInfo) -> None:
        """Make the session a member of ``channel`` (SPEC section 13, channel presence); idempotent.

        Members are leased with their node (``info.node_id``) exactly like sessions: a node
        that dies takes its members out of every answer within its ttl.
        """
        ...

    def channel_leave(self, channel: str, session_id: str) -> None:
        """Take the session out of ``channel``; a session that is no member is a no-op."""
        ...

    def channel_members(self, channel: str) -> list[SessionInfo]:
        """The channel's members on live nodes, cluster-wide, oldest session first."""
        ...

    def channel_count(self, channel: str) -> int:
        """How many members the channel has on live nodes (what `channel_members` would list)."""
        ...

    def renew(self, node_id: str, ttl: float) -> None: ...

    def close(self) -> None: ...

"""The `Presence` protocol every presence store implements, and the optional `NodeDirectory`."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

from ..types import SessionInfo

__all__ = ["NodeDirectory", "NodeLease", "OnlineIdentity", "Presence"]


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


@dataclasses.dataclass(frozen=True)
class NodeLease:
    """One live node as the store sees it: what the admin page lists (issue 18)."""

    node_id: str
    #: the node's sessions in the store right now (not a figure the node reported)
    sessions: int
    #: seconds until the lease ends, by the store's own clock (no clock of two machines is
    #: compared); None where the store keeps no leases (the in-process `MemoryPresence`)
    expires_in: float | None
    #: the node's last stats record (`NodeDirectory.publish_node_stats`), None if it wrote none
    stats: dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class OnlineIdentity:
    """An identity with a session on a live node, and how many sessions it has there."""

    tenant_id: str
    identity_id: str
    sessions: int


def identity_matches(search: str, tenant_id: str, identity_id: str) -> bool:
    """The admin page's search: a case-insensitive substring of the identity id or the tenant id."""
    needle = search.casefold()
    return not needle or needle in identity_id.casefold() or needle in tenant_id.casefold()


@runtime_checkable
class NodeDirectory(Protocol):
    """What a store offers the admin page beside `Presence`: the live nodes, their stats, who is online.

    Optional: a `Presence` without these methods serves every gateway feature; only the
    admin page needs them.  The admin page reads the cluster from here rather than asking
    every node over the broker: one store read answers however many nodes there are, and
    a node that died is simply gone from the answer (its lease ended) instead of being
    waited for.
    """

    def publish_node_stats(self, node_id: str, record: dict[str, Any], ttl: float) -> None:
        """Keep ``record`` (small, JSON-serialisable) as the node's stats for ``ttl`` seconds."""
        ...

    def nodes(self, limit: int = 1000) -> list[NodeLease]:
        """The live nodes (at most ``limit``), each with its session count and last stats record."""
        ...

    def online_identities(self, search: str = "", limit: int = 500) -> list[OnlineIdentity]:
        """Identities with a session on a live node that match ``search`` (`identity_matches`), at most ``limit``.

        Bounded because a cluster may hold millions: when more match, which ones come back
        is unspecified (the admin page asks for one more than it shows, to say so), and the
        session counts may then be partial.
        """
        ...

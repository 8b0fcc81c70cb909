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

    def unregister(self, session_id: str) -> None: ...

    def get_identity_sessions(self, tenant_id: str, identity_id: str) -> list[SessionInfo]: ...

    def is_online(self, tenant_id: str, identity_id: str) -> bool: ...

    def sequence(self, tenant_id: str, identity_id: str) -> int:
        """The login number last given to the identity (0 once it has no session left)."""
        ...

    def renew(self, node_id: str, ttl: float) -> None: ...

    def close(self) -> None: ...

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

    def register(self, info: SessionInfo) -> None: ...

    def unregister(self, session_id: str) -> None: ...

    def get_identity_sessions(self, tenant_id: str, identity_id: str) -> list[SessionInfo]: ...

    def is_online(self, tenant_id: str, identity_id: str) -> bool: ...

    def renew(self, node_id: str, ttl: float) -> None: ...

    def close(self) -> None: ...

"""The local index of live sessions: by id, and by (tenant, identity)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Hub"]

IdentityKey = tuple[str, str]


class Hub:
    __slots__ = ("_by_id", "_by_identity")

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        self._by_identity: dict[IdentityKey, dict[str, Session]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._by_id.values()))

    def add(self, session: Session) -> None:
        self._by_id[session.id] = session
        key = (session.identity.tenant_id, session.identity.id)
        self._by_identity.setdefault(key, {})[session.id] = session

    def remove(self, session: Session) -> bool:
        if self._by_id.pop(session.id, None) is None:
            return False
        key = (session.identity.tenant_id, session.identity.id)
        group = self._by_identity.get(key)
        if group is not None:
            group.pop(session.id, None)
            if not group:
                del self._by_identity[key]
        return True

    def get(self, session_id: str) -> Session | None:
        return self._by_id.get(session_id)

    def of_identity(self, tenant_id: str, identity_id: str) -> list[Session]:
        group = self._by_identity.get((tenant_id, identity_id))
        return list(group.values()) if group else []

    def sessions(self) -> list[Session]:
        return list(self._by_id.values())

    def identities(self) -> list[IdentityKey]:
        """The (tenant, identity) pairs with a live session here: empty once every session left."""
        return list(self._by_identity)

"""The local index of live sessions: by id, by (tenant, identity) and by channel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Hub"]

IdentityKey = tuple[str, str]


class Hub:
    __slots__ = ("_by_channel", "_by_id", "_by_identity")

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        self._by_identity: dict[IdentityKey, dict[str, Session]] = {}
        #: channel → its local subscribers, in the order they joined
        self._by_channel: dict[str, dict[str, Session]] = {}

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

    def join(self, session: Session, channel: str) -> bool:
        """Add ``session`` to ``channel``; True when it is the channel's first local subscriber."""
        members = self._by_channel.get(channel)
        first = members is None
        if members is None:
            members = self._by_channel[channel] = {}
        members[session.id] = session
        return first

    def leave(self, session: Session, channel: str) -> bool:
        """Take ``session`` out of ``channel``; True when that left the channel with nobody here."""
        members = self._by_channel.get(channel)
        if members is None or members.pop(session.id, None) is None:
            return False
        if not members:
            del self._by_channel[channel]
            return True
        return False

    def of_channel(self, channel: str) -> list[Session]:
        members = self._by_channel.get(channel)
        return list(members.values()) if members else []

    def channel_size(self, channel: str) -> int:
        members = self._by_channel.get(channel)
        return len(members) if members else 0

    def channels(self) -> list[str]:
        """The channels with a local subscriber: empty once every subscriber left."""
        return list(self._by_channel)

    def identities(self) -> list[IdentityKey]:
        """The (tenant, identity) pairs with a live session here: empty once every session left."""
        return list(self._by_identity)

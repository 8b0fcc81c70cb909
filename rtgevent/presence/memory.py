"""In-process presence: the default for a single node (and for tests of many nodes in one process)."""

from __future__ import annotations

import threading

from ..types import SessionInfo

__all__ = ["MemoryPresence"]


class MemoryPresence:
    """A dict behind a lock; node leases are not needed, a process cannot outlive itself."""

    #: reaches no other process: a node on it needs no start to serve
    shared = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, SessionInfo] = {}
        self._by_identity: dict[tuple[str, str], set[str]] = {}

    def register(self, info: SessionInfo) -> None:
        with self._lock:
            self._sessions[info.session_id] = info
            self._by_identity.setdefault((info.tenant_id, info.identity_id), set()).add(info.session_id)

    def unregister(self, session_id: str) -> None:
        with self._lock:
            info = self._sessions.pop(session_id, None)
            if info is None:
                return
            key = (info.tenant_id, info.identity_id)
            ids = self._by_identity.get(key)
            if ids is not None:
                ids.discard(session_id)
                if not ids:
                    del self._by_identity[key]

    def get_identity_sessions(self, tenant_id: str, identity_id: str) -> list[SessionInfo]:
        with self._lock:
            ids = self._by_identity.get((tenant_id, identity_id), ())
            return sorted((self._sessions[i] for i in ids), key=lambda s: s.connected_at)

    def is_online(self, tenant_id: str, identity_id: str) -> bool:
        with self._lock:
            return bool(self._by_identity.get((tenant_id, identity_id)))

    def renew(self, node_id: str, ttl: float) -> None:
        """Nothing to renew: entries live exactly as long as this process."""

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()
            self._by_identity.clear()

"""In-process presence: the default for a single node (and for tests of many nodes in one process)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

from ..channels import check_channel
from ..types import SessionInfo
from .base import NodeLease, OnlineIdentity, identity_matches

__all__ = ["MemoryPresence"]

IdentityKey = tuple[str, str]


class MemoryPresence:
    """A dict behind a lock; node leases are not needed, a process cannot outlive itself."""

    #: reaches no other process: a node on it needs no start to serve
    shared = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, SessionInfo] = {}
        self._by_identity: dict[IdentityKey, set[str]] = {}
        #: each session's login number, and each identity's last one (dropped with its last session)
        self._numbers: dict[str, int] = {}
        self._last: dict[IdentityKey, int] = {}
        #: channel -> its members (session id -> info), and each member's channels
        self._members: dict[str, dict[str, SessionInfo]] = {}
        self._joined: dict[str, set[str]] = {}
        #: node id -> (its stats record, when it expires on the monotonic clock)
        self._node_stats: dict[str, tuple[dict[str, Any], float]] = {}

    def register(self, info: SessionInfo) -> int:
        key = (info.tenant_id, info.identity_id)
        with self._lock:
            previous = self._sessions.get(info.session_id)
            number = self._numbers.get(info.session_id)
            if previous is not None and (previous.tenant_id, previous.identity_id) != key:
                self._drop(previous)  # the id now names another identity's session
                number = None
            if number is None:
                number = self._last.get(key, 0) + 1
                self._last[key] = number
                self._numbers[info.session_id] = number
            self._sessions[info.session_id] = info
            self._by_identity.setdefault(key, set()).add(info.session_id)
            return number

    def unregister(self, session_id: str) -> None:
        with self._lock:
            info = self._sessions.get(session_id)
            if info is not None:
                self._drop(info)
            for channel in self._joined.pop(session_id, ()):
                self._leave(channel, session_id)

    def _drop(self, info: SessionInfo) -> None:
        del self._sessions[info.session_id]
        self._numbers.pop(info.session_id, None)
        key = (info.tenant_id, info.identity_id)
        ids = self._by_identity.get(key)
        if ids is not None:
            ids.discard(info.session_id)
            if not ids:
                del self._by_identity[key]
                self._last.pop(key, None)

    def get_identity_sessions(self, tenant_id: str, identity_id: str) -> list[SessionInfo]:
        with self._lock:
            ids = self._by_identity.get((tenant_id, identity_id), ())
            return sorted((self._sessions[i] for i in ids), key=lambda s: s.connected_at)

    def is_online(self, tenant_id: str, identity_id: str) -> bool:
        with self._lock:
            return bool(self._by_identity.get((tenant_id, identity_id)))

    def sequence(self, tenant_id: str, identity_id: str) -> int:
        with self._lock:
            return self._last.get((tenant_id, identity_id), 0)

    def channel_join(self, channel: str, info: SessionInfo) -> None:
        check_channel(channel)
        with self._lock:
            self._members.setdefault(channel, {})[info.session_id] = info
            self._joined.setdefault(info.session_id, set()).add(channel)

    def channel_leave(self, channel: str, session_id: str) -> None:
        with self._lock:
            channels = self._joined.get(session_id)
            if channels is None or channel not in channels:
                return
            channels.discard(channel)
            if not channels:
                del self._joined[session_id]
            self._leave(channel, session_id)

    def _leave(self, channel: str, session_id: str) -> None:
        members = self._members.get(channel)
        if members is not None:
            members.pop(session_id, None)
            if not members:
                del self._members[channel]

    def channel_members(self, channel: str) -> list[SessionInfo]:
        check_channel(channel)
        with self._lock:
            members = list(self._members.get(channel, {}).values())
        return sorted(members, key=lambda s: (s.connected_at, s.session_id))

    def channel_count(self, channel: str) -> int:
        check_channel(channel)
        with self._lock:
            return len(self._members.get(channel, ()))

    def renew(self, node_id: str, ttl: float) -> None:
        """Nothing to renew: entries live exactly as long as this process."""

    # ------------------------------------------------------------------ NodeDirectory (the admin page)

    def publish_node_stats(self, node_id: str, record: dict[str, Any], ttl: float) -> None:
        """Keep a copy of ``record`` for ``ttl`` seconds (a JSON round trip, as Redis would store it)."""
        copy = json.loads(json.dumps(record))
        with self._lock:
            self._node_stats[node_id] = (copy, time.monotonic() + ttl)

    def nodes(self, limit: int = 1000) -> list[NodeLease]:
        """Nodes with a session or an unexpired stats record; no leases here, so ``expires_in`` is None."""
        now = time.monotonic()
        with self._lock:
            for node_id in [n for n, (_, until) in self._node_stats.items() if until <= now]:
                del self._node_stats[node_id]
            counts = Counter(info.node_id for info in self._sessions.values())
            names = sorted(set(counts) | set(self._node_stats))[:limit]
            return [
                NodeLease(n, counts.get(n, 0), None, self._node_stats[n][0] if n in self._node_stats else None)
                for n in names
            ]

    def online_identities(self, search: str = "", limit: int = 500) -> list[OnlineIdentity]:
        with self._lock:
            found = [
                OnlineIdentity(tenant, identity, len(ids))
                for (tenant, identity), ids in self._by_identity.items()
                if identity_matches(search, tenant, identity)
            ]
        found.sort(key=lambda o: (o.tenant_id, o.identity_id))
        return found[:limit]

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()
            self._by_identity.clear()
            self._numbers.clear()
            self._last.clear()
            self._members.clear()
            self._joined.clear()
            self._node_stats.clear()

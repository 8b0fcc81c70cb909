"""The bounded send queue and its backpressure policy (pure: no greenlets, no sockets).

Why slow clients are closed rather than waited for: one broadcast goes to every session,
and waiting for the slowest would let one phone on a bad network stall everyone (see
websockets' ``docs/topics/broadcast.rst``).  So sends from elsewhere never block: the
policy decides at once.  The session's own reader is the exception (it waits for room:
the client is slowed, not dropped), and that waiting lives in the session, not here.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Generic, TypeVar

from .config import Backpressure

__all__ = ["Outbox", "Verdict"]

T = TypeVar("T")


class Verdict(enum.Enum):
    QUEUED = "queued"
    #: the queue was full and the new item was dropped (DROP_NEWEST)
    DROPPED_NEWEST = "dropped_newest"
    #: the queue was full, the oldest item was dropped and the new one queued (DROP_OLDEST)
    DROPPED_OLDEST = "dropped_oldest"
    #: the queue was full and the consumer must be closed (CLOSE); nothing was queued
    OVERFLOW = "overflow"


class Outbox(Generic[T]):
    __slots__ = ("_items", "limit", "policy")

    def __init__(self, limit: int, policy: Backpressure) -> None:
        # A deque allocates a 64-slot block up front (about 760 bytes): an idle session
        # never needs it, so it is made on the first push.
        self._items: deque[T] | None = None
        self.limit = limit
        self.policy = policy

    def __len__(self) -> int:
        return len(self._items) if self._items else 0

    def full(self) -> bool:
        return len(self) >= self.limit

    def push(self, item: T) -> Verdict:
        items = self._items
        if items is None:
            items = self._items = deque()
        if len(items) < self.limit:
            items.append(item)
            return Verdict.QUEUED
        if self.policy is Backpressure.DROP_OLDEST:
            items.popleft()
            items.append(item)
            return Verdict.DROPPED_OLDEST
        if self.policy is Backpressure.DROP_NEWEST:
            return Verdict.DROPPED_NEWEST
        return Verdict.OVERFLOW

    def force(self, item: T) -> None:
        """Queue past the limit (used only when the caller has waited for room already)."""
        if self._items is None:
            self._items = deque()
        self._items.append(item)

    def pop(self) -> T | None:
        return self._items.popleft() if self._items else None

    def clear(self) -> int:
        dropped = len(self)
        self._items = None
        return dropped

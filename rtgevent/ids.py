"""Session id generation (pure).  An id generator is any ``Callable[[], str]``.

The default is 128 random bits, hex: unguessable, so a session id can be shown to a
client.  `SnowflakeIds` is the seed-003 scheme (time, node, sequence) for deployments
that want sortable ids.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from .errors import InvalidOption

__all__ = ["IdGenerator", "SnowflakeIds", "random_id"]

IdGenerator = Callable[[], str]


def random_id() -> str:
    return os.urandom(16).hex()


class SnowflakeIds:
    """Twitter-style 64-bit ids: 41 bits of milliseconds since ``epoch_ms``, 10 of node, 12 of sequence."""

    def __init__(self, node: int, epoch_ms: int = 1288834974657) -> None:
        if not 0 <= node < 1024:
            raise InvalidOption("node", f"must be an integer in [0, 1024), got {node!r}")
        self._node = node
        self._epoch = epoch_ms
        self._last = -1
        self._seq = 0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            now = int(time.time() * 1000)
            if now < self._last:
                now = self._last  # clock went back: keep ids monotonic
            if now == self._last:
                self._seq = (self._seq + 1) & 0xFFF
                if self._seq == 0:
                    now = self._last + 1  # sequence exhausted: borrow the next millisecond
            else:
                self._seq = 0
            self._last = now
            return str(((now - self._epoch) << 22) | (self._node << 12) | self._seq)

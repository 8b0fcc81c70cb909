"""MemoryHistory: streams in this process, for one node (the default) and tests.

Each stream is a deque bounded by its size, forgotten ``ttl`` seconds after its last
append (checked on access, and swept every `sweep_every` appends: nothing runs in the
background, and memory stays bounded); a forgotten stream starts again at offset 1 under
a new epoch, exactly like a Redis stream that expired.  Thread-safe
(an OS lock held only around the deque, never across a switch), so native threads and the
hub may share it.  Nodes do
not share it: several nodes need `RedisHistory`.
"""

from __future__ import annotations

import collections
import secrets
import sys
import threading
import time
from typing import Any

from .base import Position, Publication, Recovery, Stamp, as_stamp, reaches_back

__all__ = ["MemoryHistory"]


def _native_lock() -> Any:
    """An OS lock even under gevent's monkey-patching.

    Nothing yields while it is held, so greenlets of one thread never wait on it; native
    threads do, and gevent's patched lock can starve them (gevent issue 1744).
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return monkey.get_original("_thread", "allocate_lock")()
    return threading.Lock()


class _Stream:
    __slots__ = ("entries", "epoch", "expires", "top")

    def __init__(self, size: int) -> None:
        self.entries: collections.deque[Publication] = collections.deque(maxlen=size)
        self.epoch = secrets.token_hex(4)
        self.top = 0
        self.expires = 0.0


class MemoryHistory:
    """A `History` in this process's memory; see the module docstring."""

    #: one process's streams: several nodes need a shared store (``rtgevent serve --history``)
    shared = False

    #: appends between two sweeps of expired streams (which nobody may touch again)
    sweep_every = 1024

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._lock = _native_lock()
        self._clock = time.monotonic
        self._appends = 0

    def append(self, stream: str, payload: Stamp | str | bytes, size: int, ttl: float) -> Position:
        entry = as_stamp(payload)
        with self._lock:
            now = self._clock()
            self._appends += 1
            if self._appends % self.sweep_every == 0:
                self._sweep(now)
            state = self._live(stream, now)
            if state is None:
                state = self._streams[stream] = _Stream(size)
            elif state.entries.maxlen != size:
                state.entries = collections.deque(state.entries, maxlen=size)
            state.top += 1
            state.expires = now + ttl
            state.entries.append(Publication(state.top, entry.render(state.top, state.epoch)))
            return Position(state.top, state.epoch)

    def since(self, stream: str, offset: int, epoch: str, limit: int) -> Recovery:
        with self._lock:
            state = self._live(stream, self._clock())
            if state is None:
                return Recovery([], 0, "", reaches_back(offset, epoch, Position(0, ""), 1))
            top = Position(state.top, state.epoch)
            first = state.entries[0].offset if state.entries else state.top + 1
            if not reaches_back(offset, epoch, top, first):
                return Recovery([], top.offset, top.epoch, False)
            skip = max(0, offset + 1 - first)
            found = [state.entries[i] for i in range(skip, min(len(state.entries), skip + max(1, limit)))]
            return Recovery(found, top.offset, top.epoch, True)

    def position(self, stream: str) -> Position:
        with self._lock:
            state = self._live(stream, self._clock())
            return Position(0, "") if state is None else Position(state.top, state.epoch)

    def close(self) -> None:
        with self._lock:
            self._streams.clear()

    def __len__(self) -> int:
        """How many streams are held (expired ones included until touched)."""
        return len(self._streams)

    def _sweep(self, now: float) -> None:
        for name in [name for name, state in self._streams.items() if now >= state.expires]:
            del self._streams[name]

    def _live(self, stream: str, now: float) -> _Stream | None:
        state = self._streams.get(stream)
        if state is not None and now >= state.expires:
            del self._streams[stream]
            return None
        return state

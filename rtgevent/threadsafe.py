"""Hand calls from native OS threads to the gevent hub that owns the sessions.

Legacy code calls ``rt.send_to_identity(...)`` from a thread pool or a C library
callback: a real OS thread, outside the gevent loop.  Touching a socket, a gevent Event
or a greenlet from there fails ("cannot switch to a different thread") or corrupts the
loop.  `HubCaller.call` detects that case, schedules the function in a new greenlet of
the owning hub through libev's thread-safe wake-up (``run_callback_threadsafe``) and
blocks the calling thread on a native lock until the greenlet returns or raises.  From
the hub's own thread the function simply runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import gevent
from gevent import monkey

from .errors import RealtimeError

__all__ = ["HubCaller"]

#: A native thread never waits longer than this for the hub (a stuck hub is a bug to see).
CALL_TIMEOUT = 60.0

T = TypeVar("T")

# The unpatched primitives: in a monkey-patched process ``threading`` is greenlet-based.
_get_ident: Callable[[], int] = monkey.get_original("_thread", "get_ident")
_allocate_lock: Callable[[], Any] = monkey.get_original("_thread", "allocate_lock")


class _Outcome:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = _allocate_lock()
        self.done.acquire()
        self.value: Any = None
        self.error: BaseException | None = None


class HubCaller:
    """Runs functions in the greenlet world of the hub that created it."""

    def __init__(self) -> None:
        hub = gevent.get_hub()
        self._loop = hub.loop
        self._thread = hub.thread_ident

    def in_hub_thread(self) -> bool:
        return bool(_get_ident() == self._thread)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the hub's thread; its result or its exception, in the caller's thread."""
        if _get_ident() == self._thread:
            return fn(*args)
        outcome = _Outcome()

        def run() -> None:
            try:
                outcome.value = fn(*args)
            except BaseException as exc:  # handed to the calling thread, raised there
                outcome.error = exc
            finally:
                outcome.done.release()

        self._loop.run_callback_threadsafe(gevent.spawn, run)
        if not outcome.done.acquire(True, CALL_TIMEOUT):
            raise RealtimeError(f"the gevent hub did not run {getattr(fn, '__name__', fn)!r} within {CALL_TIMEOUT} s")
        if outcome.error is not None:
            raise outcome.error
        return outcome.value  # type: ignore[no-any-return]

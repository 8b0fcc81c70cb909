"""How long a test waits, and the one way it waits for something it can only observe.

Every bound on a wait in the tests is `WAIT` (or a multiple): generous, because a busy
machine is slow, and finite, because a test that hangs tells nothing.  `wait_until` bounds
a whole wait: a condition that can only be asked about (another process, a store, a
counter), or a run of blocking reads until the one expected (each read may block; the
deadline still holds).  A single expected event or message is waited for directly, with a
timeout, not polled.  The tests import these from here, not from conftest: conftest
monkey-patches first and imports this module after.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import gevent

__all__ = ["WAIT", "wait_until"]

#: generous: the machine is a busy 2-core box
WAIT = 20.0

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], what: str | Callable[[], str], timeout: float = WAIT, interval: float = 0.02
) -> T:
    """Call ``predicate`` every ``interval`` s until it returns something truthy; return that.

    Past ``timeout`` (even inside a ``predicate`` that blocks) fail with an AssertionError
    naming ``what``; a callable ``what`` is asked then, so it can describe what was seen.
    """
    timer = gevent.Timeout(timeout)
    timer.start()
    try:
        while True:
            value = predicate()
            if value:
                return value
            gevent.sleep(interval)
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        described = what() if callable(what) else what
        raise AssertionError(f"timed out after {timeout:g} s waiting for {described}") from None
    finally:
        timer.close()

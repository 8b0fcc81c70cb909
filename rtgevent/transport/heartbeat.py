"""The heartbeat deadlines of a hub's connections, on one timer: a wheel of `TICK`-long slots.

A libev timer per connection made every ping its own wake-up of the hub: at 20,000 idle
connections and a 30 s heartbeat, the timer heap's work and one loop iteration per ping
cost as much as the ping itself (49 µs of server CPU per ping, against 27 µs on the
wheel).  Here every deadline falls into the slot of the first tick at or after it, and one
repeating timer per hub runs the slots that are due, so that the pings of a tick go out
together and their pongs come back together.  A deadline is never run early, and late by
at most one tick (plus the hub's own lateness); the timer runs only while a deadline waits.
Slots are counted on ``time.monotonic()``: libev's cached ``now`` is wall-clock time, and may
be as old as the loop's last iteration.

Runs in the hub: what a slot calls must not block (`Connection.heartbeat_due` only sends
with non-blocking writes or asks its writer).
"""

from __future__ import annotations

import logging
import math
import weakref
from time import monotonic
from typing import Any, Protocol

__all__ = ["TICK", "Beating", "Heartbeats", "heartbeats_of"]

log = logging.getLogger("rtgevent.transport")

#: the wheel's resolution, seconds: how late a deadline may be (against a heartbeat of seconds),
#: and how often an idle hub with connections wakes; the longer, the more pings a tick sends
#: together (at 20,000 connections and 30 s, 27 µs per ping with 0.25 s, 31 µs with 0.05 s)
TICK = 0.25


class Beating(Protocol):
    """What the wheel keeps: a connection with a deadline in at most one slot."""

    #: the slot its deadline is in (None: no deadline)
    heartbeat_slot: int | None

    def heartbeat_due(self) -> None: ...

    def heartbeat_failed(self, exc: BaseException) -> None: ...


class Heartbeats:
    """One per hub; see the module docstring."""

    __slots__ = ("_next", "_slots", "_timer")

    def __init__(self, loop: Any) -> None:
        self._timer = loop.timer(TICK, TICK)
        #: slot number (deadline / TICK, rounded up) -> its connections, in the order they came
        self._slots: dict[int, dict[Beating, None]] = {}
        #: the first slot not run yet
        self._next = 0

    def schedule(self, beating: Beating, seconds: float) -> None:
        """Call ``beating.heartbeat_due()`` in ``seconds`` (its earlier deadline, if any, is dropped)."""
        self.cancel(beating)
        now = monotonic()
        key = math.ceil((now + seconds) / TICK)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = {}
        slot[beating] = None
        beating.heartbeat_slot = key
        if not self._timer.active:
            self._next = math.floor(now / TICK)
            self._timer.start(self._tick)

    def cancel(self, beating: Beating) -> None:
        """Drop ``beating``'s deadline, if it has one."""
        key, beating.heartbeat_slot = beating.heartbeat_slot, None
        if key is None:
            return
        slot = self._slots.get(key)
        if slot is not None:
            slot.pop(beating, None)
            if not slot:
                del self._slots[key]
        if not self._slots:
            self._timer.stop()

    def __len__(self) -> int:
        return sum(len(slot) for slot in self._slots.values())

    def _tick(self) -> None:
        due = math.floor(monotonic() / TICK)
        while self._next <= due and self._slots:
            key = self._next
            slot = self._slots.get(key)
            # One at a time, from the live slot: a call may cancel another deadline of this
            # slot (it then is not run); a new deadline is always in a later slot.
            while slot:
                beating = next(iter(slot))
                del slot[beating]
                beating.heartbeat_slot = None
                try:
                    beating.heartbeat_due()
                except Exception as exc:  # a bug in one connection must not stop the others' heartbeats
                    log.exception("heartbeat failed")
                    beating.heartbeat_failed(exc)
            self._slots.pop(key, None)
            self._next = key + 1
        if not self._slots:
            self._timer.stop()


_wheels: weakref.WeakKeyDictionary[Any, Heartbeats] = weakref.WeakKeyDictionary()


def heartbeats_of(hub: Any) -> Heartbeats:
    """The hub's `Heartbeats`, made at the first call."""
    wheel = _wheels.get(hub)
    if wheel is None:
        wheel = _wheels[hub] = Heartbeats(hub.loop)
    return wheel

"""The bounded send queue (pure): each Backpressure policy's verdict at the bound, force, clear, order.

What the verdicts do to a session (close 1008, raise BackpressureError, count a drop) is
tested end to end in test_lifecycle.py; here only the queue's own decisions.
"""

from __future__ import annotations

import pytest

from rtgevent.config import Backpressure
from rtgevent.outbox import Outbox, Verdict


def filled(policy: Backpressure, limit: int = 3) -> Outbox[int]:
    """An outbox holding 0 .. limit-1: exactly at its bound."""
    outbox: Outbox[int] = Outbox(limit, policy)
    for n in range(limit):
        assert outbox.push(n) is Verdict.QUEUED
    return outbox


def drain(outbox: Outbox[int]) -> list[int]:
    items = []
    while (item := outbox.pop()) is not None:
        items.append(item)
    return items


@pytest.mark.parametrize("policy", list(Backpressure))
def test_below_the_bound_every_policy_queues(policy: Backpressure) -> None:
    """Under the limit every push is QUEUED, whatever the policy; full() turns true at the limit."""
    outbox: Outbox[int] = Outbox(3, policy)
    assert len(outbox) == 0 and not outbox.full()
    assert outbox.push(0) is Verdict.QUEUED
    assert outbox.push(1) is Verdict.QUEUED
    assert not outbox.full()
    assert outbox.push(2) is Verdict.QUEUED
    assert len(outbox) == 3 and outbox.full()


def test_close_at_the_bound_overflows_and_queues_nothing() -> None:
    """CLOSE: a push at the bound is OVERFLOW and leaves the queue as it was."""
    outbox = filled(Backpressure.CLOSE)
    assert outbox.push(99) is Verdict.OVERFLOW
    assert drain(outbox) == [0, 1, 2]


def test_drop_newest_at_the_bound_drops_the_new_item() -> None:
    """DROP_NEWEST: a push at the bound is DROPPED_NEWEST; the queued items stay, the new one is gone."""
    outbox = filled(Backpressure.DROP_NEWEST)
    assert outbox.push(99) is Verdict.DROPPED_NEWEST
    assert len(outbox) == 3
    assert drain(outbox) == [0, 1, 2]


def test_drop_oldest_at_the_bound_evicts_the_oldest_and_queues_the_new() -> None:
    """DROP_OLDEST: each push at the bound evicts the oldest item; the queue keeps the newest ones."""
    outbox = filled(Backpressure.DROP_OLDEST)
    assert outbox.push(3) is Verdict.DROPPED_OLDEST
    assert outbox.push(4) is Verdict.DROPPED_OLDEST
    assert len(outbox) == 3
    assert drain(outbox) == [2, 3, 4]


@pytest.mark.parametrize("policy", list(Backpressure))
def test_force_queues_past_the_bound_and_the_policy_still_holds(policy: Backpressure) -> None:
    """force() queues past the limit (the reader waited for room); later pushes still meet the policy."""
    outbox = filled(policy)
    outbox.force(3)
    assert len(outbox) == 4 and outbox.full()
    verdict = outbox.push(4)
    assert verdict is not Verdict.QUEUED
    expected = {
        Backpressure.CLOSE: [0, 1, 2, 3],
        Backpressure.DROP_NEWEST: [0, 1, 2, 3],
        Backpressure.DROP_OLDEST: [1, 2, 3, 4],
    }[policy]
    assert drain(outbox) == expected


def test_force_on_an_empty_outbox_queues() -> None:
    """force() works on an outbox that never had an item."""
    outbox: Outbox[int] = Outbox(1, Backpressure.CLOSE)
    outbox.force(7)
    assert drain(outbox) == [7]


def test_pop_is_first_in_first_out_and_none_when_empty() -> None:
    """Items come out in the order they went in; pop() on an empty outbox is None, never an error."""
    outbox: Outbox[int] = Outbox(10, Backpressure.CLOSE)
    assert outbox.pop() is None
    for n in (5, 1, 4):
        outbox.push(n)
    assert outbox.pop() == 5
    outbox.push(9)
    assert drain(outbox) == [1, 4, 9]
    assert outbox.pop() is None and len(outbox) == 0


def test_clear_empties_and_says_how_many_were_dropped() -> None:
    """clear() drops every queued item and returns how many; the outbox is usable again after."""
    outbox = filled(Backpressure.CLOSE)
    assert outbox.clear() == 3
    assert len(outbox) == 0 and not outbox.full() and outbox.pop() is None
    assert outbox.clear() == 0
    assert outbox.push(8) is Verdict.QUEUED
    assert drain(outbox) == [8]


def test_falsy_items_are_queued_and_popped() -> None:
    """Items are kept whatever their truth value (an empty frame is still a frame)."""
    outbox: Outbox[bytes] = Outbox(2, Backpressure.CLOSE)
    assert outbox.push(b"") is Verdict.QUEUED
    assert len(outbox) == 1
    assert outbox.pop() == b""

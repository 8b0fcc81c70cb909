"""The hub's heartbeat wheel (`Heartbeats`), on a real gevent loop: deadlines are never run
early, a dropped one is never run, a failing one does not stop the others, and the wheel's
timer stops once nothing waits."""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent
from gevent.event import Event

from rtgevent.transport.heartbeat import TICK, Heartbeats, heartbeats_of
from tests import rawws
from tests.conftest import Server
from tests.waiting import WAIT, wait_until


class Beat:
    def __init__(self, name: str, seen: list[tuple[str, float]], then: Callable[[], None] | None = None) -> None:
        self.name = name
        self.heartbeat_slot: int | None = None
        self.seen = seen
        self.then = then
        self.failed: list[BaseException] = []
        self.done = Event()

    def heartbeat_due(self) -> None:
        self.seen.append((self.name, time.monotonic()))
        self.done.set()
        if self.then is not None:
            self.then()

    def heartbeat_failed(self, exc: BaseException) -> None:
        self.failed.append(exc)


def test_deadlines_run_in_order_never_early_and_once() -> None:
    wheel = Heartbeats(gevent.get_hub().loop)
    seen: list[tuple[str, float]] = []
    late, soon = Beat("late", seen), Beat("soon", seen)
    started = time.monotonic()
    wheel.schedule(late, 6 * TICK)
    wheel.schedule(soon, 2 * TICK)
    assert late.done.wait(WAIT)
    assert [name for name, _ in seen] == ["soon", "late"]
    assert seen[0][1] - started >= 2 * TICK - 0.002  # libev's clock may be a hair behind ours
    assert seen[1][1] - started >= 6 * TICK - 0.002
    assert len(wheel) == 0 and late.heartbeat_slot is None


def test_a_new_deadline_replaces_the_old_and_a_dropped_one_never_runs() -> None:
    wheel = Heartbeats(gevent.get_hub().loop)
    seen: list[tuple[str, float]] = []
    moved, dropped, marker = Beat("moved", seen), Beat("dropped", seen), Beat("marker", seen)
    wheel.schedule(moved, TICK)
    wheel.schedule(moved, 4 * TICK)  # replaces the first
    wheel.schedule(dropped, TICK)
    wheel.cancel(dropped)
    wheel.schedule(marker, 6 * TICK)
    assert marker.done.wait(WAIT)
    assert [name for name, _ in seen] == ["moved", "marker"]


def test_a_call_may_drop_another_deadline_of_its_own_slot() -> None:
    wheel = Heartbeats(gevent.get_hub().loop)
    seen: list[tuple[str, float]] = []
    second = Beat("second", seen)
    first = Beat("first", seen, then=lambda: wheel.cancel(second))
    marker = Beat("marker", seen)
    wheel.schedule(first, TICK)
    wheel.schedule(second, TICK)  # the same slot, after ``first``
    wheel.schedule(marker, 4 * TICK)
    assert marker.done.wait(WAIT)
    assert [name for name, _ in seen] == ["first", "marker"]


def test_a_failing_call_is_reported_to_its_owner_and_the_others_still_run() -> None:
    wheel = Heartbeats(gevent.get_hub().loop)
    seen: list[tuple[str, float]] = []

    def boom() -> None:
        raise RuntimeError("a bug")

    broken, fine = Beat("broken", seen, then=boom), Beat("fine", seen)
    wheel.schedule(broken, TICK)
    wheel.schedule(fine, TICK)
    assert fine.done.wait(WAIT)
    assert [name for name, _ in seen] == ["broken", "fine"]
    assert [str(exc) for exc in broken.failed] == ["a bug"] and not fine.failed


def test_the_timer_runs_only_while_a_deadline_waits() -> None:
    wheel = Heartbeats(gevent.get_hub().loop)
    seen: list[tuple[str, float]] = []
    beat = Beat("one", seen)
    wheel.schedule(beat, TICK)
    assert wheel._timer.active
    assert beat.done.wait(WAIT)  # woken after the tick that ran it returned
    assert not wheel._timer.active and len(wheel) == 0
    wheel.schedule(beat, 10.0)
    wheel.cancel(beat)
    assert not wheel._timer.active


def test_connections_that_end_leave_no_deadline_behind(serve_local: Callable[..., Server]) -> None:
    """Sessions answering pings over several heartbeats, then gone: the hub's wheel is empty."""
    server = serve_local(heartbeat_interval=0.1, pong_timeout=5.0)
    wheel = heartbeats_of(gevent.get_hub())
    before = len(wheel)  # another test's connection may still be ending in this process
    clients = [rawws.RawClient(server.host, server.port) for _ in range(3)]
    for client in clients:
        assert client.handshake() == 101
    for client in clients:
        for _ in range(3):  # three pings each, every one answered
            ping = client.recv_frame()
            assert ping.opcode == rawws.PING
            client.send(rawws.frame(rawws.PONG, ping.payload))
    assert len(wheel) >= len(clients)
    for client in clients:
        client.close()
    wait_until(lambda: len(wheel) <= before, lambda: f"{len(wheel)} deadlines left, {before} before")
    assert server.control("disconnects") and all(d["initiator"] != "heartbeat" for d in server.control("disconnects"))

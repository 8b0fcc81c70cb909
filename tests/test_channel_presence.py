"""Channel presence and join/leave events on one node (SPEC section 13).

``rt.channel_members`` / ``rt.channel_count`` follow subscriptions, unsubscriptions and
closes; they refuse a channel whose namespace keeps no presence; ``rt.join`` / ``rt.leave``
reach the channel's other subscribers and nobody else; a presence store that is down is
reported, never raised to the subscriber.  Tests that take ``connect`` run over a real
WebSocket and through ``rt.test_client()``.  The cluster side is in
test_channel_presence_cluster.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gevent import monkey

from rtgevent import ChannelOptions, Config, Identity, InvalidOption, Message, Realtime, Session, Unauthorized
from rtgevent.errors import BrokerUnavailable
from rtgevent.presence.redis import RedisPresence
from rtgevent.types import SessionInfo
from tests.helpers_api import Connect, Driver, drivers
from tests.waiting import wait_until

start_native_thread = monkey.get_original("_thread", "start_new_thread")
allocate_native_lock = monkey.get_original("_thread", "allocate_lock")

LIVE = "live:"  # presence and join_leave
SEEN = "seen:"  # presence only
TOLD = "told:"  # join_leave only


@pytest.fixture(params=["socket", "test_client"])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    yield from drivers(request.param)


def open_app(**kwargs: Any) -> Realtime:
    """Every subscription allowed; ``whoami`` answers the session and identity ids."""
    rt = Realtime(Config(heartbeat_interval=None), **kwargs)
    rt.channel_namespace(LIVE, ChannelOptions(presence=True, join_leave=True))
    rt.channel_namespace(SEEN, ChannelOptions(presence=True))
    rt.channel_namespace(TOLD, ChannelOptions(join_leave=True))

    @rt.on_subscribe
    def allow(session: Session, channel: str) -> None:
        pass

    @rt.route("whoami")
    def whoami(session: Session, msg: Message) -> Any:
        return {"session_id": session.id, "identity_id": session.identity.id}

    @rt.route("echo")
    def echo(session: Session, msg: Message) -> Any:
        return msg.data

    return rt


def whoami(driver: Driver) -> dict[str, str]:
    return dict(driver.request("whoami").data)


def subscribe(driver: Driver, channel: str) -> None:
    reply = driver.request("rt.subscribe", {"channel": channel})
    assert reply.route == "rt.reply", reply


def unsubscribe(driver: Driver, channel: str) -> None:
    assert driver.request("rt.unsubscribe", {"channel": channel}).route == "rt.reply"


def assert_nothing_pending(driver: Driver) -> None:
    driver.send("echo", "probe", id="probe")
    answer = driver.recv()
    assert (answer.route, answer.data) == ("rt.reply", "probe"), answer


def expect_event(driver: Driver, route: str, channel: str, who: dict[str, str]) -> None:
    msg = driver.recv()
    assert (msg.route, msg.data, msg.metadata) == (route, {"channel": channel, **who}, {"channel": channel}), msg


def session_ids(infos: list[SessionInfo]) -> list[str]:
    return [info.session_id for info in infos]


# ---------------------------------------------------------------------------- members and count


def test_members_follow_subscribe_unsubscribe_and_close(connect: Connect) -> None:
    rt = open_app()
    room = f"{SEEN}1"
    a, b = connect(rt), connect(rt)
    me_a, me_b = whoami(a), whoami(b)
    assert rt.channel_members(room) == [] and rt.channel_count(room) == 0
    subscribe(a, room)
    subscribe(b, room)
    subscribe(b, room)  # again: still one membership
    members = rt.channel_members(room)
    assert session_ids(members) == [me_a["session_id"], me_b["session_id"]]  # oldest session first
    assert members[0].identity_id == me_a["identity_id"] and members[0].node_id == rt.node_id
    assert rt.channel_count(room) == 2
    unsubscribe(b, room)
    assert session_ids(rt.channel_members(room)) == [me_a["session_id"]]
    subscribe(b, f"{SEEN}2")
    a.close()
    wait_until(lambda: rt.channel_count(room) == 0, "the closed session to leave the channel")
    assert rt.channel_members(room) == []
    assert session_ids(rt.channel_members(f"{SEEN}2")) == [me_b["session_id"]]


def test_a_channel_without_presence_is_refused_with_the_fix_named() -> None:
    rt = open_app()
    for channel in ("room:1", f"{TOLD}1", "seen", "live"):  # no namespace, or one without presence
        for query in (rt.channel_members, rt.channel_count):
            with pytest.raises(InvalidOption) as caught:
                query(channel)
            assert "rt.channel_namespace(prefix, ChannelOptions(presence=True))" in str(caught.value)
    for bad in ("", "has space", "x" * 256):
        with pytest.raises(InvalidOption):
            rt.channel_members(bad)
    # a longer prefix turns presence off again inside a presence namespace
    rt.channel_namespace(f"{SEEN}quiet:", ChannelOptions())
    assert rt.channel_count(f"{SEEN}loud") == 0
    with pytest.raises(InvalidOption):
        rt.channel_count(f"{SEEN}quiet:1")


def test_members_from_native_threads(connect: Connect) -> None:
    rt = open_app()
    driver = connect(rt)
    subscribe(driver, f"{SEEN}threads")
    me = whoami(driver)
    answers: list[tuple[list[str], int]] = []
    errors: list[BaseException] = []
    done = [allocate_native_lock() for _ in range(4)]
    for lock in done:
        lock.acquire()

    def worker(n: int) -> None:
        try:
            answers.append((session_ids(rt.channel_members(f"{SEEN}threads")), rt.channel_count(f"{SEEN}threads")))
        except BaseException as exc:
            errors.append(exc)
        finally:
            done[n].release()

    for n in range(4):
        start_native_thread(worker, (n,))
    running = list(done)

    def finished() -> bool:
        running[:] = [lock for lock in running if not lock.acquire(False)]
        return not running

    wait_until(finished, "every thread to finish")
    assert errors == []
    assert answers == [([me["session_id"]], 1)] * 4


def test_after_shutdown_the_queries_raise_realtime_closed() -> None:
    from rtgevent.errors import RealtimeClosed

    rt = open_app()
    rt.shutdown(timeout=1)
    with pytest.raises(RealtimeClosed):
        rt.channel_members(f"{SEEN}1")
    with pytest.raises(RealtimeClosed):
        rt.channel_count(f"{SEEN}1")


# ---------------------------------------------------------------------------- rt.join / rt.leave


def test_join_and_leave_reach_the_other_subscribers_only(connect: Connect) -> None:
    rt = open_app()
    room = f"{LIVE}1"
    a, b, bystander = connect(rt), connect(rt), connect(rt)
    me_b = whoami(b)
    subscribe(a, room)
    subscribe(b, room)
    expect_event(a, "rt.join", room, me_b)
    assert_nothing_pending(b)  # not told of its own join
    subscribe(b, room)  # already in: nobody is told again
    unsubscribe(b, room)
    expect_event(a, "rt.leave", room, me_b)
    subscribe(b, room)
    expect_event(a, "rt.join", room, me_b)
    b.close()
    expect_event(a, "rt.leave", room, me_b)  # a closing session leaves its channels
    assert_nothing_pending(a)
    assert_nothing_pending(bystander)
    assert rt.channel_count(room) == 1


def test_presence_is_written_before_the_others_are_told(connect: Connect) -> None:
    """Whoever reacts to rt.join / rt.leave by asking for the members already finds them agreeing."""
    rt = open_app()
    room = f"{LIVE}order"
    seen: list[list[str]] = []

    @rt.route("members")
    def members(session: Session, msg: Message) -> Any:
        return session_ids(rt.channel_members(room))

    a, b = connect(rt), connect(rt)
    me_a, me_b = whoami(a), whoami(b)
    subscribe(a, room)
    subscribe(b, room)
    expect_event(a, "rt.join", room, me_b)
    seen.append(a.request("members").data)
    b.close()
    expect_event(a, "rt.leave", room, me_b)
    seen.append(a.request("members").data)
    assert seen == [[me_a["session_id"], me_b["session_id"]], [me_a["session_id"]]]


def test_namespaces_without_join_leave_tell_nobody(connect: Connect) -> None:
    rt = open_app()
    a, b = connect(rt), connect(rt)
    me_b = whoami(b)
    for channel in (f"{SEEN}1", "room:1"):
        subscribe(a, channel)
        subscribe(b, channel)
        unsubscribe(b, channel)
    assert_nothing_pending(a)
    # join_leave without presence: told, and no member list
    subscribe(a, f"{TOLD}1")
    subscribe(b, f"{TOLD}1")
    expect_event(a, "rt.join", f"{TOLD}1", me_b)
    with pytest.raises(InvalidOption):
        rt.channel_members(f"{TOLD}1")


def test_a_session_subscribed_in_on_connect_and_rejected_leaves_again() -> None:
    """on_connect may subscribe; a session it then rejects is out of presence and its leave is told."""
    rt = open_app()
    lobby = f"{LIVE}lobby"

    @rt.on_connect
    def join_lobby(session: Session) -> None:
        session.subscribe(lobby)
        if session.identity.id == "intruder":
            raise Unauthorized("not today")

    host = rt.test_client(Identity("host", "acme"))
    assert [i.identity_id for i in rt.channel_members(lobby)] == ["host"]
    intruder = rt.test_client(Identity("intruder", "acme"))
    assert not intruder.connected
    assert [i.identity_id for i in rt.channel_members(lobby)] == ["host"]  # out of presence with its rejection
    intruder.close()  # the connection ends: its channels are left and the others told
    got = [(m.route, m.data["identity_id"]) for m in host.get_received()]
    assert got == [("rt.join", "intruder"), ("rt.leave", "intruder")]
    host.close()
    assert rt.channel_members(lobby) == []


def test_a_presence_store_that_is_down_is_reported_not_raised(connect: Connect) -> None:
    """Redis unreachable: the subscription works and publications arrive; the failures reach on_error."""
    presence = RedisPresence("redis://127.0.0.1:1/0", socket_timeout=0.5, retries=0)
    rt = open_app(presence=presence)
    reported: list[tuple[BaseException, Session | None]] = []

    @rt.on_error
    def keep(error: BaseException, session: Session | None) -> None:
        reported.append((error, session))

    a, b = connect(rt), connect(rt)
    me_a, me_b = whoami(a), whoami(b)
    room = f"{LIVE}down"
    del reported[:]  # the registrations failed too: not what this test is about
    subscribe(a, room)
    subscribe(b, room)
    expect_event(a, "rt.join", room, me_b)  # events do not depend on presence
    rt.publish(room, "chat", "still here")
    for driver in (a, b):
        msg = driver.recv()
        assert (msg.route, msg.data) == ("chat", "still here")
    assert all(isinstance(error, BrokerUnavailable) for error, _ in reported), reported
    assert sorted(s.id for _, s in reported if s is not None) == sorted([me_a["session_id"], me_b["session_id"]])
    with pytest.raises(BrokerUnavailable):
        rt.channel_members(room)  # asked directly, the caller is told
    unsubscribe(b, room)
    expect_event(a, "rt.leave", room, me_b)

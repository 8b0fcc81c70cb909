"""Channels (SPEC section 13) on one node: client and server subscriptions, publish, exclude,
authorization, limits, names, cleanup, native threads.

Every test that takes ``connect`` runs twice: over a real WebSocket (pywsgi on port 0,
websocket-client) and through ``rt.test_client()`` without a socket.  The cluster side
(several nodes, Redis and RabbitMQ) is in test_channels_cluster.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from rtgevent import ChannelOptions, Config, InvalidOption, Message, Realtime, Session, Unauthorized
from tests.helpers_api import Connect, Driver, code_of, drivers


@pytest.fixture(params=["socket", "test_client"])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    yield from drivers(request.param)


def open_app(config: Config | None = None) -> Realtime:
    """A gateway whose clients may subscribe to ``room:*`` channels, with an echo route."""
    rt = Realtime(config)

    @rt.on_subscribe
    def allow(session: Session, channel: str) -> None:
        if not channel.startswith("room:"):
            raise Unauthorized("rooms only")

    @rt.route("echo")
    def echo(session: Session, msg: Message) -> Any:
        return msg.data

    return rt


def subscribe(driver: Driver, channel: str) -> Message:
    return driver.request("rt.subscribe", {"channel": channel})


def assert_nothing_pending(driver: Driver) -> None:
    """The next thing the client gets is the answer to a fresh echo: nothing else was sent to it."""
    driver.send("echo", "probe", id="probe")
    answer = driver.recv()
    assert (answer.route, answer.data) == ("rt.reply", "probe"), answer


def test_subscribe_reply_and_publications_reach_subscribers_only(connect: Connect) -> None:
    rt = open_app()
    alice, bob = connect(rt), connect(rt)
    reply = subscribe(alice, "room:1")
    assert (reply.route, reply.data) == (
        "rt.reply",
        {"channel": "room:1", "offset": 0, "epoch": "", "recovered": False, "missed": 0},
    )
    assert rt.publish("room:1", "chat.message", {"text": "hi"}) == 1
    got = alice.recv()
    assert (got.route, got.data, got.metadata) == ("chat.message", {"text": "hi"}, {"channel": "room:1"})
    assert_nothing_pending(bob)


def test_publications_arrive_in_publish_order(connect: Connect) -> None:
    rt = open_app()
    alice = connect(rt)
    subscribe(alice, "room:order")
    for n in range(50):
        rt.publish("room:order", "n", n)
    assert [alice.recv().data for _ in range(50)] == list(range(50))


def test_exclude_skips_exactly_that_session(connect: Connect) -> None:
    rt = open_app()
    seen: list[Session] = []

    @rt.route("say")
    def say(session: Session, msg: Message) -> Any:
        seen.append(session)
        return rt.publish("room:x", "said", msg.data, exclude=session)

    alice, bob = connect(rt), connect(rt)
    subscribe(alice, "room:x")
    subscribe(bob, "room:x")
    assert alice.request("say", "hello").data == 1  # bob only
    got = bob.recv()
    assert (got.route, got.data) == ("said", "hello")
    assert_nothing_pending(alice)
    rt.publish("room:x", "said", "by id", exclude=seen[0].id)
    assert bob.recv().data == "by id"
    assert_nothing_pending(alice)


def test_without_on_subscribe_client_subscriptions_are_refused(connect: Connect) -> None:
    rt = Realtime()
    rt.route("echo")(lambda session, msg: msg.data)
    driver = connect(rt)
    answer = subscribe(driver, "room:1")
    assert (answer.route, code_of(answer)) == ("rt.error", "unauthorized")
    assert rt.publish("room:1", "x") == 0
    assert_nothing_pending(driver)


def test_a_hook_that_raises_refuses(connect: Connect) -> None:
    rt = open_app()
    errors: list[BaseException] = []
    rt.on_error(lambda error, session: errors.append(error))

    @rt.on_subscribe
    def broken(session: Session, channel: str) -> None:
        if channel == "room:broken":
            raise RuntimeError("database down")

    driver = connect(rt)
    assert code_of(subscribe(driver, "lobby")) == "unauthorized"
    answer = subscribe(driver, "room:broken")
    assert code_of(answer) == "unauthorized"
    assert "database" not in answer.data["message"]
    assert any(isinstance(e, RuntimeError) for e in errors)
    assert rt.publish("room:broken", "x") == 0 and rt.publish("lobby", "x") == 0


@pytest.mark.parametrize("bad", ["", "has space", "é", "x" * 256, None, 42])
def test_bad_channel_names_get_bad_message(connect: Connect, bad: Any) -> None:
    rt = open_app()
    driver = connect(rt)
    answer = driver.request("rt.subscribe", {"channel": bad})
    assert (answer.route, code_of(answer)) == ("rt.error", "bad_message")
    assert_nothing_pending(driver)


def test_the_per_session_limit_answers_limit(connect: Connect) -> None:
    rt = open_app(Config(max_channels_per_session=2))
    driver = connect(rt)
    assert subscribe(driver, "room:a").route == "rt.reply"
    assert subscribe(driver, "room:b").route == "rt.reply"
    assert subscribe(driver, "room:a").route == "rt.reply"  # idempotent: no third channel
    assert code_of(subscribe(driver, "room:c")) == "limit"
    assert rt.publish("room:c", "x") == 0


def test_max_subscribers_of_a_namespace(connect: Connect) -> None:
    rt = open_app()
    rt.channel_namespace("room:small", ChannelOptions(max_subscribers=1))
    alice, bob = connect(rt), connect(rt)
    assert subscribe(alice, "room:small").route == "rt.reply"
    assert code_of(subscribe(bob, "room:small")) == "limit"
    assert subscribe(bob, "room:big").route == "rt.reply"  # another namespace: the default


def test_unsubscribe_stops_publications(connect: Connect) -> None:
    rt = open_app()
    driver = connect(rt)
    subscribe(driver, "room:1")
    answer = driver.request("rt.unsubscribe", {"channel": "room:1"})
    assert (answer.route, answer.data) == ("rt.reply", {"channel": "room:1"})
    assert rt.publish("room:1", "x") == 0
    assert_nothing_pending(driver)


def test_server_side_subscribe_needs_no_hook_and_closing_leaves_every_channel(connect: Connect) -> None:
    rt = Realtime()
    joined: list[Session] = []

    @rt.on_connect
    def join(session: Session) -> None:
        session.subscribe("news")
        session.subscribe("news")  # idempotent
        joined.append(session)

    @rt.route("channels")
    def channels(session: Session, msg: Message) -> Any:
        return sorted(session.channels)

    driver = connect(rt)
    assert driver.request("channels").data == ["news"]
    assert rt.publish("news", "headline", "x") == 1
    assert driver.recv().data == "x"
    driver.close()
    assert joined[0].wait_closed(10)
    assert rt.publish("news", "headline", "y") == 0
    assert rt.hub.channels() == [] and joined[0].channels == frozenset()


def test_server_side_misuse_raises_invalid_option() -> None:
    rt = Realtime(Config(max_channels_per_session=1))
    with rt.test_client() as client:
        session = client.session
        with pytest.raises(InvalidOption):
            session.subscribe("has space")
        session.subscribe("one")
        with pytest.raises(InvalidOption):
            session.subscribe("two")  # LimitExceeded is an InvalidOption
        with pytest.raises(InvalidOption):
            rt.publish("", "x")


def test_publish_from_native_threads(connect: Connect) -> None:
    rt = open_app()
    driver = connect(rt)
    subscribe(driver, "room:threads")
    counts: list[int] = []

    def publish(n: int) -> None:
        counts.append(rt.publish("room:threads", "n", n))

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert counts == [1] * 8
    assert sorted(driver.recv().data for _ in range(8)) == list(range(8))

"""History and recovery on one node (SPEC section 14), over real sockets and `rt.test_client`.

The cluster side (several nodes, RedisHistory, a node killed under a reconnect storm) is in
test_history_cluster.py; the stores themselves in test_history_contract.py.  Here: what a
client sees (offsets in the metadata, the subscribe reply, what comes back with ``since``
and when nothing can), the personal stream (query parameter and in-band), the options'
checks, and the node's ordering of one stream (`Streams`), driven directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import websocket

from rtgevent import (
    ChannelOptions,
    Config,
    Emitter,
    Identity,
    InBandAuthenticator,
    InvalidBrokerMessage,
    InvalidOption,
    LocalBroker,
    MemoryHistory,
    MemoryPresence,
    Message,
    Realtime,
    Session,
)
from rtgevent.history import Position, Publication, Stamp
from rtgevent.payload import decode_payload
from rtgevent.streams import Streams
from tests.helpers_api import Connect, Driver, LiveFactory, drivers, serving
from tests.waiting import wait_until


@pytest.fixture(params=["socket", "test_client"])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    yield from drivers(request.param)


@pytest.fixture
def live() -> Iterator[LiveFactory]:
    yield from serving()


def open_app(config: Config | None = None, size: int = 100) -> Realtime:
    rt = Realtime(config)
    rt.channel_namespace("doc:", ChannelOptions(history_size=size, history_ttl=60))

    @rt.on_subscribe
    def allow(session: Session, channel: str) -> None:
        pass

    @rt.route("echo")
    def echo(session: Session, msg: Message) -> Any:
        return msg.data

    return rt


def subscribe(driver: Driver, channel: str, since: dict[str, Any] | None = None) -> tuple[list[Message], Message]:
    """The publications that came before the reply, and the reply."""
    data: dict[str, Any] = {"channel": channel}
    if since is not None:
        data["since"] = since
    driver.send("rt.subscribe", data, id="sub")
    before = []
    while True:
        msg = driver.recv()
        if msg.route == "rt.reply" and (msg.metadata or {}).get("in_reply_to") == "sub":
            return before, msg
        before.append(msg)


def position(msg: Message) -> dict[str, Any]:
    meta = msg.metadata or {}
    return {"offset": int(meta["offset"]), "epoch": meta["epoch"]}


def test_publications_carry_their_offset_and_the_reply_where_the_stream_stands(connect: Connect) -> None:
    rt = open_app()
    alice = connect(rt)
    before, reply = subscribe(alice, "doc:1")
    assert (before, reply.data) == ([], {"channel": "doc:1", "offset": 0, "epoch": "", "recovered": False, "missed": 0})
    for n in range(3):
        rt.publish("doc:1", "edit", n)
    got = [alice.recv() for _ in range(3)]
    assert [m.data for m in got] == [0, 1, 2]
    assert [m.metadata["offset"] for m in got if m.metadata] == ["1", "2", "3"]
    epoch = got[0].metadata["epoch"] if got[0].metadata else ""
    assert epoch and {m.metadata["epoch"] for m in got if m.metadata} == {epoch}
    bob = connect(rt)
    _, late = subscribe(bob, "doc:1")
    assert late.data == {"channel": "doc:1", "offset": 3, "epoch": epoch, "recovered": False, "missed": 0}


def test_a_client_back_with_its_position_gets_what_it_missed_in_order_then_live(connect: Connect) -> None:
    rt = open_app()
    alice = connect(rt)
    subscribe(alice, "doc:2")
    rt.publish("doc:2", "edit", "seen")
    last = position(alice.recv())
    alice.close()
    for n in range(10):
        rt.publish("doc:2", "edit", n)
    back = connect(rt)
    missed, reply = subscribe(back, "doc:2", last)
    assert [m.data for m in missed] == list(range(10))
    assert [position(m)["offset"] for m in missed] == list(range(2, 12))
    assert reply.data == {"channel": "doc:2", "offset": 11, "epoch": last["epoch"], "recovered": True, "missed": 10}
    rt.publish("doc:2", "edit", "live")
    assert back.recv().data == "live"
    back.send("echo", "probe", id="probe")
    assert back.recv().data == "probe"  # and nothing else came


def test_nothing_seen_yet_recovers_from_the_first_publication(connect: Connect) -> None:
    """``since`` {0, ""} (the reply to a subscription of an empty stream) matches any epoch."""
    rt = open_app()
    for n in range(3):
        rt.publish("doc:3", "edit", n)
    client = connect(rt)
    missed, reply = subscribe(client, "doc:3", {"offset": 0, "epoch": ""})
    assert [m.data for m in missed] == [0, 1, 2]
    assert (reply.data["recovered"], reply.data["missed"]) == (True, 3)


@pytest.mark.parametrize("why", ["trimmed", "another epoch", "from the future"])
def test_when_history_cannot_give_everything_back_nothing_is_replayed_and_the_reply_says_so(
    connect: Connect, why: str
) -> None:
    rt = open_app(size=5)
    for n in range(3):
        rt.publish("doc:4", "edit", n)
    epoch = rt.history.position("ch:doc:4").epoch
    for n in range(3, 20):
        rt.publish("doc:4", "edit", n)
    since = {
        "trimmed": {"offset": 2, "epoch": epoch},
        "another epoch": {"offset": 18, "epoch": "not-" + epoch},
        "from the future": {"offset": 99, "epoch": epoch},
    }[why]
    client = connect(rt)
    missed, reply = subscribe(client, "doc:4", since)
    assert missed == []
    assert reply.data == {"channel": "doc:4", "offset": 20, "epoch": epoch, "recovered": False, "missed": 0}
    rt.publish("doc:4", "edit", "live")
    live = client.recv()
    assert (live.data, position(live)["offset"]) == ("live", 21)


@pytest.mark.parametrize("since", [{"offset": -1, "epoch": ""}, {"offset": 1}, "17", {"offset": True, "epoch": ""}])
def test_a_malformed_since_is_a_bad_message(connect: Connect, since: Any) -> None:
    rt = open_app()
    client = connect(rt)
    client.send("rt.subscribe", {"channel": "doc:5", "since": since}, id="bad")
    answer = client.answer_to("bad")
    assert (answer.route, (answer.metadata or {}).get("code")) == ("rt.error", "bad_message")


def test_channels_without_history_are_unchanged(connect: Connect) -> None:
    rt = open_app()
    client = connect(rt)
    _, reply = subscribe(client, "plain", {"offset": 3, "epoch": "x"})
    assert reply.data == {"channel": "plain", "offset": 0, "epoch": "", "recovered": False, "missed": 0}
    rt.publish("plain", "m", 1)
    assert client.recv().metadata == {"channel": "plain"}


# ---------------------------------------------------------------------- the personal stream


def personal_app() -> Realtime:
    return open_app(Config(identity_history_size=50, identity_history_ttl=60))


def read_until_personal(ws: websocket.WebSocket) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    before = []
    while True:
        msg = json.loads(ws.recv())
        if msg["route"] == "rt.personal":
            return before, msg["data"]
        before.append(msg)


def test_personal_stream_comes_back_with_the_since_query_parameter(live: LiveFactory) -> None:
    rt = personal_app()
    server = live(rt)
    ws = server.connect()
    before, status = read_until_personal(ws)
    assert (before, status) == ([], {"offset": 0, "epoch": "", "recovered": False, "missed": 0})
    rt.send_to_identity("", "anonymous", "dm", "first")
    first = json.loads(ws.recv())
    assert first["data"] == "first" and "channel" not in first["metadata"]
    ws.close()
    wait_until(lambda: not rt.sessions(), what="the session to end")
    for n in range(5):
        rt.send_to_identity("", "anonymous", "dm", n)  # nobody online: kept, not an error
    since = f"{first['metadata']['offset']}:{first['metadata']['epoch']}"
    back = server.connect(f"/?since={since}")
    missed, status = read_until_personal(back)
    assert [m["data"] for m in missed] == list(range(5))
    assert (status["recovered"], status["missed"], status["offset"]) == (True, 5, 6)


def test_personal_stream_comes_back_in_band_with_the_token(live: LiveFactory) -> None:
    rt = Realtime(
        Config(identity_history_size=50, identity_history_ttl=60),
        authenticator=InBandAuthenticator(lambda token: Identity(str(token))),
    )
    server = live(rt)
    for n in range(3):
        rt.send_to_identity("", "ann", "dm", n)
    ws = server.connect()
    ws.send(json.dumps({"id": 1, "route": "rt.auth", "data": {"token": "ann", "since": {"offset": 1, "epoch": ""}}}))
    assert json.loads(ws.recv())["route"] == "rt.reply"
    missed, status = read_until_personal(ws)
    # epoch "" matches only "nothing seen" (offset 0): this position means nothing here
    assert (missed, status["recovered"]) == ([], False)
    ws.close()
    epoch = rt.history.position("id::ann").epoch
    again = server.connect()
    again.send(
        json.dumps({"id": 1, "route": "rt.auth", "data": {"token": "ann", "since": {"offset": 1, "epoch": epoch}}})
    )
    assert json.loads(again.recv())["route"] == "rt.reply"
    missed, status = read_until_personal(again)
    assert [m["data"] for m in missed] == [1, 2] and status["recovered"] is True


def test_personal_stream_in_the_test_client() -> None:
    rt = personal_app()
    with rt.test_client(identity=Identity("ann")) as ann:
        [status] = ann.get_received()
        assert status.route == "rt.personal"
        rt.send_to_identity("", "ann", "dm", "hello")
        [got] = ann.get_received()
        assert (got.data, (got.metadata or {}).get("offset")) == ("hello", "1")


# ---------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "kwargs",
    [
        {"history_size": 10},
        {"history_ttl": 5.0},
        {"history_size": -1, "history_ttl": 5.0},
        {"history_size": 5, "history_ttl": 0},
    ],
)
def test_channel_history_options_are_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidOption):
        ChannelOptions(**kwargs)


def test_identity_history_options_are_checked() -> None:
    with pytest.raises(InvalidOption, match="identity_history"):
        Config(identity_history_size=10)
    assert Config(identity_history_size=10, identity_history_ttl=5).identity_history_ttl == 5.0


def test_an_emitter_needs_a_store_for_streams() -> None:
    emitter = Emitter(broker=LocalBroker(), presence=MemoryPresence())
    with pytest.raises(InvalidOption, match="history_url"):
        emitter.channel_namespace("doc:", ChannelOptions(history_size=5, history_ttl=5))
    with pytest.raises(InvalidOption, match="history_url"):
        Emitter(broker=LocalBroker(), presence=MemoryPresence(), identity_history_size=5, identity_history_ttl=5)


@pytest.mark.parametrize("offset", ["-1", "1.5", "²", "9" * 25, 7])
def test_a_broker_payload_with_a_bad_offset_is_refused(offset: Any) -> None:
    raw = json.dumps({"v": 1, "kind": "channel", "origin": "n", "channel": "c", "text": "{}", "offset": offset})
    with pytest.raises(InvalidBrokerMessage, match="offset"):
        decode_payload(raw.encode())


# ---------------------------------------------------------------------- one node's ordering


class Recorder:
    """What `Streams` pushes, per session (any hashable object stands for a session)."""

    def __init__(self) -> None:
        self.got: dict[str, list[str | bytes]] = {}

    def push(self, sessions: list[Any], envelope: str | bytes) -> int:
        for session in sessions:
            self.got.setdefault(session, []).append(envelope)
        return len(sessions)


def stream_with(entries: int) -> tuple[MemoryHistory, list[Publication], str]:
    history = MemoryHistory()
    pubs = []
    for n in range(entries):
        position = history.append("s", f"p{n + 1}", 100, 60)
        pubs.append(Publication(position.offset, f"p{n + 1}"))
    return history, pubs, history.position("s").epoch


def test_a_jump_is_filled_from_history_and_a_late_copy_dropped() -> None:
    history, pubs, epoch = stream_with(4)
    recorder = Recorder()
    streams = Streams(history, recorder.push, lambda exc: None)  # type: ignore[arg-type]
    for offset in (1, 3, 2, 4, 4):
        envelope = pubs[offset - 1].envelope
        streams.deliver("s", streams.admit("s", offset, epoch, envelope), ["alice"])  # type: ignore[list-item]
    assert recorder.got["alice"] == ["p1", "p2", "p3", "p4"]


def test_a_session_catching_up_gets_history_then_what_arrived_meanwhile_once() -> None:
    history, _, epoch = stream_with(6)
    recorder = Recorder()
    streams = Streams(history, recorder.push, lambda exc: None)  # type: ignore[arg-type]
    streams.deliver("s", streams.admit("s", 1, epoch, "p1"), ["bob"])  # type: ignore[list-item]
    streams.begin("s", "carol")  # type: ignore[arg-type]
    streams.deliver("s", streams.admit("s", 2, epoch, "p2"), ["bob", "carol"])  # type: ignore[list-item]
    recovery = streams.finish("s", "carol", Position(1, epoch), 100)  # type: ignore[arg-type]
    assert (recovery.complete, [p.offset for p in recovery.publications]) == (True, [2, 3, 4, 5, 6])
    assert recorder.got["carol"] == ["p2", "p3", "p4", "p5", "p6"]
    for offset in (3, 4, 5, 6, 7):  # the broker's copies, then a new one
        streams.deliver("s", streams.admit("s", offset, epoch, f"p{offset}"), ["bob", "carol"])  # type: ignore[list-item]
    assert recorder.got["carol"] == ["p2", "p3", "p4", "p5", "p6", "p7"]
    assert recorder.got["bob"] == ["p1", "p2", "p3", "p4", "p5", "p6", "p7"]


def test_stamps_render_offsets_into_encoded_text_and_nothing_can_forge_a_slot() -> None:
    stamp = Stamp()
    forged = "rtgo" + "0" * 16  # a token's shape, but not this stamp's
    text = json.dumps({"data": forged, "metadata": {"offset": stamp.offset_token, "epoch": stamp.epoch_token}})
    stamp.cut(text)
    rendered = json.loads(stamp.render(42, "ep"))
    assert rendered == {"data": forged, "metadata": {"offset": "42", "epoch": "ep"}}


def test_subscribing_again_with_a_since_replays_nothing_and_loses_nothing(connect: Connect) -> None:
    """A session already in the channel is live: a second rt.subscribe replays nothing, and
    says recovered for a position of the stream's epoch (not for another epoch)."""
    rt = open_app()
    client = connect(rt)
    subscribe(client, "doc:6")
    rt.publish("doc:6", "edit", 1)
    seen = position(client.recv())
    before, again = subscribe(client, "doc:6", seen)
    assert (before, again.data["recovered"], again.data["missed"]) == ([], True, 0)
    _, other = subscribe(client, "doc:6", {"offset": 1, "epoch": "another"})
    assert other.data["recovered"] is False


def test_the_node_check_delivers_what_a_quiet_stream_lacks() -> None:
    """`Streams.check` (every lease renewal): a stream behind history gets the rest, once."""
    history, _, epoch = stream_with(5)
    recorder = Recorder()
    streams = Streams(history, recorder.push, lambda exc: None)  # type: ignore[arg-type]
    streams.deliver("s", streams.admit("s", 1, epoch, "p1"), ["dan"])  # type: ignore[list-item]
    assert streams.check(lambda stream: ["dan"]) == 4  # type: ignore[arg-type,return-value]
    assert streams.check(lambda stream: ["dan"]) == 0  # type: ignore[arg-type,return-value]
    assert recorder.got["dan"] == ["p1", "p2", "p3", "p4", "p5"]


def test_a_stream_name_says_whose_it_is() -> None:
    from rtgevent.streams import channel_stream, identity_stream, stream_owner

    assert stream_owner(channel_stream("room:1:2")) == "room:1:2"
    assert stream_owner(identity_stream("a:b", "c:d")) == ("a:b", "c:d")

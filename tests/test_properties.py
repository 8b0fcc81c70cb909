"""Property-based: whatever a client sends, nothing escapes the reader and the session stays open.

Arbitrary bytes, arbitrary text, arbitrary JSON and envelopes with odd routes, ids and
metadata go through decode and dispatch, first through the test client (many examples),
then over one real WebSocket (fewer examples, all on the same connection).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtgevent import BadMessage, Identity, JSONCodec, Message, Realtime, Session
from tests.helpers_api import LiveFactory, SocketDriver, in_reply_to, serving

WIRE_CODES = {"bad_message", "unknown_route", "handler_error", "timeout", "unauthorized", "limit", "unavailable"}

surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
odd_text = st.one_of(
    st.text(max_size=20),
    surrogates,
    st.sampled_from(["", " ", "echo", "echo ", "p.", "p.x", "explode", "rt.auth", "rt.reply", "rt.error", "\x00"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | odd_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(odd_text, children, max_size=4),
    max_leaves=10,
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "route": st.one_of(odd_text, json_values),
        "id": st.one_of(st.none(), st.integers(), odd_text, st.floats(), st.booleans(), json_values),
        "data": json_values,
        "metadata": st.one_of(st.dictionaries(odd_text, st.one_of(odd_text, st.integers(), json_values)), json_values),
        "unknown": json_values,
    },
)
#: envelopes likely to reach a handler
good_envelopes = st.fixed_dictionaries(
    {"route": st.sampled_from(["echo", "p.x", "p.", "explode", "nobody"])},
    optional={
        "id": st.one_of(st.integers(), odd_text),
        "data": json_values,
        "metadata": st.dictionaries(odd_text, odd_text, max_size=3),
    },
)
frames: st.SearchStrategy[str | bytes] = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    json_values.map(json.dumps),
    envelopes.map(json.dumps),
    good_envelopes.map(json.dumps),
)


def app() -> tuple[Realtime, list[Any]]:
    rt = Realtime()
    disconnects: list[Any] = []
    rt.on_error(lambda error, session: None)  # client errors are expected here: keep the log quiet
    rt.on_disconnect(lambda session, info: disconnects.append(info))

    @rt.route("echo")
    def echo(session: Session, msg: Message) -> Any:
        return msg.data

    @rt.prefix("p.")
    def prefixed(session: Session, msg: Message) -> Any:
        return msg.route

    @rt.route("explode")
    def explode(session: Session, msg: Message) -> Any:
        raise RuntimeError("boom")

    return rt, disconnects


def check_answers(frame: str | bytes, got: list[Message]) -> None:
    """What the session was sent for ``frame`` is what SPEC section 2 says."""
    try:
        msg = JSONCodec().decode(frame)
    except BadMessage:
        [error] = got
        assert error.route == "rt.error"
        assert error.metadata == {"in_reply_to": "", "code": "bad_message"}
        return
    known = msg.route in ("echo", "explode") or msg.route.startswith("p.")
    if not known:
        [error] = got
        assert error.route == "rt.error"
        assert error.metadata == {"in_reply_to": "" if msg.id is None else msg.id, "code": "unknown_route"}
        return
    if msg.route == "explode" or (msg.route == "echo" and not _finite(msg.data)):  # inf cannot be encoded
        [error] = got
        assert error.route == "rt.error"
        assert error.metadata == {"in_reply_to": "" if msg.id is None else msg.id, "code": "handler_error"}
        return
    result = msg.data if msg.route == "echo" else msg.route
    if msg.id is None or result is None:
        assert got == []  # no id or nothing returned: no reply
        return
    [answer] = got
    assert answer.route == "rt.reply"
    assert in_reply_to(answer) == msg.id and type(in_reply_to(answer)) is type(msg.id)
    assert answer.data == result


@settings(max_examples=400, deadline=None, database=None)
@given(st.one_of(st.text(), st.binary(), frames))
def test_decode_raises_only_bad_message(frame: str | bytes) -> None:
    """JSONCodec.decode raises nothing but BadMessage; what it accepts re-encodes to the same message."""
    codec = JSONCodec()
    try:
        msg = codec.decode(frame)
    except BadMessage:
        return
    assert isinstance(msg.route, str) and msg.route
    if _finite(msg.data):
        again = codec.encode(msg)
        again.encode("utf-8")  # always sendable as a text frame
        assert codec.decode(again) == msg


def _finite(value: Any) -> bool:
    """False for data holding floats JSON cannot carry (1e400 decodes to inf)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def test_test_client_survives_arbitrary_frames() -> None:
    """Through the test client no frame makes dispatch raise or close the session; answers follow SPEC."""
    rt, disconnects = app()
    client = rt.test_client(identity=Identity("fuzzer"))

    @settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(frames)
    def check(frame: str | bytes) -> None:
        got = client.send_raw(frame)  # nothing escapes
        check_answers(frame, got)
        assert client.connected
        assert client.request("echo", "probe", id="probe").data == "probe"

    check()
    assert client.connected and disconnects == []
    client.close()


@pytest.fixture
def live() -> Iterator[LiveFactory]:
    yield from serving()


def test_one_socket_survives_arbitrary_frames(live: LiveFactory) -> None:
    """Over one real connection no frame closes the session; it still answers a good request at the end."""
    rt, disconnects = app()
    driver = SocketDriver(rt, live(rt).connect())
    probes = iter(range(1_000_000))

    @settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(frames)
    def check(frame: str | bytes) -> None:
        driver.send_raw(frame)
        probe = f"probe-{next(probes)}"
        driver.send("echo", probe, id=probe)
        got: list[Message] = []
        while True:  # everything before the probe's reply answers the frame
            msg = driver.recv()
            if in_reply_to(msg) == probe:
                assert (msg.route, msg.data) == ("rt.reply", probe)
                break
            got.append(msg)
        check_answers(frame, got)

    check()
    assert driver.request("echo", {"still": "open"}, id="last").data == {"still": "open"}
    assert driver.connected
    assert len(rt.sessions()) == 1 and disconnects == []
    driver.close()

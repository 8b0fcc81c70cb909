"""Codecs (pure): the JSON envelope of SPEC section 2, the seed-003 command codec, id generators."""

from __future__ import annotations

import json
import time

import pytest

from rtgevent import BadMessage, CmdCodec, Codec, JSONCodec, Message, SnowflakeIds, random_id
from rtgevent.message import error_message, reply_message


@pytest.mark.parametrize("msg_id", [None, 0, 7, -3, 2**63 + 1, "", "abc", "ünï ✓"])
def test_json_round_trip_keeps_id_type(msg_id: int | str | None) -> None:
    """An id goes back exactly as received: a number stays a number, a string a string."""
    codec = JSONCodec()
    msg = Message("chat.send", {"text": "hi"}, id=msg_id)
    back = codec.decode(codec.encode(msg))
    assert back == msg
    assert type(back.id) is type(msg_id)


@pytest.mark.parametrize("data", [None, 0, "", [], {}, False, "text", [1, "two", None], {"nested": {"x": [1.5]}}])
def test_json_round_trip_keeps_data(data: object) -> None:
    """Whatever JSON the application sends as data comes back equal (falsy values too)."""
    codec = JSONCodec()
    assert codec.decode(codec.encode(Message("r", data))).data == data


def test_json_round_trip_keeps_metadata() -> None:
    """Metadata survives a round trip."""
    codec = JSONCodec()
    msg = Message("r", 1, id="x", metadata={"trace": "abc", "lang": "fr"})
    assert codec.decode(codec.encode(msg)) == msg


def test_json_decodes_replies_and_errors_the_framework_writes() -> None:
    """rt.reply / rt.error envelopes (numeric in_reply_to included) decode back unchanged."""
    codec = JSONCodec()
    for msg in (reply_message(5, {"ok": True}), reply_message("a", None), error_message(9, "timeout", "slow")):
        assert codec.decode(codec.encode(msg)) == msg
    decoded = codec.decode(codec.encode(error_message(None, "bad_message", "no")))
    assert decoded.metadata == {"in_reply_to": "", "code": "bad_message"}


def test_json_ignores_unknown_keys() -> None:
    """Keys other than id, route, data and metadata are ignored."""
    frame = json.dumps({"route": "r", "id": 1, "data": 2, "extra": {"x": 1}, "v": 3})
    assert JSONCodec().decode(frame) == Message("r", 2, id=1)


def test_json_encoding_is_compact_and_omits_empty_fields() -> None:
    """Absent id, data and metadata are left out of the frame; the frame is a JSON object."""
    assert json.loads(JSONCodec().encode(Message("only.route"))) == {"route": "only.route"}
    assert isinstance(JSONCodec().encode(Message("r", 1)), str)


def test_json_encodes_lone_surrogates_escaped() -> None:
    """Text a client sent as \\ud800 escapes goes back as escapes (a text frame must be UTF-8)."""
    codec = JSONCodec()
    frame = codec.encode(Message("r", "a\ud800b", id="\udfff"))
    frame.encode("utf-8")  # sendable as a text frame
    assert codec.decode(frame) == Message("r", "a\ud800b", id="\udfff")
    assert codec.encode(Message("r", "é")) == '{"route":"r","data":"é"}'  # plain text stays unescaped


@pytest.mark.parametrize(
    "frame",
    [
        "",
        "not json",
        "{",
        '{"route": "r",}',
        "[]",
        '"route"',
        "42",
        "null",
        "{}",
        '{"data": 1}',
        '{"route": ""}',
        '{"route": 5}',
        '{"route": null}',
        '{"route": ["r"]}',
        '{"route": "r", "id": 1.5}',
        '{"route": "r", "id": true}',
        '{"route": "r", "id": [1]}',
        '{"route": "r", "id": {"a": 1}}',
        '{"route": "r", "metadata": "m"}',
        '{"route": "r", "metadata": [1]}',
        '{"route": "r", "metadata": {"k": {"nested": 1}}}',
        '{"route": "r", "metadata": {"k": null}}',
        '{"route": "r", "metadata": {"k": true}}',
        '{"route": "r", "data": NaN}',
        '{"route": "r", "data": [Infinity]}',
        '{"route": "r", "data": {"x": -Infinity}}',
        '{"route": "r", "data": [1e400]}',
        "[" * 100_000,
        '{"route": "r", "id": ' + "9" * 5000 + "}",
        b'{"route": "r"}',
        b"\x00\xff",
    ],
)
def test_json_rejects_bad_envelopes_with_bad_message(frame: str | bytes) -> None:
    """Bad JSON (NaN too), a non-object, a missing/invalid route, id or metadata, a binary frame → BadMessage."""
    with pytest.raises(BadMessage) as info:
        JSONCodec().decode(frame)
    assert info.value.wire_code == "bad_message"
    assert str(info.value).startswith("rtgevent:")


def test_cmd_codec_splits_route_and_raw_body() -> None:
    """CmdCodec reads "<route> <body>": the body is the raw rest of the frame."""
    codec = CmdCodec()
    assert codec.decode("chat.send hello  world ") == Message("chat.send", "hello  world ")
    assert codec.decode('chat.send {"a": 1}') == Message("chat.send", '{"a": 1}')
    assert codec.decode("ping") == Message("ping", "")


def test_cmd_codec_encodes_route_and_body() -> None:
    """CmdCodec writes strings raw, other data as JSON, and a bare route without data."""
    codec = CmdCodec()
    assert codec.encode(Message("chat.message", "hi there")) == "chat.message hi there"
    assert codec.encode(Message("rt.reply", {"ok": True})) == 'rt.reply {"ok":true}'
    assert codec.encode(Message("bye")) == "bye"
    assert codec.decode(codec.encode(Message("a.b", "x y"))) == Message("a.b", "x y")


@pytest.mark.parametrize("frame", ["", " body", "\x00 body", "a\nb body", b"route body"])
def test_cmd_codec_rejects_frames_without_a_route(frame: str | bytes) -> None:
    """An empty or unprintable route, or a binary frame, is a BadMessage."""
    with pytest.raises(BadMessage):
        CmdCodec().decode(frame)


def test_codecs_satisfy_the_protocol() -> None:
    """JSONCodec and CmdCodec are Codecs (runtime-checkable protocol)."""
    assert isinstance(JSONCodec(), Codec)
    assert isinstance(CmdCodec(), Codec)


def test_random_ids_are_128_bit_hex_and_unique() -> None:
    """The default id generator gives unguessable 32-hex-digit ids."""
    ids = {random_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_snowflake_ids_carry_node_and_increase() -> None:
    """Snowflake ids are unique, strictly increasing, carry the node and the current time."""
    gen = SnowflakeIds(node=3)
    before = int(time.time() * 1000)
    ids = [int(gen()) for _ in range(10_000)]
    after = int(time.time() * 1000)
    assert ids == sorted(set(ids))
    assert all((i >> 12) & 0x3FF == 3 for i in ids)
    epoch = 1288834974657
    assert before - 1 <= (ids[0] >> 22) + epoch <= after + 1


@pytest.mark.parametrize("node", [-1, 1024])
def test_snowflake_node_out_of_range_is_refused(node: int) -> None:
    """A node outside [0, 1024) is refused."""
    with pytest.raises(ValueError, match="rtgevent:"):
        SnowflakeIds(node=node)


def test_integers_past_64_bits_and_surrogates_decode_exactly() -> None:
    """The fast parser never changes a value: big integers stay integers, escaped surrogates stay."""
    codec = JSONCodec()
    big = 123456789012345678901234567890
    msg = codec.decode(f'{{"id": {big}, "route": "r", "data": {{"n": [{-big}, 1.5, 2e300]}}}}')
    assert msg.id == big and type(msg.id) is int
    assert msg.data == {"n": [-big, 1.5, 2e300]} and type(msg.data["n"][0]) is int
    assert codec.decode('{"route": "r", "data": "\\ud800"}').data == "\ud800"
    assert codec.decode(codec.encode(msg)) == msg

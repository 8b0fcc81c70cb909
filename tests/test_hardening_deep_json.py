"""Hardening, deep JSON: any frame decodes to a Message or is refused as bad_message, however deep it nests.

Nesting is bounded by `rtgevent.codec.MAX_DEPTH`, read from the text before any parser
runs: the same frame gets the same answer whichever greenlet decodes it, at whatever
stack depth, and nothing deeper reaches the recursive parsers, handlers or encoders.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import websocket

from rtgevent import BadMessage, Config, JSONCodec, Message, Realtime, Session
from rtgevent.codec import MAX_DEPTH
from tests.conftest import Server
from tests.waiting import WAIT


def nested(depth: int, *, route: str = "echo", msg_id: str | None = None) -> str:
    """An envelope whose ``data`` makes the whole frame nest ``depth`` levels (the envelope is one)."""
    inner = depth - 1
    head = f'{{"route":"{route}"' + (f',"id":"{msg_id}"' if msg_id else "")
    return head + ',"data":' + "[" * inner + "]" * inner + "}"


def at_stack_depth(frames: int, fn: Callable[[], Any]) -> Any:
    """Call ``fn`` from ``frames`` Python frames deep: where a handler's stack may already be."""
    if frames <= 0:
        return fn()
    return at_stack_depth(frames - 1, fn)


def outcome(frame: str) -> str:
    try:
        JSONCodec().decode(frame)
    except BadMessage as exc:
        return f"BadMessage: {exc}"
    return "decoded"


# ---------------------------------------------------------------------------------- the codec alone


def test_the_bound_is_between_a_useful_depth_and_what_recursive_code_survives() -> None:
    """Deep enough for any sane payload, shallow enough for orjson's encoder (254) and a handler's stack."""
    assert 64 <= MAX_DEPTH < 254


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 500, 980, 1000, 1023, 1024, 1025, 5000, 200_000])
def test_frames_nested_deeper_than_the_bound_are_bad_messages(depth: int) -> None:
    """Past MAX_DEPTH a frame is BadMessage (wire code bad_message), never a RecursionError."""
    for frame in (nested(depth), nested(depth).replace("[", "{").replace("]", "}"), "[" * depth + "]" * depth):
        with pytest.raises(BadMessage) as info:
            JSONCodec().decode(frame)
        assert info.value.wire_code == "bad_message"
    frame = nested(depth)
    with pytest.raises(BadMessage, match=f"deeper than {MAX_DEPTH}"):
        JSONCodec().decode(frame)


def test_objects_and_arrays_both_count() -> None:
    """A frame nesting objects inside arrays past the bound is refused like a pure array one."""
    data: Any = 0
    for level in range(MAX_DEPTH):
        data = [data] if level % 2 else {"k": data}
    with pytest.raises(BadMessage):
        JSONCodec().decode(json.dumps({"route": "echo", "data": data}))


def test_frames_at_the_bound_decode_and_encode_back() -> None:
    """Exactly MAX_DEPTH levels decode to the value, and its reply encodes back (the fast encoder's limit is 254)."""
    codec = JSONCodec()
    msg = codec.decode(nested(MAX_DEPTH, msg_id="7"))
    assert msg.route == "echo" and msg.id == "7"
    depth, value = 0, msg.data
    while value:
        depth, value = depth + 1, value[0]
    assert depth == MAX_DEPTH - 2  # the envelope and the innermost empty list are the other two levels
    reply = codec.encode(Message("rt.reply", msg.data, metadata={"in_reply_to": "7"}))
    assert codec.decode(reply).data == msg.data


def test_brackets_inside_strings_do_not_nest() -> None:
    """Strings full of brackets, escaped quotes and backslashes included, are data: they decode."""
    text = "[" * 5000 + '\\"' + "{" * 5000 + "\\\\"
    frame = json.dumps({"route": "echo", "data": [text, {"k": "]" * 3000}, "x\\" + "[" * 300]})
    msg = JSONCodec().decode(frame)
    assert msg.data == [text, {"k": "]" * 3000}, "x\\" + "[" * 300]
    # closing brackets inside strings do not hide real depth either
    deep = '{"route":"echo","data":' + '["]]]]",' * 200 + "0" + "]" * 200 + "}"
    with pytest.raises(BadMessage):
        JSONCodec().decode(deep)


def test_many_shallow_containers_are_not_deep() -> None:
    """A large flat payload (many brackets, little depth) decodes."""
    items = [{"id": i, "tags": [i, [i]]} for i in range(20_000)]
    assert JSONCodec().decode(json.dumps({"route": "echo", "data": items})).data == items


@pytest.mark.parametrize("depth", [MAX_DEPTH, MAX_DEPTH + 1, 1000, 1024])
def test_the_answer_does_not_depend_on_the_stack_depth_of_the_caller(depth: int) -> None:
    """The same frame gets the same answer at the top of a stack and 600 frames deep (the old bug: not so)."""
    frame = nested(depth)
    top = outcome(frame)
    assert top == (
        "decoded" if depth <= MAX_DEPTH else f"BadMessage: rtgevent: JSON nested deeper than {MAX_DEPTH} levels"
    )
    assert at_stack_depth(600, lambda: outcome(frame)) == top


# ---------------------------------------------------------------------------------- over a real socket


def deep_json_rt(errors: list[BaseException]) -> Realtime:
    rt = Realtime(Config(heartbeat_interval=None))

    @rt.route("echo")
    def echo(session: Session, msg: Message) -> Any:
        return msg.data

    @rt.on_error
    def record(error: BaseException, session: Session | None) -> None:
        errors.append(error)

    return rt


@pytest.mark.parametrize("depth", [1000, 1024, 100_000])
def test_a_deep_frame_gets_bad_message_and_the_connection_stays_usable(
    serve_realtime: Callable[[Any], Server], depth: int
) -> None:
    """Over a socket: nesting 1000 deep → rt.error bad_message (not handler_error), nothing logged as a crash."""
    errors: list[BaseException] = []
    server = serve_realtime(deep_json_rt(errors))
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/", timeout=WAIT)
    try:
        ws.send(nested(depth, msg_id="deep"))
        answer = json.loads(ws.recv())
        assert answer["route"] == "rt.error"
        assert answer["metadata"] == {"in_reply_to": "", "code": "bad_message"}
        assert str(MAX_DEPTH) in answer["data"]["message"]
        # the session goes on: the next request is answered
        ws.send(json.dumps({"route": "echo", "id": 2, "data": [[["still here"]]]}))
        reply = json.loads(ws.recv())
        assert reply == {"route": "rt.reply", "metadata": {"in_reply_to": 2}, "data": [[["still here"]]]}
    finally:
        ws.close()
    assert [type(error) for error in errors] == [BadMessage]

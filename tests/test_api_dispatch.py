"""The application API: routing priority, errors on the wire, replies, middleware, codecs, ids.

Every handler-level test takes ``connect`` and so runs twice: over a real WebSocket
(pywsgi on port 0, websocket-client) and through ``rt.test_client()`` without a socket.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from gevent.event import Event

from rtgevent import (
    AlreadyStarted,
    CmdCodec,
    Config,
    HandlerTimeout,
    Identity,
    Message,
    Realtime,
    Session,
    SnowflakeIds,
    UnknownRoute,
    logger,
    recovery,
    timeout,
)
from rtgevent.errors import BadMessage
from tests.helpers_api import (
    WAIT,
    Connect,
    ErrorLog,
    LiveFactory,
    SocketDriver,
    add_echo,
    assert_still_open,
    code_of,
    drivers,
    envelope,
    in_reply_to,
    record_errors,
    serving,
)


@pytest.fixture(params=["socket", "test_client"])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    yield from drivers(request.param)


@pytest.fixture
def live() -> Iterator[LiveFactory]:
    yield from serving()


def routed_app() -> Realtime:
    rt = Realtime()
    add_echo(rt)

    @rt.route("chat.send")
    def exact(session: Session, msg: Message) -> Any:
        return "exact"

    @rt.prefix("chat.")
    def short(session: Session, msg: Message) -> Any:
        return "prefix chat."

    @rt.prefix("chat.send")
    def long(session: Session, msg: Message) -> Any:
        return "prefix chat.send"

    return rt


# ---------------------------------------------------------------------------- routing


def test_exact_route_beats_prefixes(connect: Connect) -> None:
    """An exact route wins over every prefix that also matches."""
    driver = connect(routed_app())
    assert driver.request("chat.send").data == "exact"


def test_longest_prefix_wins(connect: Connect) -> None:
    """The longest matching prefix handles the message, whatever the registration order."""
    driver = connect(routed_app())
    assert driver.request("chat.send.later").data == "prefix chat.send"
    assert driver.request("chat.edit").data == "prefix chat."


def test_fallback_comes_last(connect: Connect) -> None:
    """on_message handles what no exact route or prefix matched, and nothing else."""
    rt = routed_app()

    @rt.on_message
    def fallback(session: Session, msg: Message) -> Any:
        return f"fallback {msg.route}"

    driver = connect(rt)
    assert driver.request("other.thing").data == "fallback other.thing"
    assert driver.request("chat.x").data == "prefix chat."
    assert driver.request("chat.send").data == "exact"


def test_unknown_route_without_fallback(connect: Connect) -> None:
    """No handler and no fallback: rt.error unknown_route, on_error gets UnknownRoute, still open."""
    rt = routed_app()
    errors = record_errors(rt)
    driver = connect(rt)
    answer = driver.request("nobody.home", id=5)
    assert answer.route == "rt.error"
    assert (code_of(answer), in_reply_to(answer)) == ("unknown_route", 5)
    assert "nobody.home" in answer.data["message"]
    [(error, session)] = errors
    assert isinstance(error, UnknownRoute) and error.route == "nobody.home"
    assert session is not None
    assert_still_open(driver)


# ---------------------------------------------------------------------------- bad envelopes


@pytest.mark.parametrize(
    "frame",
    [
        "this is not json",
        '{"route": "echo"',
        "[1, 2, 3]",
        '"echo"',
        "null",
        envelope(data={"no": "route"}, id=3),
        envelope(route="", id=3),
        envelope(route=7, id=3),
        envelope(route="echo", id=1.5),
        envelope(route="echo", metadata=["not", "an", "object"]),
        b'{"route": "echo", "id": 1}',
    ],
    ids=[
        "not-json",
        "truncated",
        "array",
        "string",
        "null",
        "missing-route",
        "empty-route",
        "number-route",
        "float-id",
        "bad-metadata",
        "binary-frame",
    ],
)
def test_bad_envelope_answers_bad_message(connect: Connect, frame: str | bytes) -> None:
    """Bad JSON, a non-object, no route, a binary frame → rt.error bad_message; the session stays open."""
    rt = Realtime()
    add_echo(rt)
    errors = record_errors(rt)
    driver = connect(rt)
    driver.send_raw(frame)
    answer = driver.recv()
    assert answer.route == "rt.error"
    assert (code_of(answer), in_reply_to(answer)) == ("bad_message", "")
    assert answer.data["message"]
    assert [type(e) for e, _ in errors] == [BadMessage]
    assert_still_open(driver)


# ---------------------------------------------------------------------------- handler errors


def failing_app(config: Config | None = None) -> tuple[Realtime, ErrorLog]:
    rt = Realtime(config)
    add_echo(rt)
    errors = record_errors(rt)

    @rt.route("explode")
    def explode(session: Session, msg: Message) -> Any:
        raise ValueError("secret database password 1234")

    return rt, errors


def test_raising_handler_answers_handler_error_without_the_text(connect: Connect) -> None:
    """A raising handler → rt.error handler_error with no exception text; on_error gets the exception."""
    rt, errors = failing_app()
    driver = connect(rt)
    answer = driver.request("explode", id="boom")
    assert answer.route == "rt.error"
    assert (code_of(answer), in_reply_to(answer)) == ("handler_error", "boom")
    assert "secret" not in json.dumps(answer.data) and "ValueError" not in json.dumps(answer.data)
    [(error, session)] = errors
    assert isinstance(error, ValueError) and session is not None
    assert_still_open(driver)


def test_raising_handler_in_debug_sends_the_text(connect: Connect) -> None:
    """Under Config(debug=True) the handler_error carries the exception text."""
    rt, errors = failing_app(Config(debug=True))
    driver = connect(rt)
    answer = driver.request("explode")
    assert code_of(answer) == "handler_error"
    assert "secret database password 1234" in answer.data["message"]
    assert len(errors) == 1
    assert_still_open(driver)


def test_handler_slower_than_timeout_middleware(connect: Connect) -> None:
    """A handler running past timeout(seconds) is cut: rt.error timeout, on_error told, still open."""
    rt = Realtime()
    rt.use(timeout(0.2))
    add_echo(rt)
    errors = record_errors(rt)
    never = Event()

    @rt.route("slow")
    def slow(session: Session, msg: Message) -> Any:
        never.wait(WAIT)  # blocks far longer than the timeout
        return "too late"

    driver = connect(rt)
    answer = driver.request("slow", id=11)
    assert answer.route == "rt.error"
    assert (code_of(answer), in_reply_to(answer)) == ("timeout", 11)
    assert [type(e) for e, _ in errors] == [HandlerTimeout]
    assert_still_open(driver)


def test_timeout_needs_a_positive_duration() -> None:
    """timeout(0) and negative durations are refused at once."""
    for seconds in (0, -1):
        with pytest.raises(ValueError, match="rtgevent:"):
            timeout(seconds)


# ---------------------------------------------------------------------------- replies


def test_reply_keeps_id_type(connect: Connect) -> None:
    """rt.reply carries in_reply_to: a numeric id stays a number, a string id a string."""
    rt = Realtime()
    add_echo(rt)
    driver = connect(rt)
    for msg_id in (7, 0, -2, 2**53 + 1, "7", "", "ünï"):
        reply = driver.request("echo", {"x": 1}, id=msg_id)
        assert reply.route == "rt.reply"
        assert reply.data == {"x": 1}
        assert in_reply_to(reply) == msg_id and type(in_reply_to(reply)) is type(msg_id)


def test_no_reply_without_id_or_for_none(connect: Connect) -> None:
    """No rt.reply for a message without id, nor for a handler returning None."""
    rt = Realtime()
    add_echo(rt)

    @rt.route("quiet")
    def quiet(session: Session, msg: Message) -> Any:
        return None

    driver = connect(rt)
    driver.send("echo", "no id")
    driver.send("quiet", id=1)
    driver.send("echo", "marker", id="marker")
    first = driver.recv()  # nothing may come before the marker's reply
    assert (first.route, first.data, in_reply_to(first)) == ("rt.reply", "marker", "marker")


def test_handler_messages_arrive_before_the_reply(connect: Connect) -> None:
    """What a handler sends goes out in order, before the reply it returns."""
    rt = Realtime()

    @rt.route("chatty")
    def chatty(session: Session, msg: Message) -> Any:
        session.send("first", 1)
        session.send("second", 2)
        return "done"

    driver = connect(rt)
    driver.send("chatty", id=1)
    got = [driver.recv() for _ in range(3)]
    assert [(m.route, m.data) for m in got] == [("first", 1), ("second", 2), ("rt.reply", "done")]


def test_ten_thousand_pipelined_messages_are_handled_in_order(connect: Connect) -> None:
    """10,000 messages pipelined on one session are handled, and answered, in order."""
    rt = Realtime()
    seen: list[int] = []

    @rt.route("seq")
    def seq(session: Session, msg: Message) -> Any:
        seen.append(msg.data)
        return msg.data

    driver = connect(rt)
    count = 10_000
    driver.send_many(rt.codec.encode(Message("seq", i, id=i)) for i in range(count))
    replies = [driver.recv() for _ in range(count)]
    assert [in_reply_to(r) for r in replies] == list(range(count))
    assert [r.data for r in replies] == list(range(count))
    assert seen == list(range(count))


# ---------------------------------------------------------------------------- middleware


def test_first_registered_middleware_is_outermost(connect: Connect) -> None:
    """Middleware wraps handlers; the first registered runs first and finishes last."""
    rt = Realtime()
    calls: list[str] = []

    def tracing(name: str) -> Any:
        def middleware(next_handler: Any) -> Any:
            def handler(session: Session, msg: Message) -> Any:
                calls.append(f"{name}>")
                result = next_handler(session, msg)
                calls.append(f"<{name}")
                return f"{name}({result})"

            return handler

        return middleware

    rt.use(tracing("a"), tracing("b"))
    rt.use(tracing("c"))

    @rt.route("r")
    def handler(session: Session, msg: Message) -> Any:
        calls.append("handler")
        return "x"

    driver = connect(rt)
    assert driver.request("r").data == "a(b(c(x)))"
    assert calls == ["a>", "b>", "c>", "handler", "<c", "<b", "<a"]


def test_middleware_wraps_prefix_and_fallback_handlers(connect: Connect) -> None:
    """Prefix and fallback handlers go through the middleware chain too."""
    rt = Realtime()
    seen: list[str] = []

    def spy(next_handler: Any) -> Any:
        def handler(session: Session, msg: Message) -> Any:
            seen.append(msg.route)
            return next_handler(session, msg)

        return handler

    rt.use(spy)
    rt.prefix("p.")(lambda session, msg: "p")
    rt.on_message(lambda session, msg: "f")
    driver = connect(rt)
    assert driver.request("p.x").data == "p"
    assert driver.request("zz").data == "f"
    assert seen == ["p.x", "zz"]


def test_logger_writes_one_line_per_message(connect: Connect, caplog: pytest.LogCaptureFixture) -> None:
    """logger() logs one line per handled message with session, route, duration and outcome."""
    caplog.set_level(logging.INFO, logger="rtgevent.messages")
    rt = Realtime()
    rt.use(logger(), recovery(), timeout(0.2))
    add_echo(rt)
    rt.route("explode")(lambda session, msg: 1 / 0)
    ids: list[str] = []
    rt.on_connect(lambda session: ids.append(session.id))
    never = Event()

    @rt.route("slow")
    def slow(session: Session, msg: Message) -> Any:
        never.wait(WAIT)

    driver = connect(rt)
    assert driver.request("echo", 1).route == "rt.reply"
    assert code_of(driver.request("explode")) == "handler_error"
    assert code_of(driver.request("slow")) == "timeout"
    driver.send("echo", 2)
    assert driver.request("echo", 3).data == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "rtgevent.messages"]
    assert len(lines) == 5, lines
    outcomes = [line.rsplit("outcome=", 1)[1] for line in lines]
    assert outcomes == ["ok", "handler_error", "timeout", "ok", "ok"]
    routes = [line.split("route=", 1)[1].split()[0] for line in lines]
    assert routes == ["echo", "explode", "slow", "echo", "echo"]
    assert all(f"session={ids[0]}" in line and "duration_ms=" in line for line in lines)


def test_logger_inside_timeout_logs_the_timeout(connect: Connect, caplog: pytest.LogCaptureFixture) -> None:
    """A logger() inside timeout() logs outcome=timeout for a handler the timeout cut."""
    caplog.set_level(logging.INFO, logger="rtgevent.messages")
    rt = Realtime()
    rt.use(timeout(0.2), logger())
    never = Event()

    @rt.route("slow")
    def slow(session: Session, msg: Message) -> Any:
        never.wait(WAIT)

    driver = connect(rt)
    assert code_of(driver.request("slow")) == "timeout"
    [line] = [r.getMessage() for r in caplog.records if r.name == "rtgevent.messages"]
    assert line.endswith("outcome=timeout")


def test_recovery_answers_handler_error_and_reports_once(connect: Connect) -> None:
    """recovery() turns an exception into rt.error handler_error and calls on_error exactly once."""
    rt = Realtime()
    rt.use(recovery())
    add_echo(rt)
    errors = record_errors(rt)

    @rt.route("explode")
    def explode(session: Session, msg: Message) -> Any:
        raise KeyError("internal detail")

    driver = connect(rt)
    answer = driver.request("explode", id=3)
    assert (answer.route, code_of(answer), in_reply_to(answer)) == ("rt.error", "handler_error", 3)
    assert "internal detail" not in answer.data["message"]
    assert_still_open(driver)
    [(error, session)] = errors
    assert isinstance(error, KeyError) and session is not None


def test_recovery_in_debug_sends_the_text(connect: Connect) -> None:
    """recovery() under Config(debug=True) sends the exception text, still reporting once."""
    rt = Realtime(Config(debug=True))
    rt.use(recovery())
    errors = record_errors(rt)
    rt.route("explode")(lambda session, msg: {}["missing key"])
    driver = connect(rt)
    answer = driver.request("explode")
    assert code_of(answer) == "handler_error" and "missing key" in answer.data["message"]
    assert len(errors) == 1


# ---------------------------------------------------------------------------- codecs and ids


class PipeCodec:
    """A custom codec: lines ``route``, ``id``, JSON data, JSON metadata; encodes to bytes (binary frames)."""

    def encode(self, message: Message) -> bytes:
        msg_id = "" if message.id is None else str(message.id)
        meta = json.dumps(message.metadata or {})
        return f"{message.route}\n{msg_id}\n{json.dumps(message.data)}\n{meta}".encode()

    def decode(self, frame: str | bytes) -> Message:
        text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
        parts = text.split("\n", 3)
        if len(parts) < 3 or not parts[0]:
            raise BadMessage("expected route, id and data lines")
        try:
            data = json.loads(parts[2])
            metadata = json.loads(parts[3]) if len(parts) == 4 else None
        except ValueError:
            raise BadMessage("data is not JSON") from None
        return Message(parts[0], data, id=parts[1] or None, metadata=metadata or None)


def test_custom_codec_plugs_in(connect: Connect) -> None:
    """Realtime(codec=...) decodes requests and encodes replies and errors with that codec."""
    rt = Realtime(codec=PipeCodec())

    @rt.route("double")
    def double(session: Session, msg: Message) -> Any:
        return msg.data * 2

    driver = connect(rt)
    driver.send_raw(b"double\na1\n21")
    reply = driver.recv()
    assert (reply.route, reply.data, in_reply_to(reply)) == ("rt.reply", 42, "a1")
    driver.send_raw(b"nonsense")
    assert code_of(driver.recv()) == "bad_message"
    driver.send_raw(b"missing\na2\nnull")
    error = driver.recv()
    assert (error.route, code_of(error), in_reply_to(error)) == ("rt.error", "unknown_route", "a2")


def test_custom_codec_bytes_go_out_as_binary_frames(live: LiveFactory) -> None:
    """A codec returning bytes makes the server send binary frames (str would be text frames)."""
    rt = Realtime(codec=PipeCodec())
    rt.route("double")(lambda session, msg: msg.data * 2)
    ws = live(rt).connect()
    ws.send("double\nx\n4")  # a text frame: the custom codec accepts both
    opcode, data = ws.recv_data()
    assert opcode == 0x2
    assert data == b'rt.reply\n\n8\n{"in_reply_to": "x"}'


def test_cmd_codec_speaks_route_space_body(connect: Connect) -> None:
    """With CmdCodec a client sends "<route> <body>" and gets the same shape back."""
    rt = Realtime(codec=CmdCodec())

    @rt.route("shout")
    def shout(session: Session, msg: Message) -> Any:
        session.send("shouted", msg.data.upper())

    driver = connect(rt)
    driver.send_raw("shout hello  world")
    assert driver.recv() == Message("shouted", "HELLO  WORLD")
    driver.send_raw("whisper psst")
    error = driver.recv()
    assert error.route == "rt.error"
    assert json.loads(error.data)["message"].startswith("unknown route")
    driver.send_raw("shout still open")
    assert driver.recv().data == "STILL OPEN"


def test_pluggable_id_generator_names_sessions(connect: Connect) -> None:
    """Realtime(id_generator=SnowflakeIds(node=3)) names sessions with snowflake ids of node 3."""
    rt = Realtime(id_generator=SnowflakeIds(node=3))
    seen: list[str] = []
    rt.on_connect(lambda session: seen.append(session.id))
    rt.route("whoami")(lambda session, msg: session.id)
    driver = connect(rt)
    session_id = driver.request("whoami").data
    assert seen == [session_id]
    assert session_id.isdigit() and (int(session_id) >> 12) & 0x3FF == 3


def test_session_identity_reaches_handlers(connect: Connect) -> None:
    """Handlers see the session identity (test client: the one given; socket: anonymous)."""
    rt = Realtime()
    rt.route("me")(lambda session, msg: [session.identity.tenant_id, session.identity.id])
    driver = connect(rt)
    expected = ["", "anonymous"] if isinstance(driver, SocketDriver) else ["acme", "tester"]
    assert driver.request("me").data == expected


# ---------------------------------------------------------------------------- registration


def register_everything(rt: Realtime) -> list[tuple[str, Any]]:
    """Each registration API, as a call that registers something new."""

    def fn(*args: Any) -> None:
        return None

    return [
        ("route", lambda: rt.route("late.route")(fn)),
        ("prefix", lambda: rt.prefix("late.")(fn)),
        ("on_message", lambda: rt.on_message(fn)),
        ("use", lambda: rt.use(recovery())),
        ("on_connect", lambda: rt.on_connect(fn)),
        ("on_disconnect", lambda: rt.on_disconnect(fn)),
        ("on_error", lambda: rt.on_error(fn)),
    ]


def test_registration_refused_after_start() -> None:
    """After rt.start() every registration raises AlreadyStarted; a second start() too."""
    rt = Realtime()
    rt.start()
    try:
        for name, register in register_everything(rt):
            with pytest.raises(AlreadyStarted, match="rtgevent:"):
                register()
                pytest.fail(f"{name} was accepted after start()")
        with pytest.raises(AlreadyStarted):
            rt.start()
    finally:
        rt.shutdown(timeout=5)


def test_registration_refused_after_the_first_request(live: LiveFactory) -> None:
    """Once the application served a request (any request), registration raises AlreadyStarted."""
    rt = Realtime()
    add_echo(rt)
    for _, register in register_everything(Realtime()):
        register()  # a fresh instance accepts every registration
    server = live(rt)
    assert http_status(server.port) == 400  # a plain GET: not an upgrade, but a request
    for name, register in register_everything(rt):
        with pytest.raises(AlreadyStarted):
            register()
            pytest.fail(f"{name} was accepted once serving")


def test_registration_refused_once_a_test_client_exists() -> None:
    """Making a test client starts serving: registration raises AlreadyStarted afterwards."""
    rt = Realtime()
    add_echo(rt)
    with rt.test_client(identity=Identity("u")) as client:
        assert client.request("echo", 1).data == 1
        for name, register in register_everything(rt):
            with pytest.raises(AlreadyStarted):
                register()
                pytest.fail(f"{name} was accepted once serving")


def test_reserved_routes_cannot_be_registered() -> None:
    """Routes under rt. belong to the framework."""
    rt = Realtime()
    with pytest.raises(ValueError, match="reserved"):
        rt.route("rt.auth")


def http_status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=WAIT) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code

"""Error replies over real sockets: small whatever the request, one for every request, no internals.

Each test serves a `Realtime` on pywsgi (port 0) and talks to it with websocket-client; the
broker and presence failures are real ones: a Redis or RabbitMQ URL whose port nobody
listens on, and a private Redis stopped while a client is connected.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import websocket

from rtgevent import Config, Identity, Message, Realtime, Session, SessionClosed, StaticTokenAuthenticator
from rtgevent.broker.kombu import KombuBroker
from rtgevent.broker.redis import RedisBroker
from rtgevent.errors import BrokerUnavailable, UnknownRoute
from rtgevent.presence import MemoryPresence
from rtgevent.presence.redis import RedisPresence
from tests.helpers_api import ErrorLog, Live, LiveFactory, record_errors, serving
from tests.services import RedisServer, free_port


@pytest.fixture
def live() -> Iterator[LiveFactory]:
    yield from serving()


def answer(ws: websocket.WebSocket) -> tuple[dict[str, Any], int]:
    """The next envelope the server sent, and its size on the wire (bytes of the text frame)."""
    frame = ws.recv()
    assert isinstance(frame, str)
    return json.loads(frame), len(frame.encode())


def request(ws: websocket.WebSocket, route: str, data: Any = None, id: Any = "r1") -> dict[str, Any]:
    """Send a request; return the rt.reply or rt.error answering it (a broadcast it caused is skipped)."""
    ws.send(json.dumps({"id": id, "route": route, "data": data}))
    while True:
        msg = answer(ws)[0]
        if msg["route"] in ("rt.reply", "rt.error") and msg["metadata"]["in_reply_to"] == id:
            return msg


# ---------------------------------------------------------------------------- amplification


def test_unknown_huge_route_is_answered_small(live: LiveFactory) -> None:
    """A 1 MiB unknown route of U+0085 gets an rt.error of under 1 KB quoting 100 characters of it."""
    rt = Realtime(Config(read_limit=4 << 20))
    errors = record_errors(rt)
    ws = live(rt).connect()
    route = "\u0085" * (1 << 19)  # two bytes of UTF-8 each: 1 MiB
    ws.send(json.dumps({"id": 7, "route": route}, ensure_ascii=False))
    msg, size = answer(ws)
    print(f"1 MiB unknown route answered with {size} bytes")
    assert (msg["route"], msg["metadata"]) == ("rt.error", {"in_reply_to": 7, "code": "unknown_route"})
    assert size < 1000
    assert msg["data"]["message"].startswith("unknown route '\\x85\\x85")
    assert f"({len(route)} characters)" in msg["data"]["message"]
    [(error, _)] = errors
    assert isinstance(error, UnknownRoute) and error.route == route  # the server side keeps all of it
    assert len(str(error)) < 1000
    assert request(ws, "rt.nothing")["metadata"]["code"] == "unknown_route"  # still open


def test_bad_envelope_quoting_its_input_is_answered_small(live: LiveFactory) -> None:
    """An envelope whose number literal is a million digits long: the bad_message text stays short."""
    rt = Realtime(Config(read_limit=4 << 20))
    ws = live(rt).connect()
    ws.send('{"id": 1, "route": "x", "data": ' + "1" * 1_000_000 + "e400}")
    msg, size = answer(ws)
    print(f"1 MB bad envelope answered with {size} bytes")
    assert msg["metadata"]["code"] == "bad_message"
    assert size < 1000


def test_quote_cuts_and_reprs_client_text() -> None:
    """quote() is repr() for short text; long text is cut to QUOTE_LIMIT characters and says how long it was."""
    from rtgevent.errors import quote

    assert quote("chat.send") == "'chat.send'"
    assert quote("a'b\n") == repr("a'b\n")
    long = "\u0085" * 10_000
    assert quote(long) == repr("\u0085" * 100) + "... (10000 characters)"
    assert quote(b"x" * 500).endswith("... (503 characters)")  # not text: its str(), cut the same way


# ---------------------------------------------------------------------------- every request gets an answer


def test_send_to_an_offline_identity_in_a_handler_is_answered(live: LiveFactory) -> None:
    """A handler's send_to_identity to nobody: rt.error to the caller, SessionClosed to on_error."""
    rt = Realtime()
    errors = record_errors(rt)

    @rt.route("dm")
    def dm(session: Session, msg: Message) -> Any:
        rt.send_to_identity("acme", "offline-user", "note", msg.data)
        return {"sent": True}

    @rt.route("echo")
    def echo(session: Session, msg: Message) -> Any:
        return msg.data

    ws = live(rt).connect()
    msg = request(ws, "dm", "hi", id=41)
    assert (msg["route"], msg["metadata"]) == ("rt.error", {"in_reply_to": 41, "code": "handler_error"})
    assert "offline-user" not in msg["data"]["message"]  # an internal error: no text without debug
    [(error, session)] = errors
    assert isinstance(error, SessionClosed) and session is not None
    assert request(ws, "echo", "still open") == {
        "route": "rt.reply",
        "data": "still open",
        "metadata": {"in_reply_to": "r1"},
    }


def test_a_handler_of_a_closing_session_is_not_answered(live: LiveFactory) -> None:
    """The caller's own session closing is the one silent SessionClosed: no rt.error, no on_error."""
    rt = Realtime()
    errors = record_errors(rt)

    @rt.route("leave")
    def leave(session: Session, msg: Message) -> Any:
        session.close(4000, "bye")
        session.send("after", "close")  # raises SessionClosed: this session is closing
        return "never sent"

    ws = live(rt).connect()
    ws.send(json.dumps({"id": 1, "route": "leave"}))
    opcode, data = ws.recv_data()
    assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(data[:2], "big") == 4000
    assert errors == []


# ---------------------------------------------------------------------------- no internals on the wire


def closed_port_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def broadcasting_app(config: Config, broker: Any) -> tuple[Realtime, ErrorLog]:
    rt = Realtime(config, broker=broker, presence=MemoryPresence())
    errors = record_errors(rt)

    @rt.route("shout")
    def shout(session: Session, msg: Message) -> Any:
        rt.broadcast("news", msg.data)
        return "sent"

    rt.start()  # subscribes (in the background while the broker is away): publishes go out
    return rt, errors


def assert_generic(msg: dict[str, Any], *secrets: str) -> None:
    assert (msg["route"], msg["metadata"]["code"]) == ("rt.error", "unavailable"), msg
    text = msg["data"]["message"]
    assert text == "the broker or presence store did not answer", text
    for secret in secrets:
        assert secret not in json.dumps(msg), (secret, msg)


@pytest.mark.parametrize("debug", [False, True], ids=["debug-off", "debug-on"])
def test_redis_broker_down_shows_no_address_to_the_client(live: LiveFactory, debug: bool) -> None:
    """A handler's broadcast while Redis is down: a generic text; host, port and errno go to on_error only."""
    url = closed_port_redis()
    port = url.rsplit(":", 1)[1].split("/")[0]
    rt, errors = broadcasting_app(Config(debug=debug), RedisBroker(url, publish_timeout=2))
    ws = live(rt).connect()
    msg = request(ws, "shout", "x")
    [(error, _)] = [e for e in errors if isinstance(e[0], BrokerUnavailable)]
    assert port in str(error) and "127.0.0.1" in str(error)  # the full text is the server's
    if debug:
        assert port in msg["data"]["message"]  # Config.debug: error texts are sent to clients
    else:
        assert_generic(msg, port, "127.0.0.1", "111", "refused", "redis://")


def test_kombu_broker_down_shows_no_credentials_to_the_client(live: LiveFactory) -> None:
    """A kombu publish failure: the client learns neither user, host, port nor vhost."""
    port = str(free_port())
    url = f"amqp://appuser:s3cret@127.0.0.1:{port}/prodvhost"
    rt, errors = broadcasting_app(Config(), KombuBroker(url, publish_timeout=2, connect_timeout=1))
    ws = live(rt).connect()
    msg = request(ws, "shout", "x")
    assert any(isinstance(e, BrokerUnavailable) and port in str(e) for e, _ in errors)
    assert_generic(msg, "appuser", "s3cret", "127.0.0.1", port, "prodvhost", "amqp")


def test_presence_down_shows_no_address_to_the_client(live: LiveFactory) -> None:
    """Presence in a Redis that stops while a client is connected: the client gets the generic text."""
    server = RedisServer()
    server.start()
    try:
        presence = RedisPresence(server.url, socket_timeout=1, retries=1, namespace="rtgtest-hardening")
        rt = Realtime(
            Config(),
            presence=presence,
            authenticator=StaticTokenAuthenticator("t", Identity("alice", "acme")),
        )
        errors = record_errors(rt)

        @rt.route("online")
        def online(session: Session, msg: Message) -> Any:
            return rt.is_online("acme", str(msg.data))

        app: Live = live(rt)
        ws = app.connect(header=["Authorization: Bearer t"])
        assert request(ws, "online", "alice")["data"] is True  # registered in the private Redis
        server.stop()  # the port is closed now
        msg = request(ws, "online", "bob")
        assert_generic(msg, str(server.port), "127.0.0.1", "111", "refused", "redis://")
        assert any(isinstance(e, BrokerUnavailable) and str(server.port) in str(e) for e, _ in errors)
        ws.close()
    finally:
        server.stop()


def test_other_framework_errors_in_handlers_are_generic(live: LiveFactory) -> None:
    """A framework error about the server's own state (here AlreadyStarted) reads "internal error"."""
    rt = Realtime()
    record_errors(rt)

    @rt.route("misuse")
    def misuse(session: Session, msg: Message) -> Any:
        rt.start()
        rt.start()  # AlreadyStarted: the text names the server's API, not the client's doing
        return None

    ws = live(rt).connect()
    msg = request(ws, "misuse")
    assert (msg["metadata"]["code"], msg["data"]["message"]) == ("handler_error", "internal error")

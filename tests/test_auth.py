"""Authentication (SPEC section 6): every built-in authenticator, before the upgrade and in-band.

Upgrade refusals are checked on a raw socket: the answer is HTTP 401, never a 101, and
no WebSocket frame follows it.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

import rtgevent.auth
from rtgevent import (
    AnonymousAuthenticator,
    BearerTokenAuthenticator,
    Config,
    Identity,
    InBandAuthenticator,
    Message,
    Realtime,
    Session,
    StaticTokenAuthenticator,
    Unauthorized,
    random_id,
)
from tests import rawws
from tests.helpers_api import Live, LiveFactory, serving
from tests.waiting import WAIT

ALICE = Identity("alice", "acme", roles=("admin",))


@pytest.fixture
def live() -> Iterator[LiveFactory]:
    yield from serving()


def request(path: str = "/ws", headers: dict[str, str] | None = None) -> Request:
    return Request(EnvironBuilder(path=path, headers=headers or {}).get_environ())


def verify(token: str) -> Identity:
    if token != "good-token":
        raise Unauthorized("bad token")
    return ALICE


def app(authenticator: Any = None, config: Config | None = None, **kwargs: Any) -> tuple[Realtime, list[Any]]:
    """A Realtime whose ``whoami`` route answers the session's identity; errors are recorded."""
    rt = Realtime(config, authenticator=authenticator, **kwargs)
    errors: list[Any] = []
    rt.on_error(lambda error, session: errors.append(error))

    @rt.route("whoami")
    def whoami(session: Session, msg: Message) -> Any:
        return {"id": session.identity.id, "tenant": session.identity.tenant_id}

    return rt, errors


def whoami(live: Live, **kwargs: Any) -> dict[str, Any]:
    ws = live.connect(**kwargs)
    ws.send(json.dumps({"route": "whoami", "id": 1}))
    reply = json.loads(ws.recv())
    assert reply["route"] == "rt.reply", reply
    data: dict[str, Any] = reply["data"]
    ws.close()
    return data


def assert_refused_401(live: Live, path: str = "/", headers: dict[str, str] | None = None) -> None:
    """The upgrade gets HTTP 401, no 101, and no WebSocket frame after it."""
    client = live.raw(path)
    status = client.handshake(headers=headers)
    assert status == 401
    assert "sec-websocket-accept" not in client.headers
    assert client.read_body() == b"unauthorized\n"
    # Anything the server wrote after the 401 would arrive before the answer to a next
    # request on the same connection (or before EOF if it closed): there must be nothing.
    try:
        client.send(f"GET / HTTP/1.1\r\nHost: {live.host}:{live.port}\r\nConnection: close\r\n\r\n".encode())
    except OSError:
        pass
    rest = client.buf
    try:
        while chunk := client.sock.recv(65536):
            rest += chunk
    except ConnectionResetError:
        pass
    assert rest == b"" or rest.startswith(b"HTTP/1.1 400 "), rest[:200]
    assert live.rt.sessions() == []


# ---------------------------------------------------------------------------- authenticators, pure


def test_anonymous_authenticator_gives_anonymous() -> None:
    """AnonymousAuthenticator accepts anyone as identity ``anonymous``."""
    assert AnonymousAuthenticator().authenticate(request()).id == "anonymous"


def test_static_token_accepts_the_right_bearer_token() -> None:
    """StaticTokenAuthenticator returns its identity for the right token (WSGI gives headers as latin-1)."""
    auth = StaticTokenAuthenticator("s3cret-ü", ALICE)
    got = auth.authenticate(request(headers={"Authorization": "Bearer s3cret-ü".encode().decode("latin-1")}))
    assert got == ALICE
    assert auth.authenticate(request(headers={"Authorization": "bearer   s3cret-ü  ".encode().decode("latin-1")}))


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Bearer wrong", "Bearer s3cre", "Bearer s3cret-extra", "Basic s3cret", "s3cret"],
)
def test_static_token_rejects_anything_else(header: str | None) -> None:
    """A missing, malformed or wrong token (prefix or extension of the right one too) is Unauthorized."""
    headers = {} if header is None else {"Authorization": header}
    with pytest.raises(Unauthorized):
        StaticTokenAuthenticator("s3cret", ALICE).authenticate(request(headers=headers))


def test_static_token_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accepting and rejecting both go through hmac.compare_digest (constant-time)."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(rtgevent.auth.hmac, "compare_digest", spy)
    auth = StaticTokenAuthenticator("s3cret", ALICE)
    assert auth.authenticate(request(headers={"Authorization": "Bearer s3cret"})) == ALICE
    with pytest.raises(Unauthorized):
        auth.authenticate(request(headers={"Authorization": "Bearer s3creT"}))
    assert compared == [(b"s3cret", b"s3cret"), (b"s3creT", b"s3cret")]


def test_static_token_needs_a_token() -> None:
    """An empty static token is a configuration error."""
    with pytest.raises(ValueError, match="rtgevent:"):
        StaticTokenAuthenticator("", ALICE)


def test_bearer_token_from_header_or_query() -> None:
    """BearerTokenAuthenticator reads the Authorization header, else ?access_token=."""
    auth = BearerTokenAuthenticator(verify)
    assert auth.authenticate(request(headers={"Authorization": "Bearer good-token"})) == ALICE
    assert auth.authenticate(request("/ws?access_token=good-token")) == ALICE
    # the header wins over the query string
    with pytest.raises(Unauthorized):
        auth.authenticate(request("/ws?access_token=good-token", headers={"Authorization": "Bearer bad"}))


def test_bearer_token_query_parameter_is_configurable() -> None:
    """query_param renames the query parameter; None disables it."""
    assert BearerTokenAuthenticator(verify, query_param="t").authenticate(request("/ws?t=good-token")) == ALICE
    with pytest.raises(Unauthorized):
        BearerTokenAuthenticator(verify, query_param="t").authenticate(request("/ws?access_token=good-token"))
    with pytest.raises(Unauthorized):
        BearerTokenAuthenticator(verify, query_param=None).authenticate(request("/ws?access_token=good-token"))


@pytest.mark.parametrize("path", ["/ws", "/ws?access_token=", "/ws?access_token=bad", "/ws?other=good-token"])
def test_bearer_token_rejects_missing_or_bad_tokens(path: str) -> None:
    """No token, an empty one or one the verifier refuses is Unauthorized."""
    with pytest.raises(Unauthorized):
        BearerTokenAuthenticator(verify).authenticate(request(path))


def test_verifier_must_return_an_identity() -> None:
    """A verifier returning something else than an Identity is Unauthorized."""
    with pytest.raises(Unauthorized):
        BearerTokenAuthenticator(lambda token: "alice").authenticate(request("/ws?access_token=x"))  # type: ignore[arg-type,return-value]
    with pytest.raises(Unauthorized):
        InBandAuthenticator(lambda token: None).verify("x")  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("token", [None, "", 42, ["good-token"], {"token": "good-token"}])
def test_in_band_verify_needs_a_string_token(token: object) -> None:
    """rt.auth data must be a non-empty string token."""
    with pytest.raises(Unauthorized):
        InBandAuthenticator(verify).verify(token)


# ---------------------------------------------------------------------------- before the upgrade, on the wire


def test_anonymous_by_default(live: LiveFactory) -> None:
    """Without an authenticator every client is ``anonymous`` and shows in sessions and presence."""
    rt, _ = app()
    server = live(rt)
    ws = server.connect()
    ws.send(json.dumps({"route": "whoami", "id": 1}))
    assert json.loads(ws.recv())["data"] == {"id": "anonymous", "tenant": ""}
    assert [s.identity.id for s in rt.sessions()] == ["anonymous"]
    assert rt.is_online("", "anonymous")


def test_static_token_accepts_over_the_wire(live: LiveFactory) -> None:
    """The right static bearer token opens a session with the configured identity."""
    rt, errors = app(StaticTokenAuthenticator("s3cret-ü", ALICE))
    server = live(rt)
    assert whoami(server, header=["Authorization: Bearer s3cret-ü"]) == {"id": "alice", "tenant": "acme"}
    assert errors == []


@pytest.mark.parametrize(
    "headers",
    [None, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-ü"}, {"Authorization": "s3cret-ü"}],
)
def test_static_token_refuses_with_401(live: LiveFactory, headers: dict[str, str] | None) -> None:
    """A wrong or missing static token: HTTP 401, no upgrade; on_error sees Unauthorized."""
    rt, errors = app(StaticTokenAuthenticator("s3cret-ü", ALICE))
    assert_refused_401(live(rt), headers=headers)
    assert [type(e) for e in errors] == [Unauthorized]


def test_bearer_token_header_and_query_over_the_wire(live: LiveFactory) -> None:
    """A bearer token in the header, or in ?access_token= (browsers), opens the session."""
    rt, _ = app(BearerTokenAuthenticator(verify))
    server = live(rt)
    assert whoami(server, header=["Authorization: Bearer good-token"]) == {"id": "alice", "tenant": "acme"}
    assert whoami(server, path="/ws?access_token=good-token") == {"id": "alice", "tenant": "acme"}


@pytest.mark.parametrize(
    ("path", "headers"),
    [("/", None), ("/?access_token=bad", None), ("/", {"Authorization": "Bearer bad"})],
)
def test_bearer_token_refuses_with_401(live: LiveFactory, path: str, headers: dict[str, str] | None) -> None:
    """A missing or refused bearer token: HTTP 401, no upgrade."""
    rt, errors = app(BearerTokenAuthenticator(verify))
    assert_refused_401(live(rt), path, headers)
    assert [type(e) for e in errors] == [Unauthorized]


def test_crashing_authenticator_refuses_with_401(live: LiveFactory) -> None:
    """An authenticator raising anything else is a 401 too; on_error gets the real exception."""

    def broken(token: str) -> Identity:
        raise RuntimeError("token service down")

    rt, errors = app(BearerTokenAuthenticator(broken))
    assert_refused_401(live(rt), headers={"Authorization": "Bearer good-token"})
    assert [type(e) for e in errors] == [RuntimeError, Unauthorized]


def test_slow_authenticator_is_cut_at_auth_timeout(live: LiveFactory) -> None:
    """An authenticator still running at auth_timeout is cut: HTTP 401."""
    started = Event()

    class Slow:
        def authenticate(self, request: Request) -> Identity:
            started.set()
            gevent.sleep(WAIT * 3)  # far past auth_timeout
            return ALICE

    rt, errors = app(Slow(), Config(auth_timeout=0.3))
    server = live(rt)
    began = time.monotonic()
    assert_refused_401(server)
    assert started.is_set()
    assert time.monotonic() - began < WAIT
    assert [type(e) for e in errors] == [Unauthorized]
    assert "timed out" in str(errors[0])


# ---------------------------------------------------------------------------- in-band (rt.auth), on the wire


def in_band_app(config: Config | None = None) -> tuple[Realtime, dict[str, Any]]:
    seen: dict[str, Any] = {"connected": [], "handled": [], "errors": [], "created": Event()}

    def ids() -> str:
        seen["created"].set()  # the server is serving the session (not yet authenticated)
        return random_id()

    rt = Realtime(config, authenticator=InBandAuthenticator(verify), id_generator=ids)
    rt.on_connect(lambda session: seen["connected"].append(session.identity.id))
    rt.on_error(lambda error, session: seen["errors"].append(error))

    @rt.on_message
    def anything(session: Session, msg: Message) -> Any:
        seen["handled"].append(msg.route)
        return {"id": session.identity.id, "tenant": session.identity.tenant_id}

    return rt, seen


def send_json(client: rawws.RawClient, *messages: dict[str, Any]) -> None:
    """Send ``messages`` as text frames, in one write (pipelined)."""
    client.send(b"".join(rawws.frame(rawws.TEXT, json.dumps(m).encode()) for m in messages))


def recv_json(client: rawws.RawClient) -> dict[str, Any]:
    got = client.recv_data()
    assert got.opcode == rawws.TEXT, got
    data: dict[str, Any] = json.loads(got.payload)
    return data


def test_in_band_auth_then_handlers_run(live: LiveFactory) -> None:
    """rt.auth with a good token → rt.reply {session_id, identity_id}; only then hooks and handlers run."""
    rt, seen = in_band_app()
    server = live(rt)
    client = server.raw()
    assert client.handshake() == 101
    assert seen["created"].wait(WAIT)
    # accepted, not authenticated: no hook, not in the hub, not in presence
    assert rt.sessions() == [] and rt.stats()["connections"] == 0
    assert not rt.is_online("acme", "alice")
    assert seen["connected"] == []
    send_json(client, {"route": "rt.auth", "id": "a1", "data": "good-token"}, {"route": "whoami", "id": 2})
    reply = recv_json(client)
    assert reply["route"] == "rt.reply"
    assert reply["metadata"] == {"in_reply_to": "a1"}
    [session] = rt.sessions()
    assert reply["data"] == {"session_id": session.id, "identity_id": "alice"}
    assert session.identity == ALICE
    assert rt.is_online("acme", "alice")
    assert seen["connected"] == ["alice"]
    answer = recv_json(client)
    assert (answer["route"], answer["data"]) == ("rt.reply", {"id": "alice", "tenant": "acme"})
    assert seen["handled"] == ["whoami"]
    client.send(rawws.frame(rawws.CLOSE, rawws.close_payload(1000)))
    assert client.expect_close().close_code == 1000
    assert client.at_eof()  # the server closes TCP first; then we close ours
    assert session.wait_closed(WAIT)
    assert not rt.is_online("acme", "alice")


def test_in_band_auth_without_id_replies_without_in_reply_to(live: LiveFactory) -> None:
    """rt.auth without an id still gets its rt.reply, with no in_reply_to."""
    rt, _ = in_band_app()
    client = live(rt).raw()
    assert client.handshake() == 101
    send_json(client, {"route": "rt.auth", "data": "good-token"})
    reply = recv_json(client)
    assert reply["route"] == "rt.reply" and "in_reply_to" not in (reply.get("metadata") or {})
    assert reply["data"]["identity_id"] == "alice"


def expect_unauthorized_then_1008(client: rawws.RawClient, msg_id: Any) -> None:
    error = recv_json(client)
    assert error["route"] == "rt.error"
    assert error["metadata"] == {"in_reply_to": msg_id, "code": "unauthorized"}
    closing = client.recv_data()
    assert closing.opcode == rawws.CLOSE and closing.close_code == 1008


def test_in_band_wrong_token_is_unauthorized_then_1008(live: LiveFactory) -> None:
    """A wrong token → rt.error unauthorized, then close 1008; no hook or handler ran."""
    rt, seen = in_band_app()
    client = live(rt).raw()
    assert client.handshake() == 101
    send_json(client, {"route": "rt.auth", "id": 9, "data": "bad-token"}, {"route": "whoami", "id": 10})
    expect_unauthorized_then_1008(client, 9)
    assert seen["connected"] == [] and seen["handled"] == []
    assert Unauthorized in [type(e) for e in seen["errors"]]
    assert not rt.is_online("acme", "alice")


def test_in_band_non_auth_first_message_is_unauthorized_then_1008(live: LiveFactory) -> None:
    """A first message other than rt.auth → rt.error unauthorized, close 1008; its handler never runs."""
    rt, seen = in_band_app()
    client = live(rt).raw()
    assert client.handshake() == 101
    send_json(client, {"route": "whoami", "id": "w", "data": "good-token"})
    expect_unauthorized_then_1008(client, "w")
    assert seen["handled"] == [] and seen["connected"] == []


def test_in_band_bad_first_frame_is_unauthorized_then_1008(live: LiveFactory) -> None:
    """An undecodable first frame is refused like a wrong token (no id: in_reply_to "")."""
    rt, seen = in_band_app()
    client = live(rt).raw()
    assert client.handshake() == 101
    client.send(rawws.frame(rawws.TEXT, b"not json"))
    expect_unauthorized_then_1008(client, "")
    assert seen["handled"] == []


def test_in_band_no_auth_within_auth_timeout_closes_1008(live: LiveFactory) -> None:
    """No rt.auth within auth_timeout → close 1008; the session never registered."""
    rt, seen = in_band_app(Config(auth_timeout=0.3))
    client = live(rt).raw()
    assert client.handshake() == 101
    closing = client.recv_data()
    assert closing.opcode == rawws.CLOSE and closing.close_code == 1008
    assert seen["connected"] == [] and rt.sessions() == []


def test_in_band_crashing_verifier_is_unauthorized(live: LiveFactory) -> None:
    """A verifier raising anything → rt.error unauthorized + 1008; on_error gets the real exception."""

    def broken(token: str) -> Identity:
        raise RuntimeError("token service down")

    rt = Realtime(authenticator=InBandAuthenticator(broken))
    errors: list[Any] = []
    rt.on_error(lambda error, session: errors.append(error))
    client = live(rt).raw()
    assert client.handshake() == 101
    send_json(client, {"route": "rt.auth", "id": 1, "data": "good-token"})
    expect_unauthorized_then_1008(client, 1)
    assert RuntimeError in [type(e) for e in errors]

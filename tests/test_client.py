"""The blocking Python client (rtgevent.client) against a Realtime served on a real socket."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event

from rtgevent import (
    Config,
    DisconnectInfo,
    Identity,
    InBandAuthenticator,
    Message,
    Realtime,
    RealtimeError,
    Session,
    StaticTokenAuthenticator,
    Unauthorized,
)
from rtgevent.client import ClientClosed, ClientTimeout, ConnectRefused, RemoteError, connect
from tests.waiting import WAIT


class Refused(RealtimeError):
    wire_code = "refused"


def make_rt(**kwargs: Any) -> Realtime:
    """A Realtime with the routes the tests drive."""
    rt = Realtime(Config(), **kwargs)

    @rt.route("echo")
    def echo(session: Session, msg: Message) -> Any:
        return msg.data

    @rt.route("push")
    def push(session: Session, msg: Message) -> Any:
        for item in msg.data:
            session.send("pushed", item)
        return None

    @rt.route("push_then_reply")
    def push_then_reply(session: Session, msg: Message) -> Any:
        session.send("news", "before the reply")
        return "reply"

    @rt.route("sleep")
    def sleep(session: Session, msg: Message) -> Any:
        gevent.sleep(msg.data)
        return {"slept": msg.data}

    @rt.route("fail")
    def fail(session: Session, msg: Message) -> Any:
        raise RuntimeError("internal detail")

    @rt.route("refuse")
    def refuse(session: Session, msg: Message) -> Any:
        raise Refused("not today")

    @rt.route("kick")
    def kick(session: Session, msg: Message) -> Any:
        session.close(4000, "kicked")
        return None

    @rt.route("me")
    def me(session: Session, msg: Message) -> Any:
        return session.identity.id

    return rt


@pytest.fixture
def url(serve_realtime: Callable[[Any], Any]) -> Iterator[Callable[[Realtime], str]]:
    """``url(rt)`` serves ``rt`` (shut down after the test) and returns its ws:// URL."""

    def factory(rt: Realtime) -> str:
        server = serve_realtime(rt)
        return f"ws://127.0.0.1:{server.port}/"

    yield factory


def test_request_returns_the_reply_data(url: Callable[[Realtime], str]) -> None:
    """request() returns the rt.reply's data, whatever JSON it is."""
    with connect(url(make_rt()), timeout=WAIT) as client:
        values: list[Any] = [{"a": [1, 2.5, None, True]}, "text", 0, [], "ünïcødé"]
        for value in values:
            assert client.request("echo", value) == value


def test_request_raises_the_wire_code(url: Callable[[Realtime], str]) -> None:
    """rt.error answers raise RemoteError carrying the code; the connection stays usable."""
    with connect(url(make_rt()), timeout=WAIT) as client:
        with pytest.raises(RemoteError) as unknown:
            client.request("nope")
        assert unknown.value.code == "unknown_route"
        with pytest.raises(RemoteError) as failed:
            client.request("fail")
        assert failed.value.code == "handler_error"
        assert "internal detail" not in str(failed.value)  # not leaked without Config.debug
        with pytest.raises(RemoteError) as refused:
            client.request("refuse")
        assert refused.value.code == "refused" and "not today" in str(refused.value)
        assert isinstance(refused.value, RealtimeError)
        assert client.request("echo", "still open") == "still open"


def test_send_and_recv(url: Callable[[Realtime], str]) -> None:
    """send() has no reply; recv() returns pushed messages in order, never replies."""
    with connect(url(make_rt()), timeout=WAIT) as client:
        client.send("push", ["one", "two"])
        assert [client.recv().data for _ in range(2)] == ["one", "two"]
        assert client.request("push_then_reply") == "reply"
        news = client.recv()
        assert (news.route, news.data) == ("news", "before the reply")
        with pytest.raises(ClientTimeout):
            client.recv(timeout=0.2)


def test_error_for_a_message_without_id_reaches_recv(url: Callable[[Realtime], str]) -> None:
    """A send() the server cannot route comes back as an rt.error with an empty in_reply_to."""
    with connect(url(make_rt()), timeout=WAIT) as client:
        client.send("nope", 1)
        error = client.recv()
        assert error.route == "rt.error"
        assert error.metadata == {"in_reply_to": "", "code": "unknown_route"}


def test_on_handlers_take_their_routes(url: Callable[[Realtime], str]) -> None:
    """on(route) handlers get their messages (during recv, request or run); removal stops them."""
    seen: list[Any] = []
    with connect(url(make_rt()), timeout=WAIT) as client:
        remove = client.on("pushed", lambda msg: seen.append(msg.data))
        client.send("push", ["a", "b"])
        assert client.request("echo", 1) == 1  # handlers ran while waiting for the reply
        assert seen == ["a", "b"]
        client.send("push", ["c"])
        client.run(timeout=0.3)
        assert seen == ["a", "b", "c"]
        remove()
        client.send("push", ["d"])
        assert client.recv().data == "d"  # no handler: it waits for recv
        assert seen == ["a", "b", "c"]


def test_request_timeout_and_late_reply(url: Callable[[Realtime], str]) -> None:
    """A request past its timeout raises ClientTimeout (a TimeoutError); its late reply is dropped."""
    with connect(url(make_rt()), timeout=WAIT) as client:
        with pytest.raises(ClientTimeout) as timed_out:
            client.request("sleep", 0.5, timeout=0.1)
        assert isinstance(timed_out.value, TimeoutError)
        assert client.request("echo", "next") == "next"  # the late reply did not answer this one
        client.send("push", ["after"])
        assert client.recv().data == "after"


def test_concurrent_requests_on_one_client(url: Callable[[Realtime], str]) -> None:
    """Two greenlets may request at once: each gets its own answer, whoever read the frame."""
    with connect(url(make_rt()), timeout=WAIT) as client:
        slow = gevent.spawn(client.request, "sleep", 0.3)
        fast = gevent.spawn(client.request, "echo", "fast")
        assert fast.get(timeout=WAIT) == "fast"
        assert slow.get(timeout=WAIT) == {"slept": 0.3}


def test_bearer_token(url: Callable[[Realtime], str]) -> None:
    """token= goes in an Authorization header; a wrong or missing one is an HTTP 401."""
    rt = make_rt(authenticator=StaticTokenAuthenticator("s3cret", Identity("bot")))
    address = url(rt)
    with connect(address, "s3cret", timeout=WAIT) as client:
        assert client.request("me") == "bot"
    for token in (None, "wrong"):
        with pytest.raises(ConnectRefused) as refused:
            connect(address, token, timeout=WAIT)
        assert refused.value.status == 401


def test_in_band_authentication(url: Callable[[Realtime], str]) -> None:
    """in_band=True sends the token as rt.auth first; the answer names the session and identity."""

    def verify(token: str) -> Identity:
        if token != "letmein":
            raise Unauthorized("bad token")
        return Identity("inband")

    address = url(make_rt(authenticator=InBandAuthenticator(verify)))
    with connect(address, "letmein", in_band=True, timeout=WAIT) as client:
        assert client.identity_id == "inband" and client.session_id
        assert client.request("me") == "inband"
    with pytest.raises(RemoteError) as refused:
        connect(address, "nope", in_band=True, timeout=WAIT)
    assert refused.value.code == "unauthorized"


def test_closes_both_ways(url: Callable[[Realtime], str]) -> None:
    """A server close surfaces as ClientClosed with its code; close() is seen by the server as the client's."""
    rt = make_rt()
    gone: list[DisconnectInfo] = []
    done = Event()

    @rt.on_disconnect
    def record(session: Session, info: DisconnectInfo) -> None:
        gone.append(info)
        done.set()

    address = url(rt)
    client = connect(address, timeout=WAIT)
    client.send("kick")
    with pytest.raises(ClientClosed) as closed:
        client.recv()
    assert (closed.value.code, closed.value.reason) == (4000, "kicked")
    assert client.closed and client.close_code == 4000
    with pytest.raises(ClientClosed):
        client.send("echo")
    assert done.wait(WAIT)
    done.clear()

    client = connect(address.replace("ws://", "http://"), timeout=WAIT)  # http:// URLs are accepted
    assert client.request("echo", 1) == 1
    client.close()
    assert done.wait(WAIT)
    assert gone[-1].initiator == "client" and gone[-1].code == 1000

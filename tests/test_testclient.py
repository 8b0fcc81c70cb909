"""`rt.test_client(identity=...)`: handlers, hooks and replies without a socket.

The handler-level behaviours (routing, errors, replies, order, middleware, codecs, ids)
run through the test client in tests/test_api_dispatch.py (the ``test_client`` variant
of each test); this module covers the test client's own API.
"""

from __future__ import annotations

from typing import Any

import pytest

from rtgevent import DisconnectInfo, Identity, Initiator, Message, Realtime, Session, SessionClosed

BOB = Identity("bob", "acme", roles=("user",), claims={"plan": "pro"})


def hooked_app() -> tuple[Realtime, dict[str, list[Any]]]:
    rt = Realtime()
    seen: dict[str, list[Any]] = {"connect": [], "disconnect": [], "online": []}

    @rt.on_connect
    def connected(session: Session) -> None:
        seen["connect"].append(session)
        seen["online"].append(rt.is_online(session.identity.tenant_id, session.identity.id))
        session.send("welcome", {"session": session.id})

    @rt.on_disconnect
    def gone(session: Session, info: DisconnectInfo) -> None:
        seen["disconnect"].append((session, info))

    @rt.route("echo")
    def echo(session: Session, msg: Message) -> Any:
        return msg.data

    @rt.route("who")
    def who(session: Session, msg: Message) -> Any:
        identity = session.identity
        return {"id": identity.id, "tenant": identity.tenant_id, "roles": list(identity.roles), **identity.claims}

    @rt.route("notify")
    def notify(session: Session, msg: Message) -> Any:
        session.send("note", msg.data)
        session.state["notes"] = session.state.get("notes", 0) + 1

    @rt.route("bye")
    def bye(session: Session, msg: Message) -> Any:
        session.close(4000, "bye")

    return rt, seen


def test_identity_reaches_handlers() -> None:
    """The identity given to test_client() is the session's identity in handlers."""
    rt, _ = hooked_app()
    with rt.test_client(identity=BOB) as client:
        reply = client.request("who")
        assert reply.route == "rt.reply"
        assert reply.data == {"id": "bob", "tenant": "acme", "roles": ["user"], "plan": "pro"}


def test_default_identity_is_test() -> None:
    """Without an identity the test client's session is identity ``test``."""
    rt, _ = hooked_app()
    with rt.test_client() as client:
        assert client.request("who").data["id"] == "test"


def test_on_connect_runs_registered_and_its_messages_are_received() -> None:
    """Making the client runs on_connect after registration; what it sent is received."""
    rt, seen = hooked_app()
    client = rt.test_client(identity=BOB)
    assert seen["connect"] == [client.session] and seen["online"] == [True]
    assert rt.sessions() == [client.session]
    assert client.get_received() == [Message("welcome", {"session": client.session.id})]
    assert client.get_received() == []  # each message is returned once
    client.close()


def test_send_returns_what_the_handler_sent() -> None:
    """send() dispatches one envelope and returns the messages the session got meanwhile."""
    rt, _ = hooked_app()
    with rt.test_client(identity=BOB) as client:
        client.get_received()
        assert client.send("notify", "hello") == [Message("note", "hello")]
        assert client.send("echo", "no id, no reply") == []
        assert client.send("echo", [1], id=4) == [Message("rt.reply", [1], metadata={"in_reply_to": 4})]
        assert client.session.state == {"notes": 1}


def test_send_raw_takes_frames_as_a_client_sends_them() -> None:
    """send_raw() takes text or binary frames: bad ones are answered with rt.error like on the wire."""
    rt, _ = hooked_app()
    with rt.test_client() as client:
        client.get_received()
        assert client.send_raw('{"route": "echo", "id": "r", "data": 5}') == [
            Message("rt.reply", 5, metadata={"in_reply_to": "r"})
        ]
        [error] = client.send_raw(b"\x00binary")
        assert error.route == "rt.error" and error.metadata == {"in_reply_to": "", "code": "bad_message"}


def test_request_returns_the_error_answering_it() -> None:
    """request() returns the rt.error answering the request too."""
    rt, _ = hooked_app()
    with rt.test_client() as client:
        answer = client.request("missing", id="m")
        assert answer.route == "rt.error"
        assert answer.metadata == {"in_reply_to": "m", "code": "unknown_route"}


def test_request_without_an_answer_fails_clearly() -> None:
    """request() to a handler that answers nothing raises AssertionError naming the route."""
    rt, _ = hooked_app()
    with rt.test_client() as client, pytest.raises(AssertionError, match="notify"):
        client.request("notify", "x")


def test_close_runs_on_disconnect_once() -> None:
    """close() ends the session as a client close: on_disconnect once, out of the hub and presence."""
    rt, seen = hooked_app()
    client = rt.test_client(identity=BOB)
    client.close(1001, "going away")
    client.close()
    [(session, info)] = seen["disconnect"]
    assert session is client.session
    assert (info.code, info.reason, info.initiator, info.expected) == (1001, "going away", Initiator.CLIENT, True)
    assert session.close_info is info and session.closed
    assert rt.sessions() == [] and not rt.is_online("acme", "bob")
    assert not client.connected
    with pytest.raises(SessionClosed):
        client.send("echo", 1)


def test_context_manager_closes() -> None:
    """Leaving the with block closes the client (on_disconnect runs)."""
    rt, seen = hooked_app()
    with rt.test_client() as client:
        assert client.connected
    assert not client.connected and len(seen["disconnect"]) == 1


def test_handler_closing_the_session_ends_the_client() -> None:
    """session.close() in a handler disconnects the test client, with initiator server."""
    rt, seen = hooked_app()
    client = rt.test_client()
    client.send("bye")
    assert not client.connected
    assert client.session.closed
    with pytest.raises(SessionClosed):
        client.send("echo", 1)
    client.close()
    [(_, info)] = seen["disconnect"]
    assert (info.code, info.reason, info.initiator) == (4000, "bye", Initiator.SERVER)


def test_clients_are_separate_sessions() -> None:
    """Two test clients are two sessions; broadcast and send_to_identity reach the right ones."""
    rt, _ = hooked_app()
    with rt.test_client(identity=BOB) as bob, rt.test_client(identity=Identity("eve", "acme")) as eve:
        assert bob.session.id != eve.session.id
        bob.get_received()
        eve.get_received()
        rt.broadcast("news", 1)
        rt.send_to_identity("acme", "eve", "secret", 2)
        assert bob.get_received() == [Message("news", 1)]
        assert eve.get_received() == [Message("news", 1), Message("secret", 2)]


def test_on_connect_rejection_closes_the_client() -> None:
    """An on_connect hook that raises rejects the session: the client starts closed, unregistered."""
    rt = Realtime()
    errors: list[BaseException] = []
    rt.on_error(lambda error, session: errors.append(error))

    @rt.on_connect
    def refuse(session: Session) -> None:
        raise PermissionError("not today")

    client = rt.test_client()
    assert not client.connected
    assert rt.sessions() == []
    assert [type(e) for e in errors] == [PermissionError]
    client.close()

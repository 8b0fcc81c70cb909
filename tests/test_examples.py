"""The examples run: the chat example (examples/chat/app.py) served in-process, driven by the Python client."""

from __future__ import annotations

import http.client
import importlib.util
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from rtgevent import Realtime
from rtgevent.client import Client, ConnectRefused, RemoteError, connect
from tests.waiting import WAIT

ROOT = Path(__file__).resolve().parent.parent


def load_example(relative: str) -> types.ModuleType:
    """Import an example script by path (examples/ is not a package; its scripts are run, not imported)."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(f"example_{path.parent.name}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fetch(port: int, method: str, path: str, form: dict[str, str] | None = None, cookie: str = "") -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        headers = {"Cookie": cookie} if cookie else {}
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.body = resp.read()  # type: ignore[attr-defined]
        return resp
    finally:
        conn.close()


@pytest.fixture
def chat(serve_realtime: Callable[[Any], Any]) -> Iterator[tuple[int, Realtime]]:
    """The chat example served on pywsgi: (port, its Realtime)."""
    module = load_example("examples/chat/app.py")
    server = serve_realtime(module.app)
    yield server.port, module.rt
    module.rt.shutdown(timeout=5)


def log_in(port: int, name: str) -> str:
    resp = fetch(port, "POST", "/login", {"name": name})
    assert resp.status == 302 and resp.getheader("Location").endswith("/")
    return str(resp.getheader("Set-Cookie")).split(";", 1)[0]


def join(port: int, cookie: str, history: list[str] | None = None) -> Client:
    """Open the chat's WebSocket with a login cookie; check the welcome (and its history's texts)."""
    client = connect(f"ws://127.0.0.1:{port}/ws", headers={"Cookie": cookie}, timeout=WAIT)
    welcome = client.recv()
    assert welcome.route == "chat.welcome"
    if history is not None:
        assert [entry["text"] for entry in welcome.data["history"]] == history
    return client


def next_online(client: Client, expected: list[str]) -> None:
    """Read chat.online updates until one lists exactly ``expected``."""
    while (msg := client.recv()).route != "chat.online" or msg.data["online"] != expected:
        pass


def test_chat_example(chat: tuple[int, Realtime]) -> None:
    """Log in over HTTP, join over WebSocket with the cookie, talk, whisper, see who is online."""
    port, rt = chat
    resp = fetch(port, "GET", "/")
    assert resp.status == 302 and "/login" in resp.getheader("Location")
    assert fetch(port, "GET", "/login").status == 200
    assert fetch(port, "POST", "/login", {"name": "   "}).status == 400

    alice_cookie = log_in(port, "alice")
    page = fetch(port, "GET", "/", cookie=alice_cookie)
    assert page.status == 200 and b'src="/ws/rtgevent.js"' in page.body
    assert fetch(port, "GET", "/ws/rtgevent.js").status == 200
    with pytest.raises(ConnectRefused) as refused:
        connect(f"ws://127.0.0.1:{port}/ws", timeout=WAIT)
    assert refused.value.status == 401

    with join(port, alice_cookie, history=[]) as alice:
        next_online(alice, ["alice"])
        with join(port, log_in(port, "bob")) as bob:
            next_online(alice, ["alice", "bob"])
            assert alice.request("chat.send", {"text": "hi bob"}) == {"ok": True}
            said = bob.recv()
            while said.route != "chat.message":
                said = bob.recv()
            assert (said.data["from"], said.data["text"]) == ("alice", "hi bob")

            assert bob.request("chat.direct", {"to": "alice", "text": "psst"}) == {"ok": True}
            whisper = alice.recv()
            while whisper.route != "chat.direct":
                whisper = alice.recv()
            assert whisper.data | {"at": None} == {"from": "bob", "to": "alice", "text": "psst", "at": None}
            assert bob.request("chat.who") == {"online": ["alice", "bob"]}
            with pytest.raises(RemoteError) as offline:
                bob.request("chat.direct", {"to": "carol", "text": "?"})
            assert offline.value.code == "not_online"
            with pytest.raises(RemoteError) as empty:
                bob.request("chat.send", {"text": ""})
            assert empty.value.code == "invalid"
        next_online(alice, ["alice"])

    with join(port, alice_cookie, history=["hi bob"]) as again:  # public history, not the whispers
        assert rt.is_online("", "alice")
        assert again.request("chat.who") == {"online": ["alice"]}

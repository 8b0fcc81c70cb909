"""The ``rtgevent demo`` application: an echo page, no Redis or RabbitMQ needed."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .config import Config
from .message import Message
from .realtime import Realtime
from .session import Session

__all__ = ["make_demo_app"]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>rtgevent demo</title>
<style>body{font:15px system-ui;margin:2em;max-width:40em}#log{border:1px solid #ccc;
min-height:12em;padding:.5em;white-space:pre-wrap}</style></head>
<body><h1>rtgevent echo</h1>
<p id="state">connecting…</p>
<form id="f"><input id="text" autofocus placeholder="say something"> <button>send</button></form>
<div id="log"></div>
<script>
const log = (line) => { document.getElementById("log").textContent += line + "\\n"; };
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
let next = 1;
ws.onopen = () => { document.getElementById("state").textContent = "connected"; };
ws.onclose = (e) => { document.getElementById("state").textContent = "closed (" + e.code + ")"; };
ws.onmessage = (e) => { const m = JSON.parse(e.data); log(m.route + ": " + JSON.stringify(m.data)); };
document.getElementById("f").onsubmit = (e) => {
  e.preventDefault();
  const input = document.getElementById("text");
  ws.send(JSON.stringify({id: next++, route: "echo", data: input.value}));
  input.value = "";
};
</script></body></html>
"""


def make_demo_app() -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    rt = Realtime(Config())

    @rt.on_connect
    def welcome(session: Session) -> None:
        session.send("welcome", {"session": session.id})

    @rt.route("echo")
    def echo(session: Session, msg: Message) -> Any:
        return msg.data

    page = PAGE.encode()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/ws":
            return rt(environ, start_response)
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))])
            return [page]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return app

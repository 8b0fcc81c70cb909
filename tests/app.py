"""The application the end-to-end tests serve, in-process or under gunicorn.

Every observation goes over HTTP (``/_control/...``), so a test reads the same way
whether the server is in the pytest process or a gunicorn subprocess.  The WebSocket
endpoint is ``/ws``.  Configuration comes as keyword arguments, or as JSON in the
``RTG_TEST_CONFIG`` environment variable for a subprocess.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import gevent

from rtgevent import Backpressure, Config, Message, Realtime, Session
from rtgevent.errors import BadMessage, RealtimeError
from rtgevent.types import DisconnectInfo


class RawCodec:
    """Every frame is a message to route ``echo``; a message's data goes out as the frame."""

    def decode(self, frame: str | bytes) -> Message:
        if isinstance(frame, str) and frame.startswith("cmd:"):
            return Message(frame[4:].partition(" ")[0], frame.partition(" ")[2])
        return Message("echo", frame)

    def encode(self, message: Message) -> str | bytes:
        data = message.data
        if isinstance(data, (str, bytes)):
            return data
        if message.route == "rt.error":
            raise BadMessage("raw codec carries no errors")
        return json.dumps({"route": message.route, "data": data, "metadata": message.metadata})


def make_app(**options: Any) -> Callable[..., Iterable[bytes]]:
    codec_name = options.pop("codec", "raw")
    if "backpressure" in options:
        options["backpressure"] = Backpressure(options["backpressure"])
    options.setdefault("insecure_origins", False)
    rt = Realtime(Config(**options), codec=RawCodec() if codec_name == "raw" else None)
    disconnects: list[dict[str, Any]] = []
    send_errors: list[str] = []

    @rt.on_message
    def echo(session: Session, msg: Message) -> Any:
        if msg.route == "close":
            code, _, reason = str(msg.data).partition(" ")
            session.close(int(code), reason)
            return None
        if msg.route == "sleep":
            gevent.sleep(float(msg.data))
        session.send_message(Message("echo", msg.data))
        return None

    @rt.on_disconnect
    def gone(session: Session, info: DisconnectInfo) -> None:
        disconnects.append(
            {
                "session": session.id,
                "code": info.code,
                "reason": info.reason,
                "initiator": str(info.initiator),
                "expected": info.expected,
                "error": type(info.error).__name__ if info.error else None,
            }
        )

    def control(action: str, query: dict[str, str]) -> Any:
        if action == "disconnects":
            return disconnects
        if action == "stats":
            return rt.stats()
        if action == "sessions":
            return [s.id for s in rt.sessions()]
        if action == "broadcast":
            size, count = int(query.get("size", "10")), int(query.get("count", "1"))
            binary = query.get("binary") == "1"
            for i in range(count):
                body = (str(i % 10) * size) if not binary else bytes([i % 256]) * size
                rt.broadcast("bench", body)
                if i % 8 == 7:
                    gevent.sleep(0)
            return {"sent": count}
        if action == "send":
            # send to one session from outside its reader (the backpressure path)
            target = query["session"]
            session = next((s for s in rt.sessions() if s.id == target), None)
            if session is None:
                return {"error": "no such session"}
            sent = 0
            for _ in range(int(query.get("count", "1"))):
                try:
                    session.send("x", "y" * int(query.get("size", "10")))
                    sent += 1
                except RealtimeError as exc:
                    send_errors.append(type(exc).__name__)
            return {"sent": sent, "errors": send_errors}
        if action == "queued":
            # the outbox length of each session (private: the test checks the bound holds)
            return {s.id: len(s._conn._outbox) for s in rt.sessions()}  # type: ignore[union-attr]
        if action == "shutdown":
            rt.shutdown()
            return {"disconnects": len(disconnects)}
        return {"error": f"unknown action {action}"}

    app = with_control(rt, control)
    app.rt = rt  # type: ignore[attr-defined]
    return app


def with_control(
    rt: Callable[..., Iterable[bytes]], control: Callable[[str, dict[str, str]], Any]
) -> Callable[..., Iterable[bytes]]:
    """``rt`` plus ``GET /_control/<action>?...``, answered with ``control(action, query)`` as JSON."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_control/"):
            query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
            body = json.dumps(control(path.removeprefix("/_control/"), query)).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return rt(environ, start_response)

    return app


def app_from_env() -> Callable[..., Iterable[bytes]]:
    return make_app(**json.loads(os.environ.get("RTG_TEST_CONFIG", "{}")))

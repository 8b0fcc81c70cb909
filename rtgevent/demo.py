"""The ``rtgevent demo`` application: a chat with rooms, a cookie login, presence and direct messages.

Lives in the package (not only in ``examples/chat``) so that an installed rtgevent can
run it: ``rtgevent demo`` serves `make_demo_app` on http://127.0.0.1:8000 with the
embedded defaults (in-process broker and presence: no Redis, no RabbitMQ).
``examples/chat/app.py`` is a thin script around the same code.

What it shows, in the order a reader meets it:

* a Flask app with a login form (a name, no password) that stores the name in Flask's
  signed session cookie;
* `SessionAuthenticator`: the WebSocket upgrade is authenticated from that cookie through
  ``flask.session``, which works because the dispatcher of `rtgevent.flask` runs the
  `Realtime` inside the Flask request context.  Cookies ride along on a cross-site
  WebSocket too, which is why the default same-origin check on ``Origin`` matters here;
* rooms as channels (SPEC section 13): ``#general`` and ``#random`` are the channels
  ``room:general`` and ``room:random``; the page subscribes with ``rt.subscribe`` (and
  again by itself after a reconnect), ``@rt.on_subscribe`` lets clients into those rooms
  only, and the namespace ``room:`` has channel presence and join/leave notices
  (``ChannelOptions(presence=True, join_leave=True)``);
* handlers: ``chat.send`` with a ``room`` (`Realtime.publish` to the room's channel; without
  one, a broadcast to everyone), ``chat.room`` (a room's members from
  `Realtime.channel_members`, and its recent messages), ``chat.direct``
  (`Realtime.send_to_identity`), ``chat.who`` (a request answered with a reply), and errors
  as ``rt.error`` with application codes;
* ``on_connect`` / ``on_disconnect`` keeping everyone's "who is online" list current;
* ``demo.html`` using ``rtgevent.js`` (served by the blueprint at ``/ws/rtgevent.js``).

The chat's protocol (all requests answer ``{"ok": true}`` unless said otherwise):

* server → client on connect: ``chat.welcome`` ``{"you", "rooms", "history"}`` (``history``:
  the recent messages to everyone), then ``chat.online`` ``{"online": [names]}`` to everyone
  whenever someone comes or goes;
* ``rt.subscribe`` ``{"channel": "room:general"}``: enter a room; its messages come as
  ``chat.message`` envelopes with ``metadata.channel``, its comings and goings as
  ``rt.join`` / ``rt.leave``;
* ``chat.send`` ``{"room", "text"}``: to a room the session is in (``not_in_room`` otherwise),
  every member gets it, the sender's tabs included; ``{"text"}`` alone goes to everyone;
* ``chat.room`` ``{"room"}`` → ``{"room", "count", "members": [{"session_id", "name"}], "history"}``;
* ``chat.direct`` ``{"to", "text"}``: to every tab of ``to`` and of the sender;
  ``chat.who`` → ``{"online": [names]}``.

A message is ``{"id", "from", "text", "at"}`` (plus ``room`` in a room); a direct one is
``{"from", "to", "text", "at"}``.
"""

from __future__ import annotations

import collections
import datetime
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import flask
from flask import Flask, redirect, request, send_from_directory, url_for
from markupsafe import escape
from werkzeug.wrappers import Request, Response

from .channels import ChannelOptions
from .config import Config
from .errors import BadMessage, RealtimeError, SessionClosed, Unauthorized, UnknownRoute, quote
from .flask import init_app
from .message import Message
from .realtime import Realtime
from .session import Session
from .types import DisconnectInfo, Identity

__all__ = ["ChatError", "SessionAuthenticator", "make_demo_app"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_NAME = 32
MAX_TEXT = 2000
HISTORY = 50
#: the chat's rooms, in the order the page shows them; room ``x`` is the channel ``room:x``
ROOMS = ("general", "random")
ROOM_PREFIX = "room:"

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rtgevent chat: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px system-ui,sans-serif;margin:3em auto;max-width:24em}}
input,button{{font:inherit;padding:.4em}} .error{{color:#b00}}</style></head>
<body><h1>rtgevent chat</h1>
<p>Pick a name to join. No password: this is a demo.</p>
{error}
<form method="post" action="{action}">
<input id="name" name="name" maxlength="{max_name}" autofocus required placeholder="your name">
<button id="login" type="submit">Join</button>
</form></body></html>
"""


class ChatError(RealtimeError):
    """A request the chat refuses; the client's ``rt.error`` carries ``code``."""

    def __init__(self, code: str, message: str) -> None:
        self.wire_code = code
        super().__init__(message)


class SessionAuthenticator:
    """The identity is the name stored in Flask's session cookie by the login form.

    Reads ``flask.session``, not the cookie header: Flask verifies the signature, and
    any session backend the application configures works the same way.
    """

    def __init__(self, key: str = "name") -> None:
        self.key = key

    def authenticate(self, request: Request) -> Identity:
        name = flask.session.get(self.key)
        if not isinstance(name, str) or not name:
            raise Unauthorized("not logged in")
        return Identity(name)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _text(data: Any) -> str:
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise ChatError("invalid", "a message needs a non-empty text")
    if len(text) > MAX_TEXT:
        raise ChatError("invalid", f"a message has at most {MAX_TEXT} characters")
    return text


def _entry(session: Session, text: str, **where: str) -> dict[str, Any]:
    """One message: an id (pages drop what they already show), who, what, when, and where."""
    return {"id": secrets.token_hex(8), "from": session.identity.id, "text": text, "at": _now(), **where}


def _room(data: Any) -> str:
    room = data.get("room") if isinstance(data, dict) else None
    if not isinstance(room, str) or room not in ROOMS:
        raise ChatError("no_such_room", f"there is no room {quote(room)}; the rooms are {', '.join(ROOMS)}")
    return room


def _clean_name(raw: str) -> str:
    name = " ".join(raw.split())
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise ValueError(f"a name has 1 to {MAX_NAME} printable characters")
    return name


def make_chat(config: Config | None = None) -> Realtime:
    """The chat's `Realtime`: handlers and hooks, no HTTP (usable without Flask in tests)."""
    rt = Realtime(config or Config(), authenticator=SessionAuthenticator())
    # rooms keep their members cluster-wide and tell them who comes and goes
    rt.channel_namespace(ROOM_PREFIX, ChannelOptions(presence=True, join_leave=True))
    #: messages to everyone (a chat.send without a room)
    history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY)
    room_history = {room: collections.deque[dict[str, Any]](maxlen=HISTORY) for room in ROOMS}
    log = logging.getLogger("rtgevent.demo")

    def online() -> list[str]:
        # the local hub: the demo runs on one node (rt.is_online answers across nodes)
        return sorted({s.identity.id for s in rt.sessions()})

    @rt.on_connect
    def joined(session: Session) -> None:
        session.send("chat.welcome", {"you": session.identity.id, "rooms": list(ROOMS), "history": list(history)})
        rt.broadcast("chat.online", {"online": online()})

    @rt.on_subscribe
    def enter_room(session: Session, channel: str) -> None:
        # clients may subscribe to the rooms, nothing else (without this hook: to nothing)
        if not channel.startswith(ROOM_PREFIX) or channel[len(ROOM_PREFIX) :] not in ROOMS:
            raise Unauthorized(f"{quote(channel)} is not a room of this chat")

    @rt.on_disconnect
    def left(session: Session, info: DisconnectInfo) -> None:
        if not rt.closed:
            rt.broadcast("chat.online", {"online": online()})

    @rt.on_error
    def report(error: BaseException, session: Session | None) -> None:
        who = session.identity.id if session is not None else "-"
        if isinstance(error, (ChatError, Unauthorized, BadMessage, UnknownRoute)):
            log.info("%s: %s", who, error)
        else:
            log.error("%s: %r", who, error, exc_info=(type(error), error, error.__traceback__))

    @rt.route("chat.send")
    def send(session: Session, msg: Message) -> Any:
        if isinstance(msg.data, dict) and "room" in msg.data:
            room = _room(msg.data)
            channel = ROOM_PREFIX + room
            if channel not in session.channels:
                raise ChatError("not_in_room", f"enter #{room} before writing to it")
            entry = _entry(session, _text(msg.data), room=room)
            room_history[room].append(entry)
            # every member, the sender included: each of its tabs shows the message once,
            # in the order everyone else sees it
            rt.publish(channel, "chat.message", entry)
            return {"ok": True}
        entry = _entry(session, _text(msg.data))
        history.append(entry)
        rt.broadcast("chat.message", entry)
        return {"ok": True}

    @rt.route("chat.room")
    def room_info(session: Session, msg: Message) -> Any:
        room = _room(msg.data)
        channel = ROOM_PREFIX + room
        members = [{"session_id": info.session_id, "name": info.identity_id} for info in rt.channel_members(channel)]
        members.sort(key=lambda member: (member["name"], member["session_id"]))
        return {
            "room": room,
            "count": rt.channel_count(channel),
            "members": members,
            "history": list(room_history[room]),
        }

    @rt.route("chat.direct")
    def direct(session: Session, msg: Message) -> Any:
        to = msg.data.get("to") if isinstance(msg.data, dict) else None
        if not isinstance(to, str) or not to:
            raise ChatError("invalid", "a direct message needs 'to'")
        # no id: a direct message is never sent twice (no history), so pages need none
        entry = {"from": session.identity.id, "to": to, "text": _text(msg.data), "at": _now()}
        try:
            rt.send_to_identity("", to, "chat.direct", entry)
        except SessionClosed:
            raise ChatError("not_online", f"{to} is not online") from None
        if to != session.identity.id:
            # every tab of the sender shows the conversation too, this one included
            rt.send_to_identity("", session.identity.id, "chat.direct", entry)
        return {"ok": True}

    @rt.route("chat.who")
    def who(session: Session, msg: Message) -> Any:
        return {"online": online()}

    return rt


def make_demo_app(config: Config | None = None, *, secret_key: str | bytes | None = None) -> Flask:
    """The chat as a Flask app: ``/`` (page), ``/login``, ``/logout``, ``/me``, ``/ws``, ``/ws/rtgevent.js``.

    ``secret_key`` signs the session cookie; by default ``RTGEVENT_DEMO_SECRET`` or a
    random key (logins then last as long as the process).
    """
    app = Flask("rtgevent.demo")
    app.config.update(
        SECRET_KEY=secret_key or os.environ.get("RTGEVENT_DEMO_SECRET") or os.urandom(24),
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
    )
    rt = make_chat(config)
    init_app(rt, app, "/ws")

    @app.get("/")
    def index() -> Response:
        if not flask.session.get("name"):
            return redirect(url_for("login"))
        response = send_from_directory(STATIC_DIR, "demo.html", mimetype="text/html")
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/me")
    def me() -> Any:
        name = flask.session.get("name")
        if not name:
            return {"error": "not logged in"}, 401
        return {"name": name}

    def login_page(error: str = "", status: int = 200) -> Response:
        body = LOGIN_PAGE.format(
            error=f'<p class="error">{escape(error)}</p>' if error else "",
            action=url_for("login"),
            max_name=MAX_NAME,
        )
        return Response(body, status, mimetype="text/html")

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Response:
        if request.method == "GET":
            return login_page()
        try:
            name = _clean_name(request.form.get("name", ""))
        except ValueError as exc:
            return login_page(str(exc), 400)
        flask.session.clear()
        flask.session["name"] = name
        return redirect(url_for("index"))

    @app.post("/logout")
    def logout() -> Response:
        flask.session.clear()
        return redirect(url_for("login"))

    return app

"""Flask integration (rtgevent.flask): blueprint and init_app over real sockets, in-process and under gunicorn.

The module also holds `gunicorn_app`, the factory the gunicorn subprocesses load
(``tests.test_flask:gunicorn_app()``), so the app served there is the one read here.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import flask
import pytest
from flask import Flask

from rtgevent import Config, Identity, Message, Realtime, Session, Unauthorized
from rtgevent.client import ConnectRefused, connect
from rtgevent.flask import CLIENT_JS, Dispatcher, FlaskState, blueprint, config_from_app, init_app
from tests.conftest import Gunicorn, launch_gunicorn
from tests.waiting import WAIT, wait_until

ROOT = Path(__file__).resolve().parent.parent


class CookieAuthenticator:
    """Identity from ``flask.session`` (a cookie login); records what ``flask.request`` showed."""

    def __init__(self) -> None:
        self.seen_paths: list[str] = []

    def authenticate(self, request: Any) -> Identity:
        self.seen_paths.append(flask.request.path)  # the Flask request context is active
        user = flask.session.get("user")
        if not user:
            raise Unauthorized("not logged in")
        return Identity(user, tenant_id="acme")


def make_flask_app(rt: Realtime, mount: str = "blueprint", path: str = "/ws") -> Flask:
    """A Flask app with a login view and ``rt`` mounted at ``path`` (by blueprint or init_app)."""
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "test-secret"

    @rt.route("echo")
    def echo(session: Session, msg: Message) -> Any:
        return msg.data

    @rt.route("whoami")
    def whoami(session: Session, msg: Message) -> Any:
        return {"id": session.identity.id, "tenant": session.identity.tenant_id}

    @app.post("/login")
    def login() -> Any:
        flask.session["user"] = flask.request.form["user"]
        return flask.redirect("/")

    @app.get("/")
    def index() -> Any:
        return {"user": flask.session.get("user"), "started": rt.started, "ws": flask.url_for("rtgevent.websocket")}

    if mount == "blueprint":
        app.register_blueprint(blueprint(rt, url_prefix=path))
    else:
        init_app(rt, app, path)
    return app


def gunicorn_app() -> Flask:
    """What the gunicorn tests serve: anonymous identities, echo at /ws."""
    return make_flask_app(Realtime(Config()), "init_app")


def http_request(
    port: int, method: str, path: str, body: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request, redirects not followed (so a login's Set-Cookie is seen)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        data = urlencode(body).encode() if body is not None else None
        all_headers = dict(headers or {})
        if data is not None:
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=data, headers=all_headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def login(port: int, user: str) -> str:
    """Log in through the Flask app; the ``Cookie`` header value to send with the upgrade."""
    status, headers, _ = http_request(port, "POST", "/login", {"user": user})
    assert status == 302, status
    return headers["set-cookie"].split(";", 1)[0]


@pytest.fixture
def served(serve_realtime: Callable[[Any], Any]) -> Iterator[Callable[[Realtime, Flask], int]]:
    """``served(rt, app)`` serves a Flask app on pywsgi; returns the port; shuts ``rt`` down after."""
    realtimes: list[Realtime] = []

    def factory(rt: Realtime, app: Flask) -> int:
        realtimes.append(rt)
        return int(serve_realtime(app).port)

    yield factory
    for rt in realtimes:
        rt.shutdown(timeout=5)


@pytest.mark.parametrize("mount", ["blueprint", "init_app"])
def test_mounted_endpoint_echoes_and_serves_the_js(served: Any, mount: str) -> None:
    """Both mounting styles put the WebSocket and GET <prefix>/rtgevent.js at the path."""
    rt = Realtime(Config())
    app = make_flask_app(rt, mount, "/realtime")
    port = served(rt, app)
    with connect(f"ws://127.0.0.1:{port}/realtime", timeout=WAIT) as client:
        assert client.request("echo", {"n": [1, 2]}) == {"n": [1, 2]}
        assert client.request("whoami") == {"id": "anonymous", "tenant": ""}
    status, headers, body = http_request(port, "GET", "/realtime/rtgevent.js")
    assert status == 200
    assert headers["content-type"].startswith("text/javascript")
    assert body == CLIENT_JS.read_bytes()
    assert b"RTGevent" in body
    # the rest of the app is still Flask's, and url_for builds the WebSocket URL (ws://)
    status, _, body = http_request(port, "GET", "/")
    assert status == 200 and f'"ws":"ws://127.0.0.1:{port}/realtime"'.encode() in body.replace(b" ", b"")


def test_extension_state_and_dispatcher() -> None:
    """app.extensions["rtgevent"] holds the Realtime; app.wsgi_app is the dispatcher, installed once."""
    rt = Realtime(Config())
    app = Flask(__name__)
    state = init_app(rt, app, "/ws")
    other = Flask(__name__)
    other.register_blueprint(blueprint(rt, name="live", url_prefix="/live"))
    assert isinstance(state, FlaskState)
    assert app.extensions["rtgevent"] is state
    assert state.realtime is rt and state.realtimes == [rt]
    assert isinstance(app.wsgi_app, Dispatcher) and app.wsgi_app is state.dispatcher
    assert not isinstance(app.wsgi_app.wsgi_app, Dispatcher)  # wrapped once
    rules = {r.rule: r for r in app.url_map.iter_rules()}
    assert rules["/ws"].websocket and rules["/ws"].endpoint == "rtgevent.websocket"
    assert not rules["/ws/rtgevent.js"].websocket
    assert {r.rule for r in other.url_map.iter_rules()} >= {"/live", "/live/rtgevent.js"}
    assert other.extensions["rtgevent"].realtime is rt
    assert not rt.started  # never at import or registration time: gunicorn forks after both


def test_config_from_app_reads_prefixed_keys() -> None:
    """RTGEVENT_* keys of app.config become a Config; other keys are left alone."""
    app = Flask(__name__)
    app.config.update(RTGEVENT_READ_LIMIT=4096, RTGEVENT_SESSION_POLICY="replace", OTHER=1)
    config = config_from_app(app)
    assert config.read_limit == 4096 and config.session_policy == "replace"
    assert Config.from_mapping(app.config, prefix="RTGEVENT_").read_limit == 4096


def test_session_cookie_login_authenticates_the_upgrade(served: Any) -> None:
    """An authenticator reading flask.session sees the login made through the Flask app."""
    auth = CookieAuthenticator()
    rt = Realtime(Config(), authenticator=auth)
    port = served(rt, make_flask_app(rt))
    cookie = login(port, "ada")
    with connect(f"ws://127.0.0.1:{port}/ws", headers={"Cookie": cookie}, timeout=WAIT) as client:
        assert client.request("whoami") == {"id": "ada", "tenant": "acme"}
        assert rt.is_online("acme", "ada")
    assert auth.seen_paths == ["/ws"]


def test_unauthenticated_upgrade_gets_401(served: Any) -> None:
    """No session cookie (or a forged one): HTTP 401 and no session."""
    rt = Realtime(Config(), authenticator=CookieAuthenticator())
    port = served(rt, make_flask_app(rt))
    for headers in ({}, {"Cookie": "session=forged.value.sig"}):
        with pytest.raises(ConnectRefused) as refused:
            connect(f"ws://127.0.0.1:{port}/ws", headers=headers, timeout=WAIT)
        assert refused.value.status == 401
    assert rt.stats()["connections_total"] == 0


def test_plain_get_to_the_websocket_path_gets_400(served: Any) -> None:
    """Werkzeug matches a websocket=True rule only for upgrades: a plain GET is a 400."""
    rt = Realtime(Config())
    port = served(rt, make_flask_app(rt))
    status, _, _ = http_request(port, "GET", "/ws")
    assert status == 400
    # an upgrade to a path that is not ours is left to Flask
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
    status, _, _ = http_request(port, "GET", "/nowhere", headers=upgrade)
    assert status == 404


def test_first_request_starts_the_node(served: Any) -> None:
    """The dispatcher starts the Realtime lazily, on the process's first request of any kind."""
    rt = Realtime(Config())
    port = served(rt, make_flask_app(rt))
    assert not rt.started
    status, _, body = http_request(port, "GET", "/")
    assert status == 200 and b'"started":true' in body.replace(b" ", b"")
    assert rt.started


def test_register_time_prefix_moves_the_endpoint(served: Any) -> None:
    """A url_prefix given to register_blueprint wins, as for any blueprint."""
    rt = Realtime(Config())
    app = Flask(__name__)

    @rt.route("echo")
    def echo(session: Session, msg: Message) -> Any:
        return msg.data

    app.register_blueprint(blueprint(rt, url_prefix="/ws"), url_prefix="/moved")
    port = served(rt, app)
    with connect(f"ws://127.0.0.1:{port}/moved", timeout=WAIT) as client:
        assert client.request("echo", "here") == "here"
    assert http_request(port, "GET", "/moved/rtgevent.js")[0] == 200


# ---------------------------------------------------------------------- gunicorn


def start_gunicorn(worker: str) -> Gunicorn:
    """gunicorn serving `gunicorn_app` with ``worker``."""
    return launch_gunicorn(
        "-k",
        worker,
        "-w",
        "1",
        "-c",
        "python:rtgevent.gunicorn",
        "--graceful-timeout",
        "5",
        "tests.test_flask:gunicorn_app()",
    )


@pytest.mark.parametrize("worker", ["gevent", "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"])
def test_flask_endpoint_under_gunicorn(worker: str) -> None:
    """The Flask-mounted endpoint echoes under gunicorn's gevent worker and gevent-websocket's worker."""
    g = start_gunicorn(worker)
    port, log = g.port, g.log

    def index() -> tuple[int, dict[str, str], bytes] | None:
        try:
            return http_request(port, "GET", "/")
        except OSError:
            return None  # the worker boots after the master listens

    try:
        status, _, body = wait_until(index, lambda: "gunicorn worker to answer:\n" + "\n".join(log))
        assert status == 200 and b'"started":true' in body.replace(b" ", b""), body  # lazily, in the worker
        with connect(f"ws://127.0.0.1:{port}/ws", timeout=WAIT) as client:
            assert client.request("echo", {"worker": worker}) == {"worker": worker}
            assert client.request("echo", "x" * 70000) == "x" * 70000
        status, _, body = http_request(port, "GET", "/ws/rtgevent.js")
        assert status == 200 and body == CLIENT_JS.read_bytes()
    finally:
        g.stop()
    assert not [line for line in log if "Traceback" in line], "\n".join(log)

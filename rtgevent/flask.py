"""Flask integration: mount a `Realtime` as a blueprint (``rt.blueprint``) or with ``rt.init_app``.

Flask cannot run the WebSocket endpoint as an ordinary view: a view gets neither the
WSGI ``start_response`` nor the untouched environ, and the `Realtime` needs both (it
writes the 101 itself under pywsgi and ``gunicorn -k gevent``, or takes over
gevent-websocket's socket).  So registering the blueprint also wraps ``app.wsgi_app``
with a small `Dispatcher`:

* an upgrade request whose URL matches one of our WebSocket rules goes straight to
  ``rt(environ, start_response)``, inside ``app.request_context(environ)``, so that
  authenticators may use ``flask.request`` and ``flask.session`` (a cookie login);
* everything else goes to Flask unchanged.

The WebSocket rule is an ordinary URL rule with ``websocket=True``: Werkzeug matches it
only for upgrade requests, so ``url_for`` builds its URL, a prefix given at
``register_blueprint`` time moves it, and a plain GET to it gets Flask's 400.  The
dispatcher finds "ours" by the matched rule's view function, not by a path string.

The first request a process serves starts every mounted `Realtime`
(`Realtime.ensure_started`): never at import, because gunicorn imports the application
in its master and forks the workers afterwards, and a broker connection must not be
shared across a fork.

Middleware that wraps ``app.wsgi_app`` after the registration (``ProxyFix``) sees the
WebSocket requests too; middleware installed before it is bypassed for them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn, Protocol

from flask import Blueprint, Flask, send_from_directory
from flask.ctx import RequestContext
from flask.sansio.blueprints import BlueprintSetupState
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from .config import Config
from .transport.handshake import is_upgrade_request

__all__ = [
    "CLIENT_JS",
    "EXTENSION_KEY",
    "Dispatcher",
    "FlaskState",
    "Mountable",
    "blueprint",
    "config_from_app",
    "init_app",
    "install_dispatcher",
]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class Mountable(Protocol):
    """What the integration needs of a `Realtime` (it never imports the facade: no circle)."""

    logger: logging.Logger

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]: ...

    def ensure_started(self) -> None: ...


#: ``app.extensions`` key (Flask's convention: the extension's name)
EXTENSION_KEY = "rtgevent"
STATIC_DIR = Path(__file__).resolve().parent / "static"
#: the browser client, shipped in the package and served at ``<prefix>/rtgevent.js``
CLIENT_JS = STATIC_DIR / "rtgevent.js"


def config_from_app(app: Flask, prefix: str = "RTGEVENT_") -> Config:
    """A `Config` from the app's ``RTGEVENT_*`` settings (``RTGEVENT_READ_LIMIT = 65536``).

    The usual Flask extension pattern, for applications that create the `Realtime`
    next to their config: ``rt = Realtime(config_from_app(app))``.  A key under the
    prefix that is not a `Config` field raises `InvalidOption` rather than being ignored.
    """
    return Config.from_mapping(app.config, prefix=prefix)


class _WebSocketView:
    """The view function of the WebSocket rule.

    It marks the rule as ours (the dispatcher looks for it) and is called only when an
    upgrade reached Flask's own view dispatch, bypassing the dispatcher.
    """

    def __init__(self, rt: Mountable) -> None:
        self.realtime = rt
        self.__name__ = "rtgevent_websocket"

    def __call__(self, **values: Any) -> NoReturn:
        raise RuntimeError(
            "rtgevent: a WebSocket upgrade reached a Flask view: app.wsgi_app must be the rtgevent "
            "dispatcher (or wrap it); was app.wsgi_app replaced without keeping the old one?"
        )


@dataclasses.dataclass
class FlaskState:
    """What ``app.extensions["rtgevent"]`` holds for one Flask application."""

    #: the first `Realtime` mounted on the app (the usual case: the only one)
    realtime: Mountable
    dispatcher: Dispatcher

    @property
    def realtimes(self) -> list[Mountable]:
        return list(self.dispatcher.realtimes)


class Dispatcher:
    """Wraps ``app.wsgi_app``: our WebSocket upgrades to the `Realtime`, the rest to Flask."""

    def __init__(self, app: Flask, wsgi_app: WSGIApp) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.realtimes: list[Mountable] = []
        # the pid that ran the lazy start: a forked worker starts its own nodes
        self._started_in: int | None = None

    def add(self, rt: Mountable) -> None:
        if rt not in self.realtimes:
            self.realtimes.append(rt)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self._started_in != os.getpid():
            self._start()
        if environ.get("wsgi.websocket") is not None or is_upgrade_request(environ):
            ctx = self.app.request_context(environ)
            rt = self._realtime_for(ctx)
            if rt is not None:
                return self._serve(rt, ctx, environ, start_response)
        return self.wsgi_app(environ, start_response)

    def _start(self) -> None:
        from .node import NotMonkeyPatched, require_monkey_patching

        self._started_in = os.getpid()
        try:
            require_monkey_patching("cannot serve WebSockets")
        except NotMonkeyPatched as exc:
            # ``flask run`` (threads) or any server without gevent's patching: one clear
            # line now, and every upgrade answers 500 with the same text in its traceback.
            for rt in self.realtimes[:1]:
                rt.logger.error("%s", exc)
            return
        for rt in self.realtimes:
            try:
                rt.ensure_started()
            except Exception:
                # Serve anyway: local delivery works without the broker, and a failed
                # start must not turn every page of the application into a 500.
                rt.logger.exception("rtgevent: could not start the node on the first request")

    def _realtime_for(self, ctx: RequestContext) -> Mountable | None:
        """The `Realtime` whose WebSocket rule this request matches, if any."""
        adapter = ctx.url_adapter
        if adapter is None:
            return None
        try:
            rule, _ = adapter.match(return_rule=True)
        except HTTPException:
            return None
        view = self.app.view_functions.get(rule.endpoint)
        return view.realtime if isinstance(view, _WebSocketView) else None

    def _serve(
        self, rt: Mountable, ctx: RequestContext, environ: Environ, start_response: StartResponse
    ) -> Iterable[bytes]:
        # The same push / pop as Flask.wsgi_app: the session is opened on push (so
        # flask.session works during authentication) and teardown functions run on pop.
        error: BaseException | None = None
        try:
            ctx.push()
            return rt(environ, start_response)
        except BaseException as exc:
            error = exc
            raise
        finally:
            ctx.pop(error)


def install_dispatcher(app: Flask, rt: Mountable) -> FlaskState:
    """Wrap ``app.wsgi_app`` once per app and record ``rt`` in ``app.extensions["rtgevent"]``."""
    state = app.extensions.get(EXTENSION_KEY)
    if state is None:
        dispatcher = Dispatcher(app, app.wsgi_app)
        app.wsgi_app = dispatcher  # type: ignore[method-assign]
        state = FlaskState(rt, dispatcher)
        app.extensions[EXTENSION_KEY] = state
    if not isinstance(state, FlaskState):
        raise RuntimeError(f"rtgevent: app.extensions[{EXTENSION_KEY!r}] holds {state!r}, not rtgevent's state")
    state.dispatcher.add(rt)
    return state


def _client_js() -> Response:
    # send_from_directory: ETag and Last-Modified, so browsers revalidate cheaply
    return send_from_directory(STATIC_DIR, CLIENT_JS.name, mimetype="text/javascript")


def blueprint(rt: Mountable, name: str = "rtgevent", url_prefix: str | None = "/ws") -> Blueprint:
    """A blueprint with the WebSocket endpoint at ``url_prefix`` and the JS client under it.

    Endpoints: ``<name>.websocket`` (``url_for`` gives its path) and ``<name>.client_js``
    (``GET <url_prefix>/rtgevent.js``).  Registering it on an app installs the dispatcher.
    """
    bp = Blueprint(name, __name__, url_prefix=url_prefix)
    # "" puts the endpoint at the prefix itself ("/ws", not "/ws/": a redirect cannot be
    # followed by a WebSocket handshake); without a prefix it is the root.
    rule = "" if url_prefix not in (None, "", "/") else "/"
    bp.add_url_rule(rule, endpoint="websocket", view_func=_WebSocketView(rt), methods=["GET"], websocket=True)
    bp.add_url_rule("/rtgevent.js", endpoint="client_js", view_func=_client_js, methods=["GET"])

    def setup(state: BlueprintSetupState) -> None:
        install_dispatcher(state.app, rt)  # type: ignore[arg-type]

    bp.record_once(setup)
    return bp


def init_app(rt: Mountable, app: Flask, path: str = "/ws", *, name: str = "rtgevent") -> FlaskState:
    """Mount ``rt`` on ``app`` at ``path`` (the JS client at ``<path>/rtgevent.js``).

    The extension-style spelling of ``app.register_blueprint(rt.blueprint(url_prefix=path))``.
    """
    app.register_blueprint(blueprint(rt, name=name, url_prefix=path))
    state = app.extensions[EXTENSION_KEY]
    assert isinstance(state, FlaskState)
    return state

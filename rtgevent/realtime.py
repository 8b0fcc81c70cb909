"""`Realtime`: the facade.  The WSGI application and the public API of SPEC section 4.

It composes the rooms and owns nothing they could own themselves: registration,
dispatch and a session's start and end are the core's (`App`, which it extends, as
``Flask`` extends ``sansio.App``); admission is the `Gate`'s; sockets and frames are
``transport/``'s; where a message goes is the `Fanout`'s; the cluster side is the `Node`'s.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event

from .app import App, personal_since
from .auth import AnonymousAuthenticator, Authenticator
from .broker.base import Broker
from .broker.local import LocalBroker
from .channels import Namespaces, check_channel
from .codec import Codec, JSONCodec
from .config import Config
from .delivery import Fanout, Reach, stamp_message
from .errors import AlreadyStarted, RealtimeClosed, SessionClosed, quote
from .gate import Admitted, Gate, Refused
from .history.base import History
from .hub import Hub
from .ids import IdGenerator, random_id
from .lifecycle import Closing, Lifecycle
from .message import Message
from .node import Node
from .presence.base import Presence
from .presence.memory import MemoryPresence
from .rooms import Rooms
from .session import Session
from .stats import Stats
from .threadsafe import HubCaller
from .transport.acquire import Acquired, acquire, refuse
from .transport.connection import Connection
from .types import Initiator, SessionInfo

if TYPE_CHECKING:
    from flask import Blueprint, Flask

    from .admin import AdminApp, NodeRecorder
    from .events import KombuEvents
    from .testing import TestClient
    from .types import Identity

__all__ = ["Realtime"]

#: every live Realtime of this process: the gunicorn drain hook closes them all
instances: weakref.WeakSet[Realtime] = weakref.WeakSet()


class Realtime(App):
    """A realtime gateway: a WSGI application plus the API of SPEC section 4."""

    #: this node's stats record for the admin page, once `admin_app` turned it on
    _admin_recorder: NodeRecorder | None = None

    def __init__(
        self,
        config: Config | None = None,
        *,
        authenticator: Authenticator | None = None,
        codec: Codec | None = None,
        broker: Broker | None = None,
        presence: Presence | None = None,
        logger: logging.Logger | None = None,
        id_generator: IdGenerator | None = None,
        events: KombuEvents | None = None,
        history: History | None = None,
    ) -> None:
        config = config if config is not None else Config()
        logger = logger or logging.getLogger("rtgevent")
        stats = Stats()
        fanout = Fanout(
            broker if broker is not None else LocalBroker(),
            presence if presence is not None else MemoryPresence(),
            config.node_id,
            Hub(),
            history,
            self._report_unbound,
        )
        self.node = Node(config, fanout, stats=stats, report=self._report_unbound, logger=logger, events=events)
        rooms = Rooms(config, fanout, Namespaces(), self.node.receive, self._report_unbound)
        super().__init__(
            config,
            authenticator=authenticator or AnonymousAuthenticator(),
            codec=codec or JSONCodec(),
            fanout=fanout,
            logger=logger,
            id_generator=id_generator or random_id,
            events=events,
            stats=stats,
            caller=HubCaller(),
            presence_failed=self.node.presence_failed,
            rooms=rooms,
        )
        self.gate = Gate(config, self.authenticator, self._report_unbound)
        self._closed = Event()
        if config.insecure_origins:
            logger.warning("rtgevent: insecure_origins is on: any website may open a WebSocket here")
        instances.add(self)

    def _report_unbound(self, error: BaseException) -> None:
        self.report(error, None)

    # ------------------------------------------------------------------ WSGI

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        self.freeze()
        if self.node.unchecked:  # once per process: monkey-patching, the gunicorn worker's stop signals
            self.node.check_process(self.shutdown)
        if not self.node.started and self.node.shared:
            # A shared broker or presence needs this node subscribed and its lease renewed;
            # starting on the first request (never at import) is safe under forking servers.
            self.ensure_started()
        verdict = self.gate.admit(environ)
        if isinstance(verdict, Refused):
            return refuse(environ, start_response, verdict.response, verdict.close_code, verdict.reason)
        try:
            acquired = acquire(environ, start_response, verdict.accept)
            try:
                self._serve(acquired, verdict, environ.get("REMOTE_ADDR", ""), environ.get("QUERY_STRING", ""))
            finally:
                acquired.release()
        finally:
            self.gate.leave()
        return []

    def _serve(self, acquired: Acquired, admitted: Admitted, remote_addr: str, query: str = "") -> None:
        """Run one session in this (the WSGI request's) greenlet until it ends."""
        config = self.config
        conn = Connection(
            acquired.sock,
            read_limit=config.read_limit,
            write_timeout=config.write_timeout,
            heartbeat_interval=config.heartbeat_interval,
            pong_timeout=config.pong_timeout,
            send_queue_size=config.send_queue_size,
            backpressure=config.backpressure,
            extensions=admitted.accept.extensions if admitted.accept is not None else [],
            stats=self.counters,
            write_delay=config.write_delay,
        )
        session = self.new_session(conn, admitted.identity, remote_addr)
        if config.identity_history_size:
            session.resume = personal_since(query)
        life = Lifecycle(in_band=admitted.in_band)
        auth_timer: Any = None

        def on_open() -> None:
            nonlocal auth_timer
            if life.authenticating:
                auth_timer = gevent.get_hub().loop.timer(config.auth_timeout or 1e9)
                auth_timer.start(
                    session.request_close,
                    Closing(Initiator.ERROR, 1008, "authentication timeout", flush=False),
                )
            else:
                self.open_session(session, life)

        def on_message(payload: str | bytes) -> None:
            self.receive(session, payload, life)
            if auth_timer is not None and not life.authenticating:
                auth_timer.stop()

        try:
            conn.run(acquired.pending, on_message, on_open)
        finally:
            if auth_timer is not None:
                auth_timer.stop()
            self.end_session(session, conn.ending(), life)

    # ------------------------------------------------------------------ delivery

    def _check_open(self) -> None:
        if self.gate.closed:
            raise RealtimeClosed()

    def broadcast(self, route: str, data: Any = None) -> None:
        """Send to every session on every started node; the envelope is encoded once."""
        if not self._caller.in_hub_thread():
            return self._caller.call(self.broadcast, route, data)
        self._check_open()
        self.fanout.broadcast(self.codec.encode(Message(route, data)))

    def publish(self, channel: str, route: str, data: Any = None, *, exclude: Session | str | None = None) -> int:
        """Send to every subscriber of ``channel`` on every node, encoded once (SPEC section 13).

        ``exclude`` (a `Session` or a session id) is not delivered to: Socket.IO's
        ``include_self=False``.  Publications of one publisher to one channel arrive in
        order.  Returns how many local subscribers took it; callable from native threads.
        """
        if not self._caller.in_hub_thread():
            return self._caller.call(functools.partial(self.publish, exclude=exclude), channel, route, data)
        self._check_open()
        check_channel(channel)
        skip = exclude.id if isinstance(exclude, Session) else (exclude or "")
        options = self.rooms.namespaces.options(channel)
        if options.history_size:
            assert options.history_ttl is not None
            stamp = stamp_message(self.codec, route, data, {"channel": channel})
            delivered, _ = self.fanout.publish_stream(channel, stamp, skip, options.history_size, options.history_ttl)
            return delivered
        envelope = self.codec.encode(Message(route, data, metadata={"channel": channel}))
        return self.fanout.publish(channel, envelope, skip)

    def send_to_identity(self, tenant_id: str, identity_id: str, route: str, data: Any = None) -> Reach:
        """Send to every live session of an identity; how far it went.

        The `Reach` says how many local sessions took the message (``sessions``) and how
        many other nodes it was published to (``nodes``); as a number it is their sum, as
        `Emitter.send_to_identity`'s.  Raises `SessionClosed` when nothing took it: no
        session anywhere, or only local ones that are closing or whose queue refused it.
        With personal streams (``Config.identity_history_size``) the message is kept for
        a client that reconnects, so it raises nothing: the `Reach` may be 0.
        """
        if not self._caller.in_hub_thread():
            return self._caller.call(self.send_to_identity, tenant_id, identity_id, route, data)
        self._check_open()
        config = self.config
        if config.identity_history_size:
            assert config.identity_history_ttl is not None
            stamp = stamp_message(self.codec, route, data, {})
            reach, _ = self.fanout.to_identity_stream(
                tenant_id, identity_id, stamp, config.identity_history_size, config.identity_history_ttl
            )
            return reach  # kept in the personal stream: a session that reconnects gets it
        reach = self.fanout.to_identity(tenant_id, identity_id, self.codec.encode(Message(route, data)))
        if not reach:
            raise SessionClosed(f"no live session took the message for {quote(tenant_id)}/{quote(identity_id)}")
        return reach

    def get_identity_sessions(self, tenant_id: str, identity_id: str) -> list[SessionInfo]:
        if not self._caller.in_hub_thread():
            return self._caller.call(self.get_identity_sessions, tenant_id, identity_id)
        self._check_open()
        return self.presence.get_identity_sessions(tenant_id, identity_id)

    def is_online(self, tenant_id: str, identity_id: str) -> bool:
        if not self._caller.in_hub_thread():
            return self._caller.call(self.is_online, tenant_id, identity_id)
        self._check_open()
        return self.presence.is_online(tenant_id, identity_id)

    def sessions(self) -> list[Session]:
        """The sessions live on this node."""
        return self.hub.sessions()

    def stats(self) -> dict[str, int]:
        counters = self.counters.as_dict()
        counters["connections"] = len(self.hub)
        counters.update(self.node.status())  # broker_up, presence_up, broker_errors, broker_reconnects
        return counters

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Subscribe this node to the broker and start renewing its presence lease."""
        if self.node.started:
            raise AlreadyStarted()
        self._check_open()
        self.freeze()
        streams = self.rooms.namespaces.histories or bool(self.config.identity_history_size)
        if streams and self.node.shared and not getattr(self.history, "shared", True):
            self.logger.warning(
                "rtgevent: streams are kept in this node's memory (MemoryHistory) while the broker is shared: "
                "the nodes' offsets will not agree; give every node a RedisHistory (rtgevent serve --history)"
            )
        self.node.start()
        self.rooms.activate()

    def ensure_started(self) -> None:
        """Start this node unless it is started (the lazy start of the Flask and gunicorn integrations).

        Called on a worker's first request, never before a fork: a broker connection made
        in the gunicorn master would be shared by every worker.
        """
        if not self.node.started and not self.gate.closed:
            self.start()

    def shutdown(self, timeout: float | None = None) -> None:
        """Refuse new upgrades, close every session with 1001, wait for their hooks, close up.

        Idempotent: a second call waits for the first to finish.  Afterwards the
        delivery methods raise `RealtimeClosed`.
        """
        wait = timeout if timeout is not None else self.config.shutdown_timeout
        if self.gate.closed:
            self._closed.wait(wait)
            return
        self.gate.closed = True
        try:
            mine = self.close_sessions(Closing(Initiator.SHUTDOWN, 1001, "server shutdown", flush=True))
            if not mine:
                self.wait_idle(wait)
            self.node.stop()
        finally:
            self._closed.set()
            instances.discard(self)

    @property
    def closed(self) -> bool:
        return self.gate.closed

    @property
    def started(self) -> bool:
        return self.node.started

    # ------------------------------------------------------------------ integrations

    def blueprint(self, name: str = "rtgevent", url_prefix: str | None = "/ws") -> Blueprint:
        """A Flask blueprint: the WebSocket at ``url_prefix``, the JS client at ``<url_prefix>/rtgevent.js``."""
        from .flask import blueprint

        return blueprint(self, name=name, url_prefix=url_prefix)

    def init_app(self, app: Flask, path: str = "/ws") -> Any:
        """Mount on a Flask app, extension style; the state goes in ``app.extensions["rtgevent"]``."""
        from .flask import init_app

        return init_app(self, app, path)

    def admin_app(self, token: str, *, refresh: float = 3.0, stats_interval: float = 2.0) -> AdminApp:
        """The admin page as a WSGI application, protected by ``token`` (see `rtgevent.admin`).

        Mount it anywhere (``DispatcherMiddleware(app, {"/admin": rt.admin_app(token)})``;
        ``rtgevent serve --admin-token`` mounts it at ``/admin``).  The first call also turns
        on this node's stats record, written into presence every ``stats_interval`` seconds
        (the page reads every node's from there), so call it on every node, before the
        gateway serves, like a registration: the same application code on each node does.
        ``refresh`` is how often the page asks for the state.  A shared presence store
        (`RedisPresence`) shows the whole cluster; `MemoryPresence` this process.
        """
        from .admin import AdminApp, NodeRecorder

        app = AdminApp(self, token, refresh=refresh)  # checks the token first: a refused one turns nothing on
        if self._admin_recorder is None:
            if self.serving:
                raise AlreadyStarted("cannot call admin_app() once the application is serving")
            recorder = NodeRecorder(self, stats_interval)
            self.on_disconnect(recorder.disconnected)
            self.node.write_stats(recorder.record, stats_interval)
            self._admin_recorder = recorder
        return app

    def admin_blueprint(
        self,
        token: str,
        *,
        name: str = "rtgevent_admin",
        url_prefix: str = "/admin",
        refresh: float = 3.0,
        stats_interval: float = 2.0,
    ) -> Blueprint:
        """The admin page as a Flask blueprint at ``url_prefix``: `admin_app` for Flask applications."""
        from .admin import admin_blueprint

        admin = self.admin_app(token, refresh=refresh, stats_interval=stats_interval)
        return admin_blueprint(admin, name=name, url_prefix=url_prefix)

    def test_client(self, identity: Identity | None = None) -> TestClient:
        """A client that drives handlers without a socket (see `rtgevent.testing`)."""
        from .testing import TestClient
        from .types import Identity

        return TestClient(self, identity or Identity("test"))

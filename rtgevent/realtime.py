"""`Realtime`: the facade.  Registration, the WSGI entry point, delivery, start and shutdown.

The facade wires the rooms together (handshake, authentication, the frame engine, the
hub, presence, the broker) and owns nothing they could own themselves.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import gevent
from gevent import Timeout, getcurrent
from gevent.event import Event
from werkzeug.wrappers import Request

from .auth import AnonymousAuthenticator, Authenticator, InBandAuthenticator
from .broker.base import Broker, Subscription
from .broker.local import LocalBroker
from .codec import Codec, JSONCodec
from .config import Config
from .delivery import (
    BROADCAST_TOPIC,
    BrokerPayload,
    deliver_local,
    encode_payload,
    handle_broker_message,
    kick_local,
    node_topic,
    publish_to_nodes,
)
from .errors import (
    AlreadyStarted,
    BadMessage,
    HandlerError,
    InvalidOption,
    RealtimeClosed,
    RealtimeError,
    SessionClosed,
    Unauthorized,
    UnknownRoute,
)
from .hub import Hub
from .ids import IdGenerator, random_id
from .message import AUTH_ROUTE, REPLY_ROUTE, RESERVED_PREFIX, Message, error_message, reply_message
from .middleware import Handler, Middleware, build_chain
from .presence.base import Presence
from .presence.memory import MemoryPresence
from .router import Router
from .session import Session
from .threadsafe import HubCaller
from .transport.acquire import Acquired, acquire, uses_prior_handshake
from .transport.connection import Connection
from .transport.frames import Closing, Outcome, close_frame
from .transport.handshake import Accept, Refusal, check_upgrade, origin_allowed, refusal
from .types import DisconnectInfo, Identity, Initiator, SessionInfo

if TYPE_CHECKING:
    from flask import Blueprint, Flask

    from .events import KombuEvents

__all__ = ["Realtime", "Stats"]

F = TypeVar("F", bound=Callable[..., Any])
ConnectHook = Callable[[Session], None]
DisconnectHook = Callable[[Session, DisconnectInfo], None]
ErrorHook = Callable[[BaseException, "Session | None"], None]

#: every live Realtime of this process: the gunicorn drain hook closes them all
instances: weakref.WeakSet[Realtime] = weakref.WeakSet()

_UNAUTHENTICATED = Identity("unauthenticated")
_EXPECTED_CLIENT_CODES = frozenset({1000, 1001, 1005, 1006})
#: errors a client causes; logged at debug level when no on_error hook is registered
_CLIENT_ERRORS = (BadMessage, UnknownRoute, Unauthorized)


class Stats:
    """Counters since start; `Realtime.stats` reads them as a dict."""

    __slots__ = (
        "backpressure_closes",
        "broker_errors",
        "connections_total",
        "messages_in",
        "messages_out",
        "queue_drops",
    )

    def __init__(self) -> None:
        self.connections_total = 0
        self.messages_in = 0
        self.messages_out = 0
        self.queue_drops = 0
        self.backpressure_closes = 0
        self.broker_errors = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Realtime:
    """A realtime gateway: a WSGI application plus the API of SPEC section 4."""

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
    ) -> None:
        self.config = config if config is not None else Config()
        self.authenticator: Authenticator = authenticator or AnonymousAuthenticator()
        self.codec: Codec = codec or JSONCodec()
        self.broker: Broker = broker if broker is not None else LocalBroker()
        self.presence: Presence = presence if presence is not None else MemoryPresence()
        self.logger = logger or logging.getLogger("rtgevent")
        self._new_id: IdGenerator = id_generator or random_id
        #: backend event stream (seed 003): enter / message / leave, or None
        self.events = events
        self._router: Router[Handler] = Router()
        self._middleware: list[Middleware] = []
        self._dispatch_router: Router[Handler] | None = None
        self._on_connect: list[ConnectHook] = []
        self._on_disconnect: list[DisconnectHook] = []
        self._on_error: list[ErrorHook] = []
        self._hub = Hub()
        self._stats = Stats()
        self._reserved = 0
        self._live = 0
        self._idle = Event()
        self._idle.set()
        self._serving = False
        self._started = False
        self._closing = False
        self._closed = Event()
        self._subscriptions: list[Subscription] = []
        self._renewer: gevent.Greenlet | None = None
        self._presence_stale = False
        self._caller = HubCaller()
        if self.config.insecure_origins:
            self.logger.warning("rtgevent: insecure_origins is on: any website may open a WebSocket here")
        instances.add(self)

    @property
    def node_id(self) -> str:
        return self.config.node_id

    # ------------------------------------------------------------------ registration

    def _setup(self, what: str) -> None:
        if self._serving:
            raise AlreadyStarted(f"cannot register {what} once the application is serving")

    def route(self, route: str) -> Callable[[F], F]:
        """Register a handler for exactly ``route`` (highest priority)."""
        self._setup("a route")
        _check_not_reserved("route", route)

        def decorator(fn: F) -> F:
            self._router.add_route(route, fn)
            return fn

        return decorator

    def prefix(self, prefix: str) -> Callable[[F], F]:
        """Register a handler for every route starting with ``prefix``; the longest wins."""
        self._setup("a prefix")
        _check_not_reserved("prefix", prefix)

        def decorator(fn: F) -> F:
            self._router.add_prefix(prefix, fn)
            return fn

        return decorator

    def on_message(self, fn: F) -> F:
        """Register the fallback handler, for messages no route or prefix matched."""
        self._setup("on_message")
        self._router.fallback = fn
        return fn

    def use(self, *middleware: Middleware) -> None:
        """Append middleware; the first registered is the outermost."""
        self._setup("middleware")
        self._middleware.extend(middleware)

    def on_connect(self, fn: F) -> F:
        self._setup("on_connect")
        self._on_connect.append(fn)
        return fn

    def on_disconnect(self, fn: F) -> F:
        self._setup("on_disconnect")
        self._on_disconnect.append(fn)
        return fn

    def on_error(self, fn: F) -> F:
        self._setup("on_error")
        self._on_error.append(fn)
        return fn

    def _freeze(self) -> Router[Handler]:
        router = self._dispatch_router
        if router is None:
            self._serving = True
            middleware = tuple(self._middleware)
            router = self._router.map(lambda handler: build_chain(middleware, handler))
            self._dispatch_router = router
        return router

    # ------------------------------------------------------------------ errors

    def _report(self, error: BaseException, session: Session | None = None) -> None:
        if not self._on_error:
            if isinstance(error, _CLIENT_ERRORS):
                self.logger.debug("%s (session %s)", error, session.id if session else "-")
            else:
                self.logger.error(
                    "rtgevent: error (session %s): %r",
                    session.id if session else "-",
                    error,
                    exc_info=(type(error), error, error.__traceback__),
                )
            return
        for hook in self._on_error:
            try:
                hook(error, session)
            except Exception:
                self.logger.exception("rtgevent: on_error hook failed")

    # ------------------------------------------------------------------ WSGI

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        router = self._freeze()
        if not self._started and self._shared_state():
            # A shared broker or presence needs this node subscribed and its lease renewed;
            # starting on the first request (never at import) is safe under forking servers.
            self.ensure_started()
        prior = uses_prior_handshake(environ)
        accept: Accept | None = None
        if not prior:
            checked = check_upgrade(environ, compression=self.config.compression)
            if isinstance(checked, Refusal):
                return _send_refusal(start_response, checked)
            accept = checked
        config = self.config
        if self._closing:
            return self._refuse(environ, start_response, prior, "503 Service Unavailable", 1013, "shutting down")
        if not origin_allowed(
            environ.get("HTTP_ORIGIN"),
            environ.get("HTTP_HOST"),
            config.origin_patterns,
            insecure=config.insecure_origins,
        ):
            return self._refuse(environ, start_response, prior, "403 Forbidden", 1008, "origin not allowed")
        limit = config.max_connections
        if limit is not None and self._reserved >= limit:
            return self._refuse(environ, start_response, prior, "503 Service Unavailable", 1013, "connection limit")
        self._reserved += 1
        try:
            in_band = isinstance(self.authenticator, InBandAuthenticator)
            identity = _UNAUTHENTICATED
            if not in_band:
                try:
                    identity = self._authenticate(environ)
                except Unauthorized as exc:
                    self._report(exc)
                    return self._refuse(environ, start_response, prior, "401 Unauthorized", 1008, "unauthorized")
            acquired = acquire(environ, start_response, accept)
            try:
                self._serve(acquired, accept, identity, environ.get("REMOTE_ADDR", ""), router, in_band)
            finally:
                acquired.release()
        finally:
            self._reserved -= 1
        return []

    def _authenticate(self, environ: dict[str, Any]) -> Identity:
        try:
            if type(self.authenticator) is AnonymousAuthenticator:
                return Identity("anonymous")  # reads nothing: no Request to build
            with Timeout(self.config.auth_timeout, Unauthorized("authentication timed out")):
                identity = self.authenticator.authenticate(Request(environ))
        except Unauthorized:
            raise
        except Exception as exc:
            self._report(exc)
            raise Unauthorized("authenticator failed") from exc
        if not isinstance(identity, Identity):
            raise Unauthorized("authenticator returned no identity")
        return identity

    def _refuse(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        prior: bool,
        status: str,
        code: int,
        text: str,
    ) -> Iterable[bytes]:
        if not prior:
            return _send_refusal(start_response, refusal(status, text))
        # gevent-websocket sent the 101 already: refuse with a close frame (SPEC section 4).
        acquired = acquire(environ, start_response, None)
        try:
            acquired.sock.sendall(close_frame(code, text))
        except OSError:
            pass
        finally:
            acquired.release()
        return []

    # ------------------------------------------------------------------ one session

    def _serve(
        self,
        acquired: Acquired,
        accept: Accept | None,
        identity: Identity,
        remote_addr: str,
        router: Router[Handler],
        in_band: bool,
    ) -> None:
        config = self.config
        conn = Connection(
            acquired.sock,
            read_limit=config.read_limit,
            write_timeout=config.write_timeout,
            heartbeat_interval=config.heartbeat_interval,
            pong_timeout=config.pong_timeout,
            send_queue_size=config.send_queue_size,
            backpressure=config.backpressure,
            extensions=accept.extensions if accept is not None else [],
            stats=self._stats,
        )
        session = Session(
            self._new_id(),
            identity,
            remote_addr,
            conn,
            self.codec,
            node_id=config.node_id,
            report_error=self._report,
            debug=config.debug,
            caller=self._caller,
        )
        self._stats.connections_total += 1
        self._live += 1
        self._idle.clear()
        state = _SessionState(in_band)

        def on_open() -> None:
            if in_band:
                state.auth_timer = gevent.get_hub().loop.timer(config.auth_timeout or 1e9)
                state.auth_timer.start(
                    session._close,
                    Closing(Initiator.ERROR, 1008, "authentication timeout", flush=False),
                )
                return
            state.registered = self._register(session)

        def on_message(payload: str | bytes) -> None:
            if state.in_band:
                self._in_band_auth(session, payload, state)
            else:
                self._dispatch(session, payload, router)

        try:
            conn.run(acquired.pending, on_message, on_open)
        finally:
            if state.auth_timer is not None:
                state.auth_timer.stop()
            self._end(session, conn.outcome(), state.registered)

    def _register(self, session: Session) -> bool:
        """Put a session in the hub and presence, run on_connect; False if it was rejected."""
        if self.config.session_policy == "replace":
            self._replace_older(session)
        self._hub.add(session)
        try:
            self.presence.register(session.info())
        except Exception as exc:
            # Presence down (a Redis restart): the session still works locally; the lease
            # renewer registers every local session again once presence answers.
            self._presence_stale = True
            self._report(exc, session)
        try:
            for hook in self._on_connect:
                hook(session)
        except Exception as exc:
            self._unregister(session)
            self._report(exc, session)
            code = 1008 if isinstance(exc, Unauthorized) else 1011
            session._close(Closing(Initiator.SERVER, code, "rejected", flush=True))
            return False
        if self.events is not None:
            self.events.enter(session)
        return True

    def _unregister(self, session: Session) -> None:
        self._hub.remove(session)
        try:
            self.presence.unregister(session.id)
        except Exception as exc:
            self._report(exc, session)

    def _replace_older(self, session: Session) -> None:
        """``session_policy="replace"``: close the identity's other sessions, here and elsewhere."""
        identity = session.identity
        older = [s for s in self._hub.of_identity(identity.tenant_id, identity.id) if s is not session]
        kick_local(older, 4001, "replaced by a new session", Initiator.REPLACED)
        if self._started:
            try:
                self._publish_identity_nodes(
                    identity.tenant_id,
                    identity.id,
                    BrokerPayload(
                        "kick",
                        self.node_id,
                        tenant=identity.tenant_id,
                        identity=identity.id,
                        code=4001,
                        reason="replaced by a new session",
                    ),
                )
            except Exception as exc:
                self._report(exc, session)

    def _end(self, session: Session, outcome: Outcome, registered: bool) -> None:
        initiator, code, reason, error = outcome
        if registered:
            self._unregister(session)
        expected = initiator in (Initiator.SERVER, Initiator.SHUTDOWN, Initiator.REPLACED) or (
            initiator is Initiator.CLIENT and code in _EXPECTED_CLIENT_CODES
        )
        info = DisconnectInfo(error, code, reason, expected, initiator)
        session._finish(info)
        if error is not None and not expected:
            self._report(error, session)
        if registered and self.events is not None:
            self.events.leave(session, info)
        if registered:
            for hook in self._on_disconnect:
                try:
                    hook(session, info)
                except Exception as exc:
                    self._report(exc, session)
        self._live -= 1
        if self._live == 0:
            self._idle.set()

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, session: Session, payload: str | bytes, router: Router[Handler]) -> None:
        """Decode, route, run the chain, answer: one client message, in the reader greenlet."""
        msg_id: Any = None
        try:
            msg = self.codec.decode(payload)
            msg_id = msg.id
            handler = router.resolve(msg.route)
            events = self.events
            if events is not None and events.wants(msg.route):
                events.message(session, msg)
                if handler is None:
                    return  # the backend answers this route
            if handler is None:
                raise UnknownRoute(msg.route)
            result = handler(session, msg)
            if result is not None and msg_id is not None:
                session.send_message(reply_message(msg_id, result))
        except SessionClosed:
            return
        except RealtimeError as exc:
            if not getattr(exc, "_reported", False) and not isinstance(exc, HandlerError):
                self._report(exc, session)
            self._answer_error(session, msg_id, exc.wire_code, exc.message)
        except Exception as exc:
            self._report(exc, session)
            text = f"handler error: {exc!r}" if self.config.debug else "handler error"
            self._answer_error(session, msg_id, "handler_error", text)

    def _answer_error(self, session: Session, msg_id: Any, code: str, text: str) -> None:
        try:
            session.send_message(error_message(msg_id, code, text))
        except RealtimeError:
            pass  # closing or full: the client is gone or too slow to care

    def _in_band_auth(self, session: Session, payload: str | bytes, state: _SessionState) -> None:
        msg_id: Any = None
        authenticator = self.authenticator
        assert isinstance(authenticator, InBandAuthenticator)
        try:
            msg = self.codec.decode(payload)
            msg_id = msg.id
            if msg.route != AUTH_ROUTE:
                raise Unauthorized("the first message must be rt.auth")
            with Timeout(self.config.auth_timeout, Unauthorized("authentication timed out")):
                identity = authenticator.verify(msg.data)
        except Exception as exc:
            if not isinstance(exc, Unauthorized):
                self._report(exc, session)
                exc = Unauthorized("authentication failed")
            self._report(exc, session)
            self._answer_error(session, msg_id, "unauthorized", exc.message)
            session._close(Closing(Initiator.ERROR, 1008, "unauthorized", flush=True))
            return
        if state.auth_timer is not None:
            state.auth_timer.stop()
            state.auth_timer = None
        state.in_band = False
        session.identity = identity
        state.registered = self._register(session)
        if state.registered and not session.closed:
            answer = {"session_id": session.id, "identity_id": identity.id}
            if msg_id is not None:
                session.send_message(reply_message(msg_id, answer))
            else:
                session.send_message(Message(REPLY_ROUTE, answer))

    # ------------------------------------------------------------------ delivery

    def _check_open(self) -> None:
        if self._closing:
            raise RealtimeClosed()

    def broadcast(self, route: str, data: Any = None) -> None:
        """Send to every session on every started node; the envelope is encoded once."""
        if not self._caller.in_hub_thread():
            return self._caller.call(self.broadcast, route, data)
        self._check_open()
        envelope = self.codec.encode(Message(route, data))
        deliver_local(self._hub.sessions(), envelope)
        if self._started:
            self.broker.publish(BROADCAST_TOPIC, encode_payload(BrokerPayload("broadcast", self.node_id, envelope)))

    def send_to_identity(self, tenant_id: str, identity_id: str, route: str, data: Any = None) -> None:
        """Send to every live session of an identity; raises `SessionClosed` when there is none."""
        if not self._caller.in_hub_thread():
            return self._caller.call(self.send_to_identity, tenant_id, identity_id, route, data)
        self._check_open()
        envelope = self.codec.encode(Message(route, data))
        local = self._hub.of_identity(tenant_id, identity_id)
        deliver_local(local, envelope)
        remote = self._publish_identity_nodes(
            tenant_id,
            identity_id,
            BrokerPayload("identity", self.node_id, envelope, tenant_id, identity_id),
        )
        if not local and not remote:
            raise SessionClosed(f"no live session for {tenant_id}/{identity_id}")

    def _publish_identity_nodes(self, tenant_id: str, identity_id: str, payload: BrokerPayload) -> int:
        """Publish ``payload`` to the topic of each other node presence names; how many nodes."""
        nodes = {info.node_id for info in self.presence.get_identity_sessions(tenant_id, identity_id)}
        nodes.discard(self.node_id)
        if not nodes:
            return 0
        return publish_to_nodes(self.broker, nodes, encode_payload(payload))

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
        return self._hub.sessions()

    def stats(self) -> dict[str, int]:
        counters = self._stats.as_dict()
        counters["connections"] = len(self._hub)
        counters["broker_reconnects"] = int(getattr(self.broker, "reconnects", 0))
        return counters

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Subscribe this node to the broker and start renewing its presence lease."""
        if self._started:
            raise AlreadyStarted()
        self._check_open()
        self._freeze()
        self._started = True
        self._subscriptions.append(self.broker.subscribe(BROADCAST_TOPIC, self._on_broker_message))
        self._subscriptions.append(self.broker.subscribe(node_topic(self.node_id), self._on_broker_message))
        self.presence.renew(self.node_id, self.config.presence_ttl)
        self._renewer = gevent.spawn(self._renew_forever)

    def _on_broker_message(self, raw: bytes) -> None:
        handle_broker_message(self._hub, self.node_id, raw, self._broker_error)

    def _broker_error(self, error: BaseException) -> None:
        self._stats.broker_errors += 1
        self._report(error, None)

    def _renew_forever(self) -> None:
        """Renew this node's presence lease every third of its ttl.

        While presence fails, retry every second; once it answers again, register every
        local session again (idempotent), since a restarted Redis has forgotten them.
        """
        ttl = self.config.presence_ttl
        period = ttl / 3
        while not self._closing:
            gevent.sleep(min(1.0, period) if self._presence_stale else period)
            try:
                self.presence.renew(self.node_id, ttl)
                if self._presence_stale:
                    for session in self._hub.sessions():
                        self.presence.register(session.info())
                    self._presence_stale = False
                    self.logger.info("rtgevent: presence renewed again; local sessions registered")
            except Exception as exc:
                if not self._presence_stale:
                    self._report(exc, None)
                self._presence_stale = True

    def shutdown(self, timeout: float | None = None) -> None:
        """Refuse new upgrades, close every session with 1001, wait for their hooks, close up.

        Idempotent: a second call waits for the first to finish.  Afterwards the
        delivery methods raise `RealtimeClosed`.
        """
        if self._closing:
            self._closed.wait(timeout if timeout is not None else self.config.shutdown_timeout)
            return
        self._closing = True
        try:
            wait = timeout if timeout is not None else self.config.shutdown_timeout
            current = getcurrent()
            mine = 0
            for session in self._hub.sessions():
                if session._conn is not None and session._conn.reader is current:
                    mine += 1
                session._close(Closing(Initiator.SHUTDOWN, 1001, "server shutdown", flush=True))
            if mine == 0:
                self._idle.wait(wait)
            for sub in self._subscriptions:
                try:
                    sub.close()
                except Exception as exc:
                    self._report(exc, None)
            if self._renewer is not None:
                self._renewer.kill(block=False)
            closers = [self.presence.close, self.broker.close]
            if self.events is not None:
                closers.insert(0, self.events.close)
            for closer in closers:
                try:
                    closer()
                except Exception as exc:
                    self._report(exc, None)
        finally:
            self._closed.set()
            instances.discard(self)

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def started(self) -> bool:
        return self._started

    def _shared_state(self) -> bool:
        return not isinstance(self.broker, LocalBroker) or not isinstance(self.presence, MemoryPresence)

    def ensure_started(self) -> None:
        """Start this node unless it is started (the lazy start of the Flask and gunicorn integrations).

        Called on a worker's first request, never before a fork: a broker connection made
        in the gunicorn master would be shared by every worker.
        """
        if not self._started and not self._closing:
            self.start()

    def blueprint(self, name: str = "rtgevent", url_prefix: str | None = "/ws") -> Blueprint:
        """A Flask blueprint: the WebSocket at ``url_prefix``, the JS client at ``<url_prefix>/rtgevent.js``."""
        from .flask import blueprint

        return blueprint(self, name=name, url_prefix=url_prefix)

    def init_app(self, app: Flask, path: str = "/ws") -> Any:
        """Mount on a Flask app, extension style; the state goes in ``app.extensions["rtgevent"]``."""
        from .flask import init_app

        return init_app(self, app, path)

    def test_client(self, identity: Identity | None = None) -> Any:
        """A client that drives handlers without a socket (see `rtgevent.testing`)."""
        from .testing import TestClient

        return TestClient(self, identity or Identity("test"))


class _SessionState:
    __slots__ = ("auth_timer", "in_band", "registered")

    def __init__(self, in_band: bool) -> None:
        self.in_band = in_band
        self.registered = False
        self.auth_timer: Any = None


def _check_not_reserved(kind: str, name: str) -> None:
    if name.startswith(RESERVED_PREFIX):
        raise InvalidOption(kind, f"{name!r}: routes starting with {RESERVED_PREFIX!r} are reserved for the framework")


def _send_refusal(start_response: Callable[..., Any], result: Refusal) -> list[bytes]:
    start_response(result.status, list(result.headers))
    return [result.body]

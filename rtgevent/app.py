"""The socket-free core: registration, dispatch of one message, a session's start and end.

Split from the WSGI side the way Flask splits ``sansio/app.py`` from its ``Flask`` class:
`App` knows routes, hooks and middleware, decodes and answers one client message, and
registers and ends a session (hub, presence, hooks, backend events), but it never sees a
socket or a WSGI environ.  `Realtime` subclasses it and adds admission, the frame engine
and the cluster; `rtgevent.testing.TestClient` drives the same public methods with no
socket at all, so what a test client checks is what a WebSocket client gets.
"""

from __future__ import annotations

import functools
import logging
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from gevent import Timeout
from gevent.event import Event

from .auth import Authenticator
from .broker.base import Broker
from .channels import ChannelOptions, check_channel
from .codec import Codec
from .config import Config
from .delivery import Fanout
from .errors import (
    AlreadyStarted,
    BadMessage,
    HandlerError,
    InvalidOption,
    RealtimeError,
    SessionClosed,
    Unauthorized,
    UnknownRoute,
    quote,
)
from .history.base import History, Position, Recovery
from .ids import IdGenerator
from .lifecycle import Closing, Ending, Lifecycle, disconnect_info
from .lifecycle import Event as LifeEvent
from .message import (
    AUTH_ROUTE,
    PERSONAL_ROUTE,
    REPLY_ROUTE,
    RESERVED_PREFIX,
    SUBSCRIBE_ROUTE,
    UNSUBSCRIBE_ROUTE,
    Message,
    error_message,
    reply_message,
)
from .middleware import Handler, Middleware, build_chain
from .presence.base import Presence
from .rooms import Rooms
from .router import Router
from .session import ConnectHook, DisconnectHook, ErrorHook, Session, Transport
from .stats import Stats
from .streams import identity_stream
from .threadsafe import HubCaller
from .types import DisconnectInfo, Identity, Initiator, SessionInfo

if TYPE_CHECKING:
    from .events import KombuEvents

__all__ = ["App", "setupmethod"]

P = ParamSpec("P")
R = TypeVar("R")
A = TypeVar("A", bound="App")
HandlerT = TypeVar("HandlerT", bound=Handler)
ConnectHookT = TypeVar("ConnectHookT", bound=ConnectHook)
DisconnectHookT = TypeVar("DisconnectHookT", bound=DisconnectHook)
ErrorHookT = TypeVar("ErrorHookT", bound=ErrorHook)
#: ``@rt.on_subscribe``: ``fn(session, channel)`` returns to allow a client's subscription, raises to refuse
SubscribeHook = Callable[[Session, str], None]
SubscribeHookT = TypeVar("SubscribeHookT", bound=SubscribeHook)

#: errors a client causes; logged at debug level when no on_error hook is registered
_CLIENT_ERRORS = (BadMessage, UnknownRoute, Unauthorized)
#: the longest text an ``rt.error`` carries (characters)
_MAX_ERROR_TEXT = 1000


def setupmethod(fn: Callable[Concatenate[A, P], R]) -> Callable[Concatenate[A, P], R]:
    """Refuse a registration once the application serves (Flask's ``setupmethod``).

    The chain of middleware is baked into every handler when serving starts: a route or
    hook added later would silently never run, so it raises `AlreadyStarted` instead.
    """
    what = fn.__name__

    @functools.wraps(fn)
    def guarded(self: A, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.serving:
            raise AlreadyStarted(f"cannot call {what}() once the application is serving")
        return fn(self, *args, **kwargs)

    return guarded


class App:
    """Routes, hooks, middleware and the life of one session, without sockets."""

    def __init__(
        self,
        config: Config,
        *,
        authenticator: Authenticator,
        codec: Codec,
        fanout: Fanout,
        logger: logging.Logger,
        id_generator: IdGenerator,
        events: KombuEvents | None,
        stats: Stats,
        caller: HubCaller,
        presence_failed: Callable[[], None],
        rooms: Rooms,
    ) -> None:
        self.config = config
        self.authenticator = authenticator
        self.codec = codec
        self.logger = logger
        #: backend event stream (seed 003): enter / message / leave, or None
        self.events = events
        self.fanout = fanout
        assert fanout.hub is not None, "a gateway's fanout has a hub"
        self.hub = fanout.hub
        self.counters = stats
        self._new_id = id_generator
        self._caller = caller
        self._presence_failed = presence_failed
        self._router: Router[Handler] = Router()
        self._middleware: list[Middleware] = []
        self._dispatch_router: Router[Handler] | None = None
        self._on_connect: list[ConnectHook] = []
        self._on_disconnect: list[DisconnectHook] = []
        self._on_error: list[ErrorHook] = []
        self._on_subscribe: list[SubscribeHook] = []
        #: this node's channels: every session's channel host (rt.join / rt.leave in our codec)
        self.rooms = rooms
        rooms.codec = codec
        rooms.presence_failed = presence_failed
        #: sessions between admission and their end (rejected ones included)
        self._live = 0
        self._idle = Event()
        self._idle.set()

    @property
    def node_id(self) -> str:
        return self.config.node_id

    # ------------------------------------------------------------------ the stores

    @property
    def broker(self) -> Broker:
        return self.fanout.broker

    @broker.setter
    def broker(self, broker: Broker) -> None:
        """Replace the broker before the node starts (``rtgevent serve --broker`` does)."""
        if self.fanout.publishing:
            raise AlreadyStarted("cannot replace the broker of a started node")
        self.fanout.broker = broker

    @property
    def presence(self) -> Presence:
        return self.fanout.presence

    @presence.setter
    def presence(self, presence: Presence) -> None:
        """Replace the presence store before the node starts (``rtgevent serve --presence`` does)."""
        if self.fanout.publishing:
            raise AlreadyStarted("cannot replace the presence store of a started node")
        self.fanout.presence = presence

    @property
    def history(self) -> History:
        """Where streams are kept (SPEC section 14): `MemoryHistory` unless one was given."""
        return self.fanout.history

    @history.setter
    def history(self, history: History) -> None:
        """Replace the history store before the node starts (``rtgevent serve --history`` does)."""
        if self.fanout.publishing:
            raise AlreadyStarted("cannot replace the history store of a started node")
        self.fanout.history = history
        if self.fanout.streams is not None:
            self.fanout.streams.history = history

    # ------------------------------------------------------------------ registration

    @property
    def serving(self) -> bool:
        """True once the first request was served (or a test client made): registration is over."""
        return self._dispatch_router is not None

    @setupmethod
    def route(self, route: str) -> Callable[[HandlerT], HandlerT]:
        """Register a handler for exactly ``route`` (highest priority)."""
        _check_not_reserved("route", route)

        def decorator(fn: HandlerT) -> HandlerT:
            self._router.add_route(route, fn)
            return fn

        return decorator

    @setupmethod
    def prefix(self, prefix: str) -> Callable[[HandlerT], HandlerT]:
        """Register a handler for every route starting with ``prefix``; the longest wins."""
        _check_not_reserved("prefix", prefix)

        def decorator(fn: HandlerT) -> HandlerT:
            self._router.add_prefix(prefix, fn)
            return fn

        return decorator

    @setupmethod
    def on_message(self, fn: HandlerT) -> HandlerT:
        """Register the fallback handler, for messages no route or prefix matched."""
        self._router.fallback = fn
        return fn

    @setupmethod
    def use(self, *middleware: Middleware) -> None:
        """Append middleware; the first registered is the outermost."""
        self._middleware.extend(middleware)

    @setupmethod
    def on_connect(self, fn: ConnectHookT) -> ConnectHookT:
        """``fn(session)`` after hub and presence registration; raising rejects the session."""
        self._on_connect.append(fn)
        return fn

    @setupmethod
    def on_disconnect(self, fn: DisconnectHookT) -> DisconnectHookT:
        """``fn(session, info)`` once, after the session left hub and presence."""
        self._on_disconnect.append(fn)
        return fn

    @setupmethod
    def on_error(self, fn: ErrorHookT) -> ErrorHookT:
        """``fn(error, session_or_None)``: without one, errors go to the logger."""
        self._on_error.append(fn)
        return fn

    @setupmethod
    def on_subscribe(self, fn: SubscribeHookT) -> SubscribeHookT:
        """``fn(session, channel)`` decides a client's ``rt.subscribe``: return to allow, raise to refuse.

        Without one every client subscription is refused (``rt.error unauthorized``);
        subscriptions made by the server (`Session.subscribe`) are not asked.
        """
        self._on_subscribe.append(fn)
        return fn

    @setupmethod
    def channel_namespace(self, prefix: str, options: ChannelOptions) -> None:
        """Options for every channel starting with ``prefix`` (the longest prefix wins)."""
        self.rooms.namespaces.add(prefix, options)

    # ------------------------------------------------------------------ channel presence

    def channel_members(self, channel: str) -> list[SessionInfo]:
        """The channel's members on every live node, oldest first (SPEC section 13).

        From the presence store, leased per node: a node that dies takes its members out
        within ``presence_ttl``.  Raises `InvalidOption` unless the channel's namespace keeps
        presence; callable from native threads.
        """
        if not self._caller.in_hub_thread():
            return self._caller.call(self.channel_members, channel)
        self._check_open()
        return self.presence.channel_members(self._presence_channel(channel))

    def channel_count(self, channel: str) -> int:
        """How many members the channel has on every live node (what `channel_members` lists)."""
        if not self._caller.in_hub_thread():
            return self._caller.call(self.channel_count, channel)
        self._check_open()
        return self.presence.channel_count(self._presence_channel(channel))

    def _presence_channel(self, channel: str) -> str:
        check_channel(channel)
        if not self.rooms.namespaces.options(channel).presence:
            raise InvalidOption(
                "channel",
                f"{quote(channel)} is in a namespace without presence: "
                "register it with rt.channel_namespace(prefix, ChannelOptions(presence=True))",
            )
        return channel

    def _check_open(self) -> None:
        """Raise `RealtimeClosed` once the application is closed; the core alone never is."""

    def freeze(self) -> Router[Handler]:
        """End registration: bake the middleware into every handler, once; the dispatch router."""
        router = self._dispatch_router
        if router is None:
            middleware = tuple(self._middleware)
            router = self._router.map(lambda handler: build_chain(middleware, handler))
            self._dispatch_router = router
        return router

    # ------------------------------------------------------------------ errors

    def report(self, error: BaseException, session: Session | None = None) -> None:
        """Give ``error`` to the on_error hooks, or to the logger when there is none."""
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

    # ------------------------------------------------------------------ one session

    def new_session(self, transport: Transport, identity: Identity, remote_addr: str) -> Session:
        """A session over ``transport``, counted live until `end_session`."""
        session = Session(
            self._new_id(),
            identity,
            remote_addr,
            transport,
            self.codec,
            node_id=self.config.node_id,
            report_error=self.report,
            debug=self.config.debug,
            caller=self._caller,
            channel_host=self.rooms,
        )
        self.counters.connections_total += 1
        self._live += 1
        self._idle.clear()
        return session

    def open_session(self, session: Session, life: Lifecycle, *, catch_up: bool = True) -> bool:
        """Put a session in the hub and presence and run on_connect; False if it was rejected.

        With personal streams (``Config.identity_history_size``) the session then gets what
        it missed since ``session.resume`` (or nothing, if it brought no position), and
        ``rt.personal`` saying where the stream stands, before any newer message; with
        ``catch_up=False`` the caller does that (`catch_up`) once it answered ``rt.auth``.
        """
        streams = self.fanout.streams if self.config.identity_history_size else None
        stream = identity_stream(session.identity.tenant_id, session.identity.id)
        if streams is not None:
            streams.begin(stream, session)
        self.hub.add(session)
        try:
            # the login number orders the identity's sessions cluster-wide (replace policy);
            # a store that gives none counts as one that could not register
            session.sequence = self.fanout.presence.register(session.info()) or 0
        except Exception as exc:
            # Presence down (a Redis restart): the session still works locally; the lease
            # renewer registers every local session again once presence answers.
            session.sequence = 0
            self._presence_failed()
            self.report(exc, session)
        try:
            for hook in self._on_connect:
                hook(session)
        except Exception as exc:
            self._unregister(session)
            self.report(exc, session)
            life.advance(LifeEvent.REJECTED)
            code = 1008 if isinstance(exc, Unauthorized) else 1011
            session.request_close(Closing(Initiator.SERVER, code, "rejected", flush=True))
            return False
        if catch_up:
            self.catch_up(session)
        if self.config.session_policy == "replace":
            # after on_connect: a login that is rejected replaces nobody
            self._replace_older(session)
        life.advance(LifeEvent.REGISTERED)
        if self.events is not None:
            self.events.enter(session)
        return True

    def catch_up(self, session: Session) -> None:
        """The personal stream: what the session missed since ``session.resume``, then ``rt.personal``."""
        streams = self.fanout.streams if self.config.identity_history_size else None
        if streams is None:
            return
        stream = identity_stream(session.identity.tenant_id, session.identity.id)
        since = Position(*session.resume) if session.resume is not None else None
        recovery = streams.finish(stream, session, since, self.config.identity_history_size)
        try:
            session.send_message(Message(PERSONAL_ROUTE, _position_reply(recovery)))
        except RealtimeError:
            pass  # closing already

    def _unregister(self, session: Session) -> None:
        self.hub.remove(session)
        streams = self.fanout.streams
        if streams is not None and self.config.identity_history_size:
            stream = identity_stream(session.identity.tenant_id, session.identity.id)
            streams.abandon(stream, session)
            if not self.hub.of_identity(session.identity.tenant_id, session.identity.id):
                streams.forget(stream)
        try:
            self.fanout.presence.unregister(session.id)
        except Exception as exc:
            self.report(exc, session)

    def _replace_older(self, session: Session) -> None:
        """``session_policy="replace"``: only the identity's newest login stays, here and elsewhere."""
        try:
            self.fanout.replace_older(session)
        except Exception as exc:
            self.report(exc, session)

    def end_session(self, session: Session, ending: Ending, life: Lifecycle) -> DisconnectInfo:
        """The session is over: leave hub and presence, run on_disconnect; why it ended."""
        info = disconnect_info(ending)
        was_open = life.was_open
        life.advance(LifeEvent.ENDED)
        if was_open:
            self._unregister(session)  # presence: the session leaves every channel with it
        self.rooms.leave_all(session)  # then rt.leave: the others never see a member that left
        session.finish(info)
        if info.error is not None and not info.expected:
            self.report(info.error, session)
        if was_open:
            if self.events is not None:
                self.events.leave(session, info)
            for hook in self._on_disconnect:
                try:
                    hook(session, info)
                except Exception as exc:
                    self.report(exc, session)
        self._live -= 1
        if self._live == 0:
            self._idle.set()
        return info

    def close_sessions(self, closing: Closing) -> bool:
        """Ask every local session to close; True if the calling greenlet serves one of them."""
        mine = False
        for session in self.hub.sessions():
            mine = session.served_here() or mine
            session.request_close(closing)
        return mine

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until every session ended (its hooks included); False on timeout."""
        return bool(self._idle.wait(timeout))

    # ------------------------------------------------------------------ one message

    def receive(self, session: Session, payload: str | bytes, life: Lifecycle) -> None:
        """One client message, in the reader greenlet: in-band authentication or dispatch."""
        if life.authenticating:
            self.authenticate_in_band(session, payload, life)
        else:
            self.dispatch(session, payload)

    def dispatch(self, session: Session, payload: str | bytes) -> None:
        """Decode, route, run the chain, answer: one client message."""
        router = self._dispatch_router or self.freeze()
        msg_id: Any = None
        try:
            msg = self.codec.decode(payload)
            msg_id = msg.id
            if msg.route in (SUBSCRIBE_ROUTE, UNSUBSCRIBE_ROUTE):
                answer = self._client_channel(session, msg)
                if msg_id is not None:
                    session.send_message(reply_message(msg_id, answer))
                return
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
        except RealtimeError as exc:
            if isinstance(exc, SessionClosed) and session.closed:
                return  # this session is closing: nobody is left to answer
            # Any other SessionClosed (a send to an identity that is offline, to another
            # session) is the handler's failure like any other: answered and reported.
            if not isinstance(exc, HandlerError):
                self.report(exc, session)
            self._answer_error(session, msg_id, exc.wire_code, exc.client_text(self.config.debug))
        except Exception as exc:
            self.report(exc, session)
            text = f"handler error: {exc!r}" if self.config.debug else "handler error"
            self._answer_error(session, msg_id, "handler_error", text)

    def _client_channel(self, session: Session, msg: Message) -> dict[str, Any]:
        """``rt.subscribe`` / ``rt.unsubscribe`` from the client (SPEC section 13); the reply's data."""
        data = msg.data
        channel = data.get("channel") if isinstance(data, dict) else None
        try:
            check_channel(channel)
        except InvalidOption as exc:
            raise BadMessage(f"{msg.route} needs {{'channel': <name>}}: {exc.message}") from None
        assert isinstance(channel, str)
        if msg.route == UNSUBSCRIBE_ROUTE:
            session.unsubscribe(channel)
            return {"channel": channel}
        since = _since(data.get("since") if isinstance(data, dict) else None)
        recovery = None
        if channel not in session.channels:
            if not self._on_subscribe:
                raise Unauthorized(f"subscription to {quote(channel)} refused: no on_subscribe hook allows it")
            for hook in self._on_subscribe:
                try:
                    hook(session, channel)
                except Unauthorized:
                    raise
                except Exception as exc:
                    self.report(exc, session)
                    raise Unauthorized(f"subscription to {quote(channel)} refused") from None
            if session.closed:
                raise SessionClosed("session is closing")
            recovery = self.rooms.subscribe(session, channel, since)
        elif self.rooms.namespaces.options(channel).history_size:
            recovery = self.rooms.subscribe(session, channel, since)
        return {"channel": channel, **_position_reply(recovery)}

    def _answer_error(self, session: Session, msg_id: Any, code: str, text: str) -> None:
        if len(text) > _MAX_ERROR_TEXT:
            # client text is quoted short where it is put in (errors.quote); this bounds what
            # any other text (a debug repr, a codec's message) can add to one answer
            text = text[:_MAX_ERROR_TEXT] + "..."
        try:
            session.send_message(error_message(msg_id, code, text))
        except RealtimeError:
            pass  # closing or full: the client is gone or too slow to care

    def authenticate_in_band(self, session: Session, payload: str | bytes, life: Lifecycle) -> None:
        """The first message of an in-band session: ``rt.auth`` with a token, then registration."""
        msg_id: Any = None
        verify = getattr(self.authenticator, "verify", None)
        try:
            if verify is None:
                raise Unauthorized("the authenticator cannot verify in-band tokens")
            msg = self.codec.decode(payload)
            msg_id = msg.id
            if msg.route != AUTH_ROUTE:
                raise Unauthorized("the first message must be rt.auth")
            token = msg.data
            if isinstance(token, dict) and "token" in token:
                # {"token": ..., "since": {"offset", "epoch"}}: the personal stream's position too
                since = _since(token.get("since"))
                session.resume = (since.offset, since.epoch) if since is not None else None
                token = token["token"]
            with Timeout(self.config.auth_timeout, Unauthorized("authentication timed out")):
                identity = verify(token)
            if not isinstance(identity, Identity):
                raise Unauthorized("authenticator returned no identity")
        except Exception as exc:
            if not isinstance(exc, Unauthorized):
                self.report(exc, session)
                exc = Unauthorized("authentication failed")
            self.report(exc, session)
            life.advance(LifeEvent.REJECTED)
            self._answer_error(session, msg_id, "unauthorized", exc.message)
            session.request_close(Closing(Initiator.ERROR, 1008, "unauthorized", flush=True))
            return
        life.advance(LifeEvent.AUTHENTICATED)
        session.identity = identity
        if self.open_session(session, life, catch_up=False) and not session.closed:
            answer = {"session_id": session.id, "identity_id": identity.id}
            if msg_id is not None:
                session.send_message(reply_message(msg_id, answer))
            else:
                session.send_message(Message(REPLY_ROUTE, answer))
            self.catch_up(session)


def personal_since(query: str) -> tuple[int, str] | None:
    """The ``since=<offset>:<epoch>`` query parameter of a reconnecting client, or None.

    A malformed one is ignored: the client then gets ``recovered: false`` and reloads.
    """
    for value in urllib.parse.parse_qs(query, max_num_fields=32).get("since", [])[:1]:
        offset, sep, epoch = value.partition(":")
        if sep and offset.isascii() and offset.isdigit() and len(offset) < 20 and len(epoch) <= 64:
            return int(offset), epoch
    return None


def _since(value: object) -> Position | None:
    """A client's ``since`` (``{"offset": int, "epoch": str}``), or None; anything else is a bad message."""
    if value is None:
        return None
    offset = value.get("offset") if isinstance(value, dict) else None
    epoch = value.get("epoch") if isinstance(value, dict) else None
    if isinstance(offset, str) and offset.isascii() and offset.isdigit() and len(offset) < 20:
        offset = int(offset)  # the offset as the envelope's metadata spells it
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < 1 << 63:
        raise BadMessage("since needs {'offset': <int >= 0>, 'epoch': <str>}")
    if not isinstance(epoch, str) or len(epoch) > 64:
        raise BadMessage("since needs {'offset': <int >= 0>, 'epoch': <str>}")
    return Position(offset, epoch)


def _position_reply(recovery: Recovery | None) -> dict[str, Any]:
    """Where a stream stands for the client, and what it got back (SPEC section 14).

    Without history a stream has no offset and nothing is recovered.
    """
    if recovery is None:
        return {"offset": 0, "epoch": "", "recovered": False, "missed": 0}
    return {
        "offset": recovery.offset,
        "epoch": recovery.epoch,
        "recovered": recovery.complete,
        "missed": len(recovery.publications),
    }


def _check_not_reserved(kind: str, name: str) -> None:
    if name.startswith(RESERVED_PREFIX):
        raise InvalidOption(kind, f"{name!r}: routes starting with {RESERVED_PREFIX!r} are reserved for the framework")

"""This node's channels: who is subscribed here, and one broker subscription per channel.

`Rooms` is the `ChannelHost` of every session on the node.  It checks a subscription (the
name, ``Config.max_channels_per_session``, the namespace's ``max_subscribers``), keeps the
membership in the `Hub`, and holds exactly one broker subscription per channel while the
channel has a local subscriber: the first local subscriber subscribes the node (and waits
until the broker confirmed it, so nothing published afterwards is missed), the last one to
leave unsubscribes it.  A node that is not started (one process, in-process broker)
delivers its channels locally and subscribes nothing; `activate` subscribes the channels
that already have members when the node starts.  The broker re-subscribes its topics
itself after a reconnect.

A subscription that is still being confirmed when a second session joins makes the second
one wait for the same confirmation; one whose channel emptied meanwhile is dropped as soon
as it is confirmed.

History (namespace ``history_size``): a joining session is made to catch up (`Streams`)
between joining the hub and the broker's confirmation on one side and its first live
publication on the other: what it missed after its ``since`` position is read from history
once the node is sure to receive every newer publication, so nothing falls between.

Namespace options: with ``presence`` a session that joins is made a member in the presence
store (`Presence.channel_join`, cluster-wide, leased with this node) and one that
unsubscribes leaves it (`Presence.channel_leave`); a closing session leaves every channel
through `Presence.unregister`, which the core calls before `leave_all`.  With ``join_leave``
the channel's other subscribers, on every node, get ``rt.join`` / ``rt.leave`` (after
presence was written, so a member list asked for on receipt already agrees).  A presence or
broker failure is reported, never raised to the subscriber: the subscription itself holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gevent.event import Event

from .broker.base import BrokerHandler, Subscription
from .channels import Namespaces, channel_topic, check_channel
from .codec import Codec, JSONCodec
from .config import Config
from .delivery import Fanout
from .errors import LimitExceeded
from .history.base import Position, Recovery
from .message import Message
from .streams import channel_stream

if TYPE_CHECKING:
    from .session import Session

__all__ = ["JOIN_ROUTE", "LEAVE_ROUTE", "Rooms"]

ErrorSink = Callable[[BaseException], None]

#: what a channel's other subscribers get when a session comes or goes (namespace ``join_leave``)
JOIN_ROUTE = "rt.join"
LEAVE_ROUTE = "rt.leave"

#: how long a session joining a channel waits for a subscription another one started
JOIN_WAIT = 10.0


class _Topic:
    """A channel's broker subscription.  ``pending`` is what a second joiner waits on while the
    broker confirms it; it is set and dropped once confirmed (or failed): a node may hold tens
    of thousands of channels, and only those being confirmed right now need an event.
    """

    __slots__ = ("pending", "subscription")

    def __init__(self) -> None:
        self.pending: Event | None = Event()
        self.subscription: Subscription | None = None

    @property
    def ready(self) -> bool:
        return self.pending is None

    def confirmed(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.set()


class Rooms:
    """The channels of one node; see the module docstring."""

    def __init__(
        self,
        config: Config,
        fanout: Fanout,
        namespaces: Namespaces,
        handler: BrokerHandler,
        report: ErrorSink,
        codec: Codec | None = None,
    ) -> None:
        assert fanout.hub is not None, "a gateway's fanout has a hub"
        #: encodes rt.join / rt.leave (the core sets its own)
        self.codec: Codec = codec if codec is not None else JSONCodec()
        #: told when a presence write failed, so presence is retried soon (the core sets the node's)
        self.presence_failed: Callable[[], None] = _nothing
        self._config = config
        self._fanout = fanout
        self._hub = fanout.hub
        self.namespaces = namespaces
        self._handler = handler
        self._report = report
        self._topics: dict[str, _Topic] = {}

    # ------------------------------------------------------------------ ChannelHost

    def subscribe(self, session: Session, channel: str, since: Position | None = None) -> Recovery | None:
        """Join ``channel``; for a channel with history, what the session got back (see `join`)."""
        check_channel(channel)
        options = self.namespaces.options(channel)
        streams = self._fanout.streams if options.history_size else None
        stream = channel_stream(channel)
        joining = channel not in session.channels
        if joining:
            if len(session.channels) >= self._config.max_channels_per_session:
                raise LimitExceeded(
                    "max_channels_per_session", f"a session may be in {self._config.max_channels_per_session} channels"
                )
            bound = self.namespaces.options(channel).max_subscribers
            if bound is not None and self._hub.channel_size(channel) >= bound:
                raise LimitExceeded("max_subscribers", f"the channel has {bound} subscribers on this node")
            if streams is not None:
                streams.begin(stream, session)  # what arrives from now on is kept until it caught up
            self._hub.join(session, channel)
            session.joined(channel)
        self._open(channel)
        recovery = None
        if streams is not None:
            if not joining:
                # already live here: nothing to replay, and nothing lost in this epoch
                position = streams.history.position(stream)
                same = since is not None and since.epoch == position.epoch
                recovery = Recovery([], position.offset, position.epoch, same)
            elif channel in session.channels:
                # subscribed to live publications first, history read second: nothing falls between
                recovery = streams.finish(stream, session, since, options.history_size)
        if joining and channel in session.channels:  # not left (or closed) while the broker confirmed
            self._announce(session, channel, joined=True, presence=True)
        return recovery

    def unsubscribe(self, session: Session, channel: str) -> None:
        self._leave(session, channel, presence=True)

    # ------------------------------------------------------------------ the node's side

    def leave_all(self, session: Session) -> None:
        """A session ended: it leaves every channel it was in.

        Presence is not asked once per channel: `Presence.unregister`, which the core calls
        first, took the session out of all of them in one write.
        """
        for channel in session.channels:
            self._leave(session, channel, presence=False)

    def activate(self) -> None:
        """The node started: subscribe every channel that has local members already."""
        for channel in self._hub.channels():
            self._open(channel)

    def subscribed(self) -> list[str]:
        """The channels this node holds a broker subscription for (tests and operators)."""
        return [channel for channel, topic in self._topics.items() if topic.subscription is not None]

    def _leave(self, session: Session, channel: str, *, presence: bool) -> None:
        if channel not in session.channels:
            return
        session.left(channel)
        streams = self._fanout.streams
        if streams is not None:
            streams.abandon(channel_stream(channel), session)
        if self._hub.leave(session, channel):
            self._close(channel)
            if streams is not None:
                streams.forget(channel_stream(channel))
        self._announce(session, channel, joined=False, presence=presence)

    def _announce(self, session: Session, channel: str, *, joined: bool, presence: bool) -> None:
        """Presence, then rt.join / rt.leave to the others, as the channel's namespace asks."""
        options = self.namespaces.options(channel)
        if options.presence and presence:
            store = self._fanout.presence
            try:
                if joined:
                    store.channel_join(channel, session.info())
                else:
                    store.channel_leave(channel, session.id)
            except Exception as exc:
                # the subscription holds; a RedisPresence writes the membership (or removes
                # it) by itself once Redis answers again
                self.presence_failed()
                session.report(exc)
        if options.join_leave:
            data = {"channel": channel, "session_id": session.id, "identity_id": session.identity.id}
            route = JOIN_ROUTE if joined else LEAVE_ROUTE
            try:
                envelope = self.codec.encode(Message(route, data, metadata={"channel": channel}))
                self._fanout.publish(channel, envelope, exclude=session.id)
            except Exception as exc:
                session.report(exc)

    def _open(self, channel: str) -> None:
        topic = self._topics.get(channel)
        if topic is not None:
            if topic.pending is not None:
                topic.pending.wait(JOIN_WAIT)
            return
        if not self._fanout.publishing:
            return  # not started: local delivery only, `activate` subscribes at start
        topic = self._topics[channel] = _Topic()
        try:
            topic.subscription = self._fanout.broker.subscribe(channel_topic(channel), self._handler)
        except Exception as exc:  # a closed broker: local delivery still works
            self._report(exc)
        finally:
            topic.confirmed()
        if topic.subscription is None or not self._hub.channel_size(channel):
            self._drop(channel)

    def _close(self, channel: str) -> None:
        topic = self._topics.get(channel)
        if topic is not None and topic.ready:
            self._drop(channel)
        # still being confirmed: `_open` drops it once confirmed, seeing the channel empty

    def _drop(self, channel: str) -> None:
        topic = self._topics.pop(channel, None)
        if topic is not None and topic.subscription is not None:
            try:
                topic.subscription.close()
            except Exception as exc:
                self._report(exc)


def _nothing() -> None:
    pass

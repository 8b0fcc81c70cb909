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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gevent.event import Event

from .broker.base import BrokerHandler, Subscription
from .channels import Namespaces, channel_topic, check_channel
from .config import Config
from .delivery import Fanout
from .errors import LimitExceeded

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Rooms"]

ErrorSink = Callable[[BaseException], None]

#: how long a session joining a channel waits for a subscription another one started
JOIN_WAIT = 10.0


class _Topic:
    __slots__ = ("ready", "subscription")

    def __init__(self) -> None:
        self.ready = Event()
        self.subscription: Subscription | None = None


class Rooms:
    """The channels of one node; see the module docstring."""

    def __init__(
        self,
        config: Config,
        fanout: Fanout,
        namespaces: Namespaces,
        handler: BrokerHandler,
        report: ErrorSink,
    ) -> None:
        assert fanout.hub is not None, "a gateway's fanout has a hub"
        self._config = config
        self._fanout = fanout
        self._hub = fanout.hub
        self.namespaces = namespaces
        self._handler = handler
        self._report = report
        self._topics: dict[str, _Topic] = {}

    # ------------------------------------------------------------------ ChannelHost

    def subscribe(self, session: Session, channel: str) -> None:
        check_channel(channel)
        if channel not in session.channels:
            if len(session.channels) >= self._config.max_channels_per_session:
                raise LimitExceeded(
                    "max_channels_per_session", f"a session may be in {self._config.max_channels_per_session} channels"
                )
            bound = self.namespaces.options(channel).max_subscribers
            if bound is not None and self._hub.channel_size(channel) >= bound:
                raise LimitExceeded("max_subscribers", f"the channel has {bound} subscribers on this node")
            self._hub.join(session, channel)
            session.joined(channel)
        self._open(channel)

    def unsubscribe(self, session: Session, channel: str) -> None:
        session.left(channel)
        if self._hub.leave(session, channel):
            self._close(channel)

    # ------------------------------------------------------------------ the node's side

    def leave_all(self, session: Session) -> None:
        """A session ended: it leaves every channel it was in."""
        for channel in session.channels:
            self.unsubscribe(session, channel)

    def activate(self) -> None:
        """The node started: subscribe every channel that has local members already."""
        for channel in self._hub.channels():
            self._open(channel)

    def subscribed(self) -> list[str]:
        """The channels this node holds a broker subscription for (tests and operators)."""
        return [channel for channel, topic in self._topics.items() if topic.subscription is not None]

    def _open(self, channel: str) -> None:
        topic = self._topics.get(channel)
        if topic is not None:
            if not topic.ready.is_set():
                topic.ready.wait(JOIN_WAIT)
            return
        if not self._fanout.publishing:
            return  # not started: local delivery only, `activate` subscribes at start
        topic = self._topics[channel] = _Topic()
        try:
            topic.subscription = self._fanout.broker.subscribe(channel_topic(channel), self._handler)
        except Exception as exc:  # a closed broker: local delivery still works
            self._report(exc)
        finally:
            topic.ready.set()
        if topic.subscription is None or not self._hub.channel_size(channel):
            self._drop(channel)

    def _close(self, channel: str) -> None:
        topic = self._topics.get(channel)
        if topic is not None and topic.ready.is_set():
            self._drop(channel)
        # still being confirmed: `_open` drops it once confirmed, seeing the channel empty

    def _drop(self, channel: str) -> None:
        topic = self._topics.pop(channel, None)
        if topic is not None and topic.subscription is not None:
            try:
                topic.subscription.close()
            except Exception as exc:
                self._report(exc)

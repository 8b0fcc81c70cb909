"""`Emitter`: the write-only side of the cluster for synchronous code in any process.

A Flask view, a thread pool, a Celery worker: they publish the same broker payloads a
gateway node does and read the same presence, with no gevent at all (importing this
module imports neither gevent nor the gateway).  Thread safety comes from the broker and
presence implementations: connection and producer pools, never one connection shared
between threads.  Every call is bounded: a broker or Redis that does not answer raises
`BrokerUnavailable` after a few retries.
"""

from __future__ import annotations

import uuid
from typing import Any

from .broker import Broker, broker_from_url
from .channels import ChannelOptions, Namespaces, check_channel
from .codec import Codec, JSONCodec
from .delivery import Fanout, Reach, stamp_message
from .errors import InvalidOption, SessionClosed, quote
from .history import History, history_from_url
from .history.base import check_stream_bounds
from .message import Message
from .presence import Presence, presence_from_url
from .types import SessionInfo

__all__ = ["Emitter"]


class Emitter:
    """Reach live sessions from outside the gateway: ``Emitter(broker_url, presence_url)``."""

    def __init__(
        self,
        broker_url: str | None = None,
        presence_url: str | None = None,
        codec: Codec | None = None,
        *,
        namespace: str = "rtgevent",
        broker: Broker | None = None,
        presence: Presence | None = None,
        history_url: str | None = None,
        history: History | None = None,
        identity_history_size: int = 0,
        identity_history_ttl: float | None = None,
    ) -> None:
        if broker is None:
            if broker_url is None:
                raise InvalidOption("broker_url", "Emitter needs broker_url (or broker=)")
            broker = broker_from_url(broker_url, namespace=namespace)
        if presence is None:
            if presence_url is None:
                raise InvalidOption("presence_url", "Emitter needs presence_url (or presence=)")
            presence = presence_from_url(presence_url, namespace=namespace)
        check_stream_bounds(identity_history_size, identity_history_ttl, field="identity_history")
        if history is None and history_url is not None:
            history = history_from_url(history_url, namespace=namespace)
        elif history is None and (identity_history_size or identity_history_ttl is not None):
            raise InvalidOption("history_url", "an Emitter with a personal stream needs history_url (or history=)")
        self.broker = broker
        self.presence = presence
        #: where streams are kept (SPEC section 14), or None: no history
        self.history = history
        self._identity_history = (identity_history_size, identity_history_ttl)
        self._namespaces = Namespaces()
        self.codec: Codec = codec or JSONCodec()
        #: the origin named in payloads (an emitter is no node: no node ignores its broadcasts)
        self.origin = f"emitter-{uuid.uuid4().hex[:12]}"
        # the gateway's own fan-out, with no local sessions: everything goes through the broker
        self._fanout = Fanout(broker, presence, self.origin, history=history)

    def channel_namespace(self, prefix: str, options: ChannelOptions) -> None:
        """The options of a namespace of channels, as the gateway has them (`Realtime.channel_namespace`).

        An Emitter publishes without asking a gateway, so it must know which channels keep
        history: register the same namespaces with history as the gateway's.
        """
        if options.history_size and self.history is None:
            raise InvalidOption("history_url", "channels with history need an Emitter with history_url (or history=)")
        self._namespaces.add(prefix, options)

    def send_to_identity(self, tenant_id: str, identity_id: str, route: str, data: Any = None) -> Reach:
        """Send to every live session of the identity; how far it went.

        An emitter holds no session, so the `Reach` has ``sessions == 0`` and ``nodes``, the
        nodes the message was published to, which is also its value as a number (what this
        method always returned).  `Realtime.send_to_identity` returns the same type.
        Raises `SessionClosed` when presence knows no session of it, unless the Emitter
        keeps personal streams (``identity_history_size``): the message then waits there
        for a client that reconnects.
        """
        size, ttl = self._identity_history
        if size:
            assert ttl is not None
            stamp = stamp_message(self.codec, route, data, {})
            reach, _ = self._fanout.to_identity_stream(tenant_id, identity_id, stamp, size, ttl)
            return reach  # kept in the personal stream: a session that reconnects gets it
        reach = self._fanout.to_identity(tenant_id, identity_id, self.codec.encode(Message(route, data)))
        if not reach:
            raise SessionClosed(f"no live session for {quote(tenant_id)}/{quote(identity_id)}")
        return reach

    def broadcast(self, route: str, data: Any = None) -> None:
        """Send to every session of every started node."""
        self._fanout.broadcast(self.codec.encode(Message(route, data)))

    def publish(self, channel: str, route: str, data: Any = None, *, exclude: str | None = None) -> None:
        """Send to every subscriber of ``channel`` on every started node (``exclude``: a session id)."""
        check_channel(channel)
        options = self._namespaces.options(channel)
        if options.history_size:
            assert options.history_ttl is not None
            stamp = stamp_message(self.codec, route, data, {"channel": channel})
            self._fanout.publish_stream(channel, stamp, exclude or "", options.history_size, options.history_ttl)
            return
        envelope = self.codec.encode(Message(route, data, metadata={"channel": channel}))
        self._fanout.publish(channel, envelope, exclude or "")

    def kick_identity(self, tenant_id: str, identity_id: str, code: int = 1008, reason: str = "kicked") -> Reach:
        """Close every live session of the identity with ``code``; a `Reach` of how many nodes were asked."""
        return self._fanout.kick_identity(tenant_id, identity_id, code, reason)

    def is_online(self, tenant_id: str, identity_id: str) -> bool:
        return self.presence.is_online(tenant_id, identity_id)

    def get_identity_sessions(self, tenant_id: str, identity_id: str) -> list[SessionInfo]:
        return self.presence.get_identity_sessions(tenant_id, identity_id)

    def channel_members(self, channel: str) -> list[SessionInfo]:
        """The channel's members on every live node, from presence (namespaces with ``presence=True``).

        An emitter knows no namespaces: a channel whose namespace keeps no presence has none.
        """
        return self.presence.channel_members(check_channel(channel))

    def channel_count(self, channel: str) -> int:
        """How many members the channel has on every live node, from presence."""
        return self.presence.channel_count(check_channel(channel))

    def close(self) -> None:
        self.broker.close()
        self.presence.close()
        if self.history is not None:
            self.history.close()

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

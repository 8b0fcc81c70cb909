"""This node in the cluster: start, broker subscriptions, the presence lease, stop.

A node consumes two topics: the broadcast topic and its own (identity sends and kicks
aimed at its sessions).  Its sessions stay alive in presence exactly while its lease
does, so the lease is renewed every third of ``presence_ttl``; while presence fails the
renewer retries every second and, once presence answers again, registers every local
session again (a restarted Redis has forgotten them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent

from .broker.base import Broker, Subscription
from .config import Config
from .delivery import Fanout
from .errors import AlreadyStarted
from .payload import BROADCAST_TOPIC, node_topic
from .presence.base import Presence
from .stats import Stats

if TYPE_CHECKING:
    from .events import KombuEvents

__all__ = ["Node"]

ErrorSink = Callable[[BaseException], None]


class Node:
    """The cluster side of one `Realtime`: what `start` begins and `stop` ends."""

    def __init__(
        self,
        config: Config,
        fanout: Fanout,
        *,
        stats: Stats,
        report: ErrorSink,
        logger: logging.Logger,
        events: KombuEvents | None = None,
    ) -> None:
        self.config = config
        self.fanout = fanout
        self.events = events
        self._stats = stats
        self._report = report
        self._logger = logger
        self._subscriptions: list[Subscription] = []
        self._renewer: gevent.Greenlet | None = None
        self._presence_stale = False
        self._stopped = False

    @property
    def broker(self) -> Broker:
        return self.fanout.broker

    @property
    def presence(self) -> Presence:
        return self.fanout.presence

    @property
    def started(self) -> bool:
        return self.fanout.publishing

    @property
    def shared(self) -> bool:
        """True when broker or presence reach beyond this process: the node must start to serve."""
        return bool(getattr(self.broker, "shared", True) or getattr(self.presence, "shared", True))

    def start(self) -> None:
        """Subscribe to the broadcast topic and this node's topic; start renewing the lease."""
        if self.started:
            raise AlreadyStarted()
        self.fanout.publishing = True
        node_id = self.config.node_id
        self._subscriptions.append(self.broker.subscribe(BROADCAST_TOPIC, self._receive))
        self._subscriptions.append(self.broker.subscribe(node_topic(node_id), self._receive))
        self.presence.renew(node_id, self.config.presence_ttl)
        self._renewer = gevent.spawn(self._renew_forever)

    def presence_failed(self) -> None:
        """A presence write failed: register every local session again once presence answers."""
        self._presence_stale = True

    def _receive(self, raw: bytes) -> None:
        self.fanout.receive(raw, self._broker_error)

    def _broker_error(self, error: BaseException) -> None:
        self._stats.broker_errors += 1
        self._report(error)

    def _renew_forever(self) -> None:
        ttl = self.config.presence_ttl
        period = ttl / 3
        node_id = self.config.node_id
        hub = self.fanout.hub
        while not self._stopped:
            gevent.sleep(min(1.0, period) if self._presence_stale else period)
            try:
                self.presence.renew(node_id, ttl)
                if self._presence_stale:
                    for session in hub.sessions() if hub is not None else []:
                        self.presence.register(session.info())
                    self._presence_stale = False
                    self._logger.info("rtgevent: presence renewed again; local sessions registered")
            except Exception as exc:
                if not self._presence_stale:
                    self._report(exc)
                self._presence_stale = True

    def stop(self) -> None:
        """Unsubscribe, stop the renewer, close events, presence and broker; errors are reported."""
        self._stopped = True
        for sub in self._subscriptions:
            try:
                sub.close()
            except Exception as exc:
                self._report(exc)
        if self._renewer is not None:
            self._renewer.kill(block=False)
        closers = [self.presence.close, self.broker.close]
        if self.events is not None:
            closers.insert(0, self.events.close)
        for closer in closers:
            try:
                closer()
            except Exception as exc:
                self._report(exc)

"""This node in the cluster: start, broker subscriptions, the presence lease, stop.

A node consumes two topics: the broadcast topic and its own (identity sends and kicks
aimed at its sessions).  Its sessions stay alive in presence exactly while its lease
does, so the lease is renewed every third of ``presence_ttl``.

With the admin page on (`Node.write_stats`), a small greenlet of its own also writes the
node's stats record into presence every few seconds: the page reads the whole cluster from
the store instead of asking every node.

A node starts whatever its servers do: a broker or presence store that does not answer
at start (or later) is logged once and retried in the background with backoff
(`rtgevent.retry`), and once presence answers again every local session is registered
again (a restarted Redis has forgotten them).  `Node.status` says whether broker and
presence are up right now.

The process checks (`Node.check_process`, on a process's first request): gevent's
monkey-patching is in place (without it a Redis or RabbitMQ consumer blocks the whole
hub and a pywsgi socket is not the one rtgevent expects), and inside a gunicorn worker
the worker's stop signals close every session with 1001 at once, with or without
``-c python:rtgevent.gunicorn``.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event

from .broker.base import Broker, Subscription
from .config import Config
from .delivery import Fanout
from .errors import AlreadyStarted, RealtimeError
from .payload import BROADCAST_TOPIC, node_topic
from .presence.base import Presence
from .retry import Backoff
from .stats import Stats

if TYPE_CHECKING:
    from .events import KombuEvents

__all__ = ["Node", "NotMonkeyPatched", "drain_on_worker_stop", "gunicorn_worker", "require_monkey_patching"]

ErrorSink = Callable[[BaseException], None]
Drain = Callable[[], object]
#: builds the node's stats record (a small JSON-serialisable dict) each time it is written
StatsBuilder = Callable[[], dict[str, Any]]

#: how a node retries what did not answer: 0.1 s doubling to 5 s, jittered
RETRY_START, RETRY_CAP = 0.1, 5.0

FIX = "from gevent import monkey; monkey.patch_all()"


class NotMonkeyPatched(RealtimeError, RuntimeError):
    """gevent's monkey-patching is missing: rtgevent cannot serve (it would hang or fail)."""

    default_message = (
        f"gevent's monkey-patching is missing: put `{FIX}` first thing in the program, before any "
        "other import (rtgevent serve and gunicorn's gevent workers do it themselves)"
    )


def require_monkey_patching(what: str = "") -> None:
    """Raise `NotMonkeyPatched` unless gevent patched ``socket`` in this process.

    Without it a Redis or RabbitMQ consumer greenlet blocks the whole process in a plain
    socket call (``rt.start()`` never returns), pywsgi hands the application a socket
    rtgevent cannot use, and ``flask run``'s threads serve nothing after the 101.
    """
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        text = NotMonkeyPatched.default_message
        raise NotMonkeyPatched(f"{what}: {text}" if what else text)


# ---------------------------------------------------------------------- the gunicorn worker


class _WorkerHook:
    """This process's gunicorn worker, its stop signals chained once, and what they drain."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.drains: list[Drain] = []

    def run(self) -> None:
        for drain in list(self.drains):
            gevent.spawn(drain)  # never block inside a signal handler


_hook: _WorkerHook | None = None


def gunicorn_worker() -> Any | None:
    """The gunicorn worker object of this process, found through its own signal handlers; else None.

    gunicorn's workers install their bound methods ``handle_exit`` (SIGTERM) and
    ``handle_quit`` (SIGQUIT, SIGINT) before they load the application: the method's
    ``__self__`` is the worker.  The master (and any other program) has none of them.
    """
    base = sys.modules.get("gunicorn.workers.base")
    worker_class = getattr(base, "Worker", None)
    if worker_class is None:
        return None
    for signum in (signal.SIGTERM, signal.SIGQUIT):
        owner = getattr(signal.getsignal(signum), "__self__", None)
        if isinstance(owner, worker_class):
            return owner
    return None


def drain_on_worker_stop(worker: Any, drain: Drain) -> bool:
    """Run ``drain`` (in a new greenlet) the moment gunicorn tells ``worker`` to stop; True once hooked.

    gunicorn's graceful stop (SIGTERM, SIGQUIT / SIGINT, and the old workers of a SIGHUP
    reload) only stops accepting and waits ``graceful_timeout`` for requests to end; a
    WebSocket never ends by itself.  The worker's handlers are chained once per process;
    a second call adds its drain to the first's.  False when signals cannot be set here
    (not the main thread): gunicorn then drops the clients at ``graceful_timeout``.
    """
    global _hook
    pid = os.getpid()
    if _hook is None or _hook.pid != pid:
        hook = _WorkerHook(pid)

        def chained(original: Callable[[int, FrameType | None], Any]) -> Callable[[int, FrameType | None], None]:
            def handler(signum: int, frame: FrameType | None) -> None:
                hook.run()
                original(signum, frame)

            return handler

        try:
            signal.signal(signal.SIGTERM, chained(worker.handle_exit))
            quit_handler = chained(worker.handle_quit)
            signal.signal(signal.SIGQUIT, quit_handler)
            signal.signal(signal.SIGINT, quit_handler)
        except ValueError:  # signals are set from the main thread only
            return False
        _hook = hook
    if drain not in _hook.drains:
        _hook.drains.append(drain)
    return True


class _Generation:
    """Bumped in every forked child, so that process checks run again in each worker."""

    value = 0

    @classmethod
    def bump(cls) -> None:
        cls.value += 1


os.register_at_fork(after_in_child=_Generation.bump)


# ---------------------------------------------------------------------- the node


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
        #: topics whose subscribe raised: retried in the background
        self._unsubscribed: list[str] = []
        self._greenlets: list[gevent.Greenlet] = []
        self._presence_stale = False
        self._stop = Event()
        #: set by `presence_failed` (and `stop`): the renewer stops waiting out its period
        self._wake = Event()
        self._stopped = False
        #: the fork generation this node's process checks passed in (-1: not yet)
        self._checked = -1
        #: when `start` ran (UTC), for the stats record
        self.started_at: datetime.datetime | None = None
        #: what `write_stats` asked for: the record's builder and how often to write it
        self._stats_record: tuple[StatsBuilder, float] | None = None

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

    # ------------------------------------------------------------------ the process

    @property
    def unchecked(self) -> bool:
        """True until `check_process` passed in this process (a forked worker checks again)."""
        return self._checked != _Generation.value

    def check_process(self, drain: Drain) -> None:
        """A process's first request: monkey-patching must be in place; hook a gunicorn worker's stop.

        Raises `NotMonkeyPatched` (on every request, until the program is fixed: it cannot
        serve).  Inside a gunicorn worker, ``drain`` (the owner's shutdown) runs the moment
        the worker is told to stop, so clients get 1001 instead of a dropped TCP
        connection at ``graceful_timeout``; the config module ``rtgevent.gunicorn`` does the
        same from its ``post_worker_init`` hook.
        """
        require_monkey_patching("cannot serve a WebSocket")
        worker = gunicorn_worker()
        if worker is not None or (_hook is not None and _hook.pid == os.getpid()):
            drain_on_worker_stop(worker, drain)
        self._checked = _Generation.value

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Subscribe to the broadcast topic and this node's topic; start renewing the lease.

        Never fails for an outage: a broker or presence store that does not answer is
        logged once and retried in the background.  Raises `NotMonkeyPatched` without
        gevent's monkey-patching (a consumer would block the process), `AlreadyStarted`
        on a second call.
        """
        if self.started:
            raise AlreadyStarted()
        require_monkey_patching("cannot start the node")
        self.fanout.publishing = True
        self.started_at = datetime.datetime.now(datetime.UTC)
        node_id = self.config.node_id
        for topic in (BROADCAST_TOPIC, node_topic(node_id)):
            if not self._subscribe(topic, first=True):
                self._unsubscribed.append(topic)
        if self._unsubscribed:
            self._greenlets.append(gevent.spawn(self._subscribe_forever))
        try:
            self.presence.renew(node_id, self.config.presence_ttl)
        except Exception as exc:
            self._presence_stale = True
            self._logger.warning(
                "rtgevent: presence store unavailable at start (%s); serving, retrying in the background",
                _describe(exc),
            )
        self._greenlets.append(gevent.spawn(self._renew_forever))
        if self._stats_record is not None:
            self._greenlets.append(gevent.spawn(self._write_stats_forever))

    def _subscribe(self, topic: str, *, first: bool) -> bool:
        try:
            self._subscriptions.append(self.broker.subscribe(topic, self.receive))
        except Exception as exc:
            self._stats.broker_errors += 1
            if first:
                self._logger.warning(
                    "rtgevent: cannot subscribe to %r (%s); serving, retrying in the background",
                    topic,
                    _describe(exc),
                )
            return False
        return True

    def _subscribe_forever(self) -> None:
        backoff = Backoff(RETRY_START, RETRY_CAP)
        while self._unsubscribed and not self._stop.wait(backoff.next()):
            self._unsubscribed = [t for t in self._unsubscribed if not self._subscribe(t, first=False)]
        if not self._unsubscribed and not self._stopped:
            self._logger.info("rtgevent: broker subscriptions in place")

    def presence_failed(self) -> None:
        """A presence write failed: register every local session again once presence answers."""
        if not self._presence_stale:
            self._presence_stale = True
            self._wake.set()  # retry with backoff now, not after the rest of the lease period

    def receive(self, raw: bytes) -> None:
        """The handler of every topic this node subscribes: its own, the broadcast, its channels."""
        self.fanout.receive(raw, self._broker_error)

    def _broker_error(self, error: BaseException) -> None:
        self._stats.broker_errors += 1
        self._report(error)

    def _renew_forever(self) -> None:
        ttl = self.config.presence_ttl
        period = ttl / 3
        node_id = self.config.node_id
        backoff = Backoff(RETRY_START, min(RETRY_CAP, period))
        reported = self._presence_stale  # start() logged the outage already
        while True:
            self._wake.wait(backoff.next() if self._presence_stale else period)
            self._wake.clear()
            if self._stopped:
                return
            try:
                self.presence.renew(node_id, ttl)
                if self._presence_stale:
                    self._register_all()
                    self._presence_stale = False
                    self._logger.info("rtgevent: presence store answers again; local sessions registered")
                backoff.reset()
                reported = False
                streams = self.fanout.streams
                if streams is not None:
                    # a stream whose last publications' broker messages were lost stays quiet
                    # otherwise: its subscribers get them now, not at their next reconnect
                    streams.check(self.fanout.stream_sessions)
            except Exception as exc:
                if not reported:
                    reported = True  # one report per outage, not one per retry
                    self._report(exc)
                self._presence_stale = True

    # ------------------------------------------------------------------ the stats record (admin page)

    def write_stats(self, build: StatsBuilder, period: float) -> None:
        """Write ``build()`` into presence as this node's stats record every ``period`` s while started.

        Only a store with ``publish_node_stats`` (a `NodeDirectory`) keeps one; with another
        the admin page shows the node from its lease alone.  The record lives
        ``max(presence_ttl, 3 * period)`` seconds, so it outlives a late write but not the
        lease by much; the page shows only the records of live leases anyway.  Called once
        (a second call replaces the builder); effective at `start`, or at once if started.
        """
        first = self._stats_record is None
        self._stats_record = (build, period)
        if first and self.started and not self._stopped:
            self._greenlets.append(gevent.spawn(self._write_stats_forever))

    def _write_stats_forever(self) -> None:
        publish = getattr(self.presence, "publish_node_stats", None)
        if publish is None:
            return
        node_id = self.config.node_id
        failing = False
        while not self._stopped and self._stats_record is not None:
            build, period = self._stats_record
            try:
                publish(node_id, build(), max(self.config.presence_ttl, 3 * period))
                failing = False
            except Exception as exc:
                # the renewer reports a presence outage already: one line here, at debug level
                if not failing:
                    self._logger.debug("rtgevent: could not write the node's stats record: %s", _describe(exc))
                failing = True
            if self._stop.wait(period):
                return

    def _register_all(self) -> None:
        hub = self.fanout.hub
        for session in hub.sessions() if hub is not None else []:
            if not session.closed:
                self.presence.register(session.info())

    # ------------------------------------------------------------------ status

    @property
    def broker_up(self) -> bool:
        """The broker is connected and every subscription is in place (brokers without ``connected``: always)."""
        return bool(getattr(self.broker, "connected", True)) and not self._unsubscribed

    @property
    def presence_up(self) -> bool:
        """The last presence write (renew, register) succeeded."""
        return not self._presence_stale

    def status(self) -> dict[str, int]:
        """The node's part of `Realtime.stats`: broker and presence up, broker errors and reconnects."""
        broker = self.broker
        return {
            "broker_up": self.broker_up,
            "presence_up": self.presence_up,
            "broker_errors": self._stats.broker_errors + int(getattr(broker, "errors", 0)),
            "broker_reconnects": int(getattr(broker, "reconnects", 0)),
        }

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Unsubscribe, stop the renewer, close events, presence and broker; errors are reported."""
        self._stopped = True
        self._stop.set()
        self._wake.set()
        for sub in self._subscriptions:
            try:
                sub.close()
            except Exception as exc:
                self._report(exc)
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        closers = [self.presence.close, self.broker.close]
        if self.events is not None:
            closers.insert(0, self.events.close)
        for closer in closers:
            try:
                closer()
            except Exception as exc:
                self._report(exc)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

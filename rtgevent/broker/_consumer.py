"""The consuming machinery `KombuBroker` and `RedisBroker` share, written once.

Both brokers consume the same way; what differs (connecting, declaring / binding on the
server, draining one connection, publishing) stays in their modules, and everything else is
`ConsumerBroker` here:

* One consumer greenlet per broker, spawned by the first `subscribe`: it alone uses the
  consuming connection, and it yields with ``gevent.idle()`` every `IDLE_EVERY` messages
  so that a flood does not starve the hub.
* A copy-on-write handler table (topic -> handlers): replaced under ``_lock``, never
  mutated, so the consumer dispatches without the lock.  A change marks it ``_dirty`` and
  the consumer applies the (un)bindings between waits for messages.
* `subscribe` waits until the server confirmed the binding (the topic is in ``_bound``),
  so nothing published afterwards is missed, for at most ``subscribe_timeout``.  While the
  consumer is down it returns at once (it binds on reconnect: a node must be able to start
  while the broker is away), and called from a handler it never waits (the consumer that
  would confirm is the caller).
* Reconnect with backoff: on any error the consumer drops its connection, waits (0.1 s
  doubling to 5 s, jittered, by `rtgevent.retry`; a publish that reached the server cuts
  one wait per outage short) and starts over, forever.  `LinkState` logs once per state
  change -- one WARNING when the connection drops, one INFO when it is back, never a line
  per retry -- and an error that is not an outage (a bug) logs its traceback once.

Publishing stays with the subclasses; only what every publish does alike is here: the
payload check, the pause between attempts (`pause_before_retry`) and the
`BrokerUnavailable` it ends with.

Like its subclasses, this module imports gevent only inside methods: publishing must work
without it.
"""

from __future__ import annotations

import abc
import logging
import sys
import threading
import time
from typing import TYPE_CHECKING

from ..errors import BrokerUnavailable
from ..retry import Backoff, Deadline, backoff_delay, sleep_backoff
from .base import BrokerHandler

if TYPE_CHECKING:
    import gevent
    import gevent.event

__all__ = ["IDLE_EVERY", "ConsumerBroker", "ConsumerSubscription", "pause_before_retry"]

log = logging.getLogger("rtgevent.broker")

#: Yield to the hub after this many messages in a row.
IDLE_EVERY = 32


def pause_before_retry(attempts: int, deadline: Deadline) -> bool:
    """Sleep the backoff after ``attempts`` failed publish attempts; False, at once, if it ends past ``deadline``.

    Shorter than the consumer's backoff (50 ms doubling to 1 s): a publisher has a caller
    waiting for it.
    """
    delay = backoff_delay(attempts - 1, start=0.05, cap=1.0)
    if delay >= deadline.timeout():
        return False
    time.sleep(delay)
    return True


class LinkState:
    """Logs each change of a consumer connection's state exactly once.

    A broker that is down for an hour must not write a line per retry: one WARNING when
    the connection drops (or cannot be made at all), one INFO when it is back.
    """

    __slots__ = ("_up", "_what")

    def __init__(self, what: str) -> None:
        self._what = what
        self._up: bool | None = None  # None: never connected yet

    @property
    def up(self) -> bool:
        return self._up is True

    def set_up(self) -> bool:
        """The connection works (again); True when it follows a failure (a reconnect)."""
        restored = self._up is False
        if restored:
            log.info("%s: connection restored", self._what)
        elif self._up is None:
            log.debug("%s: connected", self._what)
        self._up = True
        return restored

    def set_down(self, exc: BaseException) -> None:
        if self._up is True:
            log.warning("%s: connection lost: %s; reconnecting in the background", self._what, _describe(exc))
        elif self._up is None:
            log.warning("%s: cannot connect: %s; retrying in the background", self._what, _describe(exc))
        self._up = False


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ConsumerSubscription:
    __slots__ = ("_broker", "_closed", "_handler", "_topic")

    def __init__(self, broker: ConsumerBroker, topic: str, handler: BrokerHandler) -> None:
        self._broker = broker
        self._topic = topic
        self._handler = handler
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._broker._unsubscribe(self._topic, self._handler)


class ConsumerBroker(abc.ABC):
    """The subscription table and the consumer greenlet; subclasses connect, drain and publish.

    A subclass sets ``_retryable`` (what an outage raises: anything else is a bug, logged
    with its traceback) and implements `_consume_once` and `_close_connections`.
    """

    #: What a broker operation may fail with in an outage (and be worth retrying).
    _retryable: tuple[type[BaseException], ...]

    def __init__(self, what: str, *, socket_timeout: float, subscribe_timeout: float) -> None:
        self._what = what
        self._socket_timeout = socket_timeout
        self._subscribe_timeout = subscribe_timeout
        self._lock = threading.Lock()
        #: topic -> handlers.  Changed in place under the lock (a node may hold tens of
        #: thousands of channels: no copy per subscribe); the consumer's lookups need no lock,
        #: each value is a tuple replaced whole.  Topics are interned: the table, the bound
        #: set and the consumer's own sets share one string per topic.
        self._handlers: dict[str, tuple[BrokerHandler, ...]] = {}
        #: topics the server confirmed on the current connection (bound, SUBSCRIBEd)
        self._bound: set[str] = set()
        #: the handler table changed: the consumer has (un)bindings to apply; and the topics
        #: that gained their first handler or lost their last since it last looked
        self._dirty = False
        self._changed: set[str] = set()
        #: topic -> the subscribe() calls waiting for its confirmation
        self._waiters: dict[str, list[gevent.event.Event]] = {}
        self._link = LinkState(what)
        #: the consumer failed and is retrying: subscribe() then does not wait
        self._down = False
        #: a publisher reached the server while the consumer was down: retry now
        self._nudged = False
        self._closed = False
        self._consumer: gevent.Greenlet | None = None
        self._stop: gevent.event.Event | None = None
        self._received = 0
        self._errors = 0
        self._reconnects = 0

    # ------------------------------------------------------------------ status

    @property
    def connected(self) -> bool:
        """The consumer is connected and every subscribed topic is bound (False before the first subscribe)."""
        return self._link.up and not self._down

    @property
    def errors(self) -> int:
        """Failures since construction: each failed consumer connection or connect attempt, each failed publish."""
        return self._errors

    @property
    def reconnects(self) -> int:
        """Times the consumer connection was (re)established after a failure."""
        return self._reconnects

    def _count_error(self) -> None:
        with self._lock:  # publishers may be OS threads
            self._errors += 1

    # ------------------------------------------------------------------ publishing (the common parts)

    def _check_publishable(self, payload: bytes) -> None:
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        if self._closed:
            raise BrokerUnavailable(f"{self._what}: broker is closed")

    def _publish_failed(self, what: str, attempts: int, last: BaseException | None) -> BrokerUnavailable:
        self._count_error()
        reason = f"{type(last).__name__}: {last}" if last is not None else "timed out"
        return BrokerUnavailable(f"{self._what}: {what} failed after {attempts} attempt(s): {reason}")

    # ------------------------------------------------------------------ subscribing

    def subscribe(self, topic: str, handler: BrokerHandler) -> ConsumerSubscription:
        """Call ``handler(payload)`` in the consumer greenlet for each message on ``topic``.

        Returns once the server confirmed the binding, so nothing published afterwards is
        missed; if the broker is down it returns at once (the consumer binds on reconnect)
        -- it never raises for an outage, a node must be able to start while the broker is
        away.
        """
        import gevent
        import gevent.event

        if self._closed:
            raise BrokerUnavailable(f"{self._what}: broker is closed")
        waiter = gevent.event.Event()
        topic = sys.intern(topic)
        with self._lock:
            new = topic not in self._handlers
            if new:
                self._dirty = True
                self._changed.add(topic)
            self._handlers[topic] = (*self._handlers.get(topic, ()), handler)
            if topic in self._bound or self._down:
                waiter.set()
            else:
                self._waiters.setdefault(topic, []).append(waiter)
        subscription = ConsumerSubscription(self, topic, handler)
        self._ensure_consumer()
        if new:
            self._wake()
        if gevent.getcurrent() is self._consumer:
            return subscription  # from a handler: the consumer binds it when the handler returns
        if not waiter.wait(timeout=self._subscribe_timeout):
            log.warning(
                "%s: subscribing %r took over %g s; going on without waiting",
                self._what,
                topic,
                self._subscribe_timeout,
            )
        return subscription

    def _unsubscribe(self, topic: str, handler: BrokerHandler) -> None:
        with self._lock:
            handlers = list(self._handlers.get(topic, ()))
            if handler not in handlers:
                return
            handlers.remove(handler)
            if handlers:
                self._handlers[topic] = tuple(handlers)
                return
            del self._handlers[topic]
            self._dirty = True
            self._changed.add(topic)
        self._wake()  # the topic lost its last handler: the consumer unsubscribes it now

    def _ensure_consumer(self) -> None:
        import gevent
        import gevent.event

        if self._consumer is None and not self._closed:
            self._stop = gevent.event.Event()
            self._consumer = gevent.spawn(self._consume_forever)

    def _wake(self) -> None:  # noqa: B027 (a hook: doing nothing is the right default)
        """The handler table changed: a consumer that waits for messages should apply it now.

        The default does nothing (the consumer sees the change after its short wait);
        `RedisBroker` cuts its wait short.  Called in the hub's thread.
        """

    def _nudge(self) -> None:
        """A publisher reached the server: a consumer that is down should retry now."""
        if self._down:
            self._nudged = True

    def _was_nudged(self) -> bool:
        return self._nudged

    def _release_waiters(self, *, everyone: bool = False, topic: str | None = None) -> None:
        """Wake the subscribe() calls whose topic is bound (only ``topic``'s, if given), or all of them."""
        with self._lock:
            if everyone:
                ready = list(self._waiters)
            elif topic is not None:
                ready = [topic] if topic in self._bound and topic in self._waiters else []
            else:
                ready = [name for name in self._waiters if name in self._bound]
            released = [waiter for name in ready for waiter in self._waiters.pop(name)]
        for waiter in released:
            waiter.set()

    # ------------------------------------------------------------------ the consumer greenlet

    @abc.abstractmethod
    def _consume_once(self) -> None:
        """Connect, (re)declare, serve the connection until it fails or the broker closes, drop it."""

    def _consume_forever(self) -> None:
        assert self._stop is not None
        backoff = Backoff()  # 0.1 s doubling to 5 s
        nudge_spent = reported = False
        while not self._closed:
            self._nudged = False
            try:
                self._consume_once()
            except Exception as exc:
                if self._closed:
                    break
                if self._link.up:
                    backoff.reset()  # it did work for a while: start the backoff over
                    nudge_spent = reported = False
                self._set_down(exc)
                if not isinstance(exc, self._retryable) and not reported:
                    reported = True  # a bug, not an outage: its traceback once, not per retry
                    log.error("%s: unexpected consumer error", self._what, exc_info=True)
            if self._closed:
                break
            # a nudge cuts one backoff short per outage: a consumer that fails while the
            # server answers publishers must not reconnect at the publish rate
            sleep_backoff(self._stop, backoff.next(), (lambda: False) if nudge_spent else self._was_nudged)
            nudge_spent = nudge_spent or self._nudged

    def _take_changes(self, *, everything: bool) -> tuple[set[str], set[str]]:
        """The topics to look at (every subscribed one, or those that changed) and which of them are wanted.

        Clears the dirty flag: what changes afterwards is the next round's.
        """
        with self._lock:
            self._dirty = False
            changed, self._changed = self._changed, set()
            if everything:
                changed = set(self._handlers)
            return changed, {topic for topic in changed if topic in self._handlers}

    def _start_over(self) -> None:
        """A new connection: nothing is bound on it yet, every wanted topic is to be bound."""
        with self._lock:
            self._bound.clear()
            self._dirty = True

    def _set_up(self) -> None:
        """Every wanted topic is bound again: logs "restored" (once) and subscribe() waits again."""
        self._down = False
        if self._link.set_up():
            self._reconnects += 1

    def _set_down(self, exc: BaseException) -> None:
        self._count_error()
        self._link.set_down(exc)
        with self._lock:
            self._bound.clear()
        self._down = True
        self._release_waiters(everyone=True)

    def _count_message(self) -> None:
        """Called per message received: yields to the hub every `IDLE_EVERY` of them."""
        import gevent

        self._received += 1
        if self._received % IDLE_EVERY == 0:
            gevent.idle()

    def _dispatch(self, topic: str, payload: bytes) -> None:
        for handler in self._handlers.get(topic, ()):
            try:
                handler(payload)
            except Exception:
                log.exception("%s: handler for topic %r raised", self._what, topic)

    # ------------------------------------------------------------------ closing

    @abc.abstractmethod
    def _close_connections(self) -> None:
        """Close what is left once the consumer stopped (the publishers' connections)."""

    def close(self) -> None:
        """Stop consuming and close every connection (`KombuBroker` deletes its queue first).  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._handlers = {}
        self._release_waiters(everyone=True)
        if self._stop is not None:
            self._stop.set()
        consumer = self._consumer
        if consumer is not None:
            import gevent

            if consumer is not gevent.getcurrent():
                consumer.join(timeout=self._socket_timeout)
                if not consumer.dead:
                    consumer.kill(block=True, timeout=1.0)
        self._close_connections()

"""Backend events (seed 003): ``enter``, ``message`` and ``leave`` on a durable RabbitMQ queue.

A synchronous worker (Celery, a plain script) consumes them with `consume` and answers
through `Emitter.send_to_identity`.  An event is a versioned JSON object::

    {"v": 1, "type": "enter" | "message" | "leave", "node": str, "session": str,
     "tenant": str, "identity": str, "at": ISO-8601,
     "remote_addr": str,                                   (enter)
     "route": str, "id": str | int | null, "data": any,    (message)
     "disconnect": {"code", "reason", "initiator", "expected"}}   (leave)

The gateway never publishes from the session's reader: events go into a bounded
in-memory queue drained by one publisher greenlet (so a slow broker slows nobody, and
the events of a session stay in order).  The queue is durable and messages persistent,
so events published while no consumer runs wait for it.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import InvalidBrokerMessage
from .retry import Backoff, Deadline

if TYPE_CHECKING:
    from .message import Message
    from .session import Session
    from .types import DisconnectInfo

__all__ = ["KombuEvents", "consume"]

log = logging.getLogger("rtgevent.events")
VERSION = 1


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


class KombuEvents:
    """Publishes session events to the durable queue ``queue`` at ``url`` (any kombu URL)."""

    def __init__(
        self,
        url: str,
        queue: str = "rtgevent.events",
        routes: Iterable[str] = (),
        *,
        max_pending: int = 10000,
    ) -> None:
        self.url = url
        self.queue = queue
        self.routes = tuple(routes)
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._max_pending = max_pending
        self._wake: Any = None
        self._publisher: Any = None
        self._closed = False
        self.dropped = 0

    # ------------------------------------------------------------------ gateway side

    def wants(self, route: str) -> bool:
        return any(route.startswith(prefix) for prefix in self.routes)

    def enter(self, session: Session) -> None:
        self._emit(session, "enter", {"remote_addr": session.remote_addr})

    def message(self, session: Session, msg: Message) -> None:
        self._emit(session, "message", {"route": msg.route, "id": msg.id, "data": msg.data})

    def leave(self, session: Session, info: DisconnectInfo) -> None:
        disconnect = {
            "code": info.code,
            "reason": info.reason,
            "initiator": str(info.initiator),
            "expected": info.expected,
        }
        self._emit(session, "leave", {"disconnect": disconnect})

    def _emit(self, session: Session, kind: str, extra: dict[str, Any]) -> None:
        if self._closed:
            return
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "rtgevent: backend event queue full (%d pending): %d events dropped",
                    len(self._pending),
                    self.dropped,
                )
            return
        event = {
            "v": VERSION,
            "type": kind,
            "node": session.node_id,
            "session": session.id,
            "tenant": session.identity.tenant_id,
            "identity": session.identity.id,
            "at": _now(),
            **extra,
        }
        self._pending.append(event)
        self._ensure_publisher()
        self._wake.set()

    def _ensure_publisher(self) -> None:
        if self._publisher is None:
            import gevent
            from gevent.event import Event

            self._wake = Event()
            self._publisher = gevent.spawn(self._publish_forever)

    def _publish_forever(self) -> None:
        import gevent
        import kombu

        backoff = Backoff()  # 0.1 s doubling to 5 s, jittered
        broken = False
        while not (self._closed and not self._pending):
            try:
                with kombu.Connection(self.url, connect_timeout=5, heartbeat=0) as conn:
                    conn.ensure_connection(max_retries=1)
                    queue = kombu.Queue(self.queue, durable=True, routing_key=self.queue)
                    producer = conn.Producer(serializer="json")
                    queue(conn.default_channel).declare()
                    if broken:
                        log.info("rtgevent: backend events connection restored")
                        broken = False
                    backoff.reset()
                    while True:
                        if not self._pending:
                            if self._closed:
                                return
                            self._wake.clear()
                            self._wake.wait(1.0)
                            continue
                        event = self._pending[0]
                        producer.publish(
                            event,
                            routing_key=self.queue,
                            delivery_mode=2,
                            retry=True,
                            retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
                        )
                        self._pending.popleft()  # only once the broker took it
            except Exception as exc:
                if not broken:
                    log.warning("rtgevent: backend events connection lost: %s", exc)
                    broken = True
                if self._closed:
                    return
                gevent.sleep(backoff.next())

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is pending (for up to ``timeout``), then stop the publisher."""
        self._closed = True
        publisher = self._publisher
        if publisher is not None:
            self._wake.set()
            publisher.join(timeout)
            publisher.kill(block=False)


def parse_event(body: Any) -> dict[str, Any]:
    """Validate one event as consumed; `InvalidBrokerMessage` for anything else."""
    event = json.loads(body) if isinstance(body, (bytes, str)) else body
    if (
        not isinstance(event, Mapping)
        or event.get("v") != VERSION
        or event.get("type")
        not in (
            "enter",
            "message",
            "leave",
        )
    ):
        raise InvalidBrokerMessage(f"not a backend event: {body!r:.200}")
    return dict(event)


class _CallbackFailed(Exception):
    pass


def consume(
    url: str,
    queue: str,
    callback: Callable[[dict[str, Any]], None],
    *,
    limit: int | None = None,
    idle_timeout: float | None = None,
) -> int:
    """Consume events synchronously (no gevent needed), acking each after ``callback`` returns.

    Reconnects with backoff by itself.  Returns the number handled once ``limit`` events
    were handled or nothing arrived for ``idle_timeout`` seconds (both None: forever).
    A malformed event is logged and acked (it would never become valid).
    """
    import kombu

    handled = 0
    backoff = Backoff()  # 0.1 s doubling to 5 s, jittered
    idle = Deadline(idle_timeout)  # started again by every event handled

    def on_message(body: Any, message: Any) -> None:
        nonlocal handled, idle
        try:
            event = parse_event(body)
        except (InvalidBrokerMessage, ValueError) as exc:
            log.error("rtgevent: dropping malformed event: %s", exc)
            message.ack()
            return
        try:
            callback(event)
        except Exception as exc:
            raise _CallbackFailed() from exc  # not a connection problem: stop, unacked
        message.ack()
        handled += 1
        idle = Deadline(idle_timeout)

    while limit is None or handled < limit:
        try:
            with kombu.Connection(url, connect_timeout=5) as conn:
                q = kombu.Queue(queue, durable=True, routing_key=queue)
                with conn.Consumer(q, callbacks=[on_message], accept=["json"], prefetch_count=100):
                    backoff.reset()
                    while limit is None or handled < limit:
                        if idle.expired():
                            return handled
                        try:
                            conn.drain_events(timeout=0.5)
                        except TimeoutError:
                            continue
        except _CallbackFailed as failed:
            assert failed.__cause__ is not None
            raise failed.__cause__ from None
        except Exception as exc:  # the broker went away: kombu's and amqp's errors vary by transport
            log.warning("rtgevent: events consumer reconnecting: %s", exc)
            if idle.expired():
                return handled
            time.sleep(backoff.next())
    return handled

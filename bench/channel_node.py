"""One gateway node of the ``channels`` and ``churn`` scenarios, served by ``rtgevent serve``.

Run as its own process (the driver pins it to CPU 0)::

    RTG_BENCH_NODE='{"broker": URL, "presence": URL, "namespace": NS, "count": false}' \\
        python -m rtgevent serve 'bench.channel_node:make_node()' --bind 127.0.0.1:0

A `Realtime` with the default `Config`, a real broker and `RedisPresence`, both in the
namespace ``NS`` (unique per run), as `bench.cluster_node`'s; clients authenticate with
``?access_token=<identity>`` (tenant ``bench``), and ``@rt.on_subscribe`` allows every
client subscription (``rt.subscribe`` / ``rt.unsubscribe``).  With ``"count": true`` the
broker's ``subscribe`` is wrapped to count the broker subscriptions the node opens and
closes (the ``churn`` scenario checks with it that its pairs really reach the broker).
Besides the WebSocket, plain HTTP on ``/_bench/...`` (127.0.0.1 only):

* ``GET /_bench/publish?channel=C&count=N&size=B&interval=S[&channels=K]``: start one greenlet
  that calls ``rt.publish(C, "tick", data)`` N times, S seconds apart (0: back to back, yielding
  to the hub after each call); publication i has data ``"<i>:<CLOCK_MONOTONIC at the call>:"``
  padded with ``x`` to B bytes (`Publisher`).  With K > 1, publication i goes to channel
  ``C<i mod K>`` instead (round-robin over ``C0`` ... ``C<K-1>``; `channel_names`).  Answers
  at once ``{"started": true}``.
* ``GET /_bench/stats[?channel=C]``: ``rt.stats()`` plus ``node``, ``queue`` (its KombuBroker
  queue, or null), ``subscribed`` (channels the node holds a broker subscription for),
  ``hub_channels`` (channels with a local subscriber), ``members`` (C's local subscribers),
  ``broker_subscribes`` / ``broker_unsubscribes`` (with ``count``), and the publisher's
  ``published`` / ``publish_seconds`` / ``publish_errors``.
* ``GET /_bench/gc``: ``gc.collect()`` (before the driver reads the RSS).
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import gevent

from bench.common import with_control

TENANT = "bench"
#: bounds on one publishing loop whatever the request asks
MAX_PUBLISH_COUNT = 100_000
MAX_PUBLISH_SIZE = 1 << 20
MAX_PUBLISH_CHANNELS = 10_000


def channel_names(channel: str, channels: int) -> list[str]:
    """The channels a publishing loop goes round: ``channel`` alone, or ``channel0`` ... ``channel<K-1>``."""
    if not 0 < channels <= MAX_PUBLISH_CHANNELS:
        raise ValueError("channels out of bounds")
    return [channel] if channels <= 1 else [f"{channel}{i}" for i in range(channels)]


class Publisher:
    """One greenlet calling ``send(data)`` on request (shared with `bench.sio_node`).

    Call i is due ``i * interval`` s after the first (0: back to back, with ``gevent.sleep(0)``
    after each call so the writers run, as any greenlet that loops over publications would).
    Its data is ``"<i>:<CLOCK_MONOTONIC>:"`` padded with ``x`` to ``size`` bytes: the client,
    on the same machine, reads the same clock on arrival.
    """

    def __init__(self, send: Callable[[str], Any]) -> None:
        self.send = send
        self.started: float | None = None
        self.finished: float | None = None
        self.sent = 0
        self.errors: dict[str, int] = {}

    def start(self, count: int, interval: float, size: int) -> None:
        if self.started is not None and self.finished is None:
            raise RuntimeError("a publishing loop is already running")
        if not (0 < count <= MAX_PUBLISH_COUNT and 0 <= interval <= 10 and 32 <= size <= MAX_PUBLISH_SIZE):
            raise ValueError("count, interval or size out of bounds")
        self.started, self.finished, self.sent = time.monotonic(), None, 0
        self.errors = {}
        gevent.spawn(self._run, count, interval, size)

    def _run(self, count: int, interval: float, size: int) -> None:
        assert self.started is not None
        start = self.started
        try:
            for i in range(count):
                gevent.sleep(max(0.0, start + i * interval - time.monotonic()))
                stamp = f"{i}:{time.monotonic():.6f}:"
                try:
                    self.send(stamp + "x" * (size - len(stamp)))
                    self.sent += 1
                except Exception as exc:  # counted and reported, the loop goes on
                    key = f"{type(exc).__name__}: {str(exc)[:80]}"
                    self.errors[key] = self.errors.get(key, 0) + 1
        finally:
            self.finished = time.monotonic()

    def stats(self) -> dict[str, Any]:
        seconds = None if self.started is None or self.finished is None else self.finished - self.started
        return {"published": self.sent, "publish_seconds": seconds, "publish_errors": dict(self.errors)}

    def handle(self, query: dict[str, str]) -> dict[str, Any]:
        self.start(int(query["count"]), float(query.get("interval", "0")), int(query.get("size", "200")))
        return {"started": True}


class _Counted:
    """A broker subscription whose ``close`` is counted."""

    __slots__ = ("_counts", "_inner")

    def __init__(self, inner: Any, counts: dict[str, int]) -> None:
        self._inner = inner
        self._counts = counts

    def close(self) -> None:
        self._counts["broker_unsubscribes"] += 1
        self._inner.close()


def _count_subscriptions(broker: Any) -> dict[str, int]:
    """Wrap ``broker.subscribe`` (on the instance) to count subscriptions opened and closed."""
    counts = {"broker_subscribes": 0, "broker_unsubscribes": 0}
    subscribe = broker.subscribe

    def counted(topic: str, handler: Any) -> _Counted:
        subscription = subscribe(topic, handler)
        counts["broker_subscribes"] += 1
        return _Counted(subscription, counts)

    broker.subscribe = counted
    return counts


def make_node() -> Callable[..., Iterable[bytes]]:
    from rtgevent import BearerTokenAuthenticator, Config, Identity, Message, Realtime, Session
    from rtgevent.broker import broker_from_url
    from rtgevent.presence import presence_from_url

    spec = json.loads(os.environ["RTG_BENCH_NODE"])
    namespace = spec["namespace"]
    broker = broker_from_url(spec["broker"], namespace=namespace)
    counts = _count_subscriptions(broker) if spec.get("count") else {}
    rt = Realtime(
        Config(),
        authenticator=BearerTokenAuthenticator(lambda token: Identity(token, tenant_id=TENANT)),
        broker=broker,
        presence=presence_from_url(spec["presence"], namespace=namespace),
    )

    @rt.on_subscribe
    def allow(session: Session, channel: str) -> None:
        return None

    @rt.route("whoami")
    def whoami(session: Session, msg: Message) -> Any:
        return {"identity": session.identity.id, "node": rt.node_id}

    publisher = Publisher(lambda data: None)

    def control(action: str, q: dict[str, str]) -> Any:
        if action == "publish":
            turn = itertools.cycle(channel_names(q["channel"], int(q.get("channels", "1"))))
            publisher.send = lambda data: rt.publish(next(turn), "tick", data)
            return publisher.handle(q)
        if action == "stats":
            return {
                "node": rt.node_id,
                "queue": getattr(rt.broker, "queue_name", None),
                "subscribed": len(rt.rooms.subscribed()),
                "hub_channels": len(rt.hub.channels()),
                "members": rt.hub.channel_size(q["channel"]) if "channel" in q else 0,
                **counts,
                **publisher.stats(),
                **rt.stats(),
            }
        if action == "gc":
            return {"collected": gc.collect()}
        return {"error": f"unknown action {action!r}"}

    return with_control(rt, control, (KeyError, ValueError, RuntimeError))

"""In-process broker: the default.  Several `Realtime` instances sharing one behave as nodes."""

from __future__ import annotations

import threading

from .base import BrokerHandler

__all__ = ["LocalBroker"]


class _LocalSubscription:
    __slots__ = ("_broker", "_handler", "_topic")

    def __init__(self, broker: LocalBroker, topic: str, handler: BrokerHandler) -> None:
        self._broker = broker
        self._topic = topic
        self._handler = handler

    def close(self) -> None:
        self._broker._unsubscribe(self._topic, self._handler)


class LocalBroker:
    """Delivers synchronously, in the publisher's greenlet, to every subscriber of a topic."""

    #: reaches no other process: a node on it needs no start to serve
    shared = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topics: dict[str, list[BrokerHandler]] = {}

    def publish(self, topic: str, payload: bytes, *, expect_receiver: bool = True) -> None:
        with self._lock:
            handlers = list(self._topics.get(topic, ()))
        for handler in handlers:
            handler(payload)

    def subscribe(self, topic: str, handler: BrokerHandler) -> _LocalSubscription:
        with self._lock:
            self._topics.setdefault(topic, []).append(handler)
        return _LocalSubscription(self, topic, handler)

    def _unsubscribe(self, topic: str, handler: BrokerHandler) -> None:
        with self._lock:
            handlers = self._topics.get(topic)
            if handlers and handler in handlers:
                handlers.remove(handler)
                if not handlers:
                    del self._topics[topic]

    def close(self) -> None:
        with self._lock:
            self._topics.clear()

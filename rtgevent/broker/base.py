"""The `Broker` protocol: publish bytes to a topic, subscribe a handler to a topic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Broker", "BrokerHandler", "Subscription"]

BrokerHandler = Callable[[bytes], None]


@runtime_checkable
class Subscription(Protocol):
    def close(self) -> None: ...


@runtime_checkable
class Broker(Protocol):
    def publish(self, topic: str, payload: bytes) -> None: ...

    def subscribe(self, topic: str, handler: BrokerHandler) -> Subscription: ...

    def close(self) -> None: ...

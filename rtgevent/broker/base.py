"""The `Broker` protocol (publish bytes to a topic, subscribe a handler to a topic) and its naming rule."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ..errors import InvalidOption

__all__ = ["Broker", "BrokerHandler", "Subscription", "check_namespace"]

BrokerHandler = Callable[[bytes], None]


@runtime_checkable
class Subscription(Protocol):
    def close(self) -> None: ...


@runtime_checkable
class Broker(Protocol):
    """Carries broker payloads between nodes.

    An implementation may set ``shared = False`` when it reaches no other process (the
    in-process `LocalBroker`): a node whose broker and presence are both unshared serves
    without `Realtime.start`.  Without the attribute a broker counts as shared.

    Optional status attributes, read by `Realtime.stats` (and Prometheus) when present:
    ``connected`` (bool: consuming, every subscription in place), ``errors`` (int:
    failures so far: lost or refused connections, failed publishes) and ``reconnects``
    (int: connections restored after a failure).  `KombuBroker` and `RedisBroker` have them.
    """

    def publish(self, topic: str, payload: bytes, *, expect_receiver: bool = True) -> None:
        """Send ``payload`` to the subscribers of ``topic``.

        With ``expect_receiver`` (node topics, broadcasts) a message nobody took is retried
        and then raised as `BrokerUnavailable`; without it (channel topics: a channel with no
        subscriber on any node is normal) it is simply gone.
        """
        ...

    def subscribe(self, topic: str, handler: BrokerHandler) -> Subscription: ...

    def close(self) -> None: ...


_NAMESPACE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,99}$")


def check_namespace(namespace: str) -> str:
    """Refuse namespaces that would break names on any broker; returns ``namespace``.

    kombu's Redis transport splits pub/sub channel names on ``/`` and on the first
    ``.``, and RabbitMQ caps names at 255 bytes: a conservative alphabet avoids both.
    The presence store checks with the same rule, because one namespace names a
    deployment's broker topics and presence keys alike (the Emitter passes it to both).
    """
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        raise InvalidOption("namespace", f"{namespace!r} must match {_NAMESPACE.pattern}")
    return namespace

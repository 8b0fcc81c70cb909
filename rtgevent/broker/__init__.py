"""Brokers carry broker payloads between nodes (SPEC section 7).

Only this package imports kombu and redis, and only lazily: `broker_from_url` imports an
implementation when it is asked for one, so ``import rtgevent`` needs neither.  The
implementations import nothing from here: what they share lives in `.base` (the protocol,
the namespace rule), `._consumer` (the consuming machinery) and `rtgevent.retry`.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidOption
from ..retry import CLUSTER_SCHEME, redact_url
from .base import Broker, BrokerHandler, Subscription, check_namespace
from .local import LocalBroker

__all__ = ["Broker", "BrokerHandler", "LocalBroker", "Subscription", "broker_from_url"]

_KOMBU_SCHEMES = ("amqp", "amqps", "kombu+redis", "kombu+rediss")
_REDIS_SCHEMES = ("redis", "rediss")


def broker_from_url(url: str, **kwargs: Any) -> Broker:
    """Build the broker a URL names; ``kwargs`` go to its constructor.

    ``amqp://`` / ``amqps://`` → `KombuBroker` (RabbitMQ); ``redis://`` / ``rediss://`` →
    `RedisBroker` (native pub/sub, about twice kombu's Redis transport);
    ``redis+cluster://host1:port1,host2:port2/`` → `RedisClusterBroker` (a Redis Cluster's
    sharded pub/sub, SPEC section 15); ``kombu+redis://`` →
    `KombuBroker` over kombu's Redis transport; ``memory://`` → `LocalBroker` (one process).
    Anything else raises `InvalidOption` now rather than failing later at the first publish.
    """
    if not isinstance(url, str) or "://" not in url:
        raise InvalidOption("broker_url", f"not a URL: {url!r}")
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        # a namespace is accepted (callers pass one whatever the URL) and has nothing to keep apart
        check_namespace(kwargs.pop("namespace", "rtgevent"))
        if kwargs:
            raise InvalidOption("broker_url", f"memory:// takes no options but namespace, got {sorted(kwargs)}")
        return LocalBroker()
    if scheme in _KOMBU_SCHEMES:
        from .kombu import KombuBroker

        return KombuBroker(url, **kwargs)
    if scheme in _REDIS_SCHEMES:
        from .redis import RedisBroker

        return RedisBroker(url, **kwargs)
    if scheme == CLUSTER_SCHEME:
        from .redis_cluster import RedisClusterBroker

        return RedisClusterBroker(url, **kwargs)
    known = ", ".join(f"{s}://" for s in ("memory", *_REDIS_SCHEMES, CLUSTER_SCHEME, *_KOMBU_SCHEMES))
    raise InvalidOption("broker_url", f"unknown scheme {scheme!r} in {redact_url(url)!r} (known: {known})")

"""Brokers carry broker payloads between nodes (SPEC section 7).

Only this package imports kombu and redis, and only lazily: `broker_from_url` imports an
implementation when it is asked for one, so ``import rtgevent`` needs neither.  The helpers
at the bottom (URL redaction, backoff, "log each state change once") are shared by
`KombuBroker` and `RedisBroker`; they live here because both import this package anyway.
"""

from __future__ import annotations

import logging
import random
import re
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from ..errors import InvalidOption
from .base import Broker, BrokerHandler, Subscription
from .local import LocalBroker

__all__ = ["Broker", "BrokerHandler", "LocalBroker", "Subscription", "broker_from_url"]

log = logging.getLogger("rtgevent.broker")

_KOMBU_SCHEMES = ("amqp", "amqps", "kombu+redis", "kombu+rediss")
_REDIS_SCHEMES = ("redis", "rediss")


def broker_from_url(url: str, **kwargs: Any) -> Broker:
    """Build the broker a URL names; ``kwargs`` go to its constructor.

    ``amqp://`` / ``amqps://`` → `KombuBroker` (RabbitMQ); ``redis://`` / ``rediss://`` →
    `RedisBroker` (native pub/sub, about twice kombu's Redis transport); ``kombu+redis://`` →
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
    known = ", ".join(f"{s}://" for s in ("memory", *_REDIS_SCHEMES, *_KOMBU_SCHEMES))
    raise InvalidOption("broker_url", f"unknown scheme {scheme!r} in {redact_url(url)!r} (known: {known})")


# ---------------------------------------------------------------- shared private helpers

_NAMESPACE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,99}$")


def check_namespace(namespace: str) -> str:
    """Refuse namespaces that would break names on either broker.

    kombu's Redis transport splits pub/sub channel names on ``/`` and on the first
    ``.``, and RabbitMQ caps names at 255 bytes: a conservative alphabet avoids both.
    """
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        raise InvalidOption("namespace", f"{namespace!r} must match {_NAMESPACE.pattern}")
    return namespace


def redact_url(url: str) -> str:
    """The URL without its password, for log lines and error messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return "<unparsable url>"


def backoff_delay(attempt: int, *, start: float = 0.1, cap: float = 5.0) -> float:
    """Delay before reconnect attempt ``attempt`` (0-based): doubling from ``start`` to ``cap``.

    Jittered to 50-100 % of the nominal delay so that every node of a cluster does not
    reconnect in the same instant after a broker restart.
    """
    nominal = min(cap, start * 2.0 ** min(attempt, 32))
    return nominal * (0.5 + random.random() / 2)


def sleep_backoff(stop: Any, delay: float, woken: Callable[[], bool]) -> None:
    """Wait ``delay`` seconds on the gevent Event ``stop``, ending early once ``woken()``.

    A publish that reached the server proves it is back: the consumer should not sleep out
    the rest of a 5 s backoff meanwhile.  Publishers may be OS threads, which cannot wake a
    gevent Event safely, so they raise a flag that is polled every 0.1 s instead.
    """
    deadline = time.monotonic() + delay
    while not woken() and not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        stop.wait(min(0.1, left))


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

    def set_up(self) -> None:
        if self._up is False:
            log.info("%s: connection restored", self._what)
        elif self._up is None:
            log.debug("%s: connected", self._what)
        self._up = True

    def set_down(self, exc: BaseException) -> None:
        if self._up is True:
            log.warning("%s: connection lost: %s; reconnecting in the background", self._what, _describe(exc))
        elif self._up is None:
            log.warning("%s: cannot connect: %s; retrying in the background", self._what, _describe(exc))
        self._up = False


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

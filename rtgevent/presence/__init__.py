"""Presence: who is online, on which node (SPEC section 7).

`RedisPresence` is imported lazily (by `presence_from_url`, or on first access to
``rtgevent.presence.RedisPresence``) so that ``import rtgevent`` never imports redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InvalidOption
from ..retry import CLUSTER_SCHEME, redact_url
from .base import Presence
from .memory import MemoryPresence

if TYPE_CHECKING:
    from .redis import RedisPresence

__all__ = ["MemoryPresence", "Presence", "RedisPresence", "presence_from_url"]

#: Keyword options `presence_from_url` accepts: those of `RedisPresence`.  `MemoryPresence`
#: ignores them, so one configuration works whichever URL a deployment picks.
_OPTIONS = frozenset({"ttl", "namespace", "socket_timeout", "retries"})


def presence_from_url(url: str, **kwargs: Any) -> Presence:
    """``redis://`` / ``rediss://`` / ``redis+cluster://`` → `RedisPresence`, ``memory://`` → `MemoryPresence`.

    Anything else raises `InvalidOption` showing the URL without its password.
    """
    unknown = sorted(set(kwargs) - _OPTIONS)
    if unknown:
        raise InvalidOption("presence_url", f"unknown option(s) {', '.join(unknown)}")
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower() if sep else ""
    if scheme in ("redis", "rediss", CLUSTER_SCHEME):
        from .redis import RedisPresence

        return RedisPresence(url, **kwargs)
    if scheme == "memory":
        return MemoryPresence()
    raise InvalidOption(
        "presence_url",
        f"unsupported scheme {scheme!r} in {redact_url(url)!r}: use redis://, rediss://, redis+cluster:// or memory://",
    )


def __getattr__(name: str) -> Any:
    """Lazy ``RedisPresence``: importing redis costs time and is needed only by clustered nodes."""
    if name == "RedisPresence":
        from .redis import RedisPresence

        return RedisPresence
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

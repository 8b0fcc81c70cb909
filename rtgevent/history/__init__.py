"""History: streams with offsets and an epoch, for recovery after a reconnect (SPEC section 14).

`RedisHistory` is imported lazily (by `history_from_url`, or on first access to
``rtgevent.history.RedisHistory``) so that ``import rtgevent`` never imports redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InvalidOption
from ..retry import redact_url
from .base import History, Position, Publication, Recovery, Stamp
from .memory import MemoryHistory

if TYPE_CHECKING:
    from .redis import RedisHistory

__all__ = [
    "History",
    "MemoryHistory",
    "Position",
    "Publication",
    "Recovery",
    "RedisHistory",
    "Stamp",
    "history_from_url",
]

_OPTIONS = frozenset({"namespace", "socket_timeout", "retries"})


def history_from_url(url: str, **kwargs: Any) -> History:
    """``redis://`` / ``rediss://`` / ``redis+cluster://`` → `RedisHistory`, ``memory://`` → `MemoryHistory`.

    Options are `RedisHistory`'s (`MemoryHistory` ignores them); anything else raises
    `InvalidOption` showing the URL without its password.
    """
    unknown = sorted(set(kwargs) - _OPTIONS)
    if unknown:
        raise InvalidOption("history_url", f"unknown option(s) {', '.join(unknown)}")
    scheme, sep, _ = url.partition("://") if isinstance(url, str) else ("", "", "")
    scheme = scheme.lower() if sep else ""
    if scheme in ("redis", "rediss", "redis+cluster"):
        from .redis import RedisHistory

        return RedisHistory(url, **kwargs)
    if scheme == "memory":
        return MemoryHistory()
    raise InvalidOption(
        "history_url",
        f"unsupported scheme {scheme!r} in {redact_url(str(url))!r}: use redis://, rediss://, redis+cluster:// or memory://",
    )


def __getattr__(name: str) -> Any:
    """Lazy ``RedisHistory``: importing redis is needed only by clustered nodes."""
    if name == "RedisHistory":
        from .redis import RedisHistory

        return RedisHistory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

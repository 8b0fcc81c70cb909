"""Route resolution: exact match, then the longest matching prefix, then the fallback (pure).

Resolution happens once per message, so prefixes are kept sorted longest first and the
exact table is a dict; nothing here knows about sessions or sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import InvalidOption

__all__ = ["Router"]

H = TypeVar("H")


class Router(Generic[H]):
    def __init__(self) -> None:
        self._exact: dict[str, H] = {}
        self._prefixes: list[tuple[str, H]] = []
        self.fallback: H | None = None

    def add_route(self, route: str, handler: H) -> None:
        if not route:
            raise InvalidOption("route", "must be a non-empty string")
        if route in self._exact:
            raise InvalidOption("route", f"{route!r} is already registered")
        self._exact[route] = handler

    def add_prefix(self, prefix: str, handler: H) -> None:
        if not prefix:
            raise InvalidOption("prefix", "must be a non-empty string")
        if any(p == prefix for p, _ in self._prefixes):
            raise InvalidOption("prefix", f"{prefix!r} is already registered")
        self._prefixes.append((prefix, handler))
        self._prefixes.sort(key=lambda item: len(item[0]), reverse=True)

    def resolve(self, route: str) -> H | None:
        handler = self._exact.get(route)
        if handler is not None:
            return handler
        for prefix, handler in self._prefixes:
            if route.startswith(prefix):
                return handler
        return self.fallback

    def map(self, wrap: Callable[[H], H]) -> Router[H]:
        """A router with every handler passed through ``wrap`` (used to bake in middleware)."""
        out: Router[H] = Router()
        out._exact = {route: wrap(h) for route, h in self._exact.items()}
        out._prefixes = [(p, wrap(h)) for p, h in self._prefixes]
        out.fallback = wrap(self.fallback) if self.fallback is not None else None
        return out

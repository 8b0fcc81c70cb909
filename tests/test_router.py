"""Route resolution (pure): exact beats prefix, the longest prefix wins, the fallback comes last."""

from __future__ import annotations

import pytest

from rtgevent.router import Router


def make() -> Router[str]:
    router: Router[str] = Router()
    router.add_route("chat.send", "exact")
    router.add_prefix("chat.", "chat-prefix")
    router.add_prefix("chat.send", "send-prefix")
    router.add_prefix("c", "c-prefix")
    return router


def test_exact_beats_every_prefix() -> None:
    """An exact route wins over prefixes that match it too, even the longest one."""
    assert make().resolve("chat.send") == "exact"


def test_longest_prefix_wins_whatever_the_registration_order() -> None:
    """Among matching prefixes the longest is chosen, registered first or last."""
    router = make()
    assert router.resolve("chat.send.later") == "send-prefix"
    assert router.resolve("chat.edit") == "chat-prefix"
    assert router.resolve("cat") == "c-prefix"
    reverse: Router[str] = Router()
    for prefix in ("chat.send", "chat.", "c"):
        reverse.add_prefix(prefix, prefix)
    assert reverse.resolve("chat.sendx") == "chat.send"
    assert reverse.resolve("chat.x") == "chat."


def test_fallback_only_when_nothing_matches() -> None:
    """The fallback answers routes no exact route or prefix matched, and only those."""
    router = make()
    router.fallback = "fallback"
    assert router.resolve("other") == "fallback"
    assert router.resolve("chat.send") == "exact"
    assert router.resolve("chat.x") == "chat-prefix"


def test_unknown_route_without_fallback_is_none() -> None:
    """Without a fallback an unmatched route resolves to None."""
    assert make().resolve("zzz") is None


def test_exact_route_is_not_a_prefix() -> None:
    """An exact route does not match longer routes that merely start with it."""
    router: Router[str] = Router()
    router.add_route("ping", "ping")
    assert router.resolve("ping.more") is None
    assert router.resolve("pin") is None


def test_duplicates_and_empty_names_are_refused() -> None:
    """Registering a route or prefix twice, or an empty one, raises ValueError."""
    router = make()
    with pytest.raises(ValueError, match="rtgevent:"):
        router.add_route("chat.send", "again")
    with pytest.raises(ValueError, match="rtgevent:"):
        router.add_prefix("chat.", "again")
    with pytest.raises(ValueError):
        router.add_route("", "empty")
    with pytest.raises(ValueError):
        router.add_prefix("", "empty")


def test_map_wraps_every_handler_and_keeps_priorities() -> None:
    """map() returns a router whose handlers are wrapped, with the same resolution."""
    router = make()
    router.fallback = "fallback"
    wrapped = router.map(lambda handler: f"<{handler}>")
    assert wrapped.resolve("chat.send") == "<exact>"
    assert wrapped.resolve("chat.send.x") == "<send-prefix>"
    assert wrapped.resolve("zzz") == "<fallback>"
    assert router.resolve("chat.send") == "exact"  # the original is untouched


def test_map_without_fallback_keeps_none() -> None:
    """map() of a router without a fallback still has none."""
    assert make().map(lambda handler: handler + "!").resolve("zzz") is None

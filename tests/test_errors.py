"""The exception tree (SPEC section 9): one root, ``rtgevent:`` messages, wire codes of section 2."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest

import rtgevent
import rtgevent.errors as errors_module
from rtgevent.errors import (
    BadMessage,
    HandlerError,
    HandlerTimeout,
    InvalidOption,
    RealtimeError,
    Unauthorized,
    UnknownRoute,
)

#: SPEC section 9, by name
SPEC_CLASSES = {
    "RealtimeClosed",
    "UnknownRoute",
    "BackpressureError",
    "SessionClosed",
    "AlreadyStarted",
    "InvalidOption",
    "Unauthorized",
    "InvalidBrokerMessage",
    "ConnectionLimit",
    "BadMessage",
}
#: SPEC section 2: the codes an rt.error may carry
WIRE_CODES = {"bad_message", "unknown_route", "handler_error", "timeout", "unauthorized", "limit", "unavailable"}


def all_error_classes() -> list[type[BaseException]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors_module, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == errors_module.__name__
    ]


def instance(cls: type[BaseException]) -> BaseException:
    if issubclass(cls, InvalidOption):
        return cls("read_limit", "must be positive")
    return cls()


def test_every_error_class_derives_from_realtime_error() -> None:
    """Every exception class in rtgevent/errors.py is a RealtimeError; SPEC's names all exist."""
    classes = all_error_classes()
    assert {cls.__name__ for cls in classes} >= SPEC_CLASSES | {"RealtimeError"}
    for cls in classes:
        assert issubclass(cls, RealtimeError), cls


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.__name__)
def test_messages_start_with_rtgevent(cls: type[BaseException]) -> None:
    """Each error's message starts with "rtgevent:", with default and custom text alike."""
    assert str(instance(cls)).startswith("rtgevent: ")
    if not issubclass(cls, (InvalidOption, UnknownRoute)):
        assert str(cls("something happened")) == "rtgevent: something happened"
        assert str(cls("rtgevent: already prefixed")) == "rtgevent: already prefixed"  # not doubled


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.__name__)
def test_wire_codes_are_spec_codes(cls: type[RealtimeError]) -> None:
    """Every error's wire_code is one of the rt.error codes of SPEC section 2."""
    assert cls.wire_code in WIRE_CODES


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (BadMessage, "bad_message"),
        (UnknownRoute, "unknown_route"),
        (HandlerError, "handler_error"),
        (HandlerTimeout, "timeout"),
        (Unauthorized, "unauthorized"),
    ],
)
def test_client_facing_errors_carry_their_wire_code(cls: type[RealtimeError], code: str) -> None:
    """The errors answered on the wire map to the codes of SPEC section 2."""
    assert cls.wire_code == code
    assert cls().wire_code == code


def test_message_property_drops_the_prefix() -> None:
    """.message is the text a client may be shown, without the prefix."""
    assert BadMessage("invalid JSON").message == "invalid JSON"
    assert UnknownRoute("chat.x").message == "unknown route 'chat.x'"
    assert UnknownRoute("chat.x").route == "chat.x"
    assert UnknownRoute().message == "unknown route"


def test_invalid_option_names_the_field_and_is_a_value_error() -> None:
    """InvalidOption names the bad field and is also a ValueError."""
    error = InvalidOption("pong_timeout", "must be positive")
    assert error.field == "pong_timeout"
    assert "pong_timeout" in str(error)
    assert isinstance(error, ValueError)


def _misuse() -> list[tuple[str, Callable[[], object], str]]:
    from rtgevent.router import Router

    router: Router[str] = Router()
    router.add_route("chat.send", "h")
    router.add_prefix("chat.", "h")
    return [
        ("empty route", lambda: Router().add_route("", "h"), "route"),
        ("route twice", lambda: router.add_route("chat.send", "h"), "route"),
        ("empty prefix", lambda: Router().add_prefix("", "h"), "prefix"),
        ("prefix twice", lambda: router.add_prefix("chat.", "h"), "prefix"),
        ("empty identity id", lambda: rtgevent.Identity(""), "Identity.id"),
        ("snowflake node out of range", lambda: rtgevent.SnowflakeIds(1024), "node"),
        ("negative snowflake node", lambda: rtgevent.SnowflakeIds(-1), "node"),
        ("empty static token", lambda: rtgevent.StaticTokenAuthenticator("", rtgevent.Identity("a")), "token"),
        ("timeout of zero seconds", lambda: rtgevent.timeout(0), "seconds"),
    ]


@pytest.mark.parametrize(("call", "field"), [case[1:] for case in _misuse()], ids=[case[0] for case in _misuse()])
def test_api_misuse_raises_invalid_option_naming_the_argument(call: Callable[[], object], field: str) -> None:
    """Misusing the API (router, Identity, SnowflakeIds, StaticTokenAuthenticator, timeout) is InvalidOption."""
    with pytest.raises(InvalidOption) as info:
        call()
    assert info.value.field == field
    assert str(info.value).startswith("rtgevent: invalid option ")


def test_config_raises_invalid_option_naming_the_field() -> None:
    """An invalid Config value raises InvalidOption naming the field, at construction."""
    with pytest.raises(InvalidOption, match="read_limit") as info:
        rtgevent.Config(read_limit=0)
    assert info.value.field == "read_limit"


def test_errors_are_exported_and_distinct() -> None:
    """The SPEC's errors are public names of rtgevent, and none shadows a builtin."""
    for name in SPEC_CLASSES | {"RealtimeError"}:
        assert name in rtgevent.__all__
        assert getattr(rtgevent, name) is getattr(errors_module, name)
    import builtins

    for cls in all_error_classes():
        assert not hasattr(builtins, cls.__name__), cls


def test_errors_are_not_builtin_errors() -> None:
    """Catching RealtimeError catches no unrelated errors (the tree is separate from builtins')."""
    for cls in all_error_classes():
        assert not issubclass(cls, (OSError, TimeoutError, ConnectionError, KeyError)), cls

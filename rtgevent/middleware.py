"""Middleware: ``fn(next_handler) -> handler``; the first registered is the outermost.

The chain is built once, when the application starts serving, and baked into each
route's handler, so dispatch costs one call per middleware and no list walk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import gevent

from .errors import HandlerError, HandlerTimeout, InvalidOption, RealtimeError
from .message import Message

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Handler", "Middleware", "build_chain", "logger", "recovery", "timeout"]

Handler = Callable[["Session", Message], Any]
Middleware = Callable[[Handler], Handler]


def build_chain(middleware: Sequence[Middleware], handler: Handler) -> Handler:
    for mw in reversed(middleware):
        handler = mw(handler)
    return handler


class _Reported(HandlerError):
    """A HandlerError whose cause was already given to on_error (by `recovery`)."""


def recovery() -> Middleware:
    """Turn a handler's exception into ``rt.error handler_error``; give it to ``on_error``.

    The dispatcher does this too as a last resort; put `recovery()` in the chain when
    an outer middleware (say `logger()`) should see the failure as handled.
    """

    def middleware(next_handler: Handler) -> Handler:
        def handler(session: Session, msg: Message) -> Any:
            try:
                return next_handler(session, msg)
            except RealtimeError:
                raise
            except Exception as exc:
                session.report(exc)
                raise _Reported(_describe(session, exc)) from exc

        return handler

    return middleware


def _describe(session: Session, exc: BaseException) -> str:
    return f"handler error: {exc!r}" if session.debug else "handler error"


class _Timeout(gevent.Timeout):  # type: ignore[misc]
    pass


def timeout(seconds: float) -> Middleware:
    """Bound a handler's run time (gevent.Timeout); past it the client gets ``rt.error timeout``.

    Only blocking handlers can be cut: gevent interrupts at the next switch.
    """
    if seconds <= 0:
        raise InvalidOption("seconds", f"timeout() needs a positive number of seconds, got {seconds!r}")

    def middleware(next_handler: Handler) -> Handler:
        def handler(session: Session, msg: Message) -> Any:
            timer = _Timeout(seconds)
            timer.start()
            try:
                return next_handler(session, msg)
            except _Timeout as exc:
                if exc is not timer:
                    raise
                raise HandlerTimeout(f"handler for {msg.route!r} ran past {seconds:g} s") from None
            finally:
                timer.close()

        return handler

    return middleware


def logger(log: logging.Logger | None = None) -> Middleware:
    """One log line per message: session, route, duration, outcome."""
    target = log or logging.getLogger("rtgevent.messages")

    def middleware(next_handler: Handler) -> Handler:
        def handler(session: Session, msg: Message) -> Any:
            started = time.perf_counter()
            outcome = "ok"
            try:
                return next_handler(session, msg)
            except RealtimeError as exc:
                outcome = exc.wire_code
                raise
            except Exception:
                outcome = "handler_error"
                raise
            except gevent.Timeout:
                outcome = "timeout"  # cut by an outer timeout() (or any gevent.Timeout)
                raise
            except BaseException:
                outcome = "cancelled"  # the greenlet was killed (shutdown)
                raise
            finally:
                target.info(
                    "session=%s route=%s duration_ms=%.3f outcome=%s",
                    session.id,
                    msg.route,
                    (time.perf_counter() - started) * 1000,
                    outcome,
                )

        return handler

    return middleware

"""WSGI admission: handshake check, Origin, connection limit, authentication → accept or refuse.

The gate decides and writes nothing: a refusal is data (`Refused`) that ``transport/``
writes, as an HTTP answer or, where gevent-websocket already sent the 101, as a close
frame (SPEC section 4).  Accepting reserves one of ``max_connections`` until `leave`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from gevent import Timeout
from werkzeug.wrappers import Request

from .auth import Authenticator
from .config import Config
from .errors import Unauthorized
from .transport.acquire import uses_prior_handshake
from .transport.handshake import Accept, Refusal, check_upgrade, origin_allowed, refusal
from .types import Identity

__all__ = ["Admitted", "Gate", "Refused"]

ErrorSink = Callable[[BaseException], None]

#: the identity of an in-band session until its ``rt.auth`` message is verified
UNAUTHENTICATED = Identity("unauthenticated")


@dataclasses.dataclass(frozen=True)
class Admitted:
    #: the handshake answer to send; None under gevent-websocket, where the 101 went out already
    accept: Accept | None
    identity: Identity
    #: the identity comes later, with the session's first message (``rt.auth``)
    in_band: bool


@dataclasses.dataclass(frozen=True)
class Refused:
    #: the HTTP answer, where the handshake is still ours to answer
    response: Refusal
    #: the close code where the 101 is already sent (1008 policy, 1013 try again later)
    close_code: int
    reason: str


class Gate:
    """Who may open a session here, decided from the upgrade request alone."""

    __slots__ = ("_authenticator", "_config", "_report", "closed", "reserved")

    def __init__(self, config: Config, authenticator: Authenticator, report: ErrorSink) -> None:
        self._config = config
        self._authenticator = authenticator
        self._report = report
        #: admitted sessions not yet ended (the count ``max_connections`` bounds)
        self.reserved = 0
        #: shutting down: every upgrade is refused
        self.closed = False

    def admit(self, environ: dict[str, Any]) -> Admitted | Refused:
        """Check one upgrade request; an `Admitted` holds a slot until `leave`."""
        config = self._config
        accept: Accept | None = None
        if not uses_prior_handshake(environ):
            checked = check_upgrade(environ, compression=config.compression)
            if isinstance(checked, Refusal):
                return Refused(checked, 1002, "bad handshake")
            accept = checked
        if self.closed:
            return _refused("503 Service Unavailable", 1013, "shutting down")
        if not origin_allowed(
            environ.get("HTTP_ORIGIN"),
            environ.get("HTTP_HOST"),
            config.origin_patterns,
            insecure=config.insecure_origins,
        ):
            return _refused("403 Forbidden", 1008, "origin not allowed")
        limit = config.max_connections
        if limit is not None and self.reserved >= limit:
            return _refused("503 Service Unavailable", 1013, "connection limit")
        # the slot is taken before authentication: a flood of slow logins counts against the limit
        self.reserved += 1
        in_band = bool(getattr(self._authenticator, "in_band", False))
        identity = UNAUTHENTICATED
        if not in_band:
            try:
                identity = self._authenticate(environ)
            except Unauthorized as exc:
                self.reserved -= 1
                self._report(exc)
                return _refused("401 Unauthorized", 1008, "unauthorized")
        return Admitted(accept, identity, in_band)

    def leave(self) -> None:
        """An admitted session ended: its slot is free again."""
        self.reserved -= 1

    def _authenticate(self, environ: dict[str, Any]) -> Identity:
        authenticator = self._authenticator
        try:
            static = getattr(authenticator, "static_identity", None)
            if isinstance(static, Identity):
                return static  # the answer does not depend on the request: build no Request
            with Timeout(self._config.auth_timeout, Unauthorized("authentication timed out")):
                identity = authenticator.authenticate(Request(environ))
        except Unauthorized:
            raise
        except Exception as exc:
            self._report(exc)
            raise Unauthorized("authenticator failed") from exc
        if not isinstance(identity, Identity):
            raise Unauthorized("authenticator returned no identity")
        return identity


def _refused(status: str, code: int, reason: str) -> Refused:
    return Refused(refusal(status, reason), code, reason)

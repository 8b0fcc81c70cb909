"""Authenticators: turn an upgrade request into an `Identity`, or refuse it.

An authenticator sees a ``werkzeug.Request`` over the upgrade environ (under Flask, the
request context is active, so ``flask.session`` works) and returns an `Identity` or
raises `Unauthorized`.  The framework bounds the call by ``Config.auth_timeout`` and
answers a refusal with HTTP 401 and nothing else.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from werkzeug.wrappers import Request

from .errors import InvalidOption, Unauthorized
from .types import Identity

__all__ = [
    "AnonymousAuthenticator",
    "Authenticator",
    "BearerTokenAuthenticator",
    "InBandAuthenticator",
    "StaticTokenAuthenticator",
]

TokenVerifier = Callable[[str], Identity]


@runtime_checkable
class Authenticator(Protocol):
    """Turns an upgrade request into an `Identity` or raises `Unauthorized`.

    Two optional attributes tell the gate what an authenticator needs, so that it asks
    the object instead of checking its class:

    * ``in_band = True``: the identity comes after the upgrade, from the session's first
      message (``rt.auth``), through a ``verify(token)`` method; ``authenticate`` is not called.
    * ``static_identity``: an `Identity` that does not depend on the request: no
      request object is built for it (the anonymous default, on every connection).
    """

    def authenticate(self, request: Request) -> Identity: ...


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class AnonymousAuthenticator:
    """The default: everyone is ``anonymous`` (guard the endpoint some other way)."""

    static_identity = Identity("anonymous")

    def authenticate(self, request: Request) -> Identity:
        return self.static_identity


class StaticTokenAuthenticator:
    """One fixed bearer token for one identity (internal services, examples).

    The comparison is constant-time (`hmac.compare_digest`) so the token cannot be
    guessed byte by byte from response times.
    """

    def __init__(self, token: str, identity: Identity) -> None:
        if not token:
            raise InvalidOption("token", "StaticTokenAuthenticator needs a non-empty token")
        self._token = token.encode()
        self._identity = identity

    def authenticate(self, request: Request) -> Identity:
        token = bearer_token(request)
        if token is None or not hmac.compare_digest(_header_bytes(token), self._token):
            raise Unauthorized("invalid token")
        return self._identity.copy()


class BearerTokenAuthenticator:
    """A token from ``Authorization: Bearer``, or from the query string.

    Browsers cannot set headers on a WebSocket, so ``?access_token=...`` (the name is
    ``query_param``) is accepted too; ``verify(token)`` returns the Identity or raises
    `Unauthorized`.
    """

    def __init__(self, verify: TokenVerifier, query_param: str | None = "access_token") -> None:
        self._verify = verify
        self._query_param = query_param

    def authenticate(self, request: Request) -> Identity:
        token = bearer_token(request)
        if token is None and self._query_param:
            token = request.args.get(self._query_param) or None
        if token is None:
            raise Unauthorized("missing token")
        return _verified(self._verify, token)


class InBandAuthenticator:
    """The seed-003 flow: the upgrade is accepted, the first message authenticates.

    The first message must be route ``rt.auth`` with the token as ``data``, within
    ``auth_timeout``; until then no handler runs and the session is in neither the hub
    nor presence.  ``authenticate`` (before the upgrade) is never called for it.
    """

    #: the gate admits without authenticating; the core verifies the first message
    in_band = True

    def __init__(self, verify: TokenVerifier) -> None:
        self._verify = verify

    def authenticate(self, request: Request) -> Identity:  # pragma: no cover - never called
        raise Unauthorized("in-band authentication happens after the upgrade")

    def verify(self, token: object) -> Identity:
        if not isinstance(token, str) or not token:
            raise Unauthorized("rt.auth needs the token as a string")
        return _verified(self._verify, token)


def _header_bytes(value: str) -> bytes:
    """The bytes the client sent: WSGI decodes header values as latin-1 (PEP 3333).

    Without this a non-ASCII token (sent as UTF-8) could never match.
    """
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:  # not from a WSGI environ: take the text as it is
        return value.encode()


def _verified(verify: TokenVerifier, token: str) -> Identity:
    identity = verify(token)
    if not isinstance(identity, Identity):
        raise Unauthorized("token verifier returned no identity")
    return identity

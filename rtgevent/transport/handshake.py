"""Validate a WebSocket upgrade request and build the answer (pure: RFC 6455 section 4.2).

Works on a WSGI environ and returns data: an `Accept` to send as 101, or a `Refusal`
(status, headers, body) to send as a plain HTTP response.  No socket is touched here,
so every rule is unit-testable.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import fnmatch
import functools
import hashlib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.headers import build_extension, parse_extension

from ..config import Deflate

__all__ = [
    "Accept",
    "Refusal",
    "accept_key",
    "check_upgrade",
    "origin_allowed",
    "refusal",
    "response_101",
]

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUPPORTED_VERSION = "13"


@dataclasses.dataclass(frozen=True)
class Refusal:
    status: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclasses.dataclass(frozen=True)
class Accept:
    """A valid upgrade: the ``Sec-WebSocket-Accept`` value and what was negotiated."""

    accept: str
    extensions: list[Extension]
    extensions_header: str | None


def refusal(status: str, text: str, extra: Sequence[tuple[str, str]] = ()) -> Refusal:
    body = f"{text}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    headers.extend(extra)
    return Refusal(status, headers, body)


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def is_upgrade_request(environ: Mapping[str, Any]) -> bool:
    return "websocket" in _tokens(environ.get("HTTP_UPGRADE", ""))


def check_upgrade(
    environ: Mapping[str, Any], *, compression: bool | Deflate | Mapping[str, Any] = False
) -> Accept | Refusal:
    """Check the request line and headers of RFC 6455 section 4.2.1; negotiate deflate.

    ``compression`` is what `Config.compression` accepts (`Deflate.of`).
    """
    if environ.get("REQUEST_METHOD") != "GET":
        return refusal("405 Method Not Allowed", "WebSocket upgrades use GET", [("Allow", "GET")])
    if environ.get("SERVER_PROTOCOL", "HTTP/1.1") != "HTTP/1.1":
        return refusal("400 Bad Request", "WebSocket upgrades need HTTP/1.1")
    if not is_upgrade_request(environ):
        return refusal("400 Bad Request", "this endpoint only accepts WebSocket upgrades")
    if "upgrade" not in _tokens(environ.get("HTTP_CONNECTION", "")):
        return refusal("400 Bad Request", "missing 'Connection: Upgrade'")
    version = environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip()
    if version != SUPPORTED_VERSION:
        return refusal(
            "426 Upgrade Required",
            "unsupported Sec-WebSocket-Version",
            [("Sec-WebSocket-Version", SUPPORTED_VERSION)],
        )
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        return refusal("400 Bad Request", "invalid Sec-WebSocket-Key")
    extensions: list[Extension] = []
    header: str | None = None
    offered = environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS")
    settings = Deflate.of(compression)
    if settings is not None and offered:
        extensions, header = _negotiate_deflate(offered, _factory(settings))
    return Accept(accept_key(key), extensions, header)


@functools.lru_cache(maxsize=8)
def _factory(settings: Deflate) -> ServerPerMessageDeflateFactory:
    """websockets' negotiation, with ``settings``; one factory per settings, not per handshake.

    A limited ``server_max_window_bits`` is always sent back in the response, whether the
    client offered the parameter or not: the server must not use a larger window than it
    declared (RFC 7692 section 7.1.2.1), and a client that knows the limit can size its
    decompressor to it.
    """
    return ServerPerMessageDeflateFactory(
        server_no_context_takeover=settings.server_no_context_takeover,
        client_no_context_takeover=settings.client_no_context_takeover,
        server_max_window_bits=settings.server_max_window_bits,
        client_max_window_bits=settings.client_max_window_bits,
        compress_settings={"memLevel": settings.memory_level},
    )


def _negotiate_deflate(offered: str, factory: ServerPerMessageDeflateFactory) -> tuple[list[Extension], str | None]:
    try:
        offers = parse_extension(offered)
    except Exception:
        return [], None
    for name, params in offers:
        if name != factory.name:
            continue
        try:
            response_params, extension = factory.process_request_params(params, [])
        except Exception:
            continue  # an offer we cannot accept: try the next one (RFC 7692 section 5.1)
        return [extension], build_extension([(name, response_params)])
    return [], None


def response_101(accept: Accept) -> bytes:
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept.accept}",
    ]
    if accept.extensions_header:
        lines.append(f"Sec-WebSocket-Extensions: {accept.extensions_header}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def headers_101(accept: Accept) -> list[tuple[str, str]]:
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept.accept)]
    if accept.extensions_header:
        headers.append(("Sec-WebSocket-Extensions", accept.extensions_header))
    return headers


#: the ports an origin of these schemes means when it names none (RFC 6454 section 4)
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
#: a host name: dot-separated labels of letters, digits, ``-`` and ``_``, maybe a final dot
_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*\.?")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


@dataclasses.dataclass(frozen=True)
class _Origin:
    scheme: str
    #: lower case; an IPv6 address in brackets, as written in a URL
    host: str
    #: the port written, or the scheme's default one; None for an unknown scheme without one
    port: int | None


def _host(value: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (a ``Host`` header, an origin's authority) parsed and checked, or None.

    The host must be a plain host name or an IP address and the text nothing but
    ``host[:port]``: a backslash, an ``@``, a path, a space, anything a URL parser may read
    differently from a browser makes the whole value invalid.
    """
    try:
        parts = urlsplit(f"//{value}")
        port = parts.port
    except ValueError:
        return None
    hostname = parts.hostname
    if not hostname:
        return None
    if value.startswith("["):
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            return None
        host = f"[{hostname}]"
    elif _HOST_NAME.fullmatch(hostname):
        host = hostname
    else:
        return None
    if value != (host if port is None else f"{host}:{port}"):
        return None  # more than host[:port]: a user name, a path, an empty port, leading zeros
    return host, port


def _parse_origin(origin: str) -> _Origin | None:
    """An ``Origin`` value (RFC 6454: ``scheme://host[:port]``, lower-cased), or None if it is not one."""
    scheme, sep, authority = origin.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return None
    parsed = _host(authority)
    if parsed is None:
        return None
    host, port = parsed
    return _Origin(scheme, host, port if port is not None else _DEFAULT_PORTS.get(scheme))


def _matches(origin: _Origin, pattern: str) -> bool:
    """Does ``origin`` match one ``origin_patterns`` entry (lower-cased), part by part?

    ``[scheme://]host[:port]``, each part a shell-style glob.  The host part is matched
    against the parsed host alone, so ``*`` never reaches into a port, a path or a user
    name.  A pattern with a scheme names one origin: its port is the scheme's default
    unless it says one.  A pattern without a scheme matches the host on any port, unless
    it says one.
    """
    scheme_glob, sep, rest = pattern.partition("://")
    if not sep:
        scheme_glob, rest = "", pattern
    rest = rest.rstrip("/")
    host = origin.host
    if rest.startswith("["):
        # an IPv6 address: matched inside its brackets (a glob would read them as a set)
        host_glob, _, after = rest[1:].partition("]")
        if not host.startswith("[") or (after and not after.startswith(":")):
            return False
        host = host[1:-1]
        port_glob = after[1:] if after else None
    else:
        host_glob, colon, port_text = rest.partition(":")
        port_glob = port_text if colon else None
    if scheme_glob and not fnmatch.fnmatchcase(origin.scheme, scheme_glob):
        return False
    if not fnmatch.fnmatchcase(host, host_glob):
        return False
    if port_glob is None:
        if not scheme_glob:
            return True  # a host pattern: any port
        return origin.port == _DEFAULT_PORTS.get(origin.scheme)
    return origin.port is not None and fnmatch.fnmatchcase(str(origin.port), port_glob)


def origin_allowed(
    origin: str | None,
    host: str | None,
    patterns: Sequence[str],
    *,
    insecure: bool = False,
) -> bool:
    """Decide the Origin policy of SPEC section 3 (``origin_patterns``, ``insecure_origins``).

    No Origin header, or an empty one, means the client is not a browser: allowed
    (authentication guards it).  Otherwise the value is parsed as an origin
    (``scheme://host[:port]``, case-insensitive); one that does not parse or has no
    host (``null``, a path, a user name, a backslash) is refused.  A parsed origin is
    allowed when it is same-origin (its host and port equal those of ``Host``, the port
    defaulting to the origin scheme's) or matches one of ``patterns``: ``host``,
    ``host:port``, ``scheme://host`` or ``scheme://host:port``, each part shell-style,
    matched against the parsed parts (see `_matches`), never against the raw text.
    """
    if insecure or origin is None or not origin.strip():
        return True
    parsed = _parse_origin(origin.strip().lower())
    if parsed is None:
        return False
    server = _host(host.strip().lower()) if host else None
    if server is not None:
        server_host, server_port = server
        if (server_host, server_port if server_port is not None else _DEFAULT_PORTS.get(parsed.scheme)) == (
            parsed.host,
            parsed.port,
        ):
            return True
    return any(_matches(parsed, pattern.strip().lower()) for pattern in patterns)

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
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.headers import build_extension, parse_extension

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


def check_upgrade(environ: Mapping[str, Any], *, compression: bool = False) -> Accept | Refusal:
    """Check the request line and headers of RFC 6455 section 4.2.1; negotiate deflate."""
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
    if compression and offered:
        extensions, header = _negotiate_deflate(offered)
    return Accept(accept_key(key), extensions, header)


def _negotiate_deflate(offered: str) -> tuple[list[Extension], str | None]:
    factory = ServerPerMessageDeflateFactory()
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


def origin_allowed(
    origin: str | None,
    host: str | None,
    patterns: Sequence[str],
    *,
    insecure: bool = False,
) -> bool:
    """Decide the Origin policy of SPEC section 3.

    No Origin header means the client is not a browser: allowed (authentication guards
    it).  Otherwise the origin must be same-origin (its host equals ``Host``) or match
    one of ``patterns``: a pattern with ``://`` is matched against the whole origin,
    any other against its host (with or without port), shell-style, case-insensitive.
    """
    if insecure or origin is None:
        return True
    origin = origin.strip().lower()
    parts = urlsplit(origin)
    netloc = parts.netloc
    if host and netloc and netloc == host.strip().lower():
        return True
    for pattern in patterns:
        pattern = pattern.strip().lower()
        if "://" in pattern:
            if fnmatch.fnmatchcase(origin, pattern):
                return True
        elif netloc and (
            fnmatch.fnmatchcase(netloc, pattern)
            or (parts.hostname is not None and fnmatch.fnmatchcase(parts.hostname, pattern))
        ):
            return True
    return False

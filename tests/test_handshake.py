"""The upgrade check and the Origin policy, without a socket (RFC 6455 section 4.2, SPEC section 3).

The same rules are exercised over real sockets in test_rfc6455.py; here each rule is one
WSGI environ in, one `Accept` or `Refusal` out.
"""

from __future__ import annotations

from typing import Any

import pytest
from websockets.extensions.permessage_deflate import PerMessageDeflate

from rtgevent.config import Deflate
from rtgevent.transport.handshake import (
    Accept,
    Refusal,
    accept_key,
    check_upgrade,
    headers_101,
    origin_allowed,
    refusal,
    response_101,
)

#: the example of RFC 6455 section 1.3
KEY, ACCEPT = "dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def environ(**changes: str | None) -> dict[str, Any]:
    """A valid upgrade request's environ with some keys changed (None: left out)."""
    env: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "gw.example.com",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "HTTP_SEC_WEBSOCKET_KEY": KEY,
    }
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def refused(env: dict[str, Any], **kwargs: Any) -> Refusal:
    answer = check_upgrade(env, **kwargs)
    assert isinstance(answer, Refusal), answer
    return answer


def accepted(env: dict[str, Any], **kwargs: Any) -> Accept:
    answer = check_upgrade(env, **kwargs)
    assert isinstance(answer, Accept), answer
    return answer


# ---------------------------------------------------------------------- check_upgrade


def test_valid_upgrade_is_accepted_with_the_rfc_accept_key() -> None:
    """A valid request is accepted; Sec-WebSocket-Accept is the RFC's worked example."""
    answer = accepted(environ())
    assert answer.accept == ACCEPT == accept_key(KEY)
    assert (answer.extensions, answer.extensions_header) == ([], None)


def test_upgrade_and_connection_are_token_lists_in_any_case() -> None:
    """``Upgrade`` and ``Connection`` are comma-separated, case-insensitive token lists (RFC 7230 6.1)."""
    accepted(environ(HTTP_UPGRADE="WebSocket", HTTP_CONNECTION="keep-alive, UPGRADE"))
    accepted(environ(HTTP_UPGRADE="h2c, websocket", HTTP_CONNECTION="Upgrade,keep-alive"))


def test_surrounding_whitespace_in_key_and_version_is_ignored() -> None:
    """Optional whitespace around the key and the version does not make a valid request invalid."""
    assert accepted(environ(HTTP_SEC_WEBSOCKET_KEY=f" {KEY} ", HTTP_SEC_WEBSOCKET_VERSION=" 13")).accept == ACCEPT


@pytest.mark.parametrize(
    "key",
    [None, "", "c2hvcnQ=", "not base64!!", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZSEh"],
    ids=["missing", "empty", "5 bytes", "not base64", "unpadded", "18 bytes"],
)
def test_key_that_is_not_16_bytes_of_base64_is_refused_400(key: str | None) -> None:
    """Sec-WebSocket-Key must be base64 of exactly 16 bytes (RFC 6455 4.2.1 item 5): else 400."""
    answer = refused(environ(HTTP_SEC_WEBSOCKET_KEY=key))
    assert answer.status == "400 Bad Request"
    assert b"Sec-WebSocket-Key" in answer.body


@pytest.mark.parametrize("version", [None, "", "8", "14", "13, 8"], ids=["missing", "empty", "8", "14", "list"])
def test_other_version_is_refused_426_naming_version_13(version: str | None) -> None:
    """Any version but 13 gets 426 with ``Sec-WebSocket-Version: 13`` (RFC 6455 4.2.2 item 4)."""
    answer = refused(environ(HTTP_SEC_WEBSOCKET_VERSION=version))
    assert answer.status == "426 Upgrade Required"
    assert ("Sec-WebSocket-Version", "13") in answer.headers


def test_method_other_than_get_is_refused_405_allowing_get() -> None:
    """An upgrade must be a GET: other methods get 405 with ``Allow: GET``."""
    answer = refused(environ(REQUEST_METHOD="POST"))
    assert answer.status == "405 Method Not Allowed"
    assert ("Allow", "GET") in answer.headers


@pytest.mark.parametrize(
    "changes",
    [
        {"SERVER_PROTOCOL": "HTTP/1.0"},
        {"HTTP_UPGRADE": None},
        {"HTTP_UPGRADE": "h2c"},
        {"HTTP_CONNECTION": None},
        {"HTTP_CONNECTION": "keep-alive"},
    ],
    ids=["HTTP/1.0", "no Upgrade", "Upgrade: h2c", "no Connection", "Connection: keep-alive"],
)
def test_request_that_is_no_http11_upgrade_is_refused_400(changes: dict[str, str | None]) -> None:
    """Without HTTP/1.1, ``Upgrade: websocket`` and ``Connection: Upgrade`` the answer is 400."""
    assert refused(environ(**changes)).status == "400 Bad Request"


def test_refusal_is_plain_text_with_its_length_and_extra_headers() -> None:
    """A refusal carries a text body saying why, its exact Content-Length, then the extra headers."""
    answer = refusal("403 Forbidden", "origin not allowed", [("X-Why", "origin")])
    assert answer.body == b"origin not allowed\n"
    assert answer.headers == [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(answer.body))),
        ("X-Why", "origin"),
    ]


# ---------------------------------------------------------------------- permessage-deflate (RFC 7692)


def test_deflate_offer_is_accepted_when_compression_is_on() -> None:
    """With compression on, a permessage-deflate offer is accepted and answered in the 101."""
    answer = accepted(
        environ(HTTP_SEC_WEBSOCKET_EXTENSIONS="permessage-deflate; client_max_window_bits"), compression=True
    )
    assert len(answer.extensions) == 1 and answer.extensions[0].name == "permessage-deflate"
    assert (
        answer.extensions_header
        == "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=12"
    )


def test_deflate_offer_is_ignored_when_compression_is_off() -> None:
    """Compression is off by default: an offer is not taken, the 101 names no extension."""
    answer = accepted(environ(HTTP_SEC_WEBSOCKET_EXTENSIONS="permessage-deflate"))
    assert (answer.extensions, answer.extensions_header) == ([], None)


def test_first_acceptable_deflate_offer_wins() -> None:
    """Offers are tried in order; one whose parameters cannot be accepted is skipped (RFC 7692 5.1)."""
    offers = "permessage-deflate; server_max_window_bits=7, permessage-deflate; server_max_window_bits=10"
    answer = accepted(environ(HTTP_SEC_WEBSOCKET_EXTENSIONS=offers), compression=True)
    assert answer.extensions_header == "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
    offers = "permessage-deflate; bogus=1, permessage-deflate; server_no_context_takeover"
    answer = accepted(environ(HTTP_SEC_WEBSOCKET_EXTENSIONS=offers), compression=True)
    assert answer.extensions_header == "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"


@pytest.mark.parametrize(
    ("offered", "answered", "windows"),
    [
        ("permessage-deflate", "permessage-deflate; server_no_context_takeover; server_max_window_bits=12", (12, 15)),
        (
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
            (10, 15),
        ),
        (
            "permessage-deflate; server_max_window_bits=15",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12",
            (12, 15),
        ),
        (
            "permessage-deflate; client_max_window_bits=9",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=9",
            (12, 9),
        ),
        (
            "permessage-deflate; client_max_window_bits=15",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=12",
            (12, 12),
        ),
    ],
)
def test_the_101_declares_the_server_window_limit(offered: str, answered: str, windows: tuple[int, int]) -> None:
    """The server's window limit is always in the 101, the client's only if offered (RFC 7692 7.1.2).

    ``windows``: the (server, client) windows the connection then uses; a client that did not
    offer ``client_max_window_bits`` keeps 15, and the server's decompressor is sized for it.
    """
    answer = accepted(environ(HTTP_SEC_WEBSOCKET_EXTENSIONS=offered), compression=True)
    assert answer.extensions_header == answered
    [deflate] = answer.extensions
    assert isinstance(deflate, PerMessageDeflate)
    assert (deflate.local_max_window_bits, deflate.remote_max_window_bits) == windows


def test_compression_settings_choose_the_windows_offered_in_the_101() -> None:
    """A `Deflate` (or a mapping of its fields) sets both windows; client None asks the client nothing."""
    offer = environ(HTTP_SEC_WEBSOCKET_EXTENSIONS="permessage-deflate; client_max_window_bits")
    wide = accepted(offer, compression=Deflate(server_max_window_bits=15, client_max_window_bits=None, memory_level=8))
    assert wide.extensions_header == "permessage-deflate; server_no_context_takeover; server_max_window_bits=15"
    narrow = accepted(offer, compression={"server_max_window_bits": 9, "client_max_window_bits": 8})
    assert (
        narrow.extensions_header
        == "permessage-deflate; server_no_context_takeover; server_max_window_bits=9; client_max_window_bits=8"
    )


@pytest.mark.parametrize(
    "offered", ["x-webkit-deflate-frame", "permessage-deflate; ;;,,==", "permessage-deflate; bogus"]
)
def test_unknown_or_malformed_extension_offers_upgrade_without_extensions(offered: str) -> None:
    """An offer we do not know or cannot parse is declined: the upgrade goes on uncompressed."""
    answer = accepted(environ(HTTP_SEC_WEBSOCKET_EXTENSIONS=offered), compression=True)
    assert (answer.extensions, answer.extensions_header) == ([], None)


def test_101_names_the_accept_key_and_the_negotiated_extension() -> None:
    """The 101 (raw bytes and WSGI header list alike) upgrades, echoes the key and names the extension."""
    plain = accepted(environ())
    assert response_101(plain) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + ACCEPT.encode() + b"\r\n\r\n"
    )
    assert headers_101(plain) == [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", ACCEPT)]
    deflate = accepted(environ(HTTP_SEC_WEBSOCKET_EXTENSIONS="permessage-deflate"), compression=True)
    named = "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    assert b"\r\nSec-WebSocket-Extensions: " + named.encode() + b"\r\n\r\n" in response_101(deflate)
    assert headers_101(deflate)[-1] == ("Sec-WebSocket-Extensions", named)


# ---------------------------------------------------------------------- origin_allowed


def test_no_origin_is_allowed() -> None:
    """A request without Origin is not from a browser: allowed (authentication guards it)."""
    assert origin_allowed(None, "gw.example.com", [])


def test_same_origin_is_allowed_and_port_matters() -> None:
    """An Origin whose host[:port] equals Host is allowed, in any case; another port is another origin."""
    assert origin_allowed("https://gw.example.com", "gw.example.com", [])
    assert origin_allowed("HTTPS://GW.Example.com:8443", "gw.example.com:8443", [])
    assert not origin_allowed("https://gw.example.com:8443", "gw.example.com", [])
    assert not origin_allowed("https://evil.example", "gw.example.com", [])


def test_host_patterns_match_the_host_with_or_without_port() -> None:
    """A pattern without ``://`` matches the origin's host or host:port, shell-style, case-insensitive."""
    patterns = ["*.Example.COM"]
    assert origin_allowed("https://app.example.com", "gw.other", patterns)
    assert origin_allowed("http://app.example.com:3000", "gw.other", patterns)
    assert not origin_allowed("https://example.com.evil.io", "gw.other", patterns)
    assert origin_allowed("http://localhost:3000", None, ["localhost:3000"])
    assert not origin_allowed("http://localhost:3001", None, ["localhost:3000"])


def test_patterns_with_a_scheme_match_the_whole_origin() -> None:
    """A pattern with ``://`` is matched against scheme, host and port together."""
    patterns = ["https://*.example.com"]
    assert origin_allowed("https://app.example.com", None, patterns)
    assert not origin_allowed("http://app.example.com", None, patterns)
    assert not origin_allowed("https://app.example.com:8443", None, patterns)


def test_null_origin_is_refused_even_by_a_catch_all_host_pattern() -> None:
    """``Origin: null`` (sandboxed frames, file://) has no host, so no host pattern admits it."""
    assert not origin_allowed("null", "gw.example.com", ["*"])


def test_insecure_allows_every_origin() -> None:
    """``insecure`` (insecure_origins) turns the check off."""
    assert origin_allowed("https://evil.example", "gw.example.com", [], insecure=True)

"""Hardening, Origin: patterns match the parsed origin (scheme, host, port), never its raw text.

SPEC section 3 (``origin_patterns``): allowed Origin hosts or URLs, shell-style globs; with
none only same-origin browsers; a client that sends no Origin is always accepted.  An empty
``Origin:`` header is no Origin; a value that does not parse as ``scheme://host[:port]``,
or has no host, is refused.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rtgevent.transport.handshake import origin_allowed
from tests import rawws
from tests.conftest import Server

EVIL = "https://evil.com\\.wild.example.com"

# ---------------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    "origin",
    [
        EVIL,  # a backslash: WHATWG URL parsers read host evil.com, path \.wild.example.com
        "https://evil.com/.wild.example.com",  # a path
        "https://evil.com?.wild.example.com",  # a query
        "https://evil.com#.wild.example.com",  # a fragment
        "https://app.example.com@evil.com",  # a user name: the host is evil.com
        "https://evil.com:1.wild.example.com",  # a port that is no number
        "https://evil.com%2e.wild.example.com",  # percent-escapes are no host name
        "https://evil .wild.example.com",
        "https://app.example.com:",  # an empty port
        "https://app.example.com:99999",  # out of range
        "https://app.example.com/",  # an origin has no path, not even /
        "app.example.com",  # no scheme
        "://app.example.com",
        "https://",
        "https://[::1",
        "null",
    ],
)
def test_what_is_no_plain_origin_is_refused_even_by_a_catch_all_host_pattern(origin: str) -> None:
    """Raw-text tricks no longer slip past ``*.example.com``: what does not parse as scheme://host[:port] is refused."""
    assert not origin_allowed(origin, "gw.example.com", ["*.example.com"])
    assert not origin_allowed(origin, "gw.example.com", ["*"])
    assert not origin_allowed(origin, "gw.example.com", ["https://*"])


@pytest.mark.parametrize("origin", ["", "   ", "\t"])
def test_an_empty_origin_is_no_origin(origin: str) -> None:
    """An empty ``Origin:`` header is treated like an absent one: allowed, authentication guards it."""
    assert origin_allowed(origin, "gw.example.com", [])
    assert origin_allowed(origin, "gw.example.com", ["app.example.com"])
    assert origin_allowed(None, "gw.example.com", [])


def test_host_patterns_match_the_parsed_host_on_any_port() -> None:
    """``*.example.com`` matches the host name alone (any scheme, any port), case-insensitive."""
    patterns = ["*.Example.COM"]
    assert origin_allowed("https://app.example.com", None, patterns)
    assert origin_allowed("HTTP://APP.EXAMPLE.COM:3000", None, patterns)
    assert origin_allowed("https://a.b.example.com", None, patterns)
    assert not origin_allowed("https://example.com", None, patterns)
    assert not origin_allowed("https://example.com.evil.io", None, patterns)
    assert not origin_allowed("https://evilexample.com", None, patterns)


def test_a_port_in_a_host_pattern_is_matched_against_the_port() -> None:
    """``host:port`` names that port; an origin naming none has its scheme's default one."""
    assert origin_allowed("http://localhost:3000", None, ["localhost:3000"])
    assert not origin_allowed("http://localhost:3001", None, ["localhost:3000"])
    assert origin_allowed("http://localhost:3001", None, ["localhost:300*"])
    assert origin_allowed("https://app.example.com", None, ["app.example.com:443"])
    assert not origin_allowed("http://app.example.com", None, ["app.example.com:443"])


def test_patterns_with_a_scheme_match_scheme_host_and_port() -> None:
    """``scheme://host[:port]``: each part matched on its own; no port in the pattern means the default one."""
    patterns = ["https://*.example.com"]
    assert origin_allowed("https://app.example.com", None, patterns)
    assert origin_allowed("https://app.example.com:443", None, patterns)
    assert not origin_allowed("http://app.example.com", None, patterns)
    assert not origin_allowed("https://app.example.com:8443", None, patterns)
    assert not origin_allowed("https://example.com.evil.io", None, patterns)
    assert origin_allowed("https://app.example.com:8443", None, ["https://*.example.com:*"])
    assert origin_allowed("http://app.example.com", None, ["http*://app.example.com"])
    assert not origin_allowed("wss://app.example.com", None, ["http*://app.example.com"])
    assert origin_allowed("https://app.example.com", None, ["https://app.example.com/"])  # a written trailing /


def test_same_origin_compares_parsed_host_and_port() -> None:
    """Origin host and port equal to Host's are same-origin; the Host port defaults to the origin scheme's."""
    assert origin_allowed("https://gw.example.com", "gw.example.com", [])
    assert origin_allowed("HTTPS://GW.Example.com:8443", "gw.example.com:8443", [])
    assert origin_allowed("https://gw.example.com", "gw.example.com:443", [])
    assert not origin_allowed("https://gw.example.com:8443", "gw.example.com", [])
    assert not origin_allowed("https://evil.example", "gw.example.com", [])
    assert not origin_allowed("https://gw.example.com", "gw.example.com\\.evil", [])
    assert not origin_allowed(EVIL, "evil.com\\.wild.example.com", [])  # the same trick in both headers


def test_ipv6_origins_and_patterns() -> None:
    """An IPv6 literal is matched inside its brackets (a glob would read them as a character set)."""
    assert origin_allowed("http://[::1]:3000", None, ["[::1]:3000"])
    assert not origin_allowed("http://[::1]:3001", None, ["[::1]:3000"])
    assert origin_allowed("http://[::1]:3001", None, ["[::1]"])
    assert not origin_allowed("http://1", None, ["[::1]"])
    assert origin_allowed("http://[::1]:8000", "[::1]:8000", [])
    assert not origin_allowed("http://[::1]:8000", None, ["[:1]"])


def test_null_is_refused_and_insecure_allows_anything() -> None:
    """``Origin: null`` has no host; ``insecure`` (insecure_origins) turns the whole check off."""
    assert not origin_allowed("null", "gw.example.com", ["*"])
    assert origin_allowed(EVIL, "gw.example.com", [], insecure=True)


# ---------------------------------------------------------------------------------- over a real socket


def upgrade(server: Server, origin: str | None) -> rawws.RawClient:
    """A raw client that sent the upgrade with ``Origin: origin`` (None: no Origin header); the answer's head read."""
    client = rawws.RawClient(server.host, server.port)
    client.handshake(headers={"Origin": origin} if origin is not None else None)
    return client


def test_origin_tricks_are_refused_and_an_empty_origin_is_like_none(serve: Callable[..., Server]) -> None:
    """End to end, every setup: the backslash origin gets 403 (1008 under gevent-websocket); empty Origin upgrades."""
    server = serve(origin_patterns=["*.example.com"])
    evil = upgrade(server, EVIL)
    try:
        if server.kind == "geventwebsocket":
            assert evil.status == 101  # gevent-websocket answers before the application runs
            assert evil.expect_close().close_code == 1008
        else:
            assert evil.status == 403
            assert b"origin" in evil.read_body()
    finally:
        evil.close()
    for origin in ("", None, "https://app.example.com"):
        client = upgrade(server, origin)
        try:
            assert client.status == 101, origin
            client.send(rawws.frame(rawws.TEXT, b"still served"))
            answer = client.recv_data()
            assert (answer.opcode, answer.payload) == (rawws.TEXT, b"still served"), origin
        finally:
            client.close()

"""Tokens stay out of access logs: ``rtgevent serve``'s, and gunicorn's with the documented setup.

rtgevent.js sends the token as ``?access_token=...`` (a browser cannot set headers on a
WebSocket), so the request line of every upgrade carries it.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import pytest
import websocket

from tests.conftest import launch_gunicorn
from tests.procs import ServeProcess
from tests.waiting import WAIT, wait_until

SECRET = "s3cr3t-Tok3n"


def _traffic(host: str, port: int) -> None:
    """A WebSocket session and a plain request, each with a token in the query."""
    ws = websocket.create_connection(f"ws://{host}:{port}/ws?access_token={SECRET}&room=7", timeout=WAIT)
    ws.send("hi")
    assert ws.recv() == "hi"
    ws.close()
    url = f"http://{host}:{port}/_control/stats?token={SECRET}-2&x=1"
    with urllib.request.urlopen(url, timeout=WAIT) as resp:
        assert resp.status == 200


def test_serve_access_log_has_no_token() -> None:
    """``rtgevent serve``: the access lines show ``access_token=[redacted]``, never the token."""
    node = ServeProcess("tests.app:app_from_env()", env={"RTG_TEST_CONFIG": json.dumps({})})
    try:
        _traffic(node.host, node.port)
        wait_until(
            lambda: (
                any('"GET /ws?' in line for line in node.lines)
                and any("/_control/stats?" in line for line in node.lines)
            ),
            lambda: f"both access lines: {node.lines}",
        )
    finally:
        node.stop()
    lines = [line for line in node.lines if '"GET /' in line]
    print("\n".join(lines))
    assert not [line for line in node.lines if SECRET in line]
    assert any("/ws?access_token=[redacted]&room=7 HTTP/1.1" in line for line in lines), lines
    assert any("/_control/stats?token=[redacted]&x=1 HTTP/1.1" in line for line in lines), lines


@pytest.mark.parametrize(
    "setup",
    [("-c", "python:rtgevent.gunicorn"), ("--logger-class", "rtgevent.gunicorn.RedactingLogger")],
    ids=["config-module", "logger-class"],
)
def test_gunicorn_access_log_has_no_token(tmp_path: Path, setup: tuple[str, str]) -> None:
    """gunicorn with the config module (or only its logger class): access lines carry no token."""
    access = tmp_path / "access.log"
    g = launch_gunicorn(
        "-k", "gevent", "-w", "1", *setup, "--access-logfile", str(access), "tests.app:app_from_env()",
        env={"RTG_TEST_CONFIG": json.dumps({})},
    )  # fmt: skip
    try:
        wait_until(lambda: _answers(g.port), "the gunicorn worker")
        _traffic("127.0.0.1", g.port)
        wait_until(
            lambda: access.exists() and all(f"GET {p}?" in access.read_text() for p in ("/ws", "/_control/stats")),
            "both access lines",
        )
    finally:
        g.proc.send_signal(signal.SIGTERM)
        g.stop()
    text = access.read_text()
    print(text)
    assert SECRET not in text
    assert "/ws?access_token=[redacted]&room=7" in text
    assert "/_control/stats?token=[redacted]&x=1" in text
    assert SECRET not in "\n".join(g.log)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_control/stats", timeout=WAIT):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("GET /ws?access_token=abc HTTP/1.1", "GET /ws?access_token=[redacted] HTTP/1.1"),
        ("GET /ws?a=1&token=abc&b=2 HTTP/1.1", "GET /ws?a=1&token=[redacted]&b=2 HTTP/1.1"),
        ('"GET /x?api_key=k1;id_token=t2" 200', '"GET /x?api_key=[redacted];id_token=[redacted]" 200'),
        ("query access_token=abc&since=5", "query access_token=[redacted]&since=5"),
        ("Authorization: Bearer eyJhbGciOi.x.y", "Authorization: Bearer [redacted]"),
        ("GET /ws?since=12&room=a HTTP/1.1", "GET /ws?since=12&room=a HTTP/1.1"),
    ],
)
def test_redact_tokens(line: str, expected: str) -> None:
    """Token-like parameters lose their values; other parameters are left alone."""
    from rtgevent.gunicorn import redact_tokens

    assert redact_tokens(line) == expected

"""``rtgevent.serve(app, host, port)``: the README's first example, with a header timeout against slowloris.

The servers run in their own processes, started the way a user starts them: the README's
first code block, examples/hello.py, and a script calling ``rtgevent.serve`` with a short
``header_timeout``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
import websocket
from gevent.event import Event

from tests import rawws
from tests.conftest import ROOT
from tests.waiting import WAIT


class Script:
    """A Python script in a child process; its port read from the ``serving on`` line."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        with gevent.Timeout(WAIT, AssertionError(f"no 'serving on' line: {self.lines}")):
            for raw in self.proc.stdout:
                self.lines.append(raw.decode().rstrip())
                if m := re.search(r"rtgevent: serving on http://([\d.]+):(\d+)", self.lines[-1]):
                    self.host, self.port = m.group(1), int(m.group(2))
                    break
            else:
                raise AssertionError("the script exited:\n" + "\n".join(self.lines))
        gevent.spawn(self._drain)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode().rstrip())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)


@pytest.fixture
def scripts() -> Iterator[type[Script]]:
    started: list[Script] = []

    class Started(Script):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Started
    for script in started:
        script.stop()


def _readme_first_example() -> str:
    readme = (ROOT / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", readme, re.S).group(1)  # type: ignore[union-attr]


def _welcome(host: str, port: int) -> None:
    ws = websocket.create_connection(f"ws://{host}:{port}/", timeout=WAIT)
    try:
        assert json.loads(ws.recv())["route"] == "welcome"
        ws.send(json.dumps({"id": 1, "route": "chat.send", "data": {"text": "hi"}}))
        replies = {json.loads(ws.recv())["route"] for _ in range(2)}
        assert replies == {"chat.message", "rt.reply"}
    finally:
        ws.close()


def test_readme_first_example_serves_with_rtgevent_serve(tmp_path: Path, scripts: type[Script]) -> None:
    """The README's first code block runs as written (port 0 for 8000) on ``rtgevent.serve``."""
    code = _readme_first_example()
    assert "serve(rt, " in code and "WSGIServer" not in code
    script = tmp_path / "readme_example.py"
    script.write_text(code.replace('"127.0.0.1", 8000', '"127.0.0.1", 0'))
    server = scripts(str(script))
    _welcome(server.host, server.port)
    assert server.stop() == 0


def test_hello_example_serves_and_drains_on_sigterm(scripts: type[Script]) -> None:
    """examples/hello.py: the same app; SIGTERM closes its session with 1001 and exits 0."""
    server = scripts("examples/hello.py", "127.0.0.1:0")
    _welcome(server.host, server.port)
    ws = websocket.create_connection(f"ws://{server.host}:{server.port}/", timeout=WAIT)
    assert json.loads(ws.recv())["route"] == "welcome"
    server.proc.send_signal(signal.SIGTERM)
    opcode, data = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(data[:2], "big") == 1001
    ws.close()
    assert server.stop() == 0


SHORT = """
from gevent import monkey; monkey.patch_all()
import rtgevent

rt = rtgevent.Realtime()
rtgevent.serve(rt, "127.0.0.1", 0, header_timeout=1.0)
"""


def test_serve_drops_a_client_dribbling_its_headers(tmp_path: Path, scripts: type[Script]) -> None:
    """A client sending one header byte every 0.2 s is dropped after header_timeout (1 s), never upgraded."""
    script = tmp_path / "short.py"
    script.write_text(textwrap.dedent(SHORT))
    server = scripts(str(script))
    client = rawws.RawClient(server.host, server.port, timeout=WAIT)
    request = rawws.upgrade_request(server.host, server.port, "/")
    dropped = Event()

    def dribble() -> None:
        for byte in request[:-2]:  # never the final CRLF
            try:
                client.send(bytes([byte]))
            except OSError:
                return
            if dropped.wait(0.2):  # the slowloris' pace; ends at once when the server hung up
                return

    began = time.monotonic()
    g = gevent.spawn(dribble)
    answer = b""
    while chunk := client.sock.recv(1024):  # until the server hangs up (socket timeout: WAIT)
        answer += chunk
    held = time.monotonic() - began
    dropped.set()
    g.join(timeout=WAIT)
    client.close()
    print(f"dribbling client dropped after {held:.2f} s (header_timeout 1 s)")
    assert b" 101 " not in answer
    assert held < WAIT / 2
    _welcome_anonymous(server.host, server.port)  # a well-behaved client is still served


def test_serve_drops_many_half_open_connections(tmp_path: Path, scripts: type[Script]) -> None:
    """200 connections that sent half a request line are all closed by the server after header_timeout."""
    script = tmp_path / "short.py"
    script.write_text(textwrap.dedent(SHORT))
    server = scripts(str(script))
    clients = [rawws.RawClient(server.host, server.port, timeout=WAIT) for _ in range(200)]
    began = time.monotonic()
    for c in clients:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    for c in clients:
        while c.sock.recv(1024):  # EOF once the server dropped it (socket timeout: WAIT)
            pass
        c.close()
    print(f"200 half-open connections dropped within {time.monotonic() - began:.2f} s")
    assert time.monotonic() - began < WAIT / 2
    _welcome_anonymous(server.host, server.port)


def _welcome_anonymous(host: str, port: int) -> None:
    ws = websocket.create_connection(f"ws://{host}:{port}/", timeout=WAIT)
    ws.close()

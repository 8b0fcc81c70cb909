"""The deployment paths: gunicorn's drain hook, ``rtgevent serve`` (header timeout, TLS, drain)."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
import websocket

from tests import rawws
from tests.conftest import Server, start_gunicorn
from tests.procs import ServeProcess
from tests.waiting import WAIT


def _connect_all(server: Server, n: int) -> list[rawws.RawClient]:
    clients = [rawws.RawClient(server.host, server.port, timeout=WAIT) for _ in range(n)]
    for c in clients:
        assert c.handshake() == 101
    server.wait_for(lambda: len(server.control("sessions")) == n, what=f"{n} sessions")
    return clients


GWS_WORKER = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"


@pytest.mark.parametrize("worker", ["gevent", "gevent_pywsgi", GWS_WORKER])
def test_gunicorn_sigterm_closes_every_client_with_1001(worker: str) -> None:
    """With -c python:rtgevent.gunicorn, SIGTERM gives every client 1001 long before graceful_timeout."""
    server = start_gunicorn(worker=worker, extra_args=("--graceful-timeout", "30"))
    try:
        clients = _connect_all(server, 4)
        assert server.process is not None
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        delays = []
        for c in clients:
            close = c.expect_close()  # socket timeout WAIT (20 s) < graceful_timeout (30 s)
            delays.append(time.monotonic() - sent)
            assert close.close_code == 1001
        print(f"{worker}: close 1001 after {max(delays):.3f} s")
        assert server.process.wait(timeout=WAIT) == 0
    finally:
        server.stop()


def test_gunicorn_sighup_reload_closes_old_workers_clients_with_1001() -> None:
    """A SIGHUP reload: clients of the old worker get 1001 and can reconnect to the new one."""
    server = start_gunicorn(extra_args=("--graceful-timeout", "30"))
    try:
        clients = _connect_all(server, 2)
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        for c in clients:
            assert c.expect_close().close_code == 1001
        ws = server.wait_for(lambda: _try_connect(server.ws_url), what="the new worker")
        ws.send("after reload")
        assert ws.recv() == "after reload"
        ws.close()
    finally:
        server.stop()


def _try_connect(url: str) -> websocket.WebSocket | None:
    try:
        return websocket.create_connection(url, timeout=WAIT)
    except (OSError, websocket.WebSocketException):
        return None


@pytest.fixture
def serve_cli() -> Iterator[type[ServeProcess]]:
    started: list[ServeProcess] = []

    class Started(ServeProcess):
        def __init__(self, *args: str, config: dict[str, object] | None = None) -> None:
            super().__init__("tests.app:app_from_env()", *args, env={"RTG_TEST_CONFIG": json.dumps(config or {})})
            started.append(self)

    yield Started
    for p in started:
        p.stop()


def test_serve_drops_a_client_that_dribbles_its_headers(serve_cli) -> None:
    """A client that sends its upgrade headers a byte at a time is dropped at the header timeout."""
    server = serve_cli("--header-timeout", "1")
    client = rawws.RawClient(server.host, server.port, timeout=WAIT)
    request = rawws.upgrade_request(server.host, server.port)
    dropped = gevent.event.Event()

    def dribble() -> None:
        for byte in request[:-2]:  # never the final CRLF
            if dropped.is_set():
                return
            try:
                client.send(bytes([byte]))
            except OSError:
                return
            gevent.sleep(0.05)  # the slowloris' pace, not a synchronisation

    g = gevent.spawn(dribble)
    answer = b""
    while chunk := client.sock.recv(1024):  # until the server hangs up
        answer += chunk
    dropped.set()
    assert b" 101 " not in answer  # at most an error status, never an upgrade
    g.join(timeout=WAIT)
    # a well-behaved client is still served
    ws = websocket.create_connection(f"ws://{server.host}:{server.port}/ws", timeout=WAIT)
    ws.send("hello")
    assert ws.recv() == "hello"
    ws.close()


def test_serve_tls_and_drain_on_sigterm(serve_cli, tmp_path: Path) -> None:
    """--certfile/--keyfile serve wss://, and SIGTERM closes sessions with 1001 before exiting."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server = serve_cli("--certfile", str(cert), "--keyfile", str(key))
    assert server.scheme == "https"
    ws = websocket.create_connection(
        f"wss://{server.host}:{server.port}/ws", timeout=WAIT, sslopt={"cert_reqs": ssl.CERT_NONE}
    )
    ws.send("secret")
    assert ws.recv() == "secret"
    server.proc.send_signal(signal.SIGTERM)
    opcode, data = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(data[:2], "big") == 1001
    ws.close()
    assert server.stop() == 0

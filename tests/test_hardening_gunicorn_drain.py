"""The plain gunicorn command (no ``-c python:rtgevent.gunicorn``): SIGTERM still closes every client with 1001.

The Realtime finds its gunicorn worker on the first WebSocket request and chains the
worker's stop signals, so nothing waits for ``graceful_timeout`` (30 s here) to drop TCP.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests import rawws
from tests.conftest import Server, launch_gunicorn
from tests.waiting import WAIT

GWS_WORKER = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"


def _plain_gunicorn(worker: str, *extra: str) -> Server:
    g = launch_gunicorn(
        "-k", worker, "-w", "1", "--graceful-timeout", "30", *extra, "tests.app:app_from_env()",
        env={"RTG_TEST_CONFIG": json.dumps({})},
    )  # fmt: skip
    server = Server("gunicorn", "127.0.0.1", g.port, g.stop, process=g.proc, log=g.log)
    server.wait_for(lambda: _answers(server), what="gunicorn worker")
    return server


def _answers(server: Server) -> bool:
    try:
        server.control("stats")
    except OSError:
        return False
    return True


@pytest.mark.parametrize("worker", ["gevent", GWS_WORKER, "gevent_pywsgi"])
def test_plain_gunicorn_sigterm_closes_every_client_with_1001(worker: str) -> None:
    """``gunicorn -k WORKER app`` with no rtgevent config: SIGTERM gives every client 1001 within a second or so."""
    server = _plain_gunicorn(worker)
    try:
        clients = [rawws.RawClient(server.host, server.port, timeout=WAIT) for _ in range(4)]
        for c in clients:
            assert c.handshake() == 101
        server.wait_for(lambda: len(server.control("sessions")) == 4, what="4 sessions")
        assert server.process is not None
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        delays = []
        for c in clients:
            close = c.expect_close()  # socket timeout WAIT (20 s) < graceful_timeout (30 s)
            delays.append(time.monotonic() - sent)
            assert close.close_code == 1001
        print(f"{worker}: close 1001 after {max(delays):.3f} s")
        assert max(delays) < 5
        assert server.process.wait(timeout=WAIT) == 0
    finally:
        server.stop()


def test_plain_gunicorn_sigquit_closes_clients_with_1001() -> None:
    """SIGQUIT (gunicorn's quick stop) closes the sessions with 1001 too, before the worker exits."""
    server = _plain_gunicorn("gevent")
    try:
        client = rawws.RawClient(server.host, server.port, timeout=WAIT)
        assert client.handshake() == 101
        server.wait_for(lambda: len(server.control("sessions")) == 1, what="the session")
        assert server.process is not None
        server.process.send_signal(signal.SIGQUIT)
        assert client.expect_close().close_code == 1001
    finally:
        server.stop()


def test_config_module_and_the_automatic_hook_drain_once() -> None:
    """With ``-c python:rtgevent.gunicorn`` as well, the two hooks are one: 1001 once, a clean exit."""
    server = _plain_gunicorn("gevent", "-c", "python:rtgevent.gunicorn")
    try:
        clients = [rawws.RawClient(server.host, server.port, timeout=WAIT) for _ in range(2)]
        for c in clients:
            assert c.handshake() == 101
        server.wait_for(lambda: len(server.control("sessions")) == 2, what="2 sessions")
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        for c in clients:
            assert c.expect_close().close_code == 1001
            assert c.at_eof()
        assert server.process.wait(timeout=WAIT) == 0
    finally:
        server.stop()
    assert not [line for line in server.log if "Traceback" in line], server.log

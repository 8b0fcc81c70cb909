"""A program that forgot ``monkey.patch_all()`` gets a clear ``rtgevent:`` error naming the fix, never a hang.

Each case runs a small script in its own interpreter, without monkey-patching (the pytest
process is patched, so it cannot be the patient), bounded by a timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import websocket

from tests import rawws
from tests.conftest import ROOT
from tests.services import REDIS_URL, LiveServices, free_port
from tests.waiting import WAIT, wait_until

FIX = "from gevent import monkey; monkey.patch_all()"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def _write(tmp_path: Path, name: str, code: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return path


def test_start_with_a_redis_broker_raises_instead_of_hanging(tmp_path: Path, live: LiveServices) -> None:
    """rt.start() with a Redis broker and no patching raises NotMonkeyPatched at once (it used to hang)."""
    live.require(REDIS_URL)
    script = _write(
        tmp_path,
        "start.py",
        f"""
        import uuid
        from rtgevent import Config, Realtime, RedisBroker

        rt = Realtime(Config(), broker=RedisBroker({REDIS_URL!r}, namespace="np" + uuid.uuid4().hex[:8]))
        rt.start()
        print("started")
        """,
    )
    began = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], env=_env(), capture_output=True, timeout=WAIT)
    elapsed = time.monotonic() - began
    err = done.stderr.decode()
    assert done.returncode != 0 and b"started" not in done.stdout, err
    assert "NotMonkeyPatched: rtgevent: cannot start the node: gevent's monkey-patching is missing" in err
    assert FIX in err
    print(f"start() refused in {elapsed:.2f} s (interpreter included)")


def test_one_node_pywsgi_answers_500_with_the_fix_in_the_log(tmp_path: Path) -> None:
    """One node on plain pywsgi, unpatched: the upgrade fails with the fix named, not "serve with pywsgi"."""
    script = _write(
        tmp_path,
        "one.py",
        """
        from gevent.pywsgi import WSGIServer
        from rtgevent import Config, Realtime

        rt = Realtime(Config())
        server = WSGIServer(("127.0.0.1", 0), rt)
        server.start()
        print("port", server.server_port, flush=True)
        server.serve_forever()
        """,
    )
    proc = subprocess.Popen([sys.executable, str(script)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode().split()
        assert first[:1] == ["port"], first
        port = int(first[1])
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=WAIT)
        assert refused.value.status_code == 500
    finally:
        proc.terminate()
        output = proc.communicate(timeout=WAIT)[0].decode()
    assert "rtgevent: cannot serve a WebSocket: gevent's monkey-patching is missing" in output, output
    assert FIX in output
    assert "serve with gevent's pywsgi" not in output


def test_flask_run_refuses_the_upgrade_and_logs_the_fix(tmp_path: Path) -> None:
    """``flask run`` (threads, no gevent): a clear line at the first request and a 500, not a 101 and silence."""
    _write(
        tmp_path,
        "chatapp.py",
        """
        from flask import Flask
        from rtgevent import Config, Realtime

        app = Flask(__name__)
        rt = Realtime(Config())
        app.register_blueprint(rt.blueprint(url_prefix="/ws"))

        @app.get("/")
        def index():
            return "hello"
        """,
    )
    port = free_port()
    env = dict(_env(), PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "chatapp", "run", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        client = wait_until(lambda: _connect(port), "flask run to listen")
        status = client.handshake()
        client.close()
    finally:
        proc.terminate()
        output = proc.communicate(timeout=WAIT)[0].decode()
    assert status == 500, output
    assert "rtgevent: cannot serve WebSockets: gevent's monkey-patching is missing" in output, output
    assert FIX in output


def _connect(port: int) -> rawws.RawClient | None:
    try:
        return rawws.RawClient("127.0.0.1", port, timeout=WAIT)
    except OSError:
        return None


def test_rtgevent_serve_call_refuses_to_run_unpatched(tmp_path: Path) -> None:
    """``rtgevent.serve(app, host, port)`` without patching raises at once, naming the fix."""
    script = _write(
        tmp_path,
        "served.py",
        """
        import rtgevent

        rtgevent.serve(rtgevent.Realtime(), "127.0.0.1", 0)
        """,
    )
    done = subprocess.run([sys.executable, str(script)], env=_env(), capture_output=True, timeout=WAIT)
    err = done.stderr.decode()
    assert done.returncode != 0 and "rtgevent.serve: gevent's monkey-patching is missing" in err, err
    assert FIX in err

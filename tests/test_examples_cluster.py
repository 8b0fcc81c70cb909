"""The multi-node examples run: two servers sharing Redis, the sync sender, gunicorn with two workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from rtgevent.client import Client, connect
from tests.clusterkit import REDIS, _cleanup
from tests.conftest import ROOT, launch_gunicorn
from tests.procs import ServeProcess
from tests.services import LiveServices
from tests.waiting import WAIT, wait_until


@pytest.fixture
def namespace(live: LiveServices) -> Iterator[str]:
    """A namespace of the test's own on the shared Redis (skipped where Redis is down)."""
    live.require(REDIS)
    ns = f"rtgtest-{uuid.uuid4().hex[:10]}"
    yield ns
    _cleanup(ns, amqp_url=None)


def _env(namespace: str) -> dict[str, str]:
    return {"RTGEVENT_BROKER_URL": REDIS, "RTGEVENT_PRESENCE_URL": REDIS, "RTGEVENT_NAMESPACE": namespace}


def post(port: int, path: str, **form: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=urllib.parse.urlencode(form).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_two_servers_and_the_sync_sender(namespace: str) -> None:
    """A POST to one server and the sync sender script both reach a client of the other server."""
    env = _env(namespace)
    one = ServeProcess("examples.multinode.app:app", env=env)
    two = ServeProcess("examples.multinode.app:app", env=env)
    try:
        client = connect(f"ws://127.0.0.1:{one.port}/ws", token="alice", timeout=WAIT)
        assert client.request("whoami")["user"] == "alice"  # registered
        status, body = post(two.port, "/notify", user="alice", text="from the other server")
        assert status == 200 and body["ok"]
        assert client.recv().data == {"text": "from the other server"}
        sender = subprocess.run(
            [sys.executable, "examples/sync_sender.py", "alice", "from a script"],
            cwd=ROOT,
            env=dict(os.environ, **env),
            capture_output=True,
            text=True,
            timeout=WAIT * 3,
        )
        assert sender.returncode == 0, sender.stderr
        assert client.recv().data == {"text": "from a script"}
        offline = subprocess.run(
            [sys.executable, "examples/sync_sender.py", "nobody", "hello?"],
            cwd=ROOT,
            env=dict(os.environ, **env),
            capture_output=True,
            text=True,
            timeout=WAIT * 3,
        )
        assert offline.returncode == 1 and "offline" in offline.stdout
        assert post(two.port, "/notify", user="nobody")[0] == 404
        client.close()
    finally:
        one.stop()
        two.stop()


@pytest.mark.parametrize("config", ["gevent.conf.py", "geventwebsocket.conf.py"])
def test_gunicorn_two_workers_reach_each_other(namespace: str, config: str) -> None:
    """Two gunicorn workers and Redis: a client on worker A gets a send made by a POST handled by worker B."""
    g = launch_gunicorn("-c", f"examples/gunicorn/{config}", "examples.multinode.app:app", env=_env(namespace))
    log = g.log

    def connected() -> Client | None:
        try:
            return connect(f"ws://127.0.0.1:{g.port}/ws", token="bob", timeout=WAIT)
        except OSError:
            return None  # the workers boot after the master listens

    try:
        port = g.port
        client = wait_until(connected, lambda: "a worker to answer:\n" + "\n".join(log))
        worker_a = client.request("whoami")["pid"]
        for attempt in range(200):
            status, body = post(port, "/notify", user="bob", text=f"try {attempt}")
            assert status == 200, body
            assert client.recv().data == {"text": f"try {attempt}"}  # local or through Redis
            if body["pid"] != worker_a:
                break  # worker B handled the POST and the client on worker A got it
        else:
            pytest.fail("every POST landed on the client's own worker")
        client.close()
    finally:
        g.stop()

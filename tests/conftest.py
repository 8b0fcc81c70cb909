"""Shared fixtures: real servers on port 0, in every setup our users deploy with.

The pytest process is monkey-patched first thing, so blocking clients (websocket-client,
raw sockets) and in-process servers share one gevent hub: a blocking call in a test
yields to the server's greenlets.
"""

from gevent import monkey

monkey.patch_all()

import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import urllib.request  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import pytest  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402

from tests.app import make_app  # noqa: E402
from tests.services import REDIS_URL, LiveServices  # noqa: E402
from tests.waiting import WAIT, wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETUPS = ["geventwebsocket", "pywsgi", "gunicorn"]


@dataclasses.dataclass
class Server:
    kind: str
    host: str
    port: int
    stop: Callable[[], None]
    app: Any = None
    process: subprocess.Popen[bytes] | None = None
    log: list[str] = dataclasses.field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def control(self, action: str, **query: Any) -> Any:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        with urllib.request.urlopen(f"{self.http_url}/_control/{action}?{qs}", timeout=WAIT) as resp:
            return json.loads(resp.read())

    def wait_for(self, predicate: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
        """Poll ``predicate`` (an HTTP observation) until truthy; fail after ``timeout``."""
        return wait_until(predicate, what, timeout)

    def disconnects(self, count: int = 1) -> list[dict[str, Any]]:
        return self.wait_for(
            lambda: (d := self.control("disconnects")) and len(d) >= count and d,
            what=f"{count} disconnect(s)",
        )


def start_inprocess(kind: str, **config: Any) -> Server:
    app = make_app(**config)
    handler = WebSocketHandler if kind == "geventwebsocket" else None
    kwargs: dict[str, Any] = {"log": None, "error_log": None}
    if handler is not None:
        kwargs["handler_class"] = handler
    server = WSGIServer(("127.0.0.1", 0), app, **kwargs)
    server.start()

    def stop() -> None:
        app.rt.shutdown(timeout=5)  # type: ignore[attr-defined]
        server.stop(timeout=5)

    return Server(kind, "127.0.0.1", server.server_port, stop, app=app)


@dataclasses.dataclass
class Gunicorn:
    """A gunicorn master started by a test, its port (read from its log) and its log lines."""

    proc: subprocess.Popen[bytes]
    port: int
    log: list[str]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def launch_gunicorn(*args: str, env: dict[str, str] | None = None) -> Gunicorn:
    """``gunicorn --no-control-socket -b 127.0.0.1:0 ARGS``; returns once the master listens."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    cmd = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", "127.0.0.1:0", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log: list[str] = []
    port_found: gevent.event.AsyncResult = gevent.event.AsyncResult()

    def drain() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            log.append(line)
            m = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
            if m and not port_found.ready():
                port_found.set(int(m.group(1)))
        if not port_found.ready():
            port_found.set_exception(RuntimeError("gunicorn exited:\n" + "\n".join(log)))

    gevent.spawn(drain)
    try:
        return Gunicorn(proc, port_found.get(timeout=WAIT), log)
    except BaseException:
        Gunicorn(proc, 0, log).stop()
        raise


def start_gunicorn(*, worker: str = "gevent", extra_args: tuple[str, ...] = (), **config: Any) -> Server:
    """The test app (tests/app.py) under gunicorn with the drain hook; returns once a worker answers."""
    g = launch_gunicorn(
        "-k",
        worker,
        "-w",
        "1",
        "-c",
        "python:rtgevent.gunicorn",
        "--graceful-timeout",
        "10",
        *extra_args,
        "tests.app:app_from_env()",
        env={"RTG_TEST_CONFIG": json.dumps(config)},
    )
    server = Server("gunicorn", "127.0.0.1", g.port, g.stop, process=g.proc, log=g.log)
    # the worker boots after the master listens: wait until it answers
    server.wait_for(lambda: _answers(server), what="gunicorn worker")
    return server


def _answers(server: Server) -> bool:
    try:
        server.control("stats")
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def live() -> LiveServices:
    """The machine's shared Redis and RabbitMQ, probed once per run; ``live.require(url)`` skips without them."""
    return LiveServices.probe()


@pytest.fixture(params=SETUPS)
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., Server]]:
    """``serve(**config)`` starts the test app in the parametrized setup; stopped after the test."""
    started: list[Server] = []

    def factory(**config: Any) -> Server:
        kind = request.param
        server = start_gunicorn(**config) if kind == "gunicorn" else start_inprocess(kind, **config)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def serve_local() -> Iterator[Callable[..., Server]]:
    """An in-process pywsgi server only (for tests that reach into the Realtime)."""
    started: list[Server] = []

    def factory(**config: Any) -> Server:
        server = start_inprocess(config.pop("kind", "pywsgi"), **config)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def serve_realtime() -> Iterator[Callable[[Any], Server]]:
    """``serve_realtime(rt_or_wsgi_app)`` serves any WSGI app in-process on pywsgi; stopped after the test."""
    started: list[tuple[WSGIServer, Any]] = []

    def factory(app: Any) -> Server:
        server = WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
        server.start()
        started.append((server, app))
        return Server("pywsgi", "127.0.0.1", server.server_port, lambda: None, app=app)

    yield factory
    for server, app in started:
        if hasattr(app, "shutdown"):
            app.shutdown(timeout=5)
        server.stop(timeout=5)


from tests.browserkit import browser  # noqa: E402, F401  (headless Chromium, for the browser tests)
from tests.clusterkit import backend, cluster  # noqa: E402, F401  (the many-node fixtures, shared by several modules)
from tests.rediscluster import redis_cluster  # noqa: E402, F401  (a real Redis Cluster, started once per run)


@pytest.fixture
def namespace(live: LiveServices) -> Iterator[str]:
    """A namespace of the test's own on the machine's Redis; its keys are deleted afterwards."""
    import redis

    live.require(REDIS_URL)
    name = f"rtgtest-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    keys = list(client.scan_iter(match=f"*{name}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def admin(live: LiveServices) -> Iterator[Any]:
    """A plain redis-py client to look at the keys behind a store's back (skipped where Redis is down)."""
    import redis

    live.require(REDIS_URL)
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    yield client
    client.close()


@pytest.fixture
def ns(admin: Any) -> Iterator[str]:
    """A namespace of this test's own for a store's keys; they are deleted afterwards (SCAN MATCH <ns>:*)."""
    name = f"rtgtest-{uuid.uuid4().hex[:12]}"
    yield name
    keys = list(admin.scan_iter(match=f"*{name}*", count=1000))  # {name}... on a cluster
    if keys:
        admin.delete(*keys)

"""A node started while Redis is down serves, and recovers by itself; its counters and status say what happened.

Each test owns a private redis-server on a free port (tests/services.py), started after
the node or killed under it; the machine's shared Redis is never touched.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rtgevent import (
    BearerTokenAuthenticator,
    Config,
    Emitter,
    Identity,
    MemoryPresence,
    Realtime,
    RedisBroker,
    RedisPresence,
)
from rtgevent.metrics import register
from tests.conftest import Server, launch_gunicorn
from tests.procs import ServeProcess
from tests.services import RedisServer, free_port
from tests.waiting import WAIT, wait_until

TENANT = "acme"


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, on a free port, not started yet; stopped after the test."""
    server = RedisServer()
    yield server
    server.stop()


def _namespace() -> str:
    return f"hard{uuid.uuid4().hex[:10]}"


def _scrape(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def test_node_started_while_redis_is_down_registers_its_sessions_once_redis_is_up(
    private_redis: RedisServer, serve_realtime: Callable[[Any], Server]
) -> None:
    """start() returns at once against a Redis that is not there; once it is, a client connected meanwhile
    is online and reachable by send_to_identity from another process and from the node itself."""
    url, namespace = private_redis.url, _namespace()
    rt = Realtime(
        Config(presence_ttl=3),
        authenticator=BearerTokenAuthenticator(lambda token: Identity(token, tenant_id=TENANT)),
        broker=RedisBroker(url, namespace=namespace),
        presence=RedisPresence(url, ttl=3, namespace=namespace),
    )
    registry = register(rt)
    began = time.monotonic()
    rt.start()  # the old node raised BrokerUnavailable here, and never renewed its lease afterwards
    print(f"start() with Redis down returned in {time.monotonic() - began:.3f} s")
    stats = rt.stats()
    assert stats["broker_up"] is False and stats["presence_up"] is False
    scraped = _scrape(registry)
    assert scraped["rtgevent_broker_up"] == 0 and scraped["rtgevent_presence_up"] == 0

    server = serve_realtime(rt)
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/?access_token=alice", timeout=WAIT)
    try:
        wait_until(lambda: len(rt.sessions()) == 1, "the session to open while Redis is down")
        private_redis.start()
        up = time.monotonic()
        wait_until(lambda: rt.stats()["presence_up"] and rt.stats()["broker_up"], lambda: f"recovery: {rt.stats()}")
        print(f"broker and presence up {time.monotonic() - up:.3f} s after Redis started")
        with Emitter(url, url, namespace=namespace) as emitter:
            wait_until(lambda: emitter.is_online(TENANT, "alice"), "alice online in presence")
            assert emitter.send_to_identity(TENANT, "alice", "invoice.paid", {"id": 7}) == 1
        assert json.loads(ws.recv()) == {"route": "invoice.paid", "data": {"id": 7}}
        assert rt.is_online(TENANT, "alice")
        rt.send_to_identity(TENANT, "alice", "hello", "again")
        assert json.loads(ws.recv()) == {"route": "hello", "data": "again"}
        scraped = _scrape(registry)
        assert scraped["rtgevent_broker_up"] == 1 and scraped["rtgevent_presence_up"] == 1
    finally:
        ws.close()


def test_a_broker_outage_counts_errors_and_the_reconnect(private_redis: RedisServer) -> None:
    """Killing the broker's Redis increments broker_errors; its return increments broker_reconnects, once."""
    private_redis.start()
    rt = Realtime(Config(), broker=RedisBroker(private_redis.url, namespace=_namespace()), presence=MemoryPresence())
    registry = register(rt)
    try:
        rt.start()  # Redis is up: returns once both topics are subscribed
        stats = rt.stats()
        assert (stats["broker_errors"], stats["broker_reconnects"]) == (0, 0)

        private_redis.stop()  # a crash: SIGKILL
        wait_until(lambda: rt.stats()["broker_errors"] >= 1, lambda: f"broker_errors to move: {rt.stats()}")
        stats = rt.stats()
        assert stats["broker_reconnects"] == 0 and stats["broker_up"] is False

        private_redis.start()
        wait_until(lambda: rt.stats()["broker_reconnects"] >= 1, lambda: f"broker_reconnects to move: {rt.stats()}")
        stats = rt.stats()
        assert stats["broker_reconnects"] == 1 and stats["broker_up"] is True
        scraped = _scrape(registry)
        assert scraped["rtgevent_broker_reconnects_total"] == 1
        assert scraped["rtgevent_broker_errors_total"] == stats["broker_errors"] >= 1
        assert scraped["rtgevent_broker_up"] == 1
        print(f"after one outage: {stats['broker_errors']} broker error(s), 1 reconnect")
    finally:
        rt.shutdown(timeout=5)


def test_serve_starts_while_redis_is_down_with_one_line_not_a_traceback() -> None:
    """``rtgevent serve --broker/--presence`` at a Redis that does not answer serves and logs one line."""
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    node = ServeProcess("tests.app:app_from_env()", "--broker", url, "--presence", url)
    try:
        stats = node.control("stats")
        assert stats["broker_up"] is False and stats["presence_up"] is False
        started = "\n".join(node.lines)  # what the start logged (before any client came)
        ws = websocket.create_connection(f"{node.ws_base}/ws", timeout=WAIT)
        ws.send("still serving")
        assert ws.recv() == "still serving"
        ws.close()
    finally:
        assert node.stop() == 0
    assert "Traceback" not in started, started
    assert sum("presence store unavailable at start" in line for line in node.lines) == 1, started


def test_gunicorn_first_request_while_redis_is_down_upgrades_then_recovers(private_redis: RedisServer) -> None:
    """Under gunicorn the lazy start on the first request no longer answers 500 when Redis is down;
    once Redis is up, the client connected meanwhile is online."""
    spec = {"broker": private_redis.url, "presence": private_redis.url, "namespace": _namespace(), "presence_ttl": 3}
    g = launch_gunicorn(
        "-k", "gevent", "-w", "1", "tests.cluster_app:make_node()", env={"RTG_CLUSTER": json.dumps(spec)}
    )  # fmt: skip
    try:
        node = Server("gunicorn", "127.0.0.1", g.port, g.stop, process=g.proc, log=g.log)
        client = wait_until(lambda: _try_connect(f"{node.ws_url}?access_token=alice"), "the gunicorn worker")
        client.send(json.dumps({"id": 1, "route": "whoami"}))
        assert json.loads(client.recv())["data"]["identity"] == "alice"
        private_redis.start()
        wait_until(lambda: node.control("online", identity="alice").get("online"), "alice online")
        client.close()
    finally:
        g.stop()


def _try_connect(url: str) -> websocket.WebSocket | None:
    try:
        return websocket.create_connection(url, timeout=WAIT)
    except ConnectionRefusedError:
        return None  # the worker is not up yet (a 500 is an error, not a retry)

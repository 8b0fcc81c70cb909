"""Synchronous code everywhere: the Emitter in a gevent-free process, backend events, CLI verbs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import gevent
import pytest
import websocket

from tests.clusterkit import AMQP, ON_CLUSTER, REDIS, Backend, Client
from tests.conftest import ROOT
from tests.procs import ServeProcess
from tests.waiting import WAIT

THREADS, PER_THREAD = 8, 500


def _run(*cmd: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("kind", ["redis", "kombu-amqp", ON_CLUSTER])
def test_emitter_from_eight_threads_in_a_gevent_free_process(
    cluster: Callable[..., list[ServeProcess]], kind: str, backend: Backend
) -> None:
    """8 threads x 500 sends over two nodes: each message once, each thread's order kept per identity."""
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    a, b = cluster(2, broker=backend.broker, presence=backend.presence, namespace=namespace)
    identities = ["u0", "u1", "u2", "u3"]
    clients = {name: Client(a if i < 2 else b, name) for i, name in enumerate(identities)}
    sender = gevent.spawn(
        _run,
        sys.executable,
        "-m",
        "tests.emitter_script",
        backend.broker,
        backend.presence,
        namespace,
        str(THREADS),
        str(PER_THREAD),
        *identities,
    )
    for index, name in enumerate(identities):
        threads = [t for t in range(THREADS) if t % len(identities) == index]
        expected = {t: 0 for t in threads}
        while any(n < PER_THREAD for n in expected.values()):
            msg = clients[name].next()
            assert msg["route"] == "emit"
            t, i = msg["data"]
            assert i == expected[t], f"{name}: thread {t} sent {expected[t]} next, got {i}"
            expected[t] += 1
    result = sender.get(timeout=WAIT * 6)
    assert result.returncode == 0, result.stderr
    assert "gevent-free: ok" in result.stdout
    a.control("broadcast", route="marker")  # nothing more: the next message is the marker
    for client in clients.values():
        assert client.next()["route"] == "marker"
        client.close()


def test_backend_events_reach_a_sync_worker_that_answers(cluster: Callable[..., list[ServeProcess]]) -> None:
    """enter/message/leave reach a synchronous worker in order, also when it starts late; it answers."""
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    queue = f"{namespace}.events"
    [node] = cluster(
        1, broker=REDIS, namespace=namespace, events_url=AMQP, events_queue=queue, events_routes=["order."]
    )
    # published while no consumer runs: kept by the durable queue
    early = Client(node, "early")
    early.ws.send(json.dumps({"route": "order.note", "data": {"n": 1}}))
    early.ping()
    early.close()
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.events_worker", AMQP, queue, REDIS, REDIS, namespace, "6"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        events = [json.loads(worker.stdout.readline()) for _ in range(3)]
        assert [(e["type"], e["identity"]) for e in events] == [
            ("enter", "early"),
            ("message", "early"),
            ("leave", "early"),
        ]
        assert events[1]["route"] == "order.note" and events[1]["data"] == {"n": 1}
        assert events[2]["disconnect"]["code"] == 1000 and events[2]["disconnect"]["initiator"] == "client"
        # live: the worker answers through the Emitter
        buyer = Client(node, "buyer")
        buyer.ws.send(json.dumps({"route": "order.create", "data": {"sku": "x1"}}))
        buyer.expect("order.created", {"sku": "x1"})
        buyer.close()
        events += [json.loads(worker.stdout.readline()) for _ in range(3)]
        assert [e["type"] for e in events[3:]] == ["enter", "message", "leave"]
        assert len({e["session"] for e in events[3:]}) == 1
        assert worker.wait(timeout=WAIT) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        import kombu

        with kombu.Connection(AMQP) as conn:
            conn.default_channel.queue_delete(queue)


@pytest.mark.parametrize("kind", ["redis", ON_CLUSTER])
def test_cli_verbs_against_a_two_node_cluster(
    cluster: Callable[..., list[ServeProcess]], kind: str, backend: Backend
) -> None:
    """send, broadcast, online, sessions and kick do what they say; with the broker down: one line, exit 1."""
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    a, b = cluster(2, broker=backend.broker, presence=backend.presence, namespace=namespace)
    alice_a, alice_b, bob = Client(a, "alice"), Client(b, "alice"), Client(b, "bob")
    env = {"RTGEVENT_BROKER_URL": backend.broker, "RTGEVENT_PRESENCE_URL": backend.presence}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return _run(sys.executable, "-m", "rtgevent", *args, "--namespace", namespace, env=env)

    out = cli("send", "acme", "alice", "dm", '{"text": "hi"}')
    assert out.returncode == 0 and "2 node(s)" in out.stdout, out.stderr
    alice_a.expect("dm", {"text": "hi"})
    alice_b.expect("dm", {"text": "hi"})
    out = cli("broadcast", "news", "plain words")
    assert out.returncode == 0, out.stderr
    for client in (alice_a, alice_b, bob):
        client.expect("news", "plain words")
    assert cli("online", "acme", "alice").stdout.strip() == "online"
    offline = cli("online", "acme", "nobody")
    assert (offline.returncode, offline.stdout.strip()) == (1, "offline")
    lines = cli("sessions", "acme", "alice").stdout.strip().splitlines()
    assert sorted(json.loads(line)["node_id"] for line in lines) == sorted([alice_a.node_id, alice_b.node_id])
    assert cli("kick", "acme", "alice", "--code", "4003", "--reason", "bye").returncode == 0
    for client in (alice_a, alice_b):
        opcode, data = client.ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(data[:2], "big") == 4003
    bob.ping()
    missing = cli("send", "acme", "nobody", "dm")
    assert missing.returncode == 1 and missing.stderr.strip().startswith("rtgevent:")
    down = _run(
        sys.executable,
        "-m",
        "rtgevent",
        "send",
        "acme",
        "bob",
        "dm",
        "--broker",
        "redis://127.0.0.1:1/0",
        "--presence",
        "redis://127.0.0.1:1/0",
    )
    assert down.returncode != 0
    assert len(down.stderr.strip().splitlines()) == 1 and down.stderr.startswith("rtgevent:"), down.stderr
    bob.close()

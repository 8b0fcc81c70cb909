"""``rtgevent publish`` and ``rtgevent members``: channels from the shell (SPEC sections 11 and 13).

Real ``rtgevent serve`` nodes on the shared Redis and RabbitMQ, the CLI run as a user runs
it (``python -m rtgevent ...`` in its own process): a publication reaches the channel's
subscribers on every node and nobody else; ``members`` lists a presence channel's members
cluster-wide; mistakes and a broker that is down end like the other Emitter verbs, with one
``rtgevent:`` line and a non-zero exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest

from tests.clusterkit import ON_CLUSTER, REDIS, Backend, Client
from tests.conftest import ROOT
from tests.procs import ServeProcess
from tests.services import LiveServices
from tests.waiting import wait_until

#: the channels that keep presence on the nodes of `tests.cluster_app`
SEEN = "seen:"
DOWN = "redis://127.0.0.1:1/0"


def _rtgevent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m rtgevent ARGS`` with no broker or presence URL from this environment."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RTGEVENT_")}
    full_env.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "rtgevent", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120
    )


def _one_error_line(out: subprocess.CompletedProcess[str], code: int) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == code and len(lines) == 1 and lines[0].startswith("rtgevent:"), (out.returncode, out.stderr)
    assert out.stdout == ""
    return lines[0]


# ---------------------------------------------------------------------------- publish


@pytest.mark.parametrize("kind", ["redis", "kombu-amqp", ON_CLUSTER])
def test_publish_reaches_the_subscribers_on_every_node_and_nobody_else(
    cluster: Callable[..., list[ServeProcess]], kind: str, backend: Backend
) -> None:
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    broker = backend.broker
    a, b = cluster(2, broker=broker, presence=backend.presence, namespace=namespace)
    room = f"room:{uuid.uuid4().hex[:8]}"
    ann, bea, cid = Client(a, "ann"), Client(b, "bea"), Client(b, "cid")
    for client in (ann, bea):
        client.subscribe(room)

    def publish(*args: str) -> subprocess.CompletedProcess[str]:
        return _rtgevent("publish", room, *args, "--broker", broker, "--namespace", namespace)

    out = publish("chat.message", '{"text": "hi", "n": 1}')
    assert (out.returncode, out.stdout.strip(), out.stderr) == (0, f"published to {room}", "")
    out = publish("chat.note", "plain words")  # not JSON: sent as a string
    assert out.returncode == 0, out.stderr
    out = publish("chat.ping")  # no data at all
    assert out.returncode == 0, out.stderr
    for client in (ann, bea):
        assert [client.next() for _ in range(3)] == [
            {"route": "chat.message", "data": {"text": "hi", "n": 1}, "metadata": {"channel": room}},
            {"route": "chat.note", "data": "plain words", "metadata": {"channel": room}},
            {"route": "chat.ping", "metadata": {"channel": room}},
        ]

    # the node that loses its last subscriber stops receiving the channel; others keep it
    bea.unsubscribe(room)
    assert publish("chat.message", '"after bea left"').returncode == 0
    ann.expect("chat.message", "after bea left")
    a.control("broadcast", route="marker")
    for client in (ann, bea, cid):
        assert client.next()["route"] == "marker"  # cid never, bea no more: the marker comes first
    assert b.control("subscribed") == [] and a.control("subscribed") == [room]
    for client in (ann, bea, cid):
        client.close()


def test_publish_needs_only_a_broker_and_fails_like_the_other_verbs(live: LiveServices) -> None:
    live.require(REDIS)
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    # no broker: the usage line, exit 2 (a presence URL is not needed, and not asked for)
    missing = _rtgevent("publish", "room:1", "pub", "--namespace", namespace)
    assert _one_error_line(missing, 2) == "rtgevent: --broker (or RTGEVENT_BROKER_URL) is required"
    # the broker from the environment, nobody subscribed anywhere: not an error
    nobody = _rtgevent("publish", "room:1", "pub", "--namespace", namespace, env={"RTGEVENT_BROKER_URL": REDIS})
    assert (nobody.returncode, nobody.stdout.strip()) == (0, "published to room:1"), nobody.stderr
    # a name that is no channel (a space): refused before anything is sent
    bad = _rtgevent("publish", "room 1", "pub", "--broker", REDIS, "--namespace", namespace)
    assert "channel" in _one_error_line(bad, 1)
    # the broker down: one line after a bounded retry, never a hang or a traceback
    down = _rtgevent("publish", "room:1", "pub", "--broker", DOWN, "--namespace", namespace)
    _one_error_line(down, 1)
    assert "Traceback" not in down.stderr


# ---------------------------------------------------------------------------- members


@pytest.mark.parametrize("kind", ["redis", ON_CLUSTER])
def test_members_lists_a_channels_subscribers_on_every_node(
    cluster: Callable[..., list[ServeProcess]], kind: str, backend: Backend
) -> None:
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    a, b = cluster(2, broker=backend.broker, presence=backend.presence, namespace=namespace)
    room = f"{SEEN}{uuid.uuid4().hex[:8]}"
    env = {"RTGEVENT_PRESENCE_URL": backend.presence}

    def members(channel: str = room) -> list[str]:
        out = _rtgevent("members", channel, "--namespace", namespace, env=env)
        assert out.returncode == 0 and out.stderr == "", out.stderr
        return out.stdout.splitlines()

    assert members() == ["0 member(s)"]  # nobody yet: an answer, not an error
    ann, ann_too, bea = Client(a, "ann"), Client(b, "ann"), Client(b, "bea")
    loner = Client(a, "lou")  # connected, in no channel: no member
    for client in (ann, ann_too, bea):
        client.subscribe(room)
    lines = members()
    assert lines[-1] == "3 member(s)"
    expected = sorted(f"{c.session_id} acme/{c.identity} {c.node_id}" for c in (ann, ann_too, bea))
    assert sorted(lines[:-1]) == expected
    assert loner.session_id not in "\n".join(lines)

    # leaving, by unsubscribing or by closing, takes a session out cluster-wide
    ann_too.unsubscribe(room)
    bea.close()
    wait_until(lambda: a.control("count", channel=room) == {"count": 1}, "bea's session to leave the channel")
    assert members() == [f"{ann.session_id} acme/ann {ann.node_id}", "1 member(s)"]

    # a channel whose namespace keeps no presence has subscribers, but no members to list
    plain = f"room:{uuid.uuid4().hex[:8]}"
    loner.subscribe(plain)
    assert members(plain) == ["0 member(s)"]
    for client in (ann, ann_too, loner):
        client.close()


def test_members_needs_only_presence_and_fails_like_the_other_verbs(live: LiveServices) -> None:
    live.require(REDIS)
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    missing = _rtgevent("members", f"{SEEN}x", "--namespace", namespace, env={"RTGEVENT_BROKER_URL": REDIS})
    assert _one_error_line(missing, 2) == "rtgevent: --presence (or RTGEVENT_PRESENCE_URL) is required"
    bad = _rtgevent("members", "", "--presence", REDIS, "--namespace", namespace)
    assert "channel" in _one_error_line(bad, 1)
    down = _rtgevent("members", f"{SEEN}x", "--presence", DOWN, "--namespace", namespace)
    _one_error_line(down, 1)

"""Channel presence across the cluster (SPEC section 13): ``rtgevent serve`` nodes on real Redis.

Every node (and an Emitter) answers the same members and count; rt.join / rt.leave reach
the other subscribers on every node, after presence was written; a SIGKILLed node's members
leave every answer within presence_ttl and are purged from Redis after (its sessions get no
rt.leave: nobody is left to say they went); after Redis restarted empty the nodes write
their members back by themselves.  tests/cluster_app.py: ``live:`` channels keep presence
and tell join / leave, ``seen:`` ones keep presence only.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from rtgevent import Emitter
from tests.clusterkit import ON_CLUSTER, REDIS, Backend, Client
from tests.procs import ServeProcess
from tests.services import RedisServer
from tests.waiting import wait_until


def _me(client: Client) -> dict[str, str]:
    return {"session_id": client.session_id, "identity_id": client.identity}


def _expect_event(client: Client, route: str, channel: str, who: Client) -> None:
    msg = client.next()
    expected = {"route": route, "data": {"channel": channel, **_me(who)}, "metadata": {"channel": channel}}
    assert msg == expected, msg


def _everyone_got_nothing_else(node: ServeProcess, clients: list[Client]) -> None:
    node.control("broadcast", route="marker")
    for client in clients:
        msg = client.next()
        assert msg["route"] == "marker", msg


def _answers(nodes: list[ServeProcess], emitter: Emitter, channel: str) -> list[Any]:
    """What each node and the emitter say: the members' identities and the count."""
    said: list[Any] = []
    for node in nodes:
        said.append((node.control("members", channel=channel), node.control("count", channel=channel)["count"]))
    said.append(([m.identity_id for m in emitter.channel_members(channel)], emitter.channel_count(channel)))
    return said


@pytest.mark.parametrize("kind", ["redis", "kombu-amqp", ON_CLUSTER])
def test_members_agree_everywhere_and_join_leave_reach_the_others(cluster, kind: str, backend: Backend) -> None:
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    a, b = cluster(2, broker=backend.broker, presence=backend.presence, namespace=namespace)
    room = f"live:{uuid.uuid4().hex[:8]}"
    ann, bea, cid, bystander = Client(a, "ann"), Client(b, "bea"), Client(a, "cid"), Client(b, "dan")
    with Emitter(backend.broker, backend.presence, namespace=namespace) as emitter:
        ann.subscribe(room)
        bea.subscribe(room)
        _expect_event(ann, "rt.join", room, bea)  # from another node
        cid.subscribe(room)
        _expect_event(ann, "rt.join", room, cid)  # from this node
        _expect_event(bea, "rt.join", room, cid)  # to another node
        everyone = (["ann", "bea", "cid"], 3)  # oldest session first
        assert _answers([a, b], emitter, room) == [everyone] * 3
        sessions = a.control("member_sessions", channel=room)
        assert sessions == [[c.session_id, c.node_id] for c in (ann, bea, cid)]

        bea.unsubscribe(room)
        for client in (ann, cid):
            _expect_event(client, "rt.leave", room, bea)
        # presence was written before anyone was told: asked now, every answer agrees already
        assert _answers([a, b], emitter, room) == [(["ann", "cid"], 2)] * 3

        cid.close()  # a closing session leaves its channels, and its leave reaches the others
        _expect_event(ann, "rt.leave", room, cid)
        assert _answers([a, b], emitter, room) == [(["ann"], 1)] * 3
        _everyone_got_nothing_else(a, [ann, bea, bystander])  # bea left before cid: not told

        # presence without join_leave: members, and nobody is told
        seen = f"seen:{uuid.uuid4().hex[:8]}"
        for client in (ann, bea):
            client.subscribe(seen)
        assert _answers([a, b], emitter, seen) == [(["ann", "bea"], 2)] * 3
        _everyone_got_nothing_else(b, [ann, bea, bystander])
        # a channel without presence: asking is a mistake, and says how to fix it
        refused = a.control("members", channel="room:1")
        assert refused["error"] == "InvalidOption"
        assert "rt.channel_namespace(prefix, ChannelOptions(presence=True))" in refused["message"]
    for client in (ann, bea, bystander):
        client.close()


def test_a_killed_nodes_members_leave_every_answer_within_ttl(cluster) -> None:
    """SIGKILL a node: its members are gone from every answer within presence_ttl, then purged.

    Its sessions get no rt.leave: the node that would have said so is dead, and presence
    forgets them without telling anyone (the lease just runs out).
    """
    ttl = 3.0
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    a, b = cluster(2, broker=REDIS, presence_ttl=ttl, namespace=namespace)
    room = f"live:{uuid.uuid4().hex[:8]}"
    ann, dave, dora = Client(a, "ann"), Client(b, "dave"), Client(b, "dora")
    ann.subscribe(room)
    for client in (dave, dora):
        client.subscribe(room)
        _expect_event(ann, "rt.join", room, client)
    with Emitter(REDIS, REDIS, namespace=namespace) as emitter:
        assert _answers([a], emitter, room) == [(["ann", "dave", "dora"], 3)] * 2
        b.kill()
        killed = time.monotonic()
        wait_until(lambda: _answers([a], emitter, room) == [(["ann"], 1)] * 2, "b's members to leave", interval=0.1)
        elapsed = time.monotonic() - killed
        print(f"members gone {elapsed:.2f} s after SIGKILL (presence_ttl {ttl} s)")
        assert elapsed <= ttl + 2.0
    _everyone_got_nothing_else(a, [ann])  # no rt.leave for dave or dora
    # the dead node's memberships are purged from Redis soon after (a's renew does it)
    admin = redis.Redis.from_url(REDIS)
    try:
        wait_until(
            lambda: (
                admin.hkeys(f"{namespace}:chan:{room}") == [ann.session_id.encode()]
                and admin.hgetall(f"{namespace}:chancount:{room}") == {ann.node_id.encode(): b"1"}
                and not admin.exists(f"{namespace}:nodechan:{dave.node_id}")
            ),
            "the dead node's memberships to be purged",
            interval=0.2,
        )
    finally:
        admin.close()
    ann.close()
    for client in (dave, dora):
        client.ws.close()


def test_members_come_back_after_redis_restarted_empty(cluster) -> None:
    """Redis (broker and presence) restarts with nothing: each node's renewer writes its members back."""
    server = RedisServer()
    server.start()
    try:
        a, b = cluster(2, broker=server.url, presence=server.url, presence_ttl=3)
        room = f"seen:{uuid.uuid4().hex[:8]}"
        ann, bea = Client(a, "ann"), Client(b, "bea")
        for client in (ann, bea):
            client.subscribe(room)
        assert a.control("members", channel=room) == ["ann", "bea"]
        server.stop()
        server.start()  # empty: --save "" and no append-only file
        wait_until(
            lambda: (
                a.control("members", channel=room) == ["ann", "bea"]
                and b.control("count", channel=room) == {"count": 2}
            ),
            "the nodes to write their members back",
            interval=0.2,
        )
        bea.unsubscribe(room)
        assert a.control("members", channel=room) == ["ann"]
        ann.close()
        bea.close()
    finally:
        server.stop()

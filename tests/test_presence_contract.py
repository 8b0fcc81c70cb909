"""The Presence contract: one suite, run against every implementation (STYLE.md).

The first half holds for `MemoryPresence` and `RedisPresence` alike; the second half is what
only a shared store has: node leases that expire, purges by other nodes, a store that is down,
and the costs ARCHITECTURE.md promises (bytes per session, round trips).  Redis tests use a
fresh namespace each and delete its keys afterwards, so they can share a Redis with anything.
"""

from __future__ import annotations

import dataclasses
import datetime
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
import redis

from rtgevent.errors import BrokerUnavailable, InvalidOption
from rtgevent.presence import MemoryPresence, Presence, presence_from_url
from rtgevent.presence.redis import RedisPresence
from rtgevent.retry import redis_cluster_client
from rtgevent.types import SessionInfo
from tests.services import REDIS_URL, LiveServices, RedisServer
from tests.waiting import WAIT, wait_until

UTC = datetime.UTC

_clock = [datetime.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)]


def make_info(identity: str = "alice", tenant: str = "acme", node: str = "node-a", **fields: Any) -> SessionInfo:
    """A SessionInfo with a unique id and a strictly later connected_at than the previous one."""
    _clock[0] += datetime.timedelta(microseconds=1_001)
    values: dict[str, Any] = {
        "session_id": uuid.uuid4().hex,
        "identity_id": identity,
        "tenant_id": tenant,
        "node_id": node,
        "remote_addr": "203.0.113.7",
        "connected_at": _clock[0],
    }
    values.update(fields)
    return SessionInfo(**values)


def without_expiry(infos: list[SessionInfo]) -> list[SessionInfo]:
    return [dataclasses.replace(i, expires_at=None) for i in infos]


# ---------------------------------------------------------------------------- fixtures


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every store test runs on each store it applies to: one Redis, and a real Redis Cluster (SPEC section 15)."""
    if "presence" in metafunc.fixturenames:
        metafunc.parametrize("store", ["memory", "redis", "redis-cluster"], indirect=True)
    elif "redis_presence" in metafunc.fixturenames:
        metafunc.parametrize("store", ["redis", "redis-cluster"], indirect=True)


@pytest.fixture
def store(request: pytest.FixtureRequest) -> str:
    """Which store this test runs on; tests about one Redis only (special clients, outages) get ``redis``."""
    return str(getattr(request, "param", "redis"))


@pytest.fixture
def store_url(store: str, request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("redis_cluster").url) if store == "redis-cluster" else REDIS_URL


@pytest.fixture
def admin(store: str, store_url: str, live: LiveServices) -> Iterator[Any]:
    """A client of the store's Redis (or cluster) to look at keys behind its back; replaces conftest's for ``ns``."""
    live.require(REDIS_URL)
    client: Any = (
        redis_cluster_client(store_url, socket_timeout=5)
        if store == "redis-cluster"
        else redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    )
    yield client
    client.close()


class Keys:
    """The key layout `rtgevent.presence.redis` documents, spelled for one Redis or for a cluster (hash-tagged).

    ``rest`` is how a node-set member spells an identity: ``<escaped tenant>:<identity>``.
    """

    def __init__(self, ns: str, cluster: bool) -> None:
        self.ns = ns
        self.cluster = cluster
        self.leases = f"{{{ns}:leases}}" if cluster else f"{ns}:leases"
        #: a SCAN pattern for every key of the namespace
        self.all = f"{{{ns}:*" if cluster else f"{ns}:*"

    def _owned(self, kind: str, name: str, suffix: str, single: str) -> str:
        return f"{{{self.ns}:{kind}:{name}}}{suffix}" if self.cluster else f"{self.ns}:{single}:{name}"

    def ident(self, rest: str) -> str:
        return self._owned("ident", rest, "", "ident")

    def seq(self, rest: str) -> str:
        return self._owned("ident", rest, ":seq", "seq")

    def node(self, node: str) -> str:
        return self._owned("node", node, "", "node")

    def nodechan(self, node: str) -> str:
        return self._owned("node", node, ":chan", "nodechan")

    def chan(self, channel: str) -> str:
        return self._owned("chan", channel, "", "chan")

    def chancount(self, channel: str) -> str:
        return self._owned("chan", channel, ":count", "chancount")


@pytest.fixture
def keys(ns: str, store: str) -> Keys:
    return Keys(ns, store == "redis-cluster")


@pytest.fixture
def redis_presence(ns: str, store_url: str) -> Iterator[Callable[..., RedisPresence]]:
    """``redis_presence(ttl=..., **kw)``: RedisPresence objects in this test's namespace, closed afterwards."""
    made: list[RedisPresence] = []

    def factory(ttl: float = 30.0, **kwargs: Any) -> RedisPresence:
        kwargs.setdefault("namespace", ns)
        presence = RedisPresence(store_url, ttl, **kwargs)
        made.append(presence)
        return presence

    yield factory
    for presence in made:
        presence.close()


@pytest.fixture
def presence(store: str, request: pytest.FixtureRequest) -> Iterator[Presence]:
    """Each implementation in turn; its nodes are renewed before use, as `Realtime.start` does."""
    made: Presence = MemoryPresence() if store == "memory" else request.getfixturevalue("redis_presence")()
    for node in ("node-a", "node-b", "node-c"):
        made.renew(node, 30.0)
    yield made
    made.close()


# ---------------------------------------------------------------------------- the contract


def test_register_then_lookup_returns_every_field(presence: Presence) -> None:
    """What was registered comes back field for field (datetimes to the microsecond)."""
    info = make_info(remote_addr="[2001:db8::1]:443")
    presence.register(info)
    got = presence.get_identity_sessions("acme", "alice")
    assert without_expiry(got) == [info]
    assert got[0].connected_at.tzinfo is not None
    assert presence.is_online("acme", "alice")
    if isinstance(presence, RedisPresence):
        # a node's sessions expire with its lease: that deadline is what a reader is told
        expires = got[0].expires_at
        assert expires is not None and expires.tzinfo is not None
        assert datetime.datetime.now(UTC) < expires <= datetime.datetime.now(UTC) + datetime.timedelta(seconds=31)


def test_datetimes_in_other_zones_round_trip(presence: Presence) -> None:
    """A connected_at with a non-UTC offset comes back as the same instant."""
    paris = datetime.timezone(datetime.timedelta(hours=2))
    info = make_info(connected_at=datetime.datetime(2024, 5, 1, 14, 0, 0, 7, tzinfo=paris))
    presence.register(info)
    [got] = presence.get_identity_sessions("acme", "alice")
    assert got.connected_at == info.connected_at
    assert got.connected_at.utcoffset() == datetime.timedelta(hours=2)


def test_unregister_removes_the_session(presence: Presence) -> None:
    """After unregister the identity is offline and has no sessions."""
    info = make_info()
    presence.register(info)
    presence.unregister(info.session_id)
    assert presence.get_identity_sessions("acme", "alice") == []
    assert not presence.is_online("acme", "alice")


def test_unregister_of_an_unknown_id_is_a_noop(presence: Presence) -> None:
    """Unknown ids, and ids unregistered twice, are ignored without error."""
    info = make_info()
    presence.register(info)
    presence.unregister("no-such-session")
    presence.unregister(info.session_id)
    presence.unregister(info.session_id)
    assert presence.get_identity_sessions("acme", "alice") == []


def test_unknown_identity_is_offline(presence: Presence) -> None:
    assert presence.get_identity_sessions("acme", "nobody") == []
    assert not presence.is_online("acme", "nobody")


def test_tenants_are_separate_worlds(presence: Presence) -> None:
    """The same identity id in two tenants is two people, even when the ids contain the separator."""
    pairs = [("acme", "bob"), ("globex", "bob"), ("", "bob"), ("a:b", "c"), ("a", "b:c"), ("a%3Ab", "c"), ("ü", "ß:%")]
    infos = {pair: make_info(identity=pair[1], tenant=pair[0]) for pair in pairs}
    for info in infos.values():
        presence.register(info)
    for (tenant, identity), info in infos.items():
        assert without_expiry(presence.get_identity_sessions(tenant, identity)) == [info]
    presence.unregister(infos[("acme", "bob")].session_id)
    assert not presence.is_online("acme", "bob")
    assert presence.is_online("globex", "bob")
    assert presence.is_online("", "bob")


def test_one_identity_on_several_nodes(presence: Presence) -> None:
    """Every session of an identity is listed, oldest first, each with its own node."""
    infos = [make_info(node=node) for node in ("node-a", "node-b", "node-a", "node-c")]
    for info in reversed(infos):
        presence.register(info)
    got = presence.get_identity_sessions("acme", "alice")
    assert without_expiry(got) == infos
    assert {i.node_id for i in got} == {"node-a", "node-b", "node-c"}
    for info in infos[:-1]:
        presence.unregister(info.session_id)
    assert without_expiry(presence.get_identity_sessions("acme", "alice")) == infos[-1:]
    assert presence.is_online("acme", "alice")


def test_registering_a_session_again_replaces_it(presence: Presence) -> None:
    """Register is idempotent per session id: the latest info wins, nothing is listed twice."""
    info = make_info()
    presence.register(info)
    presence.register(info)
    moved = dataclasses.replace(info, node_id="node-b", remote_addr="198.51.100.1")
    presence.register(moved)
    assert without_expiry(presence.get_identity_sessions("acme", "alice")) == [moved]
    presence.unregister(info.session_id)
    assert not presence.is_online("acme", "alice")


def test_register_numbers_the_logins_of_each_identity(presence: Presence) -> None:
    """register() returns 1, 2, 3, ... per identity; sequence() is the last; registering again keeps a number."""
    first, second = make_info(), make_info(node="node-b")
    assert presence.sequence("acme", "alice") == 0
    assert presence.register(first) == 1
    assert presence.register(second) == 2
    assert presence.register(make_info(identity="bob")) == 1  # each identity counts on its own
    assert presence.register(make_info(identity="alice", tenant="globex")) == 1  # and each tenant
    assert presence.register(first) == 1  # the same session again: the same login
    assert presence.register(dataclasses.replace(first, node_id="node-c")) == 1  # moved, still that login
    assert presence.sequence("acme", "alice") == 2
    presence.unregister(second.session_id)
    assert presence.sequence("acme", "alice") == 2  # the last number given, while any session is left
    assert presence.register(make_info()) == 3
    assert presence.sequence("acme", "alice") == 3


def test_login_numbers_start_over_once_an_identity_has_no_session(presence: Presence) -> None:
    """The counter goes with the identity's last session: offline identities cost nothing."""
    infos = [make_info(identity="a:b", tenant="t"), make_info(identity="b", tenant="t:a")]
    for info in infos:
        assert presence.register(info) == 1
    for info in infos:
        presence.unregister(info.session_id)
    assert presence.sequence("t", "a:b") == presence.sequence("t:a", "b") == 0
    assert presence.register(make_info(identity="a:b", tenant="t")) == 1


def test_concurrent_registrations_get_distinct_consecutive_numbers(presence: Presence) -> None:
    """Logins registered at the same moment are numbered 1..N, each once: one order for everybody."""
    infos = [make_info(node=("node-a", "node-b", "node-c")[i % 3]) for i in range(30)]
    jobs = [gevent.spawn(presence.register, info) for info in infos]
    gevent.joinall(jobs, timeout=WAIT, raise_error=True)
    assert sorted(job.value for job in jobs) == list(range(1, 31))
    assert presence.sequence("acme", "alice") == 30


# ---------------------------------------------------------------------------- RedisPresence: leases


def test_unrenewed_node_vanishes_within_ttl(redis_presence: Callable[..., RedisPresence]) -> None:
    """A node that stops renewing drops out of every answer after its ttl; a renewing node stays."""
    ttl = 0.5
    node_a, node_b, reader = redis_presence(ttl), redis_presence(ttl), redis_presence(ttl)
    node_a.renew("node-a", ttl)
    node_b.renew("node-b", ttl)
    last_b_renewal = time.monotonic()
    on_a = make_info(node="node-a")
    on_b = make_info(node="node-b")
    only_b = make_info(identity="bea", node="node-b")
    for store, info in ((node_a, on_a), (node_b, on_b), (node_b, only_b)):
        store.register(info)
    assert len(reader.get_identity_sessions("acme", "alice")) == 2

    def renew_a() -> None:
        while True:
            node_a.renew("node-a", ttl)
            gevent.sleep(ttl / 5)

    renewer = gevent.spawn(renew_a)
    try:
        wait_until(lambda: not reader.is_online("acme", "bea"), "node-b's lease to run out")
        vanished_after = time.monotonic() - last_b_renewal
        # the deadline is exact (Redis clock); the slack is for a busy machine
        assert vanished_after < ttl + 2.0
        assert reader.get_identity_sessions("acme", "bea") == []
        for viewer in (reader, node_a, node_b):
            assert without_expiry(viewer.get_identity_sessions("acme", "alice")) == [on_a]
        # and node-a's session keeps being there while node-a renews
        until = time.monotonic() + 3 * ttl
        while time.monotonic() < until:
            assert without_expiry(reader.get_identity_sessions("acme", "alice")) == [on_a]
            assert reader.is_online("acme", "alice")
            gevent.sleep(0.05)
        assert not renewer.dead, "the renewer failed"
    finally:
        renewer.kill()


def test_expired_node_is_purged_by_another_nodes_renew(
    redis_presence: Callable[..., RedisPresence], admin: redis.Redis, ns: str, keys: Keys
) -> None:
    """After a dead node's lease ran out, the next renew of any node deletes its keys."""
    node_a, node_b = redis_presence(), redis_presence(0.5)
    node_a.renew("node-a", 30)
    node_b.renew("node-b", 0.5)
    on_a = make_info(node="node-a")
    on_b = make_info(node="node-b")
    only_b = [make_info(identity="bea", tenant="t:1", node="node-b") for _ in range(3)]
    node_a.register(on_a)
    for info in [on_b, *only_b]:
        node_b.register(info)
    wait_until(lambda: not node_a.is_online("t:1", "bea"), "node-b's lease to run out")
    # nobody renewed since: the entries are still stored, merely ignored
    assert admin.exists(keys.node("node-b"))
    assert admin.hexists(keys.ident("acme:alice"), on_b.session_id)

    node_a.renew("node-a", 30)

    assert not admin.exists(keys.node("node-b"))
    assert admin.zscore(keys.leases, "node-b") is None
    assert admin.hkeys(keys.ident("acme:alice")) == [on_a.session_id.encode()]
    assert not admin.exists(keys.ident("t%3A1:bea"))
    # the live node is untouched
    assert admin.smembers(keys.node("node-a")) == {f"{on_a.session_id}:acme:alice".encode()}
    assert admin.zscore(keys.leases, "node-a") is not None
    assert without_expiry(node_a.get_identity_sessions("acme", "alice")) == [on_a]


def _fill(store: RedisPresence, node: str, count: int, identities: int) -> list[SessionInfo]:
    infos = [make_info(identity=f"user-{i % identities}", node=node) for i in range(count)]
    for info in infos:
        store.register(info)
    return infos


def test_concurrent_purges_neither_fail_nor_touch_live_nodes(
    redis_presence: Callable[..., RedisPresence], admin: redis.Redis, ns: str, keys: Keys
) -> None:
    """Several nodes purging one dead node at once: no error, the dead node is gone, live ones intact."""
    node_a, node_c, node_b = redis_presence(), redis_presence(), redis_presence(0.5)
    node_a.renew("node-a", 30)
    node_c.renew("node-c", 30)
    node_b.renew("node-b", 0.5)
    live = _fill(node_a, "node-a", 100, 100) + _fill(node_c, "node-c", 100, 100)
    _fill(node_b, "node-b", 1000, 100)
    wait_until(
        lambda: all(s.node_id != "node-b" for s in node_a.get_identity_sessions("acme", "user-0")),
        "node-b's lease to run out",
    )
    assert admin.scard(keys.node("node-b")) == 1000  # expired, not yet purged
    for store in (node_a, node_c):
        store.purge_chunk = 25  # many small chunks, so the purgers really interleave
    jobs = [
        gevent.spawn(node_a.renew, "node-a", 30),
        gevent.spawn(node_c.renew, "node-c", 30),
        gevent.spawn(node_a.purge_node, "node-b"),
        gevent.spawn(node_c.purge_node, "node-b"),
    ]
    gevent.joinall(jobs, timeout=WAIT, raise_error=True)
    assert all(job.successful() for job in jobs)

    assert not admin.exists(keys.node("node-b"))
    assert admin.zscore(keys.leases, "node-b") is None
    for i in range(100):
        expected = sorted(info.session_id for info in live if info.identity_id == f"user-{i}")
        assert sorted(f.decode() for f in admin.hkeys(keys.ident(f"acme:user-{i}"))) == expected
        assert sorted(s.session_id for s in node_c.get_identity_sessions("acme", f"user-{i}")) == expected
    assert admin.scard(keys.node("node-a")) == 100
    assert admin.scard(keys.node("node-c")) == 100


def test_node_that_renews_during_its_purge_keeps_its_sessions(
    redis_presence: Callable[..., RedisPresence], ns: str
) -> None:
    """A paused node that comes back while being purged ends up with all of its sessions listed."""
    node_a, node_b = redis_presence(), redis_presence(0.5)
    node_a.renew("node-a", 30)
    node_b.renew("node-b", 0.5)
    mine = _fill(node_b, "node-b", 300, 30)
    wait_until(lambda: not node_a.is_online("acme", "user-0"), "node-b's lease to run out")
    node_a.purge_chunk = 10
    jobs = [gevent.spawn(node_a.purge_node, "node-b"), gevent.spawn(node_b.renew, "node-b", 30)]
    gevent.joinall(jobs, timeout=WAIT, raise_error=True)
    # whichever ran first, the comeback renew (or the next one) restores what the purge took
    node_b.renew("node-b", 30)
    listed = [s.session_id for i in range(30) for s in node_a.get_identity_sessions("acme", f"user-{i}")]
    assert sorted(listed) == sorted(i.session_id for i in mine)


def test_a_comeback_between_a_cluster_purges_pop_and_its_removals_is_healed_at_the_next_renewal(
    redis_presence: Callable[..., RedisPresence], ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster a purge pops a chunk in the node's slot, then removes it from the
    identities' slots: the worst moment for the node to come back is in between.  Its
    comeback renewal heals (it sees the popped chunk missing), the purge then removes that
    chunk's identity entries all the same, and the next renewal writes everything again."""
    node_a, node_b = redis_presence(), redis_presence(0.5)
    if not node_a.cluster:
        pytest.skip("one Redis purges a chunk in one script: there is no in between")
    node_a.renew("node-a", 30)
    node_b.renew("node-b", 0.5)
    mine = _fill(node_b, "node-b", 30, 30)
    wait_until(lambda: not node_a.is_online("acme", "user-0"), "node-b's lease to run out")
    node_a.purge_chunk = 10
    make_batch = node_a._batch
    comebacks: list[str] = []

    class LateBatch:
        """The purge's batch of removals, sent only after node-b's comeback renewal."""

        def __init__(self, batch: Any) -> None:
            self.batch = batch

        def __getattr__(self, name: str) -> Any:
            return getattr(self.batch, name)

        def run(self) -> Any:
            if not comebacks:  # the first chunk is popped: node-b renews before its removals
                comebacks.append("node-b")
                node_b.renew("node-b", 30)
            return self.batch.run()

    monkeypatch.setattr(node_a, "_batch", lambda *, ordered=True: LateBatch(make_batch(ordered=ordered)))
    assert node_a.purge_node("node-b") is False  # the node renewed: the purge stops after one chunk
    assert comebacks == ["node-b"]
    gone = sum(not node_a.get_identity_sessions("acme", f"user-{i}") for i in range(30))
    assert gone == 10  # the chunk's identity entries, removed after the comeback's heal
    node_b.renew("node-b", 30)  # the next renewal
    listed = [s.session_id for i in range(30) for s in node_a.get_identity_sessions("acme", f"user-{i}")]
    assert sorted(listed) == sorted(i.session_id for i in mine)


def test_renew_rewrites_entries_redis_lost_and_drops_stale_ones(
    redis_presence: Callable[..., RedisPresence], admin: redis.Redis, ns: str, keys: Keys
) -> None:
    """Redis restarted empty, or an unregister failed: the node's next renew makes Redis match it."""
    store = redis_presence()
    store.renew("node-a", 30)
    infos = [make_info(identity=f"user-{i}") for i in range(5)]
    for info in infos:
        store.register(info)
    admin.delete(*admin.scan_iter(match=keys.all))  # what a restart without persistence does
    assert not store.is_online("acme", "user-0")
    store.renew("node-a", 30)
    for info in infos:
        assert without_expiry(store.get_identity_sessions("acme", info.identity_id)) == [info]

    ghost = make_info(identity="user-0")  # left behind by an unregister that failed
    admin.hset(keys.ident("acme:user-0"), ghost.session_id, f'["node-a","x","{ghost.connected_at.isoformat()}"]')
    admin.sadd(keys.node("node-a"), f"{ghost.session_id}:acme:user-0")
    assert len(store.get_identity_sessions("acme", "user-0")) == 2
    store.renew("node-a", 30)
    assert without_expiry(store.get_identity_sessions("acme", "user-0")) == [infos[0]]
    assert admin.scard(keys.node("node-a")) == 5


def test_login_numbers_are_shared_by_every_node(redis_presence: Callable[..., RedisPresence]) -> None:
    """Two nodes registering one identity at once: one sequence of numbers, and both read the same last one."""
    node_a, node_b = redis_presence(), redis_presence()
    node_a.renew("node-a", 30)
    node_b.renew("node-b", 30)
    pairs = [(node_a if i % 2 else node_b, make_info(node="node-a" if i % 2 else "node-b")) for i in range(40)]
    jobs = [gevent.spawn(store.register, info) for store, info in pairs]
    gevent.joinall(jobs, timeout=WAIT, raise_error=True)
    assert sorted(job.value for job in jobs) == list(range(1, 41))
    assert node_a.sequence("acme", "alice") == node_b.sequence("acme", "alice") == 40


def test_login_numbers_survive_a_redis_restart(
    redis_presence: Callable[..., RedisPresence], admin: redis.Redis, ns: str, keys: Keys
) -> None:
    """Redis restarted empty: self-healing writes the sessions back with their numbers, and new logins go on above."""
    store = redis_presence()
    store.renew("node-a", 30)
    infos = [make_info() for _ in range(3)]
    assert [store.register(info) for info in infos] == [1, 2, 3]
    admin.delete(*admin.scan_iter(match=keys.all))  # what a restart without persistence does
    store.renew("node-a", 30)  # heals
    assert store.sequence("acme", "alice") == 3
    assert store.register(infos[0]) == 1  # registering a known session again keeps its number
    assert store.register(make_info()) == 4


def test_the_counter_is_purged_with_a_dead_nodes_last_session(
    redis_presence: Callable[..., RedisPresence], admin: redis.Redis, ns: str, keys: Keys
) -> None:
    """A purge that removes an identity's last session removes its counter too; others keep theirs."""
    node_a, node_b = redis_presence(), redis_presence(0.5)
    node_a.renew("node-a", 30)
    node_b.renew("node-b", 0.5)
    node_a.register(make_info(identity="shared", node="node-a"))
    node_b.register(make_info(identity="shared", node="node-b"))
    node_b.register(make_info(identity="only-b", node="node-b"))
    wait_until(lambda: not node_a.is_online("acme", "only-b"), "node-b's lease to run out")
    node_a.renew("node-a", 30)  # purges node-b
    assert not admin.exists(keys.seq("acme:only-b"))
    assert node_a.sequence("acme", "only-b") == 0
    assert node_a.sequence("acme", "shared") == 2


def test_close_retires_the_node_at_once(
    redis_presence: Callable[..., RedisPresence], admin: redis.Redis, ns: str, keys: Keys
) -> None:
    """close() does not leave the node's lease and leftovers to expire: they are gone immediately."""
    store, reader = redis_presence(), redis_presence()
    store.renew("node-z", 30)
    infos = [make_info(node="node-z") for _ in range(3)]
    for info in infos:
        store.register(info)
    store.unregister(infos[0].session_id)
    store.close()
    assert reader.get_identity_sessions("acme", "alice") == []
    assert admin.zscore(keys.leases, "node-z") is None
    assert not admin.exists(keys.node("node-z"))
    assert not admin.exists(keys.ident("acme:alice"))


def test_register_without_a_prior_renew_leases_the_node(redis_presence: Callable[..., RedisPresence]) -> None:
    """A session of a node that never renewed is still visible (the store leases the node itself)."""
    store = redis_presence(30)
    info = make_info(node="node-new")
    store.register(info)
    assert without_expiry(store.get_identity_sessions("acme", "alice")) == [info]


def test_a_client_passed_in_is_used_and_left_open(ns: str) -> None:
    """A caller's client (even one decoding replies to str) works, and close() leaves its pool alone."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_timeout=2)
    try:
        store = RedisPresence(client, namespace=ns)
        store.renew("node-a", 30)
        info = make_info()
        store.register(info)
        assert without_expiry(store.get_identity_sessions("acme", "alice")) == [info]
        assert store.is_online("acme", "alice")
        store.unregister(info.session_id)
        assert not store.is_online("acme", "alice")
        store.close()
        assert client.ping()
    finally:
        client.close()


# ---------------------------------------------------------------------------- RedisPresence: failures


def _assert_unavailable(store: RedisPresence, where: str) -> None:
    info = make_info()
    calls: list[Callable[[], object]] = [
        lambda: store.renew("node-a", 30),
        lambda: store.register(info),
        lambda: store.get_identity_sessions("acme", "alice"),
        lambda: store.is_online("acme", "alice"),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as caught:
            call()
        assert time.monotonic() - started < 10
        assert where in str(caught.value)
        assert str(caught.value).startswith("rtgevent:")
    store.unregister(info.session_id)  # never registered: no-op, no I/O


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "redis+cluster://127.0.0.1:1/"])
def test_unreachable_redis_raises_broker_unavailable_quickly(url: str) -> None:
    """Nothing listens on port 1: every operation fails fast with a clear BrokerUnavailable.

    A cluster's store is made all the same (it connects at its first call): a node starts
    while its Redis is down and catches up once it answers.
    """
    with gevent.Timeout(30, AssertionError("a call hung")):
        store = RedisPresence(url, socket_timeout=0.5, retries=2)
        try:
            _assert_unavailable(store, "127.0.0.1:1")
        finally:
            store.close()


def test_silent_redis_raises_broker_unavailable_after_socket_timeout() -> None:
    """A server that accepts but never answers: socket_timeout bounds each attempt, then BrokerUnavailable."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # the kernel completes handshakes; nobody ever reads or answers
    port = silent.getsockname()[1]
    try:
        with gevent.Timeout(30, AssertionError("a call hung")):
            store = RedisPresence(f"redis://127.0.0.1:{port}/0", socket_timeout=0.2, retries=1)
            try:
                _assert_unavailable(store, f"127.0.0.1:{port}")
            finally:
                store.close()
    finally:
        silent.close()


# ---------------------------------------------------------------------------- RedisPresence: costs


def _namespace_bytes(admin: Any, keys: Keys) -> int:
    return sum(int(admin.memory_usage(key, samples=0) or 0) for key in admin.scan_iter(match=keys.all))


def test_memory_per_session(
    redis_presence: Callable[..., RedisPresence],
    admin: redis.Redis,
    ns: str,
    capsys: pytest.CaptureFixture[str],
    keys: Keys,
) -> None:
    """MEMORY USAGE of every key for 1,000 sessions, divided by 1,000 (ARCHITECTURE.md: ~150 bytes)."""
    results = {}
    for identities in (1000, 250):
        node_a, node_b = redis_presence(), redis_presence()
        node_a.renew("node-a", 30)
        node_b.renew("node-b", 30)
        for i in range(1000):
            # a realistic session: 32-hex id, an IPv4 peer, a node id like Realtime's
            store, node = (node_a, "node-a") if i % 2 else (node_b, "node-b")
            store.register(make_info(identity=f"user-{i % identities:06d}", node=node, remote_addr="198.51.100.23"))
        results[identities] = _namespace_bytes(admin, keys) / 1000
        node_a.close()
        node_b.close()
        assert not list(admin.scan_iter(match=keys.all))
    with capsys.disabled():
        print(
            f"\n[presence] Redis bytes per session: {results[1000]:.0f} (1,000 identities x 1 session), "
            f"{results[250]:.0f} (250 identities x 4 sessions), 2 nodes"
        )
    assert results[1000] < 400
    assert results[250] < 300


def test_round_trips(ns: str, capsys: pytest.CaptureFixture[str]) -> None:
    """register, unregister, lookups and a steady-state renew are one round trip each."""
    sent = [0]

    class CountingConnection(redis.Connection):
        """Counts writes to the socket: a pipeline or a script is one write, then its replies."""

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sent[0] += 1
            super().send_packed_command(command, check_health)

    pool = redis.ConnectionPool.from_url(REDIS_URL, connection_class=CountingConnection, socket_timeout=2)
    client = redis.Redis(connection_pool=pool)
    store = RedisPresence(client, namespace=ns)

    def trips(op: Callable[[], object]) -> int:
        before = sent[0]
        op()
        return sent[0] - before

    try:
        client.ping()  # connect (handshake writes are not ours to count)
        store.renew("node-a", 30)
        store.get_identity_sessions("acme", "warm")  # first EVALSHA of each script may need a SCRIPT LOAD
        store.is_online("acme", "warm")
        info = make_info()
        other = make_info(node="node-b")
        store.renew("node-b", 30)
        store.register(other)
        counts = {
            "register": trips(lambda: store.register(info)),
            "get_identity_sessions": trips(lambda: store.get_identity_sessions("acme", "alice")),
            "is_online": trips(lambda: store.is_online("acme", "alice")),
            "lookup of an unknown identity": trips(lambda: store.get_identity_sessions("acme", "nobody")),
            "renew": trips(lambda: store.renew("node-a", 30)),
            "unregister": trips(lambda: store.unregister(info.session_id)),
            "unregister unknown": trips(lambda: store.unregister("no-such-session")),
        }
        assert len(store.get_identity_sessions("acme", "alice")) == 1
        with capsys.disabled():
            print(f"\n[presence] round trips: {counts}")
        assert counts == {
            "register": 1,
            "get_identity_sessions": 1,
            "is_online": 1,
            "lookup of an unknown identity": 1,
            "renew": 1,
            "unregister": 1,
            "unregister unknown": 0,
        }
    finally:
        store.close()
        client.close()


# ---------------------------------------------------------------------------- construction


def test_presence_from_url(ns: str) -> None:
    """The URL scheme picks the store; options that only Redis uses are accepted for memory too."""
    assert isinstance(presence_from_url("memory://"), MemoryPresence)
    assert isinstance(presence_from_url("memory://", ttl=10), MemoryPresence)
    store = presence_from_url(REDIS_URL, ttl=10, namespace=ns, socket_timeout=1, retries=0)
    try:
        assert isinstance(store, RedisPresence)
        store.renew("node-a", 10)
        assert not store.is_online("acme", "alice")
    finally:
        store.close()


@pytest.mark.parametrize("url", ["amqp://guest:secret@host/", "", "redis", "kombu+redis://x", "http://x"])
def test_presence_from_url_rejects_other_schemes(url: str) -> None:
    with pytest.raises(InvalidOption) as caught:
        presence_from_url(url)
    assert "secret" not in str(caught.value)


def test_presence_from_url_rejects_unknown_options() -> None:
    with pytest.raises(InvalidOption):
        presence_from_url("memory://", tll=3)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ttl": 0}, "ttl"),
        ({"socket_timeout": -1}, "socket_timeout"),
        ({"retries": -1}, "retries"),
        ({"namespace": ""}, "namespace"),
    ],
)
def test_redis_presence_validates_its_options(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidOption) as caught:
        RedisPresence(REDIS_URL, **kwargs)
    assert caught.value.field == field


# ---------------------------------------------------------------------------- channel presence (SPEC section 13)


def test_channel_members_and_count(presence: Presence) -> None:
    """Members of a channel on every node, oldest first, field for field; joining again changes nothing."""
    infos = [make_info(node="node-a"), make_info(identity="bob", node="node-b"), make_info(tenant="globex")]
    other = make_info(identity="cid", node="node-c")
    for info in reversed(infos):
        presence.channel_join("room:1", info)
    presence.channel_join("room:2", other)
    presence.channel_join("room:1", infos[0])  # idempotent
    assert without_expiry(presence.channel_members("room:1")) == infos
    assert presence.channel_count("room:1") == 3
    assert without_expiry(presence.channel_members("room:2")) == [other]
    assert presence.channel_count("room:2") == 1
    assert presence.channel_members("room:none") == [] and presence.channel_count("room:none") == 0
    if isinstance(presence, RedisPresence):
        expires = presence.channel_members("room:1")[0].expires_at  # the node's lease
        assert expires is not None and datetime.datetime.now(UTC) < expires

    presence.channel_leave("room:1", infos[1].session_id)
    presence.channel_leave("room:1", infos[1].session_id)  # twice: a no-op
    presence.channel_leave("room:1", other.session_id)  # not a member of this channel: a no-op
    presence.channel_leave("room:1", "no-such-session")
    assert without_expiry(presence.channel_members("room:1")) == [infos[0], infos[2]]
    assert presence.channel_count("room:1") == 2
    assert presence.channel_count("room:2") == 1
    for info in (infos[0], infos[2]):
        presence.channel_leave("room:1", info.session_id)
    assert presence.channel_members("room:1") == [] and presence.channel_count("room:1") == 0


def test_channel_names_are_kept_apart(presence: Presence) -> None:
    """Channels that share a prefix, or spell a separator, or an identity's name, are different channels."""
    names = ["a", "a:b", "a:b:c", "ab", "a.b", "%3A", "acme:alice", "~!@#$%^&*()"]
    infos = {name: make_info(identity=f"user-{i}") for i, name in enumerate(names)}
    for name, info in infos.items():
        presence.channel_join(name, info)
    presence.register(make_info())  # an identity acme/alice: no channel member
    for name, info in infos.items():
        assert without_expiry(presence.channel_members(name)) == [info]
        assert presence.channel_count(name) == 1


def test_channel_membership_is_not_registration(presence: Presence) -> None:
    """Joining a channel does not put the session online, and registering it joins no channel."""
    info = make_info(identity="quiet")
    presence.channel_join("room:1", info)
    assert not presence.is_online("acme", "quiet")
    presence.register(info)
    assert presence.channel_members("room:2") == []
    presence.channel_leave("room:1", info.session_id)
    assert presence.is_online("acme", "quiet")


def test_unregister_leaves_every_channel(presence: Presence) -> None:
    """A closing session leaves all its channels with its unregister; others stay; unknown ids are a no-op."""
    leaving, staying = make_info(), make_info(identity="bob", node="node-b")
    for store_info in (leaving, staying):
        presence.register(store_info)
    for channel in ("room:1", "room:2", "doc.x"):
        presence.channel_join(channel, leaving)
        presence.channel_join(channel, staying)
    never_registered = make_info(identity="eve")  # its registration failed, its joins did not
    presence.channel_join("room:1", never_registered)
    presence.unregister(leaving.session_id)
    presence.unregister(never_registered.session_id)
    presence.unregister("no-such-session")
    for channel in ("room:1", "room:2", "doc.x"):
        assert without_expiry(presence.channel_members(channel)) == [staying]
        assert presence.channel_count(channel) == 1
    assert not presence.is_online("acme", "alice")
    presence.unregister(staying.session_id)
    for channel in ("room:1", "room:2", "doc.x"):
        assert presence.channel_count(channel) == 0


@pytest.mark.parametrize("channel", ["", "has space", "x" * 256, "é", None])
def test_a_bad_channel_name_is_refused(presence: Presence, channel: Any) -> None:
    with pytest.raises(InvalidOption):
        presence.channel_join(channel, make_info())
    with pytest.raises(InvalidOption):
        presence.channel_members(channel)
    with pytest.raises(InvalidOption):
        presence.channel_count(channel)


def test_concurrent_joins_and_leaves_keep_the_count(presence: Presence) -> None:
    """Many sessions of three nodes join and half of them leave at once: members and count agree."""
    infos = [make_info(identity=f"user-{i}", node=("node-a", "node-b", "node-c")[i % 3]) for i in range(60)]
    jobs = [gevent.spawn(presence.channel_join, "room:busy", info) for info in infos]
    gevent.joinall(jobs, timeout=WAIT, raise_error=True)
    jobs = [gevent.spawn(presence.channel_leave, "room:busy", info.session_id) for info in infos[::2]]
    jobs += [gevent.spawn(presence.channel_join, "room:busy", info) for info in infos[1::2]]  # again: no change
    gevent.joinall(jobs, timeout=WAIT, raise_error=True)
    assert without_expiry(presence.channel_members("room:busy")) == infos[1::2]
    assert presence.channel_count("room:busy") == 30


# ---------------------------------------------------------------------------- RedisPresence: channel leases


def test_a_dead_nodes_channel_members_vanish_within_ttl_and_are_purged(
    redis_presence: Callable[..., RedisPresence], admin: redis.Redis, ns: str, keys: Keys
) -> None:
    """A node that stops renewing leaves every member list and count within ttl; a renew elsewhere purges it."""
    ttl = 0.5
    node_a, node_b = redis_presence(30), redis_presence(ttl)
    node_a.renew("node-a", 30)
    node_b.renew("node-b", ttl)
    renewed = time.monotonic()
    on_a = make_info(node="node-a")
    on_b = [make_info(identity=f"b-{i}", node="node-b") for i in range(3)]
    node_a.channel_join("room:1", on_a)
    for info in on_b:
        node_b.channel_join("room:1", info)
        node_b.channel_join("room:b-only", info)
    node_b.register(on_b[0])
    assert node_a.channel_count("room:1") == 4
    wait_until(lambda: node_a.channel_count("room:1") == 1, "node-b's members to drop out")
    assert time.monotonic() - renewed < ttl + 2.0
    assert without_expiry(node_a.channel_members("room:1")) == [on_a]
    assert node_a.channel_members("room:b-only") == [] and node_a.channel_count("room:b-only") == 0
    # ignored, not yet removed
    assert admin.scard(keys.nodechan("node-b")) == 6
    assert admin.hlen(keys.chan("room:1")) == 4

    node_a.renew("node-a", 30)  # purges node-b

    assert not admin.exists(keys.nodechan("node-b"))
    assert not admin.exists(keys.node("node-b"))
    assert admin.zscore(keys.leases, "node-b") is None
    assert admin.hkeys(keys.chan("room:1")) == [on_a.session_id.encode()]
    assert admin.hgetall(keys.chancount("room:1")) == {b"node-a": b"1"}
    assert not admin.exists(keys.chan("room:b-only"))
    assert not admin.exists(keys.chancount("room:b-only"))
    assert admin.smembers(keys.nodechan("node-a")) == {f"{on_a.session_id}:room:1".encode()}


def test_a_purge_in_small_chunks_removes_every_membership(
    redis_presence: Callable[..., RedisPresence], admin: redis.Redis, ns: str, keys: Keys
) -> None:
    """A dead node with many memberships is purged chunk by chunk, its sessions and memberships alike."""
    node_a, node_b = redis_presence(30), redis_presence(0.5)
    node_a.renew("node-a", 30)
    node_b.renew("node-b", 0.5)
    infos = _fill(node_b, "node-b", 40, 10)
    for i, info in enumerate(infos):
        for channel in (f"room:{i % 7}", "room:all"):
            node_b.channel_join(channel, info)
    node_a.channel_join("room:all", make_info(node="node-a"))
    wait_until(lambda: node_a.channel_count("room:all") == 1, "node-b's lease to run out")
    node_a.purge_chunk = 7
    assert node_a.purge_node("node-b")
    assert not [key for key in admin.scan_iter(match=keys.all) if b"node-b" in key]
    assert [key for key in admin.scan_iter(match=keys.chan("*"))] != []
    assert admin.hlen(keys.chan("room:all")) == 1
    assert admin.hgetall(keys.chancount("room:all")) == {b"node-a": b"1"}
    assert not any(admin.exists(keys.chan(f"room:{i}")) for i in range(7))


def test_a_node_that_renews_during_its_purge_keeps_its_members_and_count(
    redis_presence: Callable[..., RedisPresence],
) -> None:
    """A paused node that comes back while being purged gets all its memberships back, counted right."""
    node_a, node_b = redis_presence(30), redis_presence(0.5)
    node_a.renew("node-a", 30)
    node_b.renew("node-b", 0.5)
    mine = [make_info(identity=f"user-{i}", node="node-b") for i in range(60)]
    for info in mine:
        node_b.channel_join("room:1", info)
    wait_until(lambda: node_a.channel_count("room:1") == 0, "node-b's lease to run out")
    node_a.purge_chunk = 10
    jobs = [gevent.spawn(node_a.purge_node, "node-b"), gevent.spawn(node_b.renew, "node-b", 30)]
    gevent.joinall(jobs, timeout=WAIT, raise_error=True)
    node_b.renew("node-b", 30)  # whichever ran first, this one sees the drift and heals
    assert without_expiry(node_a.channel_members("room:1")) == mine
    assert node_a.channel_count("room:1") == 60


def test_renew_rewrites_memberships_redis_lost_and_drops_stale_ones(
    redis_presence: Callable[..., RedisPresence], admin: redis.Redis, ns: str, keys: Keys
) -> None:
    """Redis restarted empty: the next renew writes the node's members and counts back; a ghost is removed."""
    store = redis_presence()
    store.renew("node-a", 30)
    infos = [make_info(identity=f"user-{i}") for i in range(4)]
    for info in infos:
        store.register(info)
        store.channel_join("room:1", info)
    store.channel_join("room:2", infos[0])
    admin.delete(*admin.scan_iter(match=keys.all))  # what a restart without persistence does
    assert store.channel_count("room:1") == 0
    store.renew("node-a", 30)
    assert without_expiry(store.channel_members("room:1")) == infos
    assert store.channel_count("room:1") == 4
    assert without_expiry(store.channel_members("room:2")) == [infos[0]]
    assert store.channel_count("room:2") == 1
    assert without_expiry(store.get_identity_sessions("acme", "user-1")) == [infos[1]]

    ghost = make_info(identity="ghost")  # left behind by a channel_leave that failed
    value = f'["node-a","acme","ghost","x","{ghost.connected_at.isoformat()}"]'
    admin.hset(keys.chan("room:1"), ghost.session_id, value)
    admin.sadd(keys.nodechan("node-a"), f"{ghost.session_id}:room:1")
    admin.hincrby(keys.chancount("room:1"), "node-a", 1)
    assert store.channel_count("room:1") == 5
    store.renew("node-a", 30)
    assert without_expiry(store.channel_members("room:1")) == infos
    assert store.channel_count("room:1") == 4


def test_a_join_that_failed_while_redis_was_down_is_written_when_it_answers(live: LiveServices) -> None:
    """Redis down: join and leave raise BrokerUnavailable quickly; once Redis is back (empty) renew makes it right."""
    server = RedisServer()
    server.start()
    store = RedisPresence(server.url, 30, socket_timeout=0.5, retries=0, namespace="rtgtest-outage")
    try:
        store.renew("node-a", 30)
        left, joined, kept = make_info(identity="left"), make_info(identity="joined"), make_info(identity="kept")
        store.channel_join("room:1", left)
        store.channel_join("room:1", kept)
        server.stop()
        with gevent.Timeout(10, AssertionError("a call hung")):
            with pytest.raises(BrokerUnavailable):
                store.channel_join("room:1", joined)
            with pytest.raises(BrokerUnavailable):
                store.channel_leave("room:1", left.session_id)
            with pytest.raises(BrokerUnavailable):
                store.channel_count("room:1")
        server.start()  # empty: it kept nothing
        store.renew("node-a", 30)
        assert without_expiry(store.channel_members("room:1")) == [joined, kept]
        assert store.channel_count("room:1") == 2
    finally:
        store.close()
        server.stop()


def test_close_retires_the_nodes_memberships_at_once(
    redis_presence: Callable[..., RedisPresence], admin: redis.Redis, ns: str, keys: Keys
) -> None:
    store, reader = redis_presence(), redis_presence()
    store.renew("node-z", 30)
    for _ in range(3):
        store.channel_join("room:1", make_info(node="node-z"))
    store.close()
    assert reader.channel_members("room:1") == [] and reader.channel_count("room:1") == 0
    assert not list(admin.scan_iter(match=keys.all))


def test_channel_round_trips(ns: str, capsys: pytest.CaptureFixture[str]) -> None:
    """join, leave, members, count and the unregister of a session in channels are one round trip each."""
    sent = [0]

    class CountingConnection(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sent[0] += 1
            super().send_packed_command(command, check_health)

    pool = redis.ConnectionPool.from_url(REDIS_URL, connection_class=CountingConnection, socket_timeout=2)
    client = redis.Redis(connection_pool=pool)
    store = RedisPresence(client, namespace=ns)

    def trips(op: Callable[[], object]) -> int:
        before = sent[0]
        op()
        return sent[0] - before

    try:
        client.ping()
        store.renew("node-a", 30)
        warm = make_info(identity="warm")  # the first EVALSHA of each script may need a SCRIPT LOAD
        store.register(warm)
        store.channel_join("room:warm", warm)
        store.channel_members("room:warm")
        store.channel_count("room:warm")
        store.unregister(warm.session_id)
        info = make_info()
        store.register(info)
        counts = {
            "channel_join": trips(lambda: store.channel_join("room:1", info)),
            "channel_join again": trips(lambda: store.channel_join("room:1", info)),
            "channel_members": trips(lambda: store.channel_members("room:1")),
            "channel_count": trips(lambda: store.channel_count("room:1")),
            "channel_leave": trips(lambda: store.channel_leave("room:1", info.session_id)),
            "channel_leave unknown": trips(lambda: store.channel_leave("room:1", info.session_id)),
        }
        for channel in ("room:1", "room:2", "room:3"):
            store.channel_join(channel, info)
        counts["unregister of a session in 3 channels"] = trips(lambda: store.unregister(info.session_id))
        assert store.channel_count("room:2") == 0 and not store.is_online("acme", "alice")
        with capsys.disabled():
            print(f"\n[presence] channel round trips: {counts}")
        assert counts == {
            "channel_join": 1,
            "channel_join again": 1,
            "channel_members": 1,
            "channel_count": 1,
            "channel_leave": 1,
            "channel_leave unknown": 0,
            "unregister of a session in 3 channels": 1,
        }
    finally:
        store.close()
        client.close()


def test_memory_per_membership(
    redis_presence: Callable[..., RedisPresence],
    admin: redis.Redis,
    ns: str,
    capsys: pytest.CaptureFixture[str],
    keys: Keys,
) -> None:
    """MEMORY USAGE of the channel keys for 1,000 memberships (100 channels x 10 members, 2 nodes), per membership."""
    node_a, node_b = redis_presence(), redis_presence()
    node_a.renew("node-a", 30)
    node_b.renew("node-b", 30)
    before = _namespace_bytes(admin, keys)
    for i in range(1000):
        store, node = (node_a, "node-a") if i % 2 else (node_b, "node-b")
        info = make_info(identity=f"user-{i:06d}", node=node, remote_addr="198.51.100.23")
        store.channel_join(f"room:{i % 100:04d}", info)
    per = (_namespace_bytes(admin, keys) - before) / 1000
    with capsys.disabled():
        print(f"\n[presence] Redis bytes per channel membership: {per:.0f} (100 channels x 10 members, 2 nodes)")
    assert per < 400

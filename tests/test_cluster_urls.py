"""``redis+cluster://`` URLs: their shape, checked without connecting, and an ACL user's credentials.

The credentials are tried on the shared cluster (`tests.rediscluster`): an ACL user of this
test's own, created on every node (Redis Cluster does not propagate ACLs) and deleted after,
so the default user other tests use is untouched.  The broker, presence and history given a
URL with that user reach the cluster; with a wrong password every call fails with
`BrokerUnavailable`, and the password shows in no message.
"""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Iterator

import gevent.event
import pytest

from rtgevent import SessionInfo, broker_from_url, history_from_url, presence_from_url
from rtgevent.errors import BrokerUnavailable, InvalidOption
from rtgevent.payload import node_topic
from rtgevent.retry import parse_cluster_url
from tests.rediscluster import RedisCluster
from tests.test_presence_contract import make_info
from tests.waiting import WAIT

#: a password with every character a URL would misread, percent-encoded in the URLs below
SECRET = "p@ss:w/rd#1"


@pytest.mark.parametrize(
    ("url", "nodes", "username", "password"),
    [
        ("redis+cluster://127.0.0.1:7000/", (("127.0.0.1", 7000),), None, None),
        ("REDIS+CLUSTER://h1:1,h2:2", (("h1", 1), ("h2", 2)), None, None),
        ("redis+cluster://[::1]:7000,[::1]:7001/", (("::1", 7000), ("::1", 7001)), None, None),
        ("redis+cluster://app:p%40ss%3Aw%2Frd@h1:1,h2:2/", (("h1", 1), ("h2", 2)), "app", "p@ss:w/rd"),
        ("redis+cluster://:secret@h1:1/", (("h1", 1),), None, "secret"),
    ],
)
def test_a_cluster_url_names_its_nodes_and_credentials(
    url: str, nodes: tuple[tuple[str, int], ...], username: str | None, password: str | None
) -> None:
    parsed = parse_cluster_url(url)
    assert (parsed.nodes, parsed.username, parsed.password) == (nodes, username, password)
    # a node's own URL keeps the credentials, quoted again
    node = parsed.node_url(*nodes[0])
    assert urllib.parse.urlsplit(node).password == (None if password is None else urllib.parse.quote(password, safe=""))


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://",
        "redis+cluster:///",
        "redis+cluster://h1/",
        "redis+cluster://h1:port/",
        "redis+cluster://h1:1,,h2:2/",
        "redis+cluster://:secret@h1/",
        "redis://h1:1/",
    ],
)
def test_a_malformed_cluster_url_fails_when_the_part_is_made(url: str) -> None:
    """Broker, presence and history alike refuse it at once (none of them connects to check)."""
    with pytest.raises(InvalidOption) as caught:
        parse_cluster_url(url, "presence_url")
    assert "presence_url" in str(caught.value) and "secret" not in str(caught.value)
    if url.startswith("redis+cluster"):
        for make in (broker_from_url, presence_from_url, history_from_url):
            with pytest.raises(InvalidOption) as caught:
                make(url)
            assert "secret" not in str(caught.value)


@pytest.fixture
def acl_user(redis_cluster: RedisCluster) -> Iterator[str]:
    """An ACL user with every right, on every node of the shared cluster; its name."""
    name = f"rtgtest-{uuid.uuid4().hex[:10]}"
    for port in redis_cluster.ports:
        with redis_cluster.client(port) as client:
            client.execute_command("ACL", "SETUSER", name, "on", f">{SECRET}", "~*", "&*", "+@all")
    try:
        yield name
    finally:
        for port in redis_cluster.ports:
            with redis_cluster.client(port) as client:
                client.execute_command("ACL", "DELUSER", name)


def _url(cluster: RedisCluster, user: str, password: str) -> str:
    return cluster.url.replace("://", f"://{user}:{urllib.parse.quote(password, safe='')}@", 1)


def test_broker_presence_and_history_log_in_with_the_urls_credentials(
    redis_cluster: RedisCluster, acl_user: str
) -> None:
    url = _url(redis_cluster, acl_user, SECRET)
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    broker = broker_from_url(url, namespace=namespace)
    presence = presence_from_url(url, namespace=namespace, ttl=30)
    history = history_from_url(url, namespace=namespace)
    try:
        # the broker: its consumer's shard connections and its publisher log in
        got = gevent.event.AsyncResult()
        broker.subscribe(node_topic("a"), got.set)
        broker.publish(node_topic("a"), b"through the acl user")
        assert got.get(timeout=WAIT) == b"through the acl user"
        # presence: a session registered and found
        info: SessionInfo = make_info(node="node-a")
        presence.renew("node-a", 30)
        presence.register(info)
        assert [s.session_id for s in presence.get_identity_sessions("acme", "alice")] == [info.session_id]
        presence.unregister(info.session_id)
        # history: an append read back
        position = history.append("room:acl", "kept", 10, 30)
        assert [p.offset for p in history.since("room:acl", 0, "", 10).publications] == [position.offset]
    finally:
        broker.close()
        presence.close()
        history.close()


def test_a_wrong_password_is_a_clear_error_that_hides_the_password(redis_cluster: RedisCluster, acl_user: str) -> None:
    url = _url(redis_cluster, acl_user, "not-" + SECRET)
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    broker = broker_from_url(url, namespace=namespace, publish_retries=1, publish_timeout=5)
    presence = presence_from_url(url, namespace=namespace, ttl=30, retries=1)
    history = history_from_url(url, namespace=namespace, retries=1)
    try:
        calls = [
            lambda: broker.publish(node_topic("a"), b"x", expect_receiver=False),
            lambda: presence.get_identity_sessions("acme", "alice"),
            lambda: history.append("room:acl", "x", 10, 30),
        ]
        for call in calls:
            with gevent.Timeout(WAIT, AssertionError("a call hung")), pytest.raises(BrokerUnavailable) as caught:
                call()
            assert "not-p" not in str(caught.value) and "not-" + urllib.parse.quote(SECRET) not in str(caught.value)
    finally:
        broker.close()
        presence.close()
        history.close()

"""The admin page's store reads, its API and its guards: real sockets, real Redis, no browser.

The page itself in Chromium, against three ``rtgevent serve`` nodes, is tests/test_admin_browser.py.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from rtgevent import Config, Identity, Realtime, SessionInfo
from rtgevent.admin import CHART_STEP, rates
from rtgevent.client import ClientClosed, connect
from rtgevent.errors import AlreadyStarted, InvalidOption
from rtgevent.presence.base import NodeDirectory
from rtgevent.presence.memory import MemoryPresence
from rtgevent.presence.redis import RedisPresence
from rtgevent.types import utcnow
from tests.conftest import Server
from tests.procs import ServeProcess
from tests.services import REDIS_URL
from tests.waiting import WAIT, wait_until

TOKEN = "admin-" + uuid.uuid4().hex
HEADERS = {"Authorization": f"Bearer {TOKEN}", "X-RTG-Admin": "1"}


def _info(session_id: str, identity: str, node: str, tenant: str = "acme") -> SessionInfo:
    return SessionInfo(session_id, identity, tenant, node, "127.0.0.1", utcnow(), None)


@pytest.fixture(params=["memory", "redis"])
def directory(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        store: Any = MemoryPresence()
    else:
        namespace = request.getfixturevalue("namespace")
        store = RedisPresence(REDIS_URL, ttl=30, namespace=namespace)
    yield store
    store.close()


# ---------------------------------------------------------------------- the store reads


def test_both_presence_stores_are_node_directories(directory: Any) -> None:
    """MemoryPresence and RedisPresence offer the admin page's reads (the optional protocol)."""
    assert isinstance(directory, NodeDirectory)


def test_nodes_list_session_counts_and_the_stats_record(directory: Any) -> None:
    """A node's sessions are counted from the store, its record comes back as written."""
    directory.renew("n-a", 30)
    directory.renew("n-b", 30)
    for i in range(3):
        directory.register(_info(f"s{i}", f"user{i}", "n-a"))
    directory.register(_info("s9", "user9", "n-b"))
    directory.publish_node_stats("n-a", {"node_id": "n-a", "channels": [["room:1", 2]]}, 30)
    nodes = {lease.node_id: lease for lease in directory.nodes()}
    assert {n: lease.sessions for n, lease in nodes.items()} == {"n-a": 3, "n-b": 1}
    assert nodes["n-a"].stats == {"node_id": "n-a", "channels": [["room:1", 2]]}
    assert nodes["n-b"].stats is None


def test_online_identities_are_searchable_case_insensitively_and_bounded(directory: Any) -> None:
    """Search is a case-insensitive substring of identity or tenant; the limit holds."""
    directory.renew("n-a", 30)
    directory.renew("n-b", 30)
    directory.register(_info("s1", "Alice", "n-a"))
    directory.register(_info("s2", "alice", "n-b"))
    directory.register(_info("s3", "alice", "n-a"))
    directory.register(_info("s4", "bob", "n-a", tenant="globex"))
    directory.register(_info("s5", "a*b[c]", "n-b"))
    everyone = directory.online_identities()
    assert [(o.tenant_id, o.identity_id, o.sessions) for o in everyone] == [
        ("acme", "Alice", 1),
        ("acme", "a*b[c]", 1),
        ("acme", "alice", 2),
        ("globex", "bob", 1),
    ]
    assert [o.identity_id for o in directory.online_identities("ALI")] == ["Alice", "alice"]
    assert [o.identity_id for o in directory.online_identities("GLOB")] == ["bob"]
    assert [o.identity_id for o in directory.online_identities("b[c")] == ["a*b[c]"]
    assert directory.online_identities("nobody") == []
    assert len(directory.online_identities(limit=2)) == 2


def test_a_node_whose_lease_ended_is_in_no_answer(namespace: str) -> None:
    """Redis: once a node's lease is over, neither it, its record nor its identities are listed."""
    store = RedisPresence(REDIS_URL, ttl=30, namespace=namespace)
    other = RedisPresence(REDIS_URL, ttl=30, namespace=namespace)
    try:
        store.renew("alive", 30)
        other.renew("dying", 0.5)
        other.register(_info("s1", "ghost", "dying"))
        other.publish_node_stats("dying", {"node_id": "dying"}, 30)
        store.register(_info("s2", "host", "alive"))
        wait_until(lambda: [n.node_id for n in store.nodes()] == ["alive"], "the dying node's lease to end")
        assert [o.identity_id for o in store.online_identities()] == ["host"]
    finally:
        store.close()
        other.close()


def test_rates_add_up_nodes_sampled_at_different_moments() -> None:
    """Two nodes, 10 and 30 messages in per second, sampled out of step, chart 40 per second."""
    now = 10_000.0

    def record(rate_in: float, offset: float) -> dict[str, Any]:
        samples = [[t, rate_in * (t - 9000), 2 * rate_in * (t - 9000)] for t in (9700 + offset + i for i in range(301))]
        return {"interval": 1.0, "samples": samples}

    points = rates([record(10, 0.3), record(30, 0.7)], now)
    assert points[-1][0] <= now - 1 and points[-1][0] % CHART_STEP == 0
    assert [p[1:] for p in points[-5:]] == [[40.0, 80.0]] * 5
    assert points[0][1:] == [None, None]  # before any sample: a gap, not a zero


# ---------------------------------------------------------------------- the application


@pytest.fixture
def gateway(serve_realtime: Callable[[Any], Server]) -> Iterator[tuple[Realtime, Server]]:
    """A started Realtime on MemoryPresence with its admin app at /admin, served in-process."""
    rt = Realtime(Config(insecure_origins=True))

    @rt.route("echo")
    def echo(session: Any, msg: Any) -> Any:
        return msg.data

    @rt.on_subscribe
    def allow(session: Any, channel: str) -> None:
        pass

    app = DispatcherMiddleware(rt, {"/admin": rt.admin_app(TOKEN, refresh=1.0, stats_interval=0.2)})
    rt.start()
    server = serve_realtime(app)
    yield rt, server
    rt.shutdown(timeout=5)


def http(
    server: Server, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    request = urllib.request.Request(f"{server.http_url}{path}", data=data, method=method, headers=headers or {})
    if body is not None and "Content-Type" not in (headers or {}):
        request.add_header("Content-Type", "application/json")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=WAIT) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def state(server: Server, query: str = "") -> dict[str, Any]:
    status, _, body = http(server, "GET", "/admin/api/state" + query, headers=HEADERS)
    assert status == 200, body
    return dict(json.loads(body))


def test_the_page_is_self_contained_never_cached_and_never_framed(gateway: tuple[Realtime, Server]) -> None:
    """The page loads nothing from elsewhere, holds no data, and comes with a nonce-only CSP."""
    rt, server = gateway
    status, headers, body = http(server, "GET", "/admin/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert headers["Cache-Control"] == "no-store" and headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    nonce = headers["Content-Security-Policy"].split("'nonce-")[1].split("'")[0]
    assert page.count(f'nonce="{nonce}"') == 2 and "{{nonce}}" not in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert rt.node_id not in page  # the data comes from the API, with the token
    assert "Access-Control-Allow-Origin" not in headers
    status, headers, _ = http(server, "GET", "/admin")
    assert status == 308 and headers["Location"].endswith("/admin/")


def test_a_wrong_or_missing_token_gets_401_and_nothing_else(gateway: tuple[Realtime, Server]) -> None:
    """No token, a wrong one, another scheme: 401 with one word, never cached, no cluster data."""
    rt, server = gateway
    wrong = ["Bearer " + TOKEN[:-1] + "x", "Basic " + TOKEN, f"Bearer {TOKEN}0", "Bearer", TOKEN]
    for headers in [{}, {"X-RTG-Admin": "1"}, *({**HEADERS, "Authorization": w} for w in wrong)]:
        status, got, body = http(server, "GET", "/admin/api/state", headers=headers)
        assert (status, json.loads(body)) == (401, {"error": "unauthorized"}), headers
        assert got["Cache-Control"] == "no-store" and got["WWW-Authenticate"].startswith("Bearer")
    status, _, body = http(server, "POST", "/admin/api/kick", {"identity": "x"}, headers={"X-RTG-Admin": "1"})
    assert status == 401 and rt.node_id.encode() not in body


def test_actions_refuse_what_a_cross_site_page_could_send(gateway: tuple[Realtime, Server]) -> None:
    """Without the custom header, as a form post, from another site, or as a preflight: refused, no CORS."""
    _, server = gateway
    only_token = {"Authorization": f"Bearer {TOKEN}"}
    assert http(server, "POST", "/admin/api/broadcast", {"route": "x"}, headers=only_token)[0] == 403
    form = {**HEADERS, "Content-Type": "application/x-www-form-urlencoded"}
    assert http(server, "POST", "/admin/api/broadcast", b"route=x", headers=form)[0] == 415
    cross = {**HEADERS, "Sec-Fetch-Site": "cross-site"}
    assert http(server, "POST", "/admin/api/broadcast", {"route": "x"}, headers=cross)[0] == 403
    status, headers, _ = http(server, "OPTIONS", "/admin/api/broadcast", headers={"Origin": "https://evil.example"})
    assert status in (401, 403, 405) and "Access-Control-Allow-Origin" not in headers
    assert http(server, "GET", "/admin/api/kick", headers=HEADERS)[0] == 405
    assert http(server, "POST", "/admin/api/nothing", {}, headers=HEADERS)[0] == 404


def test_state_shows_the_node_its_sessions_channels_and_disconnects(gateway: tuple[Realtime, Server]) -> None:
    """One node's picture: its session, the channel it is in, a client's close by code."""
    rt, server = gateway
    with connect(f"ws://127.0.0.1:{server.port}/") as first:
        first.subscribe("room:1", lambda *_: None)
        with connect(f"ws://127.0.0.1:{server.port}/") as second:
            second.request("echo", 1)
        picture = wait_until(
            lambda: (s := state(server))["channels"] and s["disconnects"] and s,
            "the record to show the channel and the disconnect",
        )
    assert [(n["id"], n["sessions"], n["stats"]) for n in picture["nodes"]] == [(rt.node_id, 1, True)]
    assert picture["channels"] == [{"channel": "room:1", "members": 1}]
    assert picture["disconnects"] == [{"initiator": "client", "code": 1000, "count": 1}]
    assert picture["identities"] == [{"tenant": "", "identity": "anonymous", "sessions": 1}]
    assert picture["recent"][0]["identity"] == "anonymous"


def test_kick_publish_and_broadcast_reach_the_clients(gateway: tuple[Realtime, Server]) -> None:
    """The page's three actions, as JSON POSTs with the token: what a client receives."""
    _, server = gateway
    with connect(f"ws://127.0.0.1:{server.port}/") as client:
        client.subscribe("room:7")
        status, _, body = http(
            server, "POST", "/admin/api/publish", {"channel": "room:7", "route": "t", "data": '{"n": 1}'}, HEADERS
        )
        assert (status, json.loads(body)) == (200, {"ok": True, "local": 1})
        got = client.recv(timeout=WAIT)
        assert (got.route, got.data, got.metadata["channel"]) == ("t", {"n": 1}, "room:7")
        assert http(server, "POST", "/admin/api/broadcast", {"route": "news", "data": "hello"}, HEADERS)[0] == 200
        got = client.recv(timeout=WAIT)
        assert (got.route, got.data) == ("news", "hello")
        bad = http(server, "POST", "/admin/api/publish", {"channel": "no spaces", "route": "t"}, HEADERS)
        assert bad[0] == 400
        status, _, body = http(server, "POST", "/admin/api/kick", {"tenant": "", "identity": "anonymous"}, HEADERS)
        assert (status, json.loads(body)["sessions"]) == (200, 1)
        with pytest.raises(ClientClosed) as closed:
            client.recv(timeout=WAIT)
        assert closed.value.code == 1008


def test_admin_app_guards_its_options_and_the_registration_window() -> None:
    """A short token is refused; turning the page on once serving is refused like a registration."""
    rt = Realtime()
    with pytest.raises(InvalidOption, match="token"):
        rt.admin_app("short")
    with pytest.raises(InvalidOption, match="stats_interval"):
        rt.admin_app(TOKEN, stats_interval=0)
    with rt.test_client(identity=Identity("a")):
        pass
    with pytest.raises(AlreadyStarted, match="admin_app"):
        rt.admin_app(TOKEN)
    rt.shutdown(timeout=1)


def test_flask_blueprint_serves_the_same_api() -> None:
    """``app.register_blueprint(rt.admin_blueprint(token))``: the page and the API under /admin."""
    rt = Realtime()
    app = Flask(__name__)
    app.register_blueprint(rt.admin_blueprint(TOKEN))
    client = app.test_client()
    page = client.get("/admin/")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert client.get("/admin/api/state").status_code == 401
    ok = client.get("/admin/api/state", headers=HEADERS)
    assert ok.status_code == 200 and ok.get_json()["nodes"] == []  # not started: no record yet
    rt.shutdown(timeout=1)


def test_serve_admin_token_mounts_the_page_at_admin() -> None:
    """``rtgevent serve APP --admin-token T``: /admin answers with the token, the app the rest."""
    node = ServeProcess("tests.app:app_from_env()", "--admin-token", TOKEN, env={"RTG_TEST_CONFIG": "{}"})
    try:
        server = Server("serve", node.host, node.port, lambda: None)
        assert http(server, "GET", "/admin/api/state")[0] == 401
        nodes = wait_until(lambda: state(server)["nodes"], "the node's stats record")
        assert len(nodes) == 1 and nodes[0]["stats"] is True
        assert server.control("sessions") == []  # the application still answers beside it
    finally:
        node.stop()

"""The admin page in headless Chromium, against three ``rtgevent serve`` nodes on Redis.

Fifty clients in three channels are spread over the nodes; the page, opened on one node,
must show every node's sessions, the channels' member counts and who is online, from
presence and the nodes' stats records alone.  Then, from the page: an identity with a
session on two other nodes is kicked (both sessions get 1008), and a SIGKILLed node
leaves the list once its lease ends.  A wrong token shows nothing.

Every wait is on a page condition (or a socket read) with a generous timeout.  The
screenshots (desktop and 390 px wide) go to a temporary folder that outlives the test;
their paths are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent

from tests.browserkit import WAIT_MS, needs_chromium
from tests.clusterkit import REDIS, Client
from tests.procs import ServeProcess
from tests.waiting import WAIT

pytestmark = needs_chromium

TOKEN = "admin-" + uuid.uuid4().hex
#: short, so that a killed node's lease ends soon; renewed every 2 s, enough on a busy box
PRESENCE_TTL = 6
CHANNELS = ["room:a", "room:b", "live:c"]


def admin_url(node: ServeProcess, token: str = TOKEN) -> str:
    # the token in the fragment: it never reaches a server or a log; the page keeps it per tab
    return f"http://{node.host}:{node.port}/admin/#token={token}"


def open_admin(browser: Any, node: ServeProcess, token: str = TOKEN, **context: Any) -> Any:
    page = browser.new_context(**context).new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(admin_url(node, token))
    return page


def shows(page: Any, expected: dict[str, Any]) -> None:
    """Wait until the page's tables show exactly the expected nodes, channels and identity count."""
    page.wait_for_function(
        """(want) => {
          const rows = (sel) => [...document.querySelectorAll(sel)];
          const nodes = Object.fromEntries(rows('#nodes tbody tr[data-node]')
            .map(tr => [tr.dataset.node, Number(tr.dataset.sessions)]));
          const channels = Object.fromEntries(rows('#channels tbody tr[data-channel]')
            .map(tr => [tr.dataset.channel, Number(tr.dataset.members)]));
          const same = (a, b) => JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());
          return same(nodes, want.nodes) && same(channels, want.channels)
            && rows('#identities tbody tr[data-identity]').length === want.identities
            && document.querySelector('#summary [data-k=sessions]').textContent === String(want.sessions);
        }""",
        arg=expected,
    )


def close_code(client: Client) -> int:
    """Read until the server's close frame; its code."""
    while True:
        opcode, data = client.ws.recv_data(control_frame=True)
        if opcode == 0x8:
            return int.from_bytes(data[:2], "big")


def test_admin_page_shows_the_cluster_kicks_everywhere_and_drops_a_dead_node(
    cluster: Callable[..., list[ServeProcess]], browser: Any
) -> None:
    """Three nodes, 50 clients: right counts; a kick from the page closes sessions on two other nodes;
    a SIGKILLed node leaves the page within presence_ttl."""
    nodes = cluster(3, broker=REDIS, presence_ttl=PRESENCE_TTL, admin_token=TOKEN, admin_interval=1.0)
    clients: list[Client] = []
    chatty_stop = gevent.event.Event()
    try:
        # 48 identities over the three nodes, and "target" on nodes 1 and 2: 50 sessions
        for i in range(48):
            client = Client(nodes[i % 3], f"user-{i:02d}")
            client.subscribe(CHANNELS[i % 3])
            clients.append(client)
        targets = [Client(nodes[1], "target"), Client(nodes[2], "target")]
        for client in targets:
            client.subscribe("room:a")
        clients.extend(targets)
        for i in range(2):  # two that came and went: the disconnects table has a row
            Client(nodes[0], f"gone-{i}").close()
        by_node = {node.control("node")["node"]: node.control("node")["sessions"] for node in nodes}
        assert sum(by_node.values()) == 50 and Counter(c.node_id for c in clients) == by_node
        channels = dict(Counter(CHANNELS[i % 3] for i in range(48)))
        channels["room:a"] += 2

        def chatter() -> None:
            # a little traffic on node 0 only (never killed), for the chart
            talkers = clients[0:15:3]
            while not chatty_stop.wait(0.2):
                for client in talkers:
                    client.ping()

        talking = gevent.spawn(chatter)

        page = open_admin(browser, nodes[0])
        shows(page, {"nodes": by_node, "channels": channels, "identities": 49, "sessions": 50})
        page.wait_for_selector("#disconnects tbody tr[data-initiator=client][data-code='1000']")
        # the chart has a few points with traffic in them before the screenshots are taken
        page.wait_for_function(
            "() => window.adminState.rates.points.filter(p => p[1] > 0).length >= 3", timeout=WAIT_MS * 2
        )
        shots = Path(tempfile.mkdtemp(prefix="rtgevent-admin-"))
        desktop = shots / "admin-desktop.png"
        page.set_viewport_size({"width": 1280, "height": 900})
        page.screenshot(path=str(desktop), full_page=True)
        phone = open_admin(browser, nodes[0], viewport={"width": 390, "height": 844}, is_mobile=True)
        shows(phone, {"nodes": by_node, "channels": channels, "identities": 49, "sessions": 50})
        narrow = shots / "admin-390px.png"
        phone.screenshot(path=str(narrow), full_page=True)
        print(f"\nadmin page screenshots: {desktop} {narrow}")
        # the page fits a phone: nothing wider than the viewport but the scrolling tables
        assert phone.evaluate("() => document.documentElement.scrollWidth") <= 390
        chatty_stop.set()
        talking.join(timeout=WAIT)

        # kick "target" from the page: its sessions on nodes 1 and 2 close with 1008
        page.fill("#search", "TARG")
        page.wait_for_function(
            "() => [...document.querySelectorAll('#identities tbody tr[data-identity]')]"
            ".map(tr => tr.dataset.identity).join() === 'target'"
        )
        page.click("#identities tr[data-identity=target] button")
        assert [close_code(client) for client in targets] == [1008, 1008]
        page.wait_for_selector("#result.good")
        page.wait_for_function(
            "() => !document.querySelector('#identities tbody tr[data-identity]')"
            " && document.querySelector('#disconnects tbody tr[data-initiator=server][data-code=\"1008\"]')"
        )
        assert all(node.control("online", identity="target")["online"] is False for node in nodes)

        # SIGKILL node 2: it leaves the page once its lease ends (within presence_ttl), nobody cleaning up
        dead = targets[1].node_id
        nodes[2].kill()
        page.fill("#search", "")
        page.wait_for_function(
            "(dead) => { const ids = [...document.querySelectorAll('#nodes tbody tr[data-node]')]"
            ".map(tr => tr.dataset.node); return ids.length === 2 && !ids.includes(dead); }",
            arg=dead,
        )
        alive = {n: s for n, s in by_node.items() if n != dead}
        alive[targets[0].node_id] -= 1  # its target session was kicked
        shows(page, {"nodes": alive, "channels": _without(clients, dead), "identities": 32, "sessions": 32})
    finally:
        chatty_stop.set()
        for client in clients:
            try:
                client.close()
            except Exception:
                pass


def _without(clients: list[Client], dead: str) -> dict[str, int]:
    """The channel counts once ``dead``'s clients and the kicked ones are gone."""
    counts: Counter[str] = Counter()
    for i, client in enumerate(clients[:48]):
        if client.node_id != dead:
            counts[CHANNELS[i % 3]] += 1
    return dict(counts)


def test_a_wrong_token_gets_401_and_the_page_shows_nothing(
    cluster: Callable[..., list[ServeProcess]], browser: Any
) -> None:
    """With a wrong token the API answers 401 and the page shows only the token form, no cluster data."""
    (node,) = cluster(1, broker=REDIS, presence_ttl=PRESENCE_TTL, admin_token=TOKEN, admin_interval=1.0)
    client = Client(node, "somebody")
    try:
        page = browser.new_context().new_page()
        page.set_default_timeout(WAIT_MS)
        answers: list[int] = []
        page.on("response", lambda r: answers.append(r.status) if "/api/state" in r.url else None)
        page.goto(admin_url(node, "wrong-" + uuid.uuid4().hex))
        page.wait_for_selector("body[data-state=login]")
        page.wait_for_selector("#login-text.bad")
        assert page.is_hidden("#dash")
        assert page.evaluate("() => document.querySelectorAll('#dash tbody tr').length") == 0
        assert "somebody" not in page.content() and client.node_id not in page.content()
        direct = page.request.get(
            f"http://{node.host}:{node.port}/admin/api/state",
            headers={"Authorization": "Bearer nope-nope-nope-nope", "X-RTG-Admin": "1"},
        )
        assert direct.status == 401 and json.loads(direct.text()) == {"error": "unauthorized"}
        assert direct.headers["cache-control"] == "no-store"
        # the right token, typed into the form, opens it
        page.fill("#token", TOKEN)
        page.click("#login-form button")
        page.wait_for_selector("#identities tr[data-identity=somebody]", timeout=WAIT * 1000)
        assert answers[0] == 401 and answers[-1] == 200
    finally:
        client.close()

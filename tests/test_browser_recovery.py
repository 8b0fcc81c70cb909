"""rtgevent.js recovers what it missed, in headless Chromium: each message once, in order.

A page reaches its gateway through a TCP forwarder in this process, which stands for the
load balancer: killing the page's node cuts the page's connection, and the forwarder then
sends the page's reconnect to whichever node is current.  The forwarder serves the page
itself (a plain GET; an upgrade request is piped to the node), so the page comes from a
loopback address like the nodes (Chromium blocks a page from elsewhere reaching one) and
the handshake is same-origin: no Origin pattern is needed.  The page writes each message
it is handed to its DOM; every wait is on a page or server condition with a generous
timeout, and the messages are only paced, never slept on to synchronise.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent import socket
from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer

from rtgevent import ChannelOptions, Config, Identity, InBandAuthenticator, Realtime, Session
from tests.browserkit import WAIT_MS, needs_chromium
from tests.clusterkit import REDIS
from tests.procs import ServeProcess
from tests.waiting import WAIT, wait_until

CLIENT_JS = (Path(__file__).resolve().parent.parent / "rtgevent" / "static" / "rtgevent.js").read_text()
#: how many messages each test sends
TOTAL = 60
#: seconds between two messages: a few per second, so that a kill lands mid-stream
PACE = 0.08

pytestmark = needs_chromium

Address = tuple[str, int]


class Forwarder:
    """A TCP forwarder on 127.0.0.1:0 that pipes each WebSocket connection to the current target.

    A request that is not an upgrade gets ``page`` (at ``/``) or a 404, from here.  With no
    target (`hold`) an upgrade's connection is closed at once, as is one whose target does
    not answer (a killed node): the page sees its handshake fail and tries again.
    """

    def __init__(self, target: Address | None) -> None:
        self.target = target
        self.page = b""
        self._pipes: set[socket.socket] = set()
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port: int = self.server.server_port

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def point(self, target: Address) -> None:
        self.target = target

    def hold(self) -> None:
        """Refuse new connections and cut the current ones (a network drop)."""
        self.target = None
        for sock in list(self._pipes):
            self._shut(sock)

    def stop(self) -> None:
        self.hold()
        self.server.stop(timeout=5)

    def _handle(self, client: socket.socket, address: Address) -> None:
        head = self._head(client)
        if head is None:
            client.close()
            return
        if b"\r\nupgrade: websocket" not in head.lower():
            self._answer(client, head)
            return
        target = self.target
        if target is None:
            client.close()
            return
        try:
            upstream = socket.create_connection(target, timeout=5)
            upstream.settimeout(None)
            upstream.sendall(head)
        except OSError:
            client.close()
            return
        self._pipes.update((client, upstream))
        pipes = [gevent.spawn(self._pipe, client, upstream), gevent.spawn(self._pipe, upstream, client)]
        gevent.joinall(pipes, count=1)  # one side ended: the other goes too
        for sock in (client, upstream):
            self._shut(sock)
        gevent.joinall(pipes)

    def _head(self, client: socket.socket) -> bytes | None:
        """The request's bytes up to the end of its header (the client sends no more before the answer)."""
        client.settimeout(WAIT)
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = client.recv(65536)
                if not chunk:
                    return None
                head += chunk
        except OSError:
            return None
        client.settimeout(None)
        return head

    def _answer(self, client: socket.socket, head: bytes) -> None:
        found = head.startswith(b"GET / ") and bool(self.page)
        body = self.page if found else b"not here"
        status = "200 OK" if found else "404 Not Found"
        kind = "text/html; charset=utf-8" if found else "text/plain"
        header = f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
        header += "Connection: close\r\n\r\n"
        try:
            client.sendall(header.encode() + body)
        except OSError:
            pass  # the browser gave up on it
        self._shut(client)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass  # reset, or shut by the other direction

    def _shut(self, sock: socket.socket) -> None:
        self._pipes.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected any more
        sock.close()


def node_address(node: ServeProcess) -> Address:
    return node.host, node.port


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>recovery</title><script>{client}</script></head>
<body><ol id="pub"></ol><ol id="dm"></ol>
<script>
"use strict";
const config = {config};
window.states = [];
window.failures = [];
window.subFailures = [];
function show(list) {{
  return (data) => {{
    const li = document.createElement("li");
    li.textContent = String(data);
    document.getElementById(list).appendChild(li);
  }};
}}
window.rt = RTGevent.connect("/", {{token: config.identity, tokenIn: config.tokenIn, initialDelay: 100,
                                   maxDelay: 500, stableAfter: 60000}});
rt.on("rt.state", (state) => states.push(state));
rt.on("rt.recovery_failed", (info) => failures.push(info));
rt.on("dm", show("dm"));
window.sub = config.channel ? rt.subscribe(config.channel, show("pub")) : null;
if (sub) sub.on("recovery_failed", (info) => subFailures.push(info));
</script></body></html>
"""


@pytest.fixture
def forwarder() -> Iterator[Forwarder]:
    fwd = Forwarder(None)
    yield fwd
    fwd.stop()


def open_page(
    browser: Any, fwd: Forwarder, identity: str, *, channel: str | None = None, token_in: str = "query"
) -> Any:
    """A page at the forwarder's origin, connected as ``identity`` (and in ``channel``)."""
    config = {"identity": identity, "channel": channel, "tokenIn": token_in}
    fwd.page = PAGE.format(client=CLIENT_JS, config=json.dumps(config)).encode()
    page = browser.new_context().new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(fwd.origin + "/")
    page.wait_for_function("rt.state === 'open'")
    if channel is not None:
        page.wait_for_function("sub.state === 'subscribed'")
    return page


def shown(page: Any, list_id: str) -> list[str]:
    return list(page.evaluate("id => [...document.getElementById(id).children].map(li => li.textContent)", list_id))


def shows_at_least(page: Any, list_id: str, count: int, timeout: float = WAIT) -> None:
    page.wait_for_function(
        "([id, n]) => document.getElementById(id).children.length >= n", arg=[list_id, count], timeout=timeout * 1000
    )


def reconnected(page: Any) -> None:
    """The page lost its connection and has an open one again."""
    page.wait_for_function("states.includes('closed') && rt.state === 'open'")


class Paced:
    """Calls ``send(i)`` for i in 0..total-1 from a greenlet, a few per second; ``sent`` counts them."""

    def __init__(self, send: Callable[[int], Any], total: int = TOTAL) -> None:
        self.sent = 0
        self._send = send
        self._total = total
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        for i in range(self._total):
            self._send(i)
            self.sent += 1
            gevent.sleep(PACE)

    def at_least(self, count: int) -> None:
        wait_until(lambda: self.sent >= count or self.greenlet.dead, f"{count} messages sent")
        if self.greenlet.dead:
            self.done()  # it stopped early: say why

    def done(self) -> None:
        self.greenlet.get(timeout=3 * WAIT)  # re-raises what stopped it
        assert self.sent == self._total


def in_order(total: int = TOTAL) -> list[str]:
    return [str(i) for i in range(total)]


def test_channel_recovered_after_the_pages_node_is_killed(
    cluster: Callable[..., list[ServeProcess]], browser: Any, forwarder: Forwarder
) -> None:
    """Node A serves the page's WebSocket, node B publishes to a channel with history; A is SIGKILLed
    mid-stream and the page reconnects to a new node C: its DOM lists every publication once,
    in order, the missed ones recovered from history, and no recovery failed."""
    channel = f"hist:doc-{uuid.uuid4().hex[:6]}"
    spec: dict[str, Any] = {"broker": REDIS, "presence": REDIS, "history": REDIS}
    spec["namespace"] = f"rtgtest-{uuid.uuid4().hex[:10]}"  # the later node joins the same cluster
    a, b = cluster(2, **spec)
    forwarder.point(node_address(a))
    page = open_page(browser, forwarder, "alice", channel=channel)

    def publish(i: int) -> None:
        answer = b.control("publish", channel=channel, route="pub", data=str(i))
        assert "error" not in answer, answer

    publisher = Paced(publish)
    shows_at_least(page, "pub", 10)
    a.kill()
    page.wait_for_function("states.includes('closed')")
    publisher.at_least(35)  # these go on while the page has no node to reach
    assert len(shown(page, "pub")) < publisher.sent
    (c,) = cluster(1, **spec)
    forwarder.point(node_address(c))
    reconnected(page)

    shows_at_least(page, "pub", TOTAL, timeout=3 * WAIT)
    publisher.done()
    assert shown(page, "pub") == in_order()
    assert page.evaluate("[failures, subFailures]") == [[], []]
    reply = page.evaluate("sub.reply")
    assert reply["recovered"] is True and reply["missed"] > 0, reply
    position = page.evaluate("sub.position")
    assert position["offset"] == TOTAL and position["epoch"], position


def test_personal_stream_recovered_after_the_pages_node_is_killed(
    cluster: Callable[..., list[ServeProcess]], browser: Any, forwarder: Forwarder
) -> None:
    """Messages to an identity sent from node B while the page's node is dead and before it
    reconnects reach the page after the reconnect (?since= on the new connection): each once,
    in order."""
    identity = f"bob-{uuid.uuid4().hex[:6]}"
    spec: dict[str, Any] = {"broker": REDIS, "presence": REDIS, "history": REDIS, "identity_history": 500}
    # Presence names the dead node for the identity until its lease runs out; until then each
    # send also goes to the dead node's topic, which nobody reads (retried, then reported):
    # a short lease keeps the test short.  The message is in the personal stream either way.
    spec["presence_ttl"] = 3
    spec["namespace"] = f"rtgtest-{uuid.uuid4().hex[:10]}"
    a, b = cluster(2, **spec)
    forwarder.point(node_address(a))
    page = open_page(browser, forwarder, identity)
    page.wait_for_function("rt.personalPosition !== null")
    assert page.evaluate("rt.personalPosition") == {"offset": 0, "epoch": ""}  # rt.personal: nothing yet
    urls: list[str] = []
    page.on("websocket", lambda ws: urls.append(ws.url))  # the reconnects

    sender = Paced(lambda i: b.control("send", identity=identity, route="dm", data=str(i)))
    shows_at_least(page, "dm", 10)
    a.kill()
    page.wait_for_function("states.includes('closed')")
    sender.at_least(35)
    assert len(shown(page, "dm")) < sender.sent
    kept = page.evaluate("rt.personalPosition")
    (c,) = cluster(1, **spec)
    forwarder.point(node_address(c))
    reconnected(page)

    shows_at_least(page, "dm", TOTAL, timeout=3 * WAIT)
    sender.done()
    assert shown(page, "dm") == in_order()
    assert page.evaluate("failures") == []
    since = urllib.parse.quote(f"{kept['offset']}:{kept['epoch']}", safe="")
    assert urls and set(urls) == {f"ws://127.0.0.1:{forwarder.port}/?access_token={identity}&since={since}"}, urls
    position = page.evaluate("rt.personalPosition")
    assert position["offset"] == TOTAL and position["epoch"], position


class InProcess:
    """One node in this process: in-band authentication, personal streams, a short-history channel."""

    def __init__(self) -> None:
        self.rt = Realtime(
            Config(heartbeat_interval=None, identity_history_size=100, identity_history_ttl=300),
            authenticator=InBandAuthenticator(lambda token: Identity(token)),
        )
        self.rt.channel_namespace("short:", ChannelOptions(history_size=5, history_ttl=300))

        @self.rt.on_subscribe
        def allow(session: Session, channel: str) -> None:
            pass

        self.server = WSGIServer(("127.0.0.1", 0), self.rt, log=None, error_log=None)
        self.server.start()
        self.address: Address = ("127.0.0.1", self.server.server_port)

    def stop(self) -> None:
        self.rt.shutdown(timeout=5)
        self.server.stop(timeout=5)


@pytest.fixture
def node() -> Iterator[InProcess]:
    server = InProcess()
    yield server
    server.stop()


def test_in_band_recovery_and_a_failed_one(node: InProcess, browser: Any, forwarder: Forwarder) -> None:
    """With rt.auth the personal position goes in its data and the replay, which comes before
    the rt.auth reply, reaches the page; a channel whose history was trimmed meanwhile says
    recovery failed (rt.recovery_failed and the subscription's event) and goes on live."""
    forwarder.point(node.address)
    page = open_page(browser, forwarder, "carol", channel="short:news", token_in="message")
    for i in range(5):
        node.rt.send_to_identity("", "carol", "dm", str(i))
    for i in range(3):
        node.rt.publish("short:news", "pub", f"p{i}")
    shows_at_least(page, "dm", 5)
    shows_at_least(page, "pub", 3)

    forwarder.hold()  # the network drops; nothing reaches the node until it comes back
    page.wait_for_function("states.includes('closed')")
    for i in range(5, 10):
        node.rt.send_to_identity("", "carol", "dm", str(i))
    for i in range(3, 13):  # more than the channel keeps (5): the page cannot get them all back
        node.rt.publish("short:news", "pub", f"p{i}")
    forwarder.point(node.address)
    reconnected(page)
    page.wait_for_function("failures.length >= 1 && sub.state === 'subscribed'")
    node.rt.publish("short:news", "pub", "p13")

    shows_at_least(page, "pub", 4)
    shows_at_least(page, "dm", 10)
    assert shown(page, "dm") == in_order(10)
    assert shown(page, "pub") == ["p0", "p1", "p2", "p13"]  # live again; the lost ones are not made up
    failures, sub_failures, reply = page.evaluate("[failures, subFailures, sub.reply]")
    epoch = reply["epoch"]
    assert failures == sub_failures == [{"channel": "short:news", "offset": 13, "epoch": epoch}]
    assert reply["recovered"] is False
    assert page.evaluate("[sub.position, rt.personalPosition.offset]") == [{"offset": 14, "epoch": epoch}, 10]


FAKE_SOCKETS = """async () => {
  // the client against a scripted server: what it sends, what it hands the application
  const sockets = [];
  window.WebSocket = class {
    constructor(url) { this.url = url; this.sent = []; this.readyState = 0; sockets.push(this); }
    send(frame) { this.sent.push(JSON.parse(frame)); }
    close() { this.readyState = 3; }
    open() { this.readyState = 1; this.onopen(); }
    deliver(msg) { this.onmessage({data: JSON.stringify(msg)}); }
    drop() { this.readyState = 3; this.onclose({code: 1006, reason: "", wasClean: false}); }
  };
  const next = async (n) => {
    while (sockets.length < n) await new Promise((r) => setTimeout(r, 5));
    return sockets[n - 1];
  };
  const out = {urls: [], subscribes: [], dm: [], doc: [], failures: [], docEvents: [], positions: []};
  const rt = RTGevent.connect("ws://example.test/ws?room=1&since=1%3Aold", {token: "t", initialDelay: 1, jitter: 0});
  rt.on("dm", (data) => out.dm.push(data));
  rt.on("rt.recovery_failed", (info) => out.failures.push(info));
  const doc = rt.subscribe("doc", (data) => out.doc.push(data));
  doc.on("recovery_failed", (info) => out.docEvents.push(["recovery_failed", info]));
  doc.on("subscribed", (reply) => out.docEvents.push(["subscribed", reply.epoch]));
  const plain = rt.subscribe("plain", () => {});
  const dm = (offset, epoch) => ({route: "dm", data: offset, metadata: {offset: String(offset), epoch}});
  const pub = (offset, epoch) => ({route: "pub", data: offset,
                                   metadata: {channel: "doc", offset: String(offset), epoch}});
  const replies = (ws, doc, plain) => {
    const ids = ws.sent.filter((m) => m.route === "rt.subscribe").map((m) => m.id);
    out.subscribes.push(ws.sent.filter((m) => m.route === "rt.subscribe").map((m) => m.data));
    ws.deliver({route: "rt.reply", data: {channel: "doc", ...doc}, metadata: {in_reply_to: ids[0]}});
    ws.deliver({route: "rt.reply", data: {channel: "plain", ...plain}, metadata: {in_reply_to: ids[1]}});
  };
  const none = {offset: 0, epoch: "", recovered: false, missed: 0};
  const positions = () => out.positions.push([doc.position, plain.position, rt.personalPosition]);

  let ws = await next(1);  // nothing known yet: the URL as given
  ws.open();
  ws.deliver({route: "rt.personal", data: none});
  replies(ws, {offset: 4, epoch: "e1", recovered: false, missed: 0}, none);
  for (const [offset, epoch] of [[1, "p1"], [2, "p1"], [2, "p1"], [1, "p1"], [3, "p1"]]) ws.deliver(dm(offset, epoch));
  for (const [offset, epoch] of [[5, "e1"], [6, "e1"], [5, "e1"]]) ws.deliver(pub(offset, epoch));
  positions();
  doc.position.offset = 99;  // a copy: the client's own stays
  ws.drop();

  ws = await next(2);  // the replay overlaps what came before the drop
  ws.open();
  ws.deliver(dm(3, "p1"));
  ws.deliver(dm(4, "p1"));
  ws.deliver({route: "rt.personal", data: {offset: 4, epoch: "p1", recovered: true, missed: 1}});
  ws.deliver(pub(6, "e1"));
  ws.deliver(pub(7, "e1"));
  replies(ws, {offset: 7, epoch: "e1", recovered: true, missed: 1}, none);
  positions();
  ws.drop();

  ws = await next(3);  // both streams were lost meanwhile: new epochs, nothing to give back
  ws.open();
  ws.deliver({route: "rt.personal", data: none});
  replies(ws, {offset: 2, epoch: "e2", recovered: false, missed: 0}, none);
  ws.deliver(pub(2, "e2"));
  ws.deliver(pub(3, "e2"));
  positions();
  out.urls = sockets.map((s) => s.url);
  rt.close();
  return out;
}"""


def test_the_client_keeps_positions_and_drops_duplicates(browser: Any) -> None:
    """Against a scripted socket: duplicates of each stream dropped, the positions sent again
    (since in the URL, replacing the given one; since in rt.subscribe), a new epoch taken, and
    anything but recovered: true to a since reported once per stream, before the subscription's
    "subscribed"; a channel without history (epoch "", never another) reports nothing."""
    page = browser.new_context().new_page()
    page.set_default_timeout(WAIT_MS)
    page.set_content(f"<!doctype html><script>{CLIENT_JS}</script>")
    out = page.evaluate(FAKE_SOCKETS)
    assert out["urls"] == [
        "ws://example.test/ws?room=1&since=1%3Aold&access_token=t",
        "ws://example.test/ws?room=1&access_token=t&since=3%3Ap1",
        "ws://example.test/ws?room=1&access_token=t&since=4%3Ap1",
    ]
    assert out["subscribes"] == [
        [{"channel": "doc"}, {"channel": "plain"}],
        [
            {"channel": "doc", "since": {"offset": 6, "epoch": "e1"}},
            {"channel": "plain", "since": {"offset": 0, "epoch": ""}},
        ],
        [
            {"channel": "doc", "since": {"offset": 7, "epoch": "e1"}},
            {"channel": "plain", "since": {"offset": 0, "epoch": ""}},
        ],
    ]
    assert out["dm"] == [1, 2, 3, 4]
    assert out["doc"] == [5, 6, 7, 3]  # in the new epoch e2 the reply's offset 2 was had already
    lost = {"channel": "doc", "offset": 2, "epoch": "e2"}
    personal = {"channel": None, "offset": 0, "epoch": ""}
    assert out["failures"] == [personal, lost]  # the channel without history has nothing to lose
    assert out["docEvents"] == [
        ["subscribed", "e1"],
        ["subscribed", "e1"],
        ["recovery_failed", lost],
        ["subscribed", "e2"],
    ]
    none = {"offset": 0, "epoch": ""}
    assert out["positions"] == [
        [{"offset": 6, "epoch": "e1"}, none, {"offset": 3, "epoch": "p1"}],
        [{"offset": 7, "epoch": "e1"}, none, {"offset": 4, "epoch": "p1"}],
        [{"offset": 3, "epoch": "e2"}, none, none],
    ]

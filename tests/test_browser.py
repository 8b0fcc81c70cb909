"""rtgevent.js in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

The demo chat is served in-process; pages in separate browser contexts (separate cookie
jars) log in as different users.  Playwright's sync API waits cooperatively under gevent's
monkey-patching, so the in-process server keeps serving while a test waits on a page.
Every wait is on a page condition with a generous timeout; nothing sleeps to synchronise.

That a page did *not* get something is shown with a later marker: on one node a publication
is queued to every local subscriber before `publish` returns, so once a page shows a message
sent after another one, it would show that other one already if it had been sent to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gevent.pywsgi import WSGIServer

from rtgevent.demo import make_demo_app
from tests.browserkit import WAIT_MS, needs_chromium
from tests.waiting import wait_until

SECRET = "browser-test-secret"  # both server incarnations must accept the same login cookie

pytestmark = needs_chromium


class DemoServer:
    """The demo chat on a fixed port, which can be stopped and started again on that port."""

    def __init__(self) -> None:
        self.port = 0
        self.server: WSGIServer | None = None
        self.app: Any = None

    def start(self) -> None:
        self.app = make_demo_app(secret_key=SECRET)
        self.server = WSGIServer(("127.0.0.1", self.port), self.app, log=None, error_log=None)
        self.server.start()
        self.port = self.server.server_port

    def stop(self) -> None:
        if self.server is None:
            return
        self.app.extensions["rtgevent"].realtime.shutdown(timeout=5)  # every page gets a 1001
        self.server.stop(timeout=5)
        self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def rt(self) -> Any:
        return self.app.extensions["rtgevent"].realtime


@pytest.fixture
def demo() -> Iterator[DemoServer]:
    server = DemoServer()
    server.start()
    yield server
    server.stop()


def open_chat(browser: Any, demo: DemoServer, name: str, room: str = "general", **context: Any) -> Any:
    """A page in its own context (its own cookies), logged in as ``name``, connected, in ``room``."""
    page = browser.new_context(**context).new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(demo.url + "/")  # not logged in: redirected to the form
    page.fill("#name", name)
    page.click("#login")
    page.wait_for_selector("#state[data-state=open]")
    page.wait_for_function("name => document.getElementById('me').textContent === name", arg=name)
    if room != "general":
        page.click(f"#room-{room}")
    in_room(page, room)
    # record every state change, to see a reconnect happen (a function: Playwright would call
    # the unsubscribe function chat.on returns if the expression evaluated to it)
    page.evaluate("() => { window.states = []; chat.on('rt.state', (s) => window.states.push(s)); }")
    return page


def in_room(page: Any, room: str) -> None:
    """The page shows ``room`` and the server confirmed its subscription on the current connection."""
    page.wait_for_function(
        "room => demo.room === room && demo.subscription.state === 'subscribed'"
        " && document.querySelector('#room-' + room).getAttribute('aria-current') === 'page'",
        arg=room,
    )


def listed(page: Any, selector: str, names: list[str]) -> None:
    page.wait_for_function(
        "([selector, names]) => JSON.stringify([...document.querySelectorAll(selector + ' li')]"
        ".map(li => li.dataset.name)) === JSON.stringify(names)",
        arg=[selector, names],
    )


def online_is(page: Any, names: list[str]) -> None:
    listed(page, "#online", names)


def members_are(page: Any, names: list[str]) -> None:
    listed(page, "#members", names)


def noticed(page: Any, text: str) -> None:
    page.wait_for_function(
        "text => [...document.querySelectorAll('#messages li.notice')].some(li => li.textContent === text)", arg=text
    )


def texts(page: Any, kind: str = "message") -> list[str]:
    return list(
        page.evaluate("kind => [...document.querySelectorAll('#messages li.' + kind)].map(li => li.textContent)", kind)
    )


def say(page: Any, text: str, to: str = "") -> None:
    page.select_option("#to", to)
    page.fill("#text", text)
    page.press("#text", "Enter")


def sees(page: Any, text: str, kind: str = "message") -> None:
    page.wait_for_function(
        "([kind, text]) => [...document.querySelectorAll('#messages li.' + kind)]"
        ".some(li => li.textContent.endsWith(': ' + text))",
        arg=[kind, text],
    )


def test_chat_in_the_browser(demo: DemoServer, browser: Any) -> None:
    """Two users chat; request() settles; the pages reconnect by themselves after a restart; presence follows."""
    alice = open_chat(browser, demo, "alice")
    bob = open_chat(browser, demo, "bob")
    online_is(alice, ["alice", "bob"])
    online_is(bob, ["alice", "bob"])

    say(alice, "hello from alice")
    sees(bob, "hello from alice")
    say(bob, "psst", to="alice")
    sees(alice, "psst", kind="direct")
    sees(bob, "psst", kind="direct")  # the sender's tab shows the conversation too

    # request(): resolves with the rt.reply's data, rejects with the rt.error's code
    assert alice.evaluate("chat.request('chat.who', {})") == {"online": ["alice", "bob"]}
    settle = "p => p.then(v => ({ok: v}), e => ({code: e.code, message: e.message}))"
    rejected = alice.evaluate(f"({settle})(chat.request('chat.direct', {{to: 'carol', text: 'hi'}}))")
    assert rejected == {"code": "not_online", "message": "carol is not online"}
    rejected = alice.evaluate(f"({settle})(chat.request('no.such.route', 1))")
    assert rejected["code"] == "unknown_route"

    # the server goes away and comes back on the same port: the pages reconnect on their own
    demo.stop()
    for page in (alice, bob):
        page.wait_for_function("window.states.includes('closed')")
    say(bob, "written while the server was down")  # queued by rtgevent.js, flushed on reconnect
    demo.start()
    for page in (alice, bob):
        page.wait_for_function("window.states.includes('closed') && chat.state === 'open'")
    online_is(alice, ["alice", "bob"])
    sees(alice, "written while the server was down")
    say(bob, "back again")
    sees(alice, "back again")
    assert bob.evaluate("chat.request('chat.who', {})") == {"online": ["alice", "bob"]}

    # a page that goes away leaves the online list of the others
    bob.context.close()
    online_is(alice, ["alice"])


def room_members(demo: DemoServer, room: str) -> list[str]:
    """The room's members as channel presence has them on the server."""
    return sorted(info.identity_id for info in demo.rt.channel_members(f"room:{room}"))


def test_rooms_in_the_browser(demo: DemoServer, browser: Any) -> None:
    """Two pages in #general, one in #random: each sees its room only, members and notices follow,
    and after a server restart the pages subscribe again by themselves and keep chatting."""
    alice = open_chat(browser, demo, "alice")
    bob = open_chat(browser, demo, "bob")
    carol = open_chat(browser, demo, "carol", room="random")  # enters #general first, then #random
    for page in (alice, bob):
        members_are(page, ["alice", "bob"])
    members_are(carol, ["carol"])
    assert room_members(demo, "general") == ["alice", "bob"]
    assert room_members(demo, "random") == ["carol"]
    # rt.join / rt.leave notices, shown by the members of the room only
    noticed(alice, "bob joined #general")
    noticed(alice, "carol joined #general")
    noticed(bob, "carol left #general")
    assert not any("random" in line for line in texts(alice, "notice") + texts(bob, "notice"))

    say(alice, "hi general")
    for page in (alice, bob):  # the sender's page too: every member gets the publication
        sees(page, "hi general")
    say(carol, "hi random")
    sees(carol, "hi random")
    assert not any("hi general" in line for line in texts(carol))
    say(bob, "general again")
    for page in (alice, bob):
        sees(page, "general again")
        assert not any("hi random" in line for line in texts(page))
    # each room message reached each member once (the page's own request included)
    assert [line.endswith(": hi general") for line in texts(alice)].count(True) == 1

    # the server goes away and comes back on the same port: every page subscribes again by itself
    demo.stop()
    for page in (alice, bob, carol):
        page.wait_for_function("window.states.includes('closed')")
    say(bob, "queued in general")  # sent after the re-subscription, which the server needs first
    demo.start()
    for page in (alice, bob, carol):
        page.wait_for_function("chat.state === 'open'")
    for page, room in ((alice, "general"), (bob, "general"), (carol, "random")):
        in_room(page, room)
    wait_until(lambda: room_members(demo, "general") == ["alice", "bob"], "alice and bob back in #general")
    wait_until(lambda: room_members(demo, "random") == ["carol"], "carol back in #random")
    sessions = sorted(info.session_id for info in demo.rt.channel_members("room:general"))
    for page in (alice, bob):
        members_are(page, ["alice", "bob"])
        # the list is the new server's, not the one from before: its session ids are the new connections'
        page.wait_for_function("ids => JSON.stringify(demo.memberSessions()) === JSON.stringify(ids)", arg=sessions)
    members_are(carol, ["carol"])
    sees(alice, "queued in general")
    say(alice, "after the restart")
    for page in (alice, bob):
        sees(page, "after the restart")
    say(carol, "random after the restart")
    sees(carol, "random after the restart")
    assert not any("after the restart" in line and "random" not in line for line in texts(carol))
    say(bob, "last word")
    sees(alice, "last word")
    assert not any("random after the restart" in line for line in texts(alice) + texts(bob))
    assert alice.evaluate("document.getElementById('error').textContent") == ""

    # a page that goes away leaves its room: the others see it go
    bob.context.close()
    members_are(alice, ["alice"])
    noticed(alice, "bob left #general")
    assert room_members(demo, "general") == ["alice"]


SETTLE = "p => p.then(v => ({ok: v}), e => ({code: e.code}))"


def test_subscribe_api_in_the_browser(demo: DemoServer, browser: Any) -> None:
    """rtgevent.js subscribe(): ready, refusals, routing by metadata.channel, shared and server-side subscriptions."""
    page = open_chat(browser, demo, "alice")
    # refusals reject ready with the rt.error code, and end the subscription
    refused = page.evaluate(
        f"""async () => {{
            const settle = {SETTLE};
            const lobby = chat.subscribe('lobby', () => {{}});
            const bad = chat.subscribe('has space', () => {{}});
            return {{lobby: await settle(lobby.ready), bad: await settle(bad.ready),
                     active: [lobby.active, bad.active], left: chat.subscriptions().length}};
        }}"""
    )
    assert refused == {
        "lobby": {"code": "unauthorized"},
        "bad": {"code": "bad_message"},
        "active": [False, False],
        "left": 1,  # the page's own #general
    }

    # two subscriptions of one channel (besides the page's): both get its publications, nothing else does
    reply = page.evaluate(
        """async () => {
            window.got = {one: [], two: []};
            window.one = chat.subscribe('room:random', (data, msg) => got.one.push([data.text, msg.metadata.channel]));
            window.two = chat.subscribe('room:random', (data) => got.two.push(data.text));
            await two.ready;
            return one.ready;
        }"""
    )
    assert reply == {"channel": "room:random", "offset": 0, "epoch": "", "recovered": False, "missed": 0}
    demo.rt.publish("room:random", "chat.message", {"id": "p1", "from": "x", "text": "to random", "at": "2024-01-01"})
    page.wait_for_function("got.two.length === 1")
    assert page.evaluate("got") == {"one": [["to random", "room:random"]], "two": ["to random"]}
    assert texts(page, "announce") == []  # the page's on('chat.message') did not get it

    # one unsubscribe keeps the channel for the other; the last one leaves it on the server
    page.evaluate("one.unsubscribe()")
    demo.rt.publish("room:random", "chat.message", {"id": "p2", "from": "x", "text": "again", "at": "2024-01-01"})
    page.wait_for_function("got.two.length === 2")
    assert page.evaluate("got.one.length") == 1
    assert page.evaluate("two.unsubscribe()") == {"channel": "room:random"}
    assert demo.rt.publish("room:random", "chat.message", {"id": "p3", "from": "x", "text": "gone", "at": "x"}) == 0
    assert page.evaluate("[one.state, two.state, chat.subscriptions().length]") == ["unsubscribed", "unsubscribed", 1]

    # a channel the server subscribed the session to reaches on(route) handlers, as before
    page.evaluate("() => { window.headlines = []; chat.on('headline', (d, m) => headlines.push([d, m.metadata])); }")
    (session,) = demo.rt.sessions()
    session.subscribe("news")
    assert demo.rt.publish("news", "headline", "extra") == 1
    page.wait_for_function("headlines.length === 1")
    assert page.evaluate("headlines") == [["extra", {"channel": "news"}]]


def test_the_page_fits_a_phone(demo: DemoServer, browser: Any) -> None:
    """At 390 px wide the Send button and the members list are entirely on screen; nothing scrolls sideways."""
    phone = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
    open_chat(browser, demo, "a-rather-long-name-for-a-phone")
    alice = open_chat(browser, demo, "alice", **phone)
    members_are(alice, ["a-rather-long-name-for-a-phone", "alice"])
    say(alice, "x" * 300)  # a long word wraps instead of widening the page
    sees(alice, "x" * 300)
    inside = alice.evaluate(
        """() => {
            const width = window.innerWidth, height = window.innerHeight;
            const box = (id) => {
                const r = document.getElementById(id).getBoundingClientRect();
                return {id, left: r.left, right: r.right, top: r.top, bottom: r.bottom,
                        inside: r.width > 0 && r.height > 0 && r.left >= 0 && r.top >= 0
                                && r.right <= width && r.bottom <= height};
            };
            return {width, scrollWidth: document.documentElement.scrollWidth,
                    boxes: ['send', 'text', 'members', 'online', 'rooms'].map(box)};
        }"""
    )
    assert inside["width"] == 390
    assert inside["scrollWidth"] <= 390, inside
    assert [b["id"] for b in inside["boxes"] if not b["inside"]] == [], inside

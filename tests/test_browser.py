"""rtgevent.js in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

The demo chat is served in-process; two pages in separate browser contexts (two cookie
jars) log in as two users.  Playwright's sync API waits cooperatively under gevent's
monkey-patching, so the in-process server keeps serving while a test waits on a page.
Every wait is on a page condition with a generous timeout; nothing sleeps to synchronise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from gevent.pywsgi import WSGIServer

from rtgevent.demo import make_demo_app

CHROMIUM = "/usr/bin/chromium"
#: milliseconds, for Playwright: generous, the machine is a busy 2-core box
WAIT_MS = 20_000
SECRET = "browser-test-secret"  # both server incarnations must accept the same login cookie
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed")


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


@pytest.fixture
def demo() -> Iterator[DemoServer]:
    server = DemoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_chat(browser: Any, demo: DemoServer, name: str) -> Any:
    """A page in its own context (its own cookies), logged in as ``name``, connected."""
    page = browser.new_context().new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(demo.url + "/")  # not logged in: redirected to the form
    page.fill("#name", name)
    page.click("#login")
    page.wait_for_selector("#state[data-state=open]")
    page.wait_for_function("name => document.getElementById('me').textContent === name", arg=name)
    # record every state change, to see a reconnect happen (a function: Playwright would call
    # the unsubscribe function chat.on returns if the expression evaluated to it)
    page.evaluate("() => { window.states = []; chat.on('rt.state', (s) => window.states.push(s)); }")
    return page


def online_is(page: Any, names: list[str]) -> None:
    page.wait_for_function(
        "names => JSON.stringify([...document.querySelectorAll('#online li')].map(li => li.dataset.name))"
        " === JSON.stringify(names)",
        arg=names,
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

"""Helpers for the application-API tests: serve a `Realtime` in-process, and drive it.

`serving()` backs a fixture that serves any `Realtime` on a real socket (gevent's pywsgi
on port 0) and stops it afterwards.  `Driver` is one client API over two transports: a
real WebSocket (websocket-client) or `rt.test_client()`, so that every handler-level test
runs both over the wire and without a socket.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
import websocket
from gevent.pywsgi import WSGIServer

from rtgevent import Identity, Message, Realtime, Session
from rtgevent.testing import TestClient
from tests import rawws
from tests.waiting import WAIT


@dataclasses.dataclass
class Live:
    """One `Realtime` served on 127.0.0.1; clients made here are closed before it stops."""

    rt: Realtime
    server: WSGIServer
    clients: list[Any] = dataclasses.field(default_factory=list)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def url(self, path: str = "/") -> str:
        return f"ws://{self.host}:{self.port}{path}"

    def connect(self, path: str = "/", **kwargs: Any) -> websocket.WebSocket:
        ws = websocket.create_connection(self.url(path), timeout=WAIT, **kwargs)
        self.clients.append(ws)
        return ws

    def raw(self, path: str = "/") -> rawws.RawClient:
        client = rawws.RawClient(self.host, self.port, path, timeout=WAIT)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        for client in self.clients:
            try:
                client.close()
            except Exception:
                pass
        self.rt.shutdown(timeout=5)
        self.server.stop(timeout=5)


LiveFactory = Callable[[Realtime], Live]


def serving() -> Iterator[LiveFactory]:
    """Body of a fixture: ``live(rt)`` serves ``rt``; everything is stopped afterwards."""
    started: list[Live] = []

    def factory(rt: Realtime) -> Live:
        server = WSGIServer(("127.0.0.1", 0), rt, log=None, error_log=None)
        server.start()
        live = Live(rt, server)
        started.append(live)
        return live

    yield factory
    for live in started:
        live.stop()


class Closed(Exception):
    """The server closed the connection (its close code, if any)."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed with {code}")
        self.code = code


class Driver:
    """A client of one session: send frames, receive decoded messages, make requests."""

    def __init__(self, rt: Realtime) -> None:
        self.rt = rt
        self._next_id = 0

    def send_raw(self, frame: str | bytes) -> None:
        raise NotImplementedError

    def recv(self) -> Message:
        """The next message the session was sent (waits up to WAIT over a socket)."""
        raise NotImplementedError

    @property
    def connected(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def send(self, route: str, data: Any = None, *, id: Any = None) -> None:
        self.send_raw(self.rt.codec.encode(Message(route, data, id=id)))

    def send_many(self, frames: Iterable[str | bytes]) -> None:
        """Send every frame without waiting for answers (pipelined)."""
        for frame in frames:
            self.send_raw(frame)

    def request(self, route: str, data: Any = None, *, id: Any = None) -> Message:
        """Send with an id; return the rt.reply / rt.error answering it (earlier messages are skipped)."""
        if id is None:
            self._next_id += 1
            id = f"req-{self._next_id}"
        self.send(route, data, id=id)
        return self.answer_to(id)

    def answer_to(self, id: Any) -> Message:
        while True:
            msg = self.recv()
            if msg.route in ("rt.reply", "rt.error") and in_reply_to(msg) == id:
                return msg


class SocketDriver(Driver):
    def __init__(self, rt: Realtime, ws: websocket.WebSocket) -> None:
        super().__init__(rt)
        self.ws = ws
        self._senders: list[gevent.Greenlet] = []

    def send_raw(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            self.ws.send_binary(frame)
        else:
            self.ws.send(frame)

    def send_many(self, frames: Iterable[str | bytes]) -> None:
        # from another greenlet, so that replies are read while requests are still being sent
        # (the server stops reading when nobody reads its replies: TCP buffers are finite)
        self._senders.append(gevent.spawn(super().send_many, list(frames)))

    def recv(self) -> Message:
        opcode, data = self.ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            raise Closed(code)
        frame: str | bytes = data.decode() if opcode == websocket.ABNF.OPCODE_TEXT else bytes(data)
        return self.rt.codec.decode(frame)

    @property
    def connected(self) -> bool:
        return bool(self.ws.connected)

    def close(self) -> None:
        for sender in self._senders:
            sender.get(timeout=WAIT)
        self.ws.close()


class TestClientDriver(Driver):
    __test__ = False  # not a pytest test class

    def __init__(self, rt: Realtime, client: TestClient) -> None:
        super().__init__(rt)
        self.client = client
        self._inbox: collections.deque[Message] = collections.deque()

    def send_raw(self, frame: str | bytes) -> None:
        self._inbox.extend(self.client.send_raw(frame))

    def recv(self) -> Message:
        self._inbox.extend(self.client.get_received())
        if not self._inbox:
            if not self.client.connected:
                raise Closed(None)
            raise AssertionError("the session was sent nothing")
        return self._inbox.popleft()

    @property
    def connected(self) -> bool:
        return self.client.connected

    def close(self) -> None:
        self.client.close()


Connect = Callable[[Realtime], Driver]


def drivers(kind: str) -> Iterator[Connect]:
    """Body of a fixture parametrized over ``"socket"`` and ``"test_client"``."""
    made: list[Driver] = []
    servers = serving()
    live_factory = next(servers)

    def connect(rt: Realtime) -> Driver:
        driver: Driver
        if kind == "socket":
            driver = SocketDriver(rt, live_factory(rt).connect())
        else:
            driver = TestClientDriver(rt, rt.test_client(identity=Identity("tester", "acme")))
        made.append(driver)
        return driver

    try:
        yield connect
    finally:
        for driver in made:
            try:
                driver.close()
            except Exception:
                pass
        for _ in servers:
            pass


def in_reply_to(msg: Message) -> Any:
    return (msg.metadata or {}).get("in_reply_to")


def code_of(msg: Message) -> Any:
    return (msg.metadata or {}).get("code")


def envelope(**fields: Any) -> str:
    """A JSON text frame with exactly ``fields`` (for envelopes the codec would not write)."""
    return json.dumps(fields)


def add_echo(rt: Realtime, route: str = "echo") -> None:
    """Register ``route``: replies with the message's data (the open-connection probe)."""

    @rt.route(route)
    def echo(session: Any, msg: Message) -> Any:
        return msg.data


def assert_still_open(driver: Driver, route: str = "echo") -> None:
    """The session still answers a good request (its handler must echo ``data``)."""
    reply = driver.request(route, {"still": "open"})
    assert reply.route == "rt.reply", reply
    assert reply.data == {"still": "open"}
    assert driver.connected


ErrorLog = list[tuple[BaseException, "Session | None"]]


def record_errors(rt: Realtime) -> ErrorLog:
    """Every (error, session) the application's on_error hook receives, in order."""
    errors: ErrorLog = []

    @rt.on_error
    def on_error(error: BaseException, session: Session | None) -> None:
        errors.append((error, session))

    return errors

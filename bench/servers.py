"""The servers under test, one per process: ``python -m bench.servers KIND [--port P]``.

Kinds:

* ``rtgevent-bare``: rtgevent's engine only.  A codec whose ``decode`` makes every frame a
  message to route ``echo`` and whose ``encode`` returns the message's data, and an
  ``on_message`` handler that sends the message straight back.  No JSON, no router
  lookup beyond the fallback, no reply envelope.
* ``rtgevent-full``: what an application gets: the default JSON codec, ``rt.use(recovery())``
  and ``@rt.route("echo")`` returning ``msg.data`` (decode, route, middleware, ``rt.reply``, encode).
* ``socketio``: Flask-SocketIO 5.x, ``async_mode="gevent"``, served by gevent-websocket's
  ``WebSocketHandler``; ``@socketio.on("echo")`` returns its data (the client's ack).
* ``reference``: the gevent ceiling, `bench.reference`: pywsgi and websockets' sans-I/O
  ``ServerProtocol``, three greenlets and a bounded queue per connection; it echoes every
  data frame and broadcasts the same JSON envelope as ``rtgevent-full``.

(``node``, the Node ``ws`` server the driver compares with, is ``bench/node/server.js``.)

rtgevent is served at ``/ws`` by plain ``gevent.pywsgi.WSGIServer`` (the framework does the
handshake itself); Flask-SocketIO at ``/socket.io/``.  Both servers log no access lines.
``GET /_bench/stats`` answers JSON counters (rtgevent: ``rt.stats()``; Flask-SocketIO: the
number of Engine.IO sockets) so the driver can check that every connection is really there,
plus what the broadcaster did and every session that ended since it started (`Broadcaster`).
``POST /_bench/broadcast?count=N&interval=S&size=B[&yield_every=K]`` starts the broadcaster of the ``fanout``
and ``slow`` scenarios (``rtgevent-full``: ``rt.broadcast``; ``socketio``: ``socketio.emit``;
``reference``: `ReferenceServer.broadcast` of ``{"route":"tick","data":...}``).
``--compression`` turns permessage-deflate on (rtgevent: ``Config(compression=True)``;
``reference``: websockets' own server settings); gevent-websocket has none.
``--heartbeat-interval S`` sets rtgevent's ``Config(heartbeat_interval=S)`` explicitly (the
``scale`` scenario: a ping every S seconds per connection) instead of relying on the default.
``GET /_bench/gc`` (rtgevent kinds) runs a full ``gc.collect()`` in the server and answers how
many objects it freed, so that RSS is read without garbage waiting for a collection;
``?freeze=1`` then also calls ``gc.freeze()`` (a diagnosis: what the collector costs at idle).

The process prints ``READY <port>`` once listening and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from bench.proc import raise_nofile  # noqa: E402

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

KINDS = ("rtgevent-bare", "rtgevent-full", "socketio", "reference")
#: rtgevent's JSON codec writes no spaces: the reference's envelope is the same bytes
COMPACT: dict[str, Any] = {"separators": (",", ":")}
#: listen backlog: connection storms of a few hundred in flight must not overflow it
BACKLOG = 2048


def _json_response(start_response: Callable[..., Any], value: Any, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(value).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class Broadcaster:
    """The server side of the ``fanout`` and ``slow`` scenarios: one greenlet broadcasting on request.

    Message ``i`` is sent at ``start + i * interval``.  Back to back (``interval`` 0), it yields
    to the hub after every ``yield_every`` broadcasts so the writers run, as a greenlet that
    loops over broadcasts would (1, the default: after each); 0 never yields, so the whole
    burst is queued in one pass of the hub before anything is written.  Its data is
    ``"<i>:<CLOCK_MONOTONIC>:"`` padded with ``x`` to ``size`` bytes; the load generator, on the
    same machine, reads the clock at arrival.  Sessions that end while it runs are recorded with
    their close code, reason and time since the start, so the driver can tell how the slow
    consumers were closed.
    """

    def __init__(self, send: Callable[[str], None]) -> None:
        self.send = send
        self.started: float | None = None
        self.finished: float | None = None
        self.sent = 0
        #: how long each ``send`` call took (seconds): for one broadcast, the server's sweep
        self.calls: list[float] = []
        self.closes: list[dict[str, Any]] = []

    def start(self, count: int, interval: float, size: int, yield_every: int = 1) -> None:
        if self.started is not None and self.finished is None:
            raise RuntimeError("a broadcast is already running")
        self.started, self.finished, self.sent = time.monotonic(), None, 0
        self.calls.clear()
        self.closes.clear()
        gevent.spawn(self._run, count, interval, size, yield_every)

    def _run(self, count: int, interval: float, size: int, yield_every: int) -> None:
        assert self.started is not None
        start = self.started
        for i in range(count):
            if interval or (yield_every and i % yield_every == 0):
                gevent.sleep(max(0.0, start + i * interval - time.monotonic()))
            stamp = f"{i}:{time.monotonic():.6f}:"
            data = stamp + "x" * (size - len(stamp))
            called = time.monotonic()
            self.send(data)
            self.calls.append(time.monotonic() - called)
            self.sent += 1
        self.finished = time.monotonic()

    def closed(self, code: int | None, reason: str) -> None:
        if self.started is not None:
            self.closes.append({"code": code, "reason": reason, "after": time.monotonic() - self.started})

    def stats(self) -> dict[str, Any]:
        seconds = None if self.started is None or self.finished is None else self.finished - self.started
        return {
            "broadcast_sent": self.sent,
            "broadcast_seconds": seconds,
            "broadcast_calls": list(self.calls[:1000]),
            "closes": list(self.closes),
        }

    def handle(self, query: str) -> tuple[str, dict[str, Any]]:
        """``POST /_bench/broadcast``: (HTTP status, JSON body)."""
        try:
            args = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
            count, interval, size = int(args["count"]), float(args["interval"]), int(args["size"])
            yield_every = int(args.get("yield_every", "1"))
            if not (0 < count <= 100_000 and 0 <= interval <= 10 and 32 <= size <= 1 << 20 and yield_every >= 0):
                raise ValueError("count, interval, size or yield_every out of bounds")
            self.start(count, interval, size, yield_every)
        except (KeyError, ValueError, RuntimeError) as exc:
            return "400 Bad Request", {"error": str(exc)}
        return "202 Accepted", {"started": True}


def make_rtgevent(kind: str, compression: bool = False, heartbeat_interval: float | None = None) -> WSGIApp:
    from rtgevent import Config, DisconnectInfo, Message, Realtime, Session, recovery

    # max_connections: the default cap (10,000) would refuse part of the 10,000-connection scenario
    # (a warm-up connection may still be closing); everything else is the default Config, but
    # for an explicit heartbeat_interval (None here: the default's, 30 s).
    extra: dict[str, Any] = {} if heartbeat_interval is None else {"heartbeat_interval": heartbeat_interval}
    config = Config(max_connections=None, compression=compression, **extra)
    if kind == "rtgevent-bare":

        class BareCodec:
            """Every frame is a message to route ``echo``; a message's data is the frame."""

            def decode(self, frame: str | bytes) -> Message:
                return Message("echo", frame)

            def encode(self, message: Message) -> str | bytes:
                data: str | bytes = message.data
                return data

        rt = Realtime(config, codec=BareCodec())

        @rt.on_message
        def raw_echo(session: Session, msg: Message) -> None:
            session.send_message(msg)

    else:
        rt = Realtime(config)
        rt.use(recovery())

        @rt.route("echo")
        def echo(session: Session, msg: Message) -> Any:
            return msg.data

    broadcaster = Broadcaster(lambda data: rt.broadcast("tick", data))

    @rt.on_disconnect
    def ended(session: Session, info: DisconnectInfo) -> None:
        broadcaster.closed(info.code, f"{info.initiator}: {info.reason}")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == "/_bench/stats":
            return _json_response(start_response, {**rt.stats(), **broadcaster.stats()})
        if path == "/_bench/gc":
            collected = gc.collect()
            if "freeze=1" in environ.get("QUERY_STRING", ""):
                gc.freeze()  # what survived moves out of the collector's sight (a diagnosis of the idle CPU)
            return _json_response(start_response, {"collected": collected, "frozen": gc.get_freeze_count()})
        if path == "/_bench/broadcast" and environ.get("REQUEST_METHOD") == "POST":
            status, body = broadcaster.handle(environ.get("QUERY_STRING", ""))
            return _json_response(start_response, body, status)
        return rt(environ, start_response)

    return app


def make_reference(compression: bool = False) -> WSGIApp:
    from bench.reference import ReferenceServer

    broadcaster = Broadcaster(lambda data: server.broadcast(json.dumps({"route": "tick", "data": data}, **COMPACT)))
    server = ReferenceServer(compression, on_close=broadcaster.closed)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == "/_bench/stats":
            return _json_response(start_response, {"connections": len(server.conns), **broadcaster.stats()})
        if path == "/_bench/broadcast" and environ.get("REQUEST_METHOD") == "POST":
            status, body = broadcaster.handle(environ.get("QUERY_STRING", ""))
            return _json_response(start_response, body, status)
        return server(environ, start_response)

    return app


def make_socketio() -> WSGIApp:
    from flask import Flask, Response, request
    from flask_socketio import SocketIO  # type: ignore[import-untyped]

    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="gevent")
    broadcaster = Broadcaster(lambda data: socketio.emit("tick", data))

    @socketio.on("echo")  # type: ignore[untyped-decorator]
    def echo(data: Any) -> Any:
        return data

    @socketio.on("disconnect")  # type: ignore[untyped-decorator]
    def ended(reason: Any = None) -> None:
        broadcaster.closed(None, str(reason))

    @app.route("/_bench/stats")
    def stats() -> Any:
        return {"connections": len(socketio.server.eio.sockets), **broadcaster.stats()}

    @app.post("/_bench/broadcast")
    def broadcast() -> Any:
        status, body = broadcaster.handle(request.query_string.decode())
        return Response(json.dumps(body), status=status, mimetype="application/json")

    wsgi: WSGIApp = app
    return wsgi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed in READY)")
    parser.add_argument("--nofile", type=int, default=20000, help="wanted RLIMIT_NOFILE")
    parser.add_argument("--compression", action="store_true", help="offer permessage-deflate (not socketio)")
    parser.add_argument(
        "--heartbeat-interval", type=float, help="rtgevent kinds: Config(heartbeat_interval=S) (default: Config's)"
    )
    args = parser.parse_args(argv)
    if args.host != "127.0.0.1":
        parser.error("the benchmark servers listen on 127.0.0.1 only")
    if args.compression and args.kind == "socketio":
        parser.error("gevent-websocket has no permessage-deflate: --compression is for the other kinds")
    if args.heartbeat_interval is not None and not args.kind.startswith("rtgevent"):
        parser.error("--heartbeat-interval is rtgevent's Config: for the rtgevent kinds only")
    raise_nofile(args.nofile)

    server: WSGIServer
    if args.kind == "socketio":
        from geventwebsocket.handler import WebSocketHandler

        server = WSGIServer(
            (args.host, args.port), make_socketio(), backlog=BACKLOG, log=None, handler_class=WebSocketHandler
        )
    elif args.kind == "reference":
        server = WSGIServer((args.host, args.port), make_reference(args.compression), backlog=BACKLOG, log=None)
    else:
        app = make_rtgevent(args.kind, args.compression, args.heartbeat_interval)
        server = WSGIServer((args.host, args.port), app, backlog=BACKLOG, log=None)
    server.start()
    stop = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    print(f"READY {server.server_port}", flush=True)
    stop.wait()
    server.close()  # stop accepting; the process exits with its connections
    return 0


if __name__ == "__main__":
    sys.exit(main())

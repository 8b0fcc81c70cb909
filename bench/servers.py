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

rtgevent is served at ``/ws`` by plain ``gevent.pywsgi.WSGIServer`` (the framework does the
handshake itself); Flask-SocketIO at ``/socket.io/``.  Both servers log no access lines.
``GET /_bench/stats`` answers JSON counters (rtgevent: ``rt.stats()``; Flask-SocketIO: the
number of Engine.IO sockets) so the driver can check that every connection is really there.

The process prints ``READY <port>`` once listening and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from bench.proc import raise_nofile  # noqa: E402

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

KINDS = ("rtgevent-bare", "rtgevent-full", "socketio")
#: listen backlog: connection storms of a few hundred in flight must not overflow it
BACKLOG = 2048


def _json_response(start_response: Callable[..., Any], value: Any) -> list[bytes]:
    body = json.dumps(value).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def make_rtgevent(kind: str) -> WSGIApp:
    from rtgevent import Config, Message, Realtime, Session, recovery

    # max_connections: the default cap (10,000) would refuse part of the 10,000-connection scenario
    # (a warm-up connection may still be closing); everything else is the default Config.
    config = Config(max_connections=None)
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

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/_bench/stats":
            return _json_response(start_response, rt.stats())
        return rt(environ, start_response)

    return app


def make_socketio() -> WSGIApp:
    from flask import Flask
    from flask_socketio import SocketIO  # type: ignore[import-untyped]

    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="gevent")

    @socketio.on("echo")  # type: ignore[untyped-decorator]
    def echo(data: Any) -> Any:
        return data

    @app.route("/_bench/stats")
    def stats() -> Any:
        return {"connections": len(socketio.server.eio.sockets)}

    wsgi: WSGIApp = app
    return wsgi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed in READY)")
    parser.add_argument("--nofile", type=int, default=20000, help="wanted RLIMIT_NOFILE")
    args = parser.parse_args(argv)
    if args.host != "127.0.0.1":
        parser.error("the benchmark servers listen on 127.0.0.1 only")
    raise_nofile(args.nofile)

    server: WSGIServer
    if args.kind == "socketio":
        from geventwebsocket.handler import WebSocketHandler

        server = WSGIServer(
            (args.host, args.port), make_socketio(), backlog=BACKLOG, log=None, handler_class=WebSocketHandler
        )
    else:
        server = WSGIServer((args.host, args.port), make_rtgevent(args.kind), backlog=BACKLOG, log=None)
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

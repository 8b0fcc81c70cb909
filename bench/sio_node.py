"""One Flask-SocketIO process of the ``channels`` scenario: rooms over a Redis message queue.

Run as its own process (the driver pins it to CPU 0)::

    python -m bench.sio_node --port 0 --queue redis://127.0.0.1:6379/0 --channel NAME

``Flask`` + ``SocketIO(app, async_mode="gevent", message_queue=URL, channel=NAME)`` (python-socketio's
`RedisManager`: every emit is handled by this process and published on the Redis pub/sub
channel ``NAME``, unique per run, for every other process), served by gevent-websocket's
``WebSocketHandler`` like `bench.servers`' ``socketio``.  A client joins a room with the event
``join`` (data: the room's name), answered by an ack once ``join_room`` returned.  Plain HTTP
on ``/_bench/...`` (127.0.0.1 only):

* ``GET /_bench/publish?channel=ROOM&count=N&size=B&interval=S``: start one greenlet that calls
  ``socketio.emit("tick", data, to=ROOM)`` N times (`bench.channel_node.Publisher`: the same
  loop and data as rtgevent's node).  Answers at once ``{"started": true}``.
* ``GET /_bench/stats[?channel=ROOM]``: ``connections`` (Engine.IO sockets), ``members`` (of ROOM,
  on this process) and the publisher's ``published`` / ``publish_seconds`` / ``publish_errors``.

The process prints ``READY <port>`` once listening and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from bench.channel_node import Publisher  # noqa: E402
from bench.proc import raise_nofile  # noqa: E402

#: listen backlog, as `bench.servers`': connection storms of a hundred in flight must not overflow it
BACKLOG = 2048


def make_app(queue: str, channel: str) -> Any:
    from flask import Flask, Response, request
    from flask_socketio import SocketIO, join_room  # type: ignore[import-untyped]

    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="gevent", message_queue=queue, channel=channel)
    publisher = Publisher(lambda data: None)

    @socketio.on("join")  # type: ignore[untyped-decorator]
    def join(room: Any) -> Any:
        join_room(str(room))
        return "ok"

    def answer(value: Any, status: int = 200) -> Response:
        return Response(json.dumps(value), status=status, mimetype="application/json")

    @app.route("/_bench/stats")
    def stats() -> Any:
        room = request.args.get("channel", "")
        members = len(list(socketio.server.manager.get_participants("/", room))) if room else 0
        return answer({"connections": len(socketio.server.eio.sockets), "members": members, **publisher.stats()})

    @app.route("/_bench/publish")
    def publish() -> Any:
        query = {k: v for k, v in request.args.items()}
        room = query["channel"]
        publisher.send = lambda data: socketio.emit("tick", data, to=room)
        try:
            return answer(publisher.handle(query))
        except (KeyError, ValueError, RuntimeError) as exc:
            return answer({"error": f"bad request: {exc!r}"}, 400)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sio_node", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed in READY)")
    parser.add_argument("--queue", required=True, help="message queue URL (redis://127.0.0.1:6379/<db>)")
    parser.add_argument("--channel", required=True, help="the queue's pub/sub channel, unique per run")
    parser.add_argument("--nofile", type=int, default=20000, help="wanted RLIMIT_NOFILE")
    args = parser.parse_args(argv)
    if not args.queue.startswith("redis://127.0.0.1:"):
        parser.error("the message queue must be a Redis on 127.0.0.1")
    raise_nofile(args.nofile)
    from geventwebsocket.handler import WebSocketHandler

    server = WSGIServer(
        ("127.0.0.1", args.port),
        make_app(args.queue, args.channel),
        backlog=BACKLOG,
        log=None,
        handler_class=WebSocketHandler,
    )
    server.start()
    stop = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    print(f"READY {server.server_port}", flush=True)
    stop.wait()
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

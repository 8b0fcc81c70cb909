"""The ``rtgevent`` command line: serve an application, run the demo, or reach a cluster's sessions
through an `Emitter` (``send``, ``broadcast``, ``publish``, ...); and `serve`, its server as a call.

The CLI is the one place besides tests and examples that monkey-patches: it does so
before importing anything that might import socket, ssl or threading.  `serve` (also
``rtgevent.serve``) does not: a script calls it after its own ``monkey.patch_all()``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "serve"]


def _patch() -> None:
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()


def load_app(spec: str) -> Any:
    """Import ``MODULE:NAME`` (dotted ``NAME``; ``NAME()`` calls a factory); ``MODULE`` means ``MODULE:app``."""
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    obj: Any = importlib.import_module(module_name)
    attr = attr or "app"
    call = attr.endswith("()")
    for part in attr.removesuffix("()").split("."):
        obj = getattr(obj, part)
    return obj() if call else obj


def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    header_timeout: float = 10.0,
    certfile: str | None = None,
    keyfile: str | None = None,
    log: Any = "default",
) -> None:
    """Serve the WSGI ``app`` with gevent until SIGTERM or SIGINT: the server of ``rtgevent serve``.

    ``rtgevent.serve(app, "0.0.0.0", 8000)`` in place of ``WSGIServer((host, port), app).serve_forever()``:

    * a client that takes more than ``header_timeout`` seconds to send its request line and
      headers is dropped (plain pywsgi waits forever: a slowloris holds a socket per byte);
    * every `Realtime` of the process is started before the first request (broker
      subscriptions, presence lease);
    * SIGTERM / SIGINT stop accepting, close every session with 1001 and return once
      they are drained;
    * TLS with ``certfile`` / ``keyfile``; access log lines have their tokens redacted
      (``log=None`` turns the access log off).

    Port 0 picks a free port; the ``rtgevent: serving on URL`` line names it.  Raises
    `rtgevent.node.NotMonkeyPatched` unless the program monkey-patched first thing.
    """
    import gevent

    from .node import require_monkey_patching
    from .realtime import Realtime, instances
    from .transport.server import make_server

    require_monkey_patching("rtgevent.serve")
    server = make_server(
        app, f"{host}:{port}", certfile=certfile, keyfile=keyfile, log=log, header_timeout=header_timeout
    )
    for rt in list(instances):
        if isinstance(rt, Realtime):
            rt.ensure_started()

    def stop() -> None:
        server.close()  # stop accepting first, then drain what is connected
        for rt in list(instances):
            rt.shutdown()
        server.stop(timeout=1)

    stopping: list[gevent.Greenlet] = []

    def on_signal() -> None:
        if not stopping:
            stopping.append(gevent.spawn(stop))

    gevent.signal_handler(signal.SIGTERM, on_signal)
    gevent.signal_handler(signal.SIGINT, on_signal)
    scheme = "https" if certfile else "http"
    server.start()
    print(f"rtgevent: serving on {scheme}://{server.server_host}:{server.server_port}", flush=True)
    server.serve_forever()
    for greenlet in stopping:  # close() ends serve_forever at once: let the drain finish first
        greenlet.join()


def _serve(
    app: Any,
    bind: str,
    certfile: str | None,
    keyfile: str | None,
    header_timeout: float,
    broker: str | None = None,
    presence: str | None = None,
    history: str | None = None,
    admin_token: str | None = None,
) -> int:
    from .realtime import Realtime, instances
    from .transport.server import parse_bind

    host, port = parse_bind(bind)
    realtimes = [rt for rt in list(instances) if isinstance(rt, Realtime)]
    for rt in realtimes:
        _connect(rt, broker, presence, history)
    if admin_token:
        app = _with_admin(app, realtimes, admin_token)
    serve(app, host, port, header_timeout=header_timeout, certfile=certfile, keyfile=keyfile)
    return 0


def _with_admin(app: Any, realtimes: list[Any], token: str) -> Any:
    """``--admin-token``: the admin page of the application's one `Realtime` at ``/admin``, in front of ``app``."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    if len(realtimes) != 1:
        raise SystemExit(
            f"rtgevent: --admin-token needs exactly one Realtime in the application, found {len(realtimes)}"
        )
    return DispatcherMiddleware(app, {"/admin": realtimes[0].admin_app(token)})


def _connect(rt: Any, broker: str | None, presence: str | None, history: str | None = None) -> None:
    """Apply ``--broker`` / ``--presence`` / ``--history`` to a Realtime built with the in-process defaults."""
    from .broker import broker_from_url
    from .history import history_from_url
    from .presence import presence_from_url

    # only the in-process defaults are replaced: an application that chose a broker keeps it
    if broker and not getattr(rt.broker, "shared", True):
        rt.broker = broker_from_url(broker)
    if presence and not getattr(rt.presence, "shared", True):
        rt.presence = presence_from_url(presence, ttl=rt.config.presence_ttl)
    if history and not getattr(rt.history, "shared", True):
        rt.history = history_from_url(history)


def _data(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text  # not JSON: send the text as a string


#: the commands that run an `Emitter`
_EMITTER_VERBS = ("send", "broadcast", "online", "sessions", "kick", "publish", "members")


def _emit(args: argparse.Namespace) -> int:
    """The Emitter verbs: what they did on stdout; on failure one clear line on stderr, a non-zero exit."""
    from .emitter import Emitter
    from .errors import RealtimeError

    broker, presence = args.broker, args.presence
    # publish needs only the broker, members only presence: the other one is in-process
    if args.command == "publish":
        presence = presence or "memory://"
    elif args.command == "members":
        broker = broker or "memory://"
    if not broker or not presence:
        flags = [flag for flag, url in (("--broker", broker), ("--presence", presence)) if not url]
        names = [f"RTGEVENT_{flag[2:].upper()}_URL" for flag in flags]
        verb = "is" if len(flags) == 1 else "are"
        print(f"rtgevent: {' and '.join(flags)} (or {' / '.join(names)}) {verb} required", file=sys.stderr)
        return 2
    try:
        with Emitter(broker, presence, namespace=args.namespace) as emitter:
            if args.command == "send":
                nodes = emitter.send_to_identity(args.tenant, args.identity, args.route, _data(args.data))
                print(f"sent to {args.tenant}/{args.identity} on {nodes} node(s)")
            elif args.command == "broadcast":
                emitter.broadcast(args.route, _data(args.data))
                print("broadcast sent")
            elif args.command == "online":
                online = emitter.is_online(args.tenant, args.identity)
                print("online" if online else "offline")
                return 0 if online else 1
            elif args.command == "sessions":
                for info in emitter.get_identity_sessions(args.tenant, args.identity):
                    print(json.dumps(info.to_json()))
            elif args.command == "kick":
                nodes = emitter.kick_identity(args.tenant, args.identity, args.code, args.reason)
                print(f"kicked {args.tenant}/{args.identity} on {nodes} node(s)")
            elif args.command == "publish":
                emitter.publish(args.channel, args.route, _data(args.data))
                print(f"published to {args.channel}")
            elif args.command == "members":
                members = emitter.channel_members(args.channel)
                for info in members:  # oldest first, as presence lists them
                    print(f"{info.session_id} {info.tenant_id}/{info.identity_id} {info.node_id}")
                print(f"{len(members)} member(s)")
    except RealtimeError as exc:
        print(str(exc).splitlines()[0], file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rtgevent", description="realtime WebSocket gateway on gevent")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a Flask app or a Realtime with gevent")
    serve.add_argument("app", help="MODULE:APP")
    serve.add_argument("--bind", default="127.0.0.1:8000")
    serve.add_argument("--certfile")
    serve.add_argument("--keyfile")
    serve.add_argument(
        "--broker",
        default=os.environ.get("RTGEVENT_BROKER_URL"),
        help="broker URL (amqp://, redis://, redis+cluster://)",
    )
    serve.add_argument(
        "--presence", default=os.environ.get("RTGEVENT_PRESENCE_URL"), help="presence URL (redis://, redis+cluster://)"
    )
    serve.add_argument(
        "--history",
        default=os.environ.get("RTGEVENT_HISTORY_URL"),
        help="history URL (redis://, redis+cluster://), for recovery",
    )
    serve.add_argument(
        "--admin-token",
        default=os.environ.get("RTGEVENT_ADMIN_TOKEN"),
        help="serve the admin page at /admin behind this token (better: RTGEVENT_ADMIN_TOKEN, not seen in ps)",
    )
    serve.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds a client may take to send its request headers"
    )
    demo = sub.add_parser("demo", help="run the demo page, with embedded defaults")
    demo.add_argument("--bind", default="127.0.0.1:8000")
    for verb, text in [
        ("send", "send to every live session of an identity"),
        ("broadcast", "send to every session of every node"),
        ("online", "is the identity online? (exit 1 when not)"),
        ("sessions", "the identity's live sessions, one JSON line each"),
        ("kick", "close every live session of an identity"),
        ("publish", "send to every subscriber of a channel on every node (needs only --broker)"),
        ("members", "a channel's members, one line each, then their count (needs only --presence)"),
    ]:
        cmd = sub.add_parser(verb, help=text)
        cmd.add_argument("--broker", default=os.environ.get("RTGEVENT_BROKER_URL"))
        cmd.add_argument("--presence", default=os.environ.get("RTGEVENT_PRESENCE_URL"))
        cmd.add_argument("--namespace", default="rtgevent")
        if verb in ("publish", "members"):
            cmd.add_argument("channel")
        elif verb != "broadcast":
            cmd.add_argument("tenant")
            cmd.add_argument("identity")
        if verb in ("send", "broadcast", "publish"):
            cmd.add_argument("route")
            cmd.add_argument("data", nargs="?", help="JSON (or plain text)")
        if verb == "kick":
            cmd.add_argument("--code", type=int, default=1008)
            cmd.add_argument("--reason", default="kicked")
    args = parser.parse_args(argv)
    if args.command in _EMITTER_VERBS:
        return _emit(args)  # synchronous: no gevent, no monkey-patching
    _patch()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return _serve(
            load_app(args.app),
            args.bind,
            args.certfile,
            args.keyfile,
            args.header_timeout,
            args.broker,
            args.presence,
            args.history,
            args.admin_token,
        )
    from .demo import make_demo_app

    app = make_demo_app()
    print(f"rtgevent demo: open http://{args.bind}/ in a browser", flush=True)
    return _serve(app, args.bind, None, None, 10.0)

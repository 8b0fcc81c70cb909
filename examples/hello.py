"""The README's first example: a chat route, a welcome on connect, served by `rtgevent.serve`.

Run it::

    python examples/hello.py                    # ws://127.0.0.1:8000/
    python examples/hello.py 0.0.0.0:8080

`rtgevent.serve` is gevent's pywsgi with what a bare ``WSGIServer`` lacks: a client that
takes more than ``header_timeout`` seconds to send its request headers is dropped (a
slowloris cannot hold sockets open), SIGTERM closes every session with 1001, and tokens
stay out of the access log.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from rtgevent import Config, Realtime, serve  # noqa: E402

rt = Realtime(Config(origin_patterns=["app.example.com"]))


@rt.route("chat.send")
def chat_send(session, msg):
    rt.broadcast("chat.message", {"from": session.identity.id, "text": msg.data["text"]})
    return {"ok": True}  # sent back as the rt.reply to this request


@rt.on_connect
def hello(session):
    session.send("welcome", {"session": session.id})


if __name__ == "__main__":
    host, _, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8000").rpartition(":")
    serve(rt, host, int(port))

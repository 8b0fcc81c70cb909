"""Two (or more) servers sharing Redis or RabbitMQ: a Flask app any node of which reaches everyone.

Each node is the same app; the broker and presence come from the environment::

    export RTGEVENT_BROKER_URL=redis://127.0.0.1:6379/0      # or amqp://guest:guest@127.0.0.1//
    export RTGEVENT_PRESENCE_URL=redis://127.0.0.1:6379/0
    rtgevent serve examples.multinode.app:app --bind 127.0.0.1:8001 &
    rtgevent serve examples.multinode.app:app --bind 127.0.0.1:8002 &

A client connects to either node with ``ws://HOST:PORT/ws?access_token=<user>`` (the token is
the user's name: an example, not an authentication scheme); a POST to ``/notify`` on any node
(form fields ``user`` and ``text``) reaches every live connection of that user, wherever it is.
Under gunicorn, see examples/gunicorn/.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify, request

from rtgevent import BearerTokenAuthenticator, Config, Identity, Message, Realtime, Session, SessionClosed
from rtgevent.broker import broker_from_url
from rtgevent.presence import presence_from_url

TENANT = "example"


def create_app() -> Flask:
    namespace = os.environ.get("RTGEVENT_NAMESPACE", "rtgevent")
    broker_url = os.environ.get("RTGEVENT_BROKER_URL", "redis://127.0.0.1:6379/0")
    presence_url = os.environ.get("RTGEVENT_PRESENCE_URL", "redis://127.0.0.1:6379/0")
    rt = Realtime(
        Config(),
        authenticator=BearerTokenAuthenticator(lambda token: Identity(token, tenant_id=TENANT)),
        broker=broker_from_url(broker_url, namespace=namespace),
        presence=presence_from_url(presence_url, namespace=namespace),
    )

    @rt.route("whoami")
    def whoami(session: Session, msg: Message) -> Any:
        return {"user": session.identity.id, "node": rt.node_id, "pid": os.getpid()}

    app = Flask(__name__)
    rt.init_app(app, path="/ws")

    @app.post("/notify")
    def notify() -> Any:
        try:
            rt.send_to_identity(TENANT, request.form["user"], "notice", {"text": request.form.get("text", "")})
        except SessionClosed:
            return jsonify(ok=False, error="offline", pid=os.getpid()), 404
        return jsonify(ok=True, node=rt.node_id, pid=os.getpid())

    @app.get("/online/<user>")
    def online(user: str) -> Any:
        return jsonify(online=rt.is_online(TENANT, user), pid=os.getpid())

    return app


app = create_app()

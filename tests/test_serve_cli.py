"""``rtgevent serve --broker --presence``: an application built with the in-process defaults joins a cluster."""

from __future__ import annotations

import json
import uuid

import websocket

from rtgevent import Emitter
from tests.procs import ServeProcess
from tests.services import LiveServices
from tests.waiting import WAIT, wait_until


def test_serve_flags_put_a_default_app_on_the_shared_broker_and_presence(live: LiveServices) -> None:
    """A send_to_identity from another process reaches a client of an app that named no broker."""
    db = "redis://127.0.0.1:6379/12"
    live.require(db)
    node = ServeProcess(
        "tests.app:app_from_env()", "--broker", db, "--presence", db, env={"RTG_TEST_CONFIG": json.dumps({})}
    )
    ws = websocket.create_connection(f"{node.ws_base}/ws", timeout=WAIT)
    emitter = Emitter(db, db)
    try:
        wait_until(lambda: emitter.is_online("", "anonymous"), "the session to be in the shared presence")
        text = f"hello {uuid.uuid4().hex}"
        assert emitter.send_to_identity("", "anonymous", "note", text) == 1
        assert json.loads(ws.recv()) == {"route": "note", "data": text}
    finally:
        ws.close()
        emitter.close()
        node.stop()

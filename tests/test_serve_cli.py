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


def test_serve_history_flag_keeps_personal_streams_in_the_shared_store(live: LiveServices) -> None:
    """With ``--history``, what an Emitter sent while the client was away comes back on reconnect:
    the node reads the same Redis streams the Emitter appended to."""
    db = "redis://127.0.0.1:6379/12"
    live.require(db)
    config = {"codec": "json", "identity_history_size": 10, "identity_history_ttl": 60}
    node = ServeProcess(
        "tests.app:app_from_env()",
        *("--broker", db, "--presence", db, "--history", db),
        env={"RTG_TEST_CONFIG": json.dumps(config)},
    )
    emitter = Emitter(db, db, history_url=db, identity_history_size=10, identity_history_ttl=60)
    identity = f"anon-{uuid.uuid4().hex[:8]}"
    try:
        ws = websocket.create_connection(f"{node.ws_base}/ws", timeout=WAIT)
        start = json.loads(ws.recv())
        assert start["route"] == "rt.personal"
        ws.close()
        texts = [f"away {n} {identity}" for n in range(3)]
        for text in texts:
            emitter.send_to_identity("", "anonymous", "note", text)
        since = f"{start['data']['offset']}:{start['data']['epoch']}"
        ws = websocket.create_connection(f"{node.ws_base}/ws?since={since}", timeout=WAIT)
        got = [json.loads(ws.recv()) for _ in range(4)]
        assert [m["data"] for m in got[:3]] == texts
        assert got[3]["route"] == "rt.personal" and got[3]["data"]["recovered"] is True
        ws.close()
    finally:
        emitter.close()
        node.stop()

"""Native OS threads in the gateway process: the four operations and Session.send are handed to the hub."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import websocket
from gevent import monkey

from rtgevent import BearerTokenAuthenticator, Config, Identity, Realtime, Session
from tests.conftest import Server
from tests.waiting import WAIT, wait_until

start_native_thread = monkey.get_original("_thread", "start_new_thread")
allocate_native_lock = monkey.get_original("_thread", "allocate_lock")
THREADS, PER_THREAD = 8, 50


def test_native_threads_deliver_without_hub_errors(serve_realtime: Callable[[Any], Server], capfd: Any) -> None:
    """8 OS threads call send_to_identity, broadcast, is_online, get_identity_sessions and Session.send."""
    rt = Realtime(Config(), authenticator=BearerTokenAuthenticator(lambda t: Identity(t, tenant_id="acme")))
    sessions: dict[str, Session] = {}

    @rt.on_connect
    def remember(session: Session) -> None:
        sessions[session.identity.id] = session

    server = serve_realtime(rt)
    alice = websocket.create_connection(f"ws://{server.host}:{server.port}/?access_token=alice", timeout=WAIT)
    bob = websocket.create_connection(f"ws://{server.host}:{server.port}/?access_token=bob", timeout=WAIT)
    wait_until(lambda: len(sessions) >= 2, "both sessions to connect")
    errors: list[BaseException] = []
    done = [allocate_native_lock() for _ in range(THREADS)]
    for lock in done:
        lock.acquire()

    def worker(n: int) -> None:
        try:
            for i in range(PER_THREAD):
                rt.send_to_identity("acme", "alice", "t", [n, i])
                sessions["bob"].send("t", [n, i])
                assert rt.is_online("acme", "alice")
                assert len(rt.get_identity_sessions("acme", "bob")) == 1
            rt.broadcast("done", n)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done[n].release()

    for n in range(THREADS):
        start_native_thread(worker, (n,))
    for ws in (alice, bob):
        seen: dict[int, int] = {}
        finished = 0
        while finished < THREADS:
            msg = json.loads(ws.recv())
            if msg["route"] == "done":
                finished += 1
                continue
            n, i = msg["data"]
            assert i == seen.get(n, -1) + 1  # each thread's order is kept
            seen[n] = i
        assert seen == {n: PER_THREAD - 1 for n in range(THREADS)}
    running = list(done)

    def all_finished() -> bool:
        running[:] = [lock for lock in running if not lock.acquire(False)]
        return not running

    wait_until(all_finished, "every thread to finish")
    assert errors == []
    alice.close()
    bob.close()
    err = capfd.readouterr().err
    assert "cannot switch" not in err and "Traceback" not in err

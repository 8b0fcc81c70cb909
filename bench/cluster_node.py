"""One gateway node of the ``cluster`` and ``emitter`` scenarios, served by ``rtgevent serve``.

Run as its own process (the driver pins it to CPU 0)::

    RTG_BENCH_NODE='{"broker": URL, "presence": URL, "namespace": NS}' \\
        python -m rtgevent serve 'bench.cluster_node:make_node()' --bind 127.0.0.1:0

A `Realtime` with the default `Config`, a real broker and `RedisPresence`, both in the
namespace ``NS`` (unique per run).  Clients authenticate with ``?access_token=<identity>``
(tenant ``bench``) and may ask route ``whoami`` to learn that they are registered in the hub
and in presence.  Besides the WebSocket, plain HTTP on ``/_bench/...`` (127.0.0.1 only):

* ``GET /_bench/send?count=N&rate=R&start=S&time_limit=T[&identity=I&route=t]``: call
  ``rt.send_to_identity("bench", I, route, {"sent": time.time(), "n": S + i})`` for i in
  range(N), serially in the request's greenlet: paced at R per second (the i-th call is due
  ``i / R`` s after the first), or as fast as possible with R = 0; never past T seconds.
  Answers ``{"sent", "errors", "started", "elapsed", "call_p50_ms", "call_p99_ms", "call_max_ms"}``
  once the loop is over (``started``: wall clock of the first call, for the client's rate;
  ``call_*``: how long one ``send_to_identity`` call took).
* ``GET /_bench/stats``: ``rt.stats()`` plus ``node`` (this node's id) and ``queue`` (its
  KombuBroker queue, or null).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import gevent

from bench.common import call_figures, with_control
from rtgevent import BearerTokenAuthenticator, Config, Identity, Message, Realtime, Session
from rtgevent.broker import broker_from_url
from rtgevent.errors import RealtimeError
from rtgevent.presence import presence_from_url

TENANT = "bench"
#: bound on one /_bench/send loop whatever the request asks, seconds
MAX_SEND_SECONDS = 120.0
MAX_SEND_COUNT = 1_000_000


def send_loop(
    rt: Realtime, identity: str, route: str, count: int, rate: float, start: int, time_limit: float
) -> dict[str, Any]:
    """``count`` calls of ``rt.send_to_identity``, paced at ``rate`` (0: flat out), within ``time_limit``."""
    errors: dict[str, int] = {}
    sent = 0
    durations: list[float] = []
    perf = time.perf_counter
    t0 = perf()
    deadline = t0 + min(time_limit, MAX_SEND_SECONDS)
    started = time.time()
    for i in range(min(count, MAX_SEND_COUNT)):
        now = perf()
        if now >= deadline:
            break
        if rate > 0:
            due = t0 + i / rate
            if due > now:
                gevent.sleep(due - now)
        try:
            t1 = perf()
            rt.send_to_identity(TENANT, identity, route, {"sent": time.time(), "n": start + i})
            durations.append(perf() - t1)
            sent += 1
        except RealtimeError as exc:
            key = f"{type(exc).__name__}: {str(exc)[:80]}"
            errors[key] = errors.get(key, 0) + 1
    elapsed = perf() - t0
    return {"sent": sent, "errors": errors, "started": started, "elapsed": elapsed, **call_figures(sorted(durations))}


def make_node() -> Callable[..., Iterable[bytes]]:
    spec = json.loads(os.environ["RTG_BENCH_NODE"])
    namespace = spec["namespace"]
    rt = Realtime(
        Config(),
        authenticator=BearerTokenAuthenticator(lambda token: Identity(token, tenant_id=TENANT)),
        broker=broker_from_url(spec["broker"], namespace=namespace),
        presence=presence_from_url(spec["presence"], namespace=namespace),
    )

    @rt.route("whoami")
    def whoami(session: Session, msg: Message) -> Any:
        return {"identity": session.identity.id, "node": rt.node_id}

    def control(action: str, q: dict[str, str]) -> Any:
        if action == "send":
            return send_loop(
                rt,
                q.get("identity", "target"),
                q.get("route", "t"),
                int(q["count"]),
                float(q.get("rate", "0")),
                int(q.get("start", "0")),
                float(q.get("time_limit", "30")),
            )
        if action == "stats":
            # queue: KombuBroker's per-node queue, for the driver's clean-up after a crash
            return {"node": rt.node_id, "queue": getattr(rt.broker, "queue_name", None), **rt.stats()}
        return {"error": f"unknown action {action!r}"}

    return with_control(rt, control)

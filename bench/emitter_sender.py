"""The sender of the ``emitter`` scenario: `rtgevent.Emitter` from plain OS threads, no gevent.

Run as its own process (the driver pins it to CPU 1)::

    python -m bench.emitter_sender BROKER_URL PRESENCE_URL NAMESPACE --threads 8 --identities t0 ... t7

One `Emitter` shared by ``--threads`` threads, as a thread pool of legacy code would use it.
Driver protocol (one line in, one JSON line out)::

    -> {"event": "ready"}
    <- run START COUNT RATE TIME_LIMIT
    -> {"event": "done", "sent", "errors", "started", "elapsed", "call_p50_ms", "call_p99_ms", "call_max_ms"}
    <- close
    -> {"event": "closed", "gevent_free": true}

``run``: message g in range(COUNT) goes from thread ``g % threads`` to identity
``identities[thread % len(identities)]`` as ``send_to_identity("bench", identity, "t",
{"sent": time.time(), "n": START + g})``; with RATE > 0 message g is due ``g / RATE`` s after
the start (the threads interleave, RATE is the total), with RATE = 0 every thread sends as fast
as it can.  No thread goes on past TIME_LIMIT seconds.  A thread's messages to its identity
carry increasing n, so the client can check that their order was kept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

from bench.common import call_figures
from rtgevent import Emitter

TENANT = "bench"


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def run_phase(
    emitter: Emitter, threads: int, identities: list[str], start: int, count: int, rate: float, time_limit: float
) -> dict[str, Any]:
    errors: dict[str, int] = {}
    sent = [0] * threads
    calls: list[list[float]] = [[] for _ in range(threads)]  # seconds per send_to_identity call
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)
    t0 = [0.0]

    def work(t: int) -> None:
        identity = identities[t % len(identities)]
        perf, now_, send, took = time.perf_counter, time.time, emitter.send_to_identity, calls[t].append
        barrier.wait(30)
        begin = t0[0]
        deadline = begin + time_limit
        for g in range(t, count, threads):
            now = perf()
            if now >= deadline:
                break
            if rate > 0:
                due = begin + g / rate
                if due > now:
                    time.sleep(due - now)
            try:
                t1 = perf()
                send(TENANT, identity, "t", {"sent": now_(), "n": start + g})
                took(perf() - t1)
                sent[t] += 1
            except Exception as exc:  # counted and reported: a benchmark must not stop at one failure
                key = f"{type(exc).__name__}: {str(exc)[:80]}"
                with lock:
                    errors[key] = errors.get(key, 0) + 1

    workers = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    started = time.time()
    t0[0] = time.perf_counter()
    barrier.wait(30)
    for w in workers:
        w.join(time_limit + 60)
    elapsed = time.perf_counter() - t0[0]
    stuck = sum(1 for w in workers if w.is_alive())
    if stuck:
        errors[f"thread stuck past the time limit (x{stuck})"] = stuck
    durations = sorted(d for per_thread in calls for d in per_thread)
    return {"sent": sum(sent), "errors": errors, "started": started, "elapsed": elapsed, **call_figures(durations)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.emitter_sender", description=__doc__.split("\n\n")[0])
    parser.add_argument("broker")
    parser.add_argument("presence")
    parser.add_argument("namespace")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--identities", nargs="+", required=True)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on the whole process")
    args = parser.parse_args(argv)
    watchdog = threading.Timer(args.max_seconds, os._exit, (3,))  # never outlive a lost driver
    watchdog.daemon = True
    watchdog.start()

    emitter = Emitter(args.broker, args.presence, namespace=args.namespace)
    try:
        emit("ready")
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "run":
                start, count, rate, limit = int(words[1]), int(words[2]), float(words[3]), float(words[4])
                emit("done", **run_phase(emitter, args.threads, args.identities, start, count, rate, limit))
            elif words[0] == "close":
                break
    finally:
        emitter.close()
    emit("closed", gevent_free="gevent" not in sys.modules)
    return 0


if __name__ == "__main__":
    sys.exit(main())

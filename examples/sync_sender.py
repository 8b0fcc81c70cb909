"""Reach a user's live connections from plain synchronous code: no gevent, no server.

    export RTGEVENT_BROKER_URL=redis://127.0.0.1:6379/0
    export RTGEVENT_PRESENCE_URL=redis://127.0.0.1:6379/0
    python examples/sync_sender.py alice "your invoice is paid"

Exit status 0 when delivered to at least one node, 1 when the user is offline, 2 when the
broker or Redis does not answer.  Works from threads, cron jobs, Celery or Django workers.
"""

from __future__ import annotations

import os
import sys

from rtgevent import BrokerUnavailable, Emitter, SessionClosed


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: sync_sender.py USER TEXT", file=sys.stderr)
        return 64
    user, text = argv
    emitter = Emitter(
        os.environ.get("RTGEVENT_BROKER_URL", "redis://127.0.0.1:6379/0"),
        os.environ.get("RTGEVENT_PRESENCE_URL", "redis://127.0.0.1:6379/0"),
        namespace=os.environ.get("RTGEVENT_NAMESPACE", "rtgevent"),
    )
    with emitter:
        try:
            nodes = emitter.send_to_identity("example", user, "notice", {"text": text})
        except SessionClosed:
            print(f"{user} is offline")
            return 1
        except BrokerUnavailable as exc:
            print(exc, file=sys.stderr)
            return 2
    print(f"delivered to {user} on {nodes} node(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

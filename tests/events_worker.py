"""A synchronous backend worker: consumes gateway events, answers orders through the Emitter.

Usage: python -m tests.events_worker AMQP_URL QUEUE BROKER PRESENCE NAMESPACE LIMIT
Prints one JSON line per event; answers ``order.create`` messages with ``order.created``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rtgevent import Emitter
from rtgevent.events import consume


def main() -> int:
    url, queue, broker, presence, namespace, limit = sys.argv[1:]
    emitter = Emitter(broker, presence, namespace=namespace)

    def handle(event: dict[str, Any]) -> None:
        print(json.dumps(event), flush=True)
        if event["type"] == "message" and event["route"] == "order.create":
            emitter.send_to_identity(event["tenant"], event["identity"], "order.created", event["data"])

    consume(url, queue, handle, limit=int(limit), idle_timeout=60)
    emitter.close()
    assert "gevent" not in sys.modules
    return 0


if __name__ == "__main__":
    sys.exit(main())

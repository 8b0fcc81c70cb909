"""gunicorn integration: ``gunicorn -c python:rtgevent.gunicorn -k gevent app:app``.

gunicorn's graceful stop (SIGTERM, and the old workers after a SIGHUP reload) only stops
accepting and waits ``graceful_timeout`` for requests to end; a WebSocket never ends by
itself, so every client would lose TCP without a close frame when the timeout hits.
This module's worker hook closes every session of the worker with 1001 ("going away")
the moment the signal arrives, so clients reconnect to a live worker at once.

``max_requests`` does not apply to pywsgi-based workers (``-k gevent_pywsgi``,
``GeventWebSocketWorker``): they never count requests.  Use it with ``-k gevent`` only.

Import this module as a gunicorn config (``-c python:rtgevent.gunicorn``) or call
`install_drain` from your own ``post_worker_init``.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

__all__ = ["drain_all", "install_drain", "post_worker_init"]


def drain_all(timeout: float | None = None) -> None:
    """Shut down every `Realtime` of this process (1001 to each session)."""
    from .realtime import instances

    for rt in list(instances):
        rt.shutdown(timeout)


def install_drain(worker: Any) -> None:
    """Chain a drain in front of the worker's SIGTERM / SIGQUIT / SIGINT handlers."""
    import gevent

    def chained(original: Any) -> Any:
        def handler(signum: int, frame: FrameType | None) -> None:
            gevent.spawn(drain_all)  # never block inside a signal handler
            original(signum, frame)

        return handler

    signal.signal(signal.SIGTERM, chained(worker.handle_exit))
    quit_handler = chained(worker.handle_quit)
    signal.signal(signal.SIGQUIT, quit_handler)
    signal.signal(signal.SIGINT, quit_handler)


def post_worker_init(worker: Any) -> None:
    """gunicorn server hook (this module used as a config file)."""
    install_drain(worker)

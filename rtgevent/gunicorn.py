"""gunicorn integration: ``gunicorn -c python:rtgevent.gunicorn -k gevent app:app``.

gunicorn's graceful stop (SIGTERM, and the old workers after a SIGHUP reload) only stops
accepting and waits ``graceful_timeout`` for requests to end; a WebSocket never ends by
itself, so every client would lose TCP without a close frame when the timeout hits.
rtgevent closes every session of the worker with 1001 ("going away") the moment the
signal arrives, so clients reconnect to a live worker at once.  This happens without any
configuration: on a worker's first WebSocket request the `Realtime` finds the worker and
chains its stop signals (`rtgevent.node.drain_on_worker_stop`).  This module's
``post_worker_init`` hook does the same as soon as the worker boots, for every
`Realtime` of the process.

Access logs: browsers cannot set headers on a WebSocket, so tokens travel in the query
string (``/ws?access_token=...``).  This module sets ``logger_class`` to `RedactingLogger`,
gunicorn's logger with the values of token-like query parameters (and ``Bearer`` tokens)
replaced by ``[redacted]`` in every access and error line.  Without the config module:
``--logger-class rtgevent.gunicorn.RedactingLogger``.

``max_requests`` does not apply to pywsgi-based workers (``-k gevent_pywsgi``,
``GeventWebSocketWorker``): they never count requests.  Use it with ``-k gevent`` only.

Import this module as a gunicorn config (``-c python:rtgevent.gunicorn``) or call
`install_drain` from your own ``post_worker_init``.  It imports neither gevent nor
gunicorn at import time: gunicorn's master loads it before forking.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

__all__ = [
    "REDACTED",
    "RedactTokens",
    "drain_all",
    "install_drain",
    "logger_class",
    "post_worker_init",
    "redact_tokens",
]

REDACTED = "[redacted]"

#: a query parameter (or ``name=value`` pair) whose name says it holds a credential
_PARAM = re.compile(r"""(^|[?&;\s"'])([^=&;#\s"'?]+)=([^&;#\s"']*)""")
_SECRET_NAME = re.compile(
    r"token|secret|passw|pwd|jwt|auth|api[_-]?key|apikey|signature|credential|^sig$|^key$|^code$", re.IGNORECASE
)
_BEARER = re.compile(r"\b(bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def _redact_param(match: re.Match[str]) -> str:
    lead, name, value = match.groups()
    if value and _SECRET_NAME.search(name.replace("%5F", "_").replace("%5f", "_")):
        return f"{lead}{name}={REDACTED}"
    return match.group(0)


def redact_tokens(text: str) -> str:
    """``text`` with the values of token-like parameters (``access_token``, ``token``, ``api_key``,
    ``password``, ...) and ``Bearer`` tokens replaced by ``[redacted]``: what a log line may show."""
    if "=" in text:
        text = _PARAM.sub(_redact_param, text)
    if "earer" in text:
        text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return text


class RedactTokens(logging.Filter):
    """A logging filter: every record it passes has its tokens redacted (`redact_tokens`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True  # a broken record is logging's to report, not ours
        clean = redact_tokens(text)
        if clean != text:
            record.msg, record.args = clean, None
        return True


_FILTER = RedactTokens()


@functools.cache
def _redacting_logger() -> type:
    from gunicorn.glogging import Logger

    class RedactingLogger(Logger):  # type: ignore[misc]
        """gunicorn's logger with tokens redacted from every access and error line."""

        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for log in (self.error_log, self.access_log):
                if _FILTER not in log.filters:
                    log.addFilter(_FILTER)

    RedactingLogger.__module__ = __name__
    return RedactingLogger


def __getattr__(name: str) -> Any:
    # gunicorn is optional: the logger class exists once gunicorn can be imported
    if name == "RedactingLogger":
        return _redacting_logger()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: gunicorn setting (this module used as a config file): access and error logs without tokens
logger_class = f"{__name__}.RedactingLogger"


def drain_all(timeout: float | None = None) -> None:
    """Shut down every `Realtime` of this process (1001 to each session)."""
    from .realtime import instances

    for rt in list(instances):
        rt.shutdown(timeout)


def install_drain(worker: Any) -> None:
    """Chain a drain of every `Realtime` in front of the worker's SIGTERM / SIGQUIT / SIGINT handlers."""
    from .node import drain_on_worker_stop

    drain_on_worker_stop(worker, drain_all)


def post_worker_init(worker: Any) -> None:
    """gunicorn server hook (this module used as a config file)."""
    install_drain(worker)

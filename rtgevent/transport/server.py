"""The gevent WSGI server behind ``rtgevent serve`` and ``rtgevent demo``.

gevent's pywsgi waits forever for a request's headers, so a client that opens a
connection and dribbles its upgrade request one byte a minute holds a greenlet and a
socket indefinitely (a slowloris).  `HeaderTimeoutHandler` bounds the request line and
headers, and the idle time between keep-alive requests, by ``header_timeout``; the
application's own run time is not bounded (a WebSocket session lasts as long as it lasts).

Its access and error lines go through `rtgevent.gunicorn.redact_tokens`: a browser's
WebSocket carries its token in the query string (``/ws?access_token=...``), and a log file
is no place for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gevent import Timeout
from gevent.pywsgi import WSGIHandler, WSGIServer

from ..gunicorn import redact_tokens

__all__ = ["HEADER_TIMEOUT", "HeaderTimeoutHandler", "make_server", "parse_bind"]

HEADER_TIMEOUT = 10.0


class HeaderTimeoutHandler(WSGIHandler):  # type: ignore[misc]
    header_timeout = HEADER_TIMEOUT
    _header_timer: Timeout | None = None

    def handle_one_request(self) -> Any:
        # A socket error ends the connection quietly in pywsgi (no 500, no traceback).
        timer = Timeout.start_new(self.header_timeout, TimeoutError("request header timeout"))
        self._header_timer = timer
        try:
            return super().handle_one_request()
        finally:
            timer.close()

    def read_request(self, raw_requestline: str) -> Any:
        try:
            return super().read_request(raw_requestline)
        finally:
            if self._header_timer is not None:
                self._header_timer.close()  # headers are in: the application runs unbounded

    def format_request(self) -> str:
        """The access log line, with token-like query parameters redacted."""
        return redact_tokens(str(super().format_request()))

    def log_error(self, msg: str, *args: Any) -> None:
        """An error line (a bad request line quotes the request): tokens redacted too."""
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = f"{msg!r} {args!r}"
        super().log_error(redact_tokens(text))


#: the listen queue: a thousand clients reconnecting at once (a node restarted, a balancer
#: reloaded) must not have their handshakes dropped and retried a second later (the kernel
#: caps it at net.core.somaxconn)
BACKLOG = 2048


def parse_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"rtgevent: --bind wants HOST:PORT, got {bind!r}")
    return host.strip("[]"), int(port)


def make_server(
    app: Callable[..., Any],
    bind: str,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    log: Any = "default",
    header_timeout: float = HEADER_TIMEOUT,
) -> WSGIServer:
    ssl_args: dict[str, Any] = {}
    if certfile:
        ssl_args = {"certfile": certfile, "keyfile": keyfile or certfile}
    handler = type("HeaderTimeoutHandler", (HeaderTimeoutHandler,), {"header_timeout": header_timeout})
    return WSGIServer(parse_bind(bind), app, handler_class=handler, log=log, backlog=BACKLOG, **ssl_args)

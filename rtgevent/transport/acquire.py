"""Take the socket (and the bytes already read past the request) from the WSGI server.

Three servers hand a WebSocket upgrade to the application in three ways:

* gevent-websocket's ``WebSocketHandler`` (and its gunicorn ``GeventWebSocketWorker``) has
  already sent the 101 and puts its own ``WebSocket`` in ``environ["wsgi.websocket"]``:
  we use its handshake, never its frame code, and mark it closed so that it does not
  write a close frame of its own when the application returns.
* gevent's ``pywsgi`` (plain, or gunicorn ``-k gevent_pywsgi``) passes the connection's
  buffered reader as ``wsgi.input`` for upgrade requests; the 101 goes out through
  ``start_response`` so the server logs it and knows not to add a body.
* gunicorn ``-k gevent`` passes ``gunicorn.socket``; its parser's unreader holds what it
  read ahead.  We write the 101 ourselves and, when the session ends, mark gunicorn's
  response as sent and to be closed so it neither writes a status line nor reads a next
  request from the socket.

In every case a frame the client pipelined behind its upgrade request may already sit in
the server's buffer, so those bytes are taken first (``pending``) and fed to the frame
parser before the first ``recv`` (ARCHITECTURE.md, "Taking the socket").
"""

from __future__ import annotations

import dataclasses
import io
import socket
from collections.abc import Callable
from typing import Any

from .frames import close_frame
from .handshake import Accept, Refusal, headers_101, response_101

__all__ = ["Acquired", "acquire", "refuse", "uses_prior_handshake"]

StartResponse = Callable[..., Any]


@dataclasses.dataclass
class Acquired:
    sock: socket.socket
    #: bytes the server read past the upgrade request: the first bytes of the stream
    pending: bytes
    #: called once the session is over, just before the WSGI application returns
    release: Callable[[], None]


def uses_prior_handshake(environ: dict[str, Any]) -> bool:
    """True under gevent-websocket: the 101 is already sent, refusals must be close frames."""
    return environ.get("wsgi.websocket") is not None


def _drain_buffered(rfile: Any, sock: socket.socket) -> bytes:
    """Whatever ``rfile`` holds already, without waiting for the network; then close ``rfile``.

    From here on the session reads the socket directly.  Closing the buffered reader
    frees its 8 KiB buffer (a third of an idle session's memory) and tells pywsgi not to
    read a next request; the socket itself stays open (the server closes it).
    """
    previous = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        data = rfile.read1(1 << 16)
    except (OSError, ValueError):
        data = b""
    finally:
        sock.settimeout(previous)
    try:
        rfile.close()
    except OSError:
        pass
    return bytes(data or b"")


def _socket_of(rfile: Any) -> socket.socket | None:
    raw = getattr(rfile, "raw", None)
    sock = getattr(raw, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def acquire(environ: dict[str, Any], start_response: StartResponse, accept: Accept | None) -> Acquired:
    """Finish the upgrade on whichever server runs us and return the socket.

    ``accept`` is None only under gevent-websocket, where the 101 is already sent.
    Raises `RuntimeError` when the server gives the application no way to the socket
    (a server rtgevent does not support, or a middleware that hid ``wsgi.input``).
    """
    ws = environ.get("wsgi.websocket")
    if ws is not None:
        handler = ws.handler
        sock = handler.socket
        pending = _drain_buffered(handler.rfile, sock)

        def release_gws() -> None:
            ws.closed = True  # its close() would write a second, malformed close frame

        return Acquired(sock, pending, release_gws)

    assert accept is not None
    gsock = environ.get("gunicorn.socket")
    if gsock is not None:
        reader = getattr(environ.get("wsgi.input"), "reader", None)
        unreader = getattr(reader, "unreader", None)
        pending = unreader.take_buffered() if unreader is not None else b""
        gsock.sendall(response_101(accept))
        response = getattr(start_response, "__self__", None)

        def release_gunicorn() -> None:
            if response is not None:
                response.status = "101 Switching Protocols"
                response.status_code = 101
                response.headers_sent = True
                response.force_close()

        return Acquired(gsock, bytes(pending), release_gunicorn)

    rfile = environ.get("wsgi.input")
    rfile = getattr(rfile, "rfile", rfile)
    sock = _socket_of(rfile)
    if sock is None or not isinstance(rfile, io.BufferedReader):
        raise RuntimeError(
            "rtgevent: cannot reach the connection's socket; serve with gevent's pywsgi, "
            "gevent-websocket or gunicorn's gevent workers"
        )
    write = start_response("101 Switching Protocols", headers_101(accept))
    write(b"")  # flush the status line and headers now, before any frame
    pending = _drain_buffered(rfile, sock)
    return Acquired(sock, pending, _nothing)


def _nothing() -> None:
    pass


def refuse(
    environ: dict[str, Any],
    start_response: StartResponse,
    response: Refusal,
    close_code: int,
    reason: str,
) -> list[bytes]:
    """Turn an upgrade away: an HTTP answer, or a close frame where the 101 is already out.

    Under gevent-websocket the handshake happened before the application ran, so a
    refusal can only be a close frame sent before any message is read (SPEC section 4).
    """
    if not uses_prior_handshake(environ):
        start_response(response.status, list(response.headers))
        return [response.body]
    acquired = acquire(environ, start_response, None)
    try:
        acquired.sock.sendall(close_frame(close_code, reason))
    except OSError:
        pass
    finally:
        acquired.release()
    return []

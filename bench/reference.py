"""The reference server: the least a gevent WebSocket server can be, to measure rtgevent against.

gevent's ``pywsgi`` takes the upgrade request; websockets' sans-I/O ``ServerProtocol`` does
the handshake and the framing; every connection gets one reader (the request greenlet), one
writer and one heartbeat greenlet and a bounded queue, and a full queue closes it (1008).
No dispatch, no codec, no rooms, none of rtgevent's code: whatever separates rtgevent's
figures from these is what rtgevent's design costs, or saves, over the gevent ceiling.
Data frames received are echoed; `ReferenceServer.broadcast` queues a text to everyone.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from gevent.queue import Empty, Full, Queue
from websockets.extensions.permessage_deflate import enable_server_permessage_deflate
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import CLOSED
from websockets.server import ServerProtocol

QUEUE_SIZE = 256
HEARTBEAT = 30.0
WRITE_TIMEOUT = 10.0
#: queued to wake the writer when only the protocol's own output (a pong, a close) is due
FLUSH = None

Item = tuple[Opcode, bytes] | None


class Conn:
    """One connection: its protocol and socket, and the bounded queue its writer drains."""

    def __init__(self, protocol: ServerProtocol, sock: socket.socket) -> None:
        self.protocol, self.sock = protocol, sock
        self.queue: Queue[Item] = Queue(QUEUE_SIZE)
        self.waiting_pong = False

    def put(self, item: Item) -> None:
        try:
            self.queue.put_nowait(item)
        except Full:
            if item is not FLUSH:  # a flush can wait: a busy writer drains the protocol anyway
                self.protocol.fail(1008, "send queue full")

    def writer(self) -> None:
        """Frame everything queued, then write it with one ``sendall``, until the stream ends."""
        protocol = self.protocol
        while True:
            item = self.queue.get()
            while True:
                if item is not FLUSH and protocol.close_sent is None:
                    (protocol.send_text if item[0] is Opcode.TEXT else protocol.send_binary)(item[1])
                try:
                    item = self.queue.get_nowait()
                except Empty:
                    break
            chunks = protocol.data_to_send()
            how = socket.SHUT_WR if chunks and chunks[-1] == b"" else None  # b"": the protocol is done
            try:
                with gevent.Timeout(WRITE_TIMEOUT):
                    self.sock.sendall(b"".join(chunks))
            except (OSError, gevent.Timeout):
                how = socket.SHUT_RDWR  # a dead or stalled client: the reader sees the end, cleans up
            if how is not None:
                with contextlib.suppress(OSError):  # the client may be gone already
                    self.sock.shutdown(how)
                return

    def heartbeat(self) -> None:
        """Ping every `HEARTBEAT` seconds; close when the previous ping got no pong."""
        while self.protocol.state is not CLOSED:
            gevent.sleep(HEARTBEAT)
            if self.waiting_pong:
                self.protocol.fail(1011, "keepalive ping timeout")
            else:
                self.waiting_pong = True
                self.protocol.send_ping(b"")
            self.put(FLUSH)


class ReferenceServer:
    """The WSGI application: upgrades every request to a WebSocket and serves it until it ends."""

    def __init__(self, compression: bool = False, on_close: Callable[[int | None, str], None] | None = None) -> None:
        self.conns: set[Conn] = set()
        self.extensions = enable_server_permessage_deflate(None) if compression else None
        self.on_close = on_close

    def broadcast(self, text: str) -> None:
        item = (Opcode.TEXT, text.encode())
        for conn in list(self.conns):
            conn.put(item)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # pywsgi parsed the request already; the protocol is shown it as it came, so that it
        # handles the handshake exactly as websockets' own servers do and then parses frames
        query = environ.get("QUERY_STRING")
        target = environ.get("PATH_INFO", "/") + (f"?{query}" if query else "")
        fields = "".join(f"{k[5:].replace('_', '-')}: {v}\r\n" for k, v in environ.items() if k.startswith("HTTP_"))
        protocol = ServerProtocol(extensions=self.extensions)
        protocol.receive_data(f"GET {target} HTTP/1.1\r\n{fields}\r\n".encode("latin-1"))
        request = protocol.events_received()[0]
        assert isinstance(request, Request)
        response = protocol.accept(request)
        protocol.send_response(response)
        protocol.data_to_send()  # pywsgi writes the response itself
        status = f"{response.status_code} {response.reason_phrase}"
        if response.status_code != 101:
            start_response(status, list(response.headers.raw_items()))
            return [bytes(response.body)]
        start_response(status, list(response.headers.raw_items()))(b"")
        rfile = environ["wsgi.input"]  # for an upgrade, pywsgi passes the connection's reader itself
        sock: socket.socket = rfile.raw._sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(0.0)
        try:
            data = rfile.read1(1 << 16) or b""  # what pywsgi read past the request
        except OSError:
            data = b""
        sock.settimeout(None)
        rfile.close()  # pywsgi reads no next request from this socket
        conn = Conn(protocol, sock)
        greenlets = [gevent.spawn(conn.writer), gevent.spawn(conn.heartbeat)]
        self.conns.add(conn)
        try:
            while protocol.state is not CLOSED:
                if data:
                    protocol.receive_data(data)
                for frame in protocol.events_received():
                    assert isinstance(frame, Frame)  # the only events once the handshake is done
                    if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                        conn.put((frame.opcode, bytes(frame.data)))
                    elif frame.opcode is Opcode.PONG:
                        conn.waiting_pong = False
                conn.put(FLUSH)
                data = sock.recv(1 << 16)
                if not data:
                    protocol.receive_eof()
                    break
        except OSError:
            pass
        finally:
            self.conns.discard(conn)
            gevent.killall(greenlets)
            if self.on_close is not None:
                self.on_close(protocol.close_code, protocol.close_reason or "")
        return []

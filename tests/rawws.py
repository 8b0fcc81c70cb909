"""A deliberately minimal WebSocket client over a raw socket, for misbehaving on purpose.

It sends exactly the bytes a test asks for (unmasked frames, reserved bits, bad
opcodes, pipelined frames, dribbled headers) and reads frames back without answering
pings unless told to.  Real clients (websocket-client, websockets) cover the polite cases.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from typing import NamedTuple

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


class Frame(NamedTuple):
    fin: bool
    opcode: int
    payload: bytes
    #: the reserved bits (RSV1 is 4: a compressed message's first frame, RFC 7692)
    rsv: int = 0

    @property
    def close_code(self) -> int | None:
        if self.opcode != CLOSE:
            return None
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else 1005

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8", "replace")


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head.append(mbit | n)
    elif n < 1 << 16:
        head.append(mbit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mbit | 127)
        head += struct.pack("!Q", n)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    head += key
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask_fast(payload, key)
    return bytes(head) + masked


def _mask_fast(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


def upgrade_request(host: str, port: int, path: str = "/ws", *, headers: dict[str, str] | None = None) -> bytes:
    fields = {
        "Host": f"{host}:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    for key, value in (headers or {}).items():
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawClient:
    def __init__(self, host: str, port: int, path: str = "/ws", *, timeout: float = 20.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.host, self.port, self.path = host, port, path
        self.buf = b""
        self.status: int | None = None
        self.headers: dict[str, str] = {}

    def handshake(self, extra: bytes = b"", *, headers: dict[str, str] | None = None) -> int:
        """Send the upgrade request (plus ``extra`` bytes in the same write); read the response head."""
        self.sock.sendall(upgrade_request(self.host, self.port, self.path, headers=headers) + extra)
        return self.read_response_head()

    def read_response_head(self) -> int:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the response head")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        return self.status

    def read_body(self) -> bytes:
        length = int(self.headers.get("content-length", "0"))
        while len(self.buf) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        body, self.buf = self.buf[:length], self.buf[length:]
        return body

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self) -> Frame:
        b0, b1 = self._read_exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read_exact(8))[0]
        if b1 & 0x80:
            raise AssertionError("server frames must not be masked")
        return Frame(bool(b0 & 0x80), b0 & 0x0F, self._read_exact(n), (b0 >> 4) & 0x7)

    def recv_data(self, *, answer_pings: bool = True) -> Frame:
        """The next data or close frame (pings answered, pongs skipped)."""
        while True:
            f = self.recv_frame()
            if f.opcode == PING:
                if answer_pings:
                    self.send(frame(PONG, f.payload))
                continue
            if f.opcode == PONG:
                continue
            return f

    def expect_close(self) -> Frame:
        """Read until the close frame, skipping data; fail if TCP ends first."""
        while True:
            f = self.recv_frame()
            if f.opcode == CLOSE:
                return f

    def at_eof(self) -> bool:
        """True once the server has closed TCP; then closes our side too, as a polite client does."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        self.close()
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

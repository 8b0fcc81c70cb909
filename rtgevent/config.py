"""Runtime settings: the `Config` dataclass, the `Backpressure` enum, `Deflate`, validation.

Every field has a safe default so that ``Config()`` is production-safe on one node;
``None`` disables a limit or timer explicitly (never a magic zero, as in the Go seed's
``Disable*`` flags).  Invalid values raise `InvalidOption` naming the field at
construction, not at the first connection.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import uuid
from collections.abc import Mapping
from typing import Any

from .errors import InvalidOption
from .history.base import check_stream_bounds

__all__ = ["Backpressure", "Config", "Deflate"]


class Backpressure(enum.Enum):
    """What `Session.send` does when the session's send queue is full."""

    #: Close the slow consumer (1008 "send queue full", initiator ``backpressure``).
    CLOSE = "close"
    #: Drop the new message; `send` raises `BackpressureError`.
    DROP_NEWEST = "drop_newest"
    #: Drop the oldest queued message and queue the new one.
    DROP_OLDEST = "drop_oldest"


@dataclasses.dataclass(frozen=True)
class Deflate:
    """permessage-deflate settings (RFC 7692): how much zlib memory a connection may take.

    By default the server compresses every message on its own (``server_no_context_takeover``,
    as gorilla/websocket, hence Centrifugo, and uWebSockets' shared compressor do): its
    compressor lives only while a message is compressed, so an idle connection holds none.
    The client keeps its context unless ``client_no_context_takeover``: this server then keeps
    a decompressor per connection, sized by ``client_max_window_bits``.  What an idle
    connection that had carried a message cost more than one without compression (``python
    -m bench idle --compression``, about 19 KiB): about 105 KiB with zlib's own settings
    (15-bit windows, ``memLevel`` 8, both contexts kept), about 45 KiB with these windows and
    both contexts kept (64 KiB in all), and about 11 KiB with these defaults (30 KiB in all:
    the decompressor alone).

    ``server_max_window_bits``: this server's LZ77 window, 9 to 15.  The 101 always names it
    (a client asking for less gets less), so the client's decompressor can be as small.
    ``client_max_window_bits``: the window asked of a client that offers to limit its own,
    8 to 15; it sizes this server's decompressor.  None: do not ask.  A client that does not
    offer the parameter keeps 15, as RFC 7692 section 7.1.2.2 leaves it no other choice.
    ``memory_level``: zlib's ``memLevel``, 1 to 9: the compressor's hash table and buffers.
    ``server_no_context_takeover``: compress each message on its own (True, the default) or
    keep the compressor, and what it learnt of earlier messages, for the connection's life:
    short messages that repeat keys compress better, at the compressor's memory per connection.
    ``client_no_context_takeover``: ask the client to compress each message on its own too
    (RFC 7692 lets the server ask even if the client did not offer it), so that no
    decompressor is kept between messages either; off by default, since it costs the client's
    messages their compression across messages.
    """

    server_max_window_bits: int = 12
    client_max_window_bits: int | None = 12
    memory_level: int = 5
    server_no_context_takeover: bool = True
    client_no_context_takeover: bool = False

    def __post_init__(self) -> None:
        # zlib cannot make a raw deflate stream with an 8-bit window (websockets refuses it too)
        _int_in(self.server_max_window_bits, "server_max_window_bits", 9, 15)
        if self.client_max_window_bits is not None:
            _int_in(self.client_max_window_bits, "client_max_window_bits", 8, 15)
        for name in ("server_no_context_takeover", "client_no_context_takeover"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidOption("compression", f"{name} must be True or False, got {getattr(self, name)!r}")
        _int_in(self.memory_level, "memory_level", 1, 9)

    @classmethod
    def of(cls, value: bool | Deflate | Mapping[str, Any]) -> Deflate | None:
        """The settings ``Config.compression`` stands for: None when off, the defaults for True."""
        if isinstance(value, Deflate):
            return value
        if value is True:
            return cls()
        if value is False:
            return None
        if isinstance(value, Mapping):
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(str(k) for k in value if k not in names)
            if unknown:
                raise InvalidOption("compression", f"unknown setting(s) {', '.join(unknown)}; known: {sorted(names)}")
            return cls(**value)
        raise InvalidOption("compression", f"expected a bool, a Deflate or a mapping of its fields, got {value!r}")


def _int_in(value: object, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidOption("compression", f"{name} must be an integer from {low} to {high}, got {value!r}")


_SESSION_POLICIES = ("multi", "replace")
_DURATIONS = (
    "heartbeat_interval",
    "pong_timeout",
    "write_timeout",
    "shutdown_timeout",
    "auth_timeout",
    "presence_ttl",
)


def _new_node_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclasses.dataclass
class Config:
    """Settings of one `Realtime`; see SPEC section 3 for each field."""

    heartbeat_interval: float | None = 30.0
    pong_timeout: float | None = 10.0
    write_timeout: float | None = 10.0
    read_limit: int = 1 << 20
    send_queue_size: int = 256
    backpressure: Backpressure = Backpressure.CLOSE
    shutdown_timeout: float | None = 10.0
    auth_timeout: float | None = 5.0
    max_connections: int | None = 10000
    max_channels_per_session: int = 128
    presence_ttl: float = 90.0
    node_id: str = dataclasses.field(default_factory=_new_node_id)
    origin_patterns: list[str] = dataclasses.field(default_factory=list)
    insecure_origins: bool = False
    session_policy: str = "multi"
    #: permessage-deflate: False (off), True (`Deflate`'s defaults), a `Deflate`, or a mapping of
    #: its fields (``{"server_max_window_bits": 15}``, as a Flask config can hold); kept as a
    #: `Deflate` when on
    compression: bool | Deflate | Mapping[str, Any] = False
    debug: bool = False
    #: the personal stream of every identity (SPEC section 14): ``send_to_identity`` keeps its
    #: last ``identity_history_size`` messages for ``identity_history_ttl`` seconds, and a
    #: client that reconnects gets back what it missed; 0 / None: off
    identity_history_size: int = 0
    identity_history_ttl: float | None = None
    #: coalesce writes: the frames a burst queues for one socket within one pass of the hub
    #: leave together in one ``send``, waiting at most this long (seconds); the first frame
    #: on an idle socket still leaves at once, so a lone message is not delayed.  0: every
    #: frame leaves with its own ``send`` (a third to a quarter of the fanout's throughput)
    write_delay: float = 0.005

    def __post_init__(self) -> None:
        for name in _DURATIONS:
            value = getattr(self, name)
            if value is None and name != "presence_ttl":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidOption(name, f"expected seconds as a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise InvalidOption(name, f"must be a positive number of seconds, got {value!r}")
            setattr(self, name, float(value))
        _positive_int(self, "read_limit")
        _positive_int(self, "send_queue_size")
        if self.max_connections is not None:
            _positive_int(self, "max_connections")
        _positive_int(self, "max_channels_per_session")
        if isinstance(self.backpressure, str):
            try:
                self.backpressure = Backpressure(self.backpressure.lower())
            except ValueError:
                raise InvalidOption("backpressure", f"unknown policy {self.backpressure!r}") from None
        if not isinstance(self.backpressure, Backpressure):
            raise InvalidOption("backpressure", f"expected a Backpressure, got {self.backpressure!r}")
        if not isinstance(self.node_id, str) or not self.node_id or not self.node_id.isprintable():
            raise InvalidOption("node_id", f"must be a non-empty printable string, got {self.node_id!r}")
        if isinstance(self.origin_patterns, str) or not all(isinstance(p, str) and p for p in self.origin_patterns):
            raise InvalidOption("origin_patterns", "must be a list of non-empty strings")
        self.origin_patterns = list(self.origin_patterns)
        if self.session_policy not in _SESSION_POLICIES:
            raise InvalidOption("session_policy", f"must be one of {_SESSION_POLICIES}, got {self.session_policy!r}")
        if isinstance(self.write_delay, bool) or not isinstance(self.write_delay, (int, float)):
            raise InvalidOption("write_delay", f"expected seconds as a number, got {self.write_delay!r}")
        if not 0 <= self.write_delay <= 1:
            raise InvalidOption("write_delay", f"must be from 0 to 1 second, got {self.write_delay!r}")
        self.write_delay = float(self.write_delay)
        check_stream_bounds(self.identity_history_size, self.identity_history_ttl, field="identity_history")
        if self.identity_history_ttl is not None:
            self.identity_history_ttl = float(self.identity_history_ttl)
        self.compression = Deflate.of(self.compression) or False
        for name in ("insecure_origins", "debug"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidOption(name, f"expected a bool, got {getattr(self, name)!r}")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], prefix: str = "RTGEVENT_") -> Config:
        """Build a Config from ``mapping`` keys like ``RTGEVENT_READ_LIMIT`` (a Flask config).

        Unknown keys under the prefix are refused, so a typo does not silently fall back
        to a default.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in mapping.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :].lower()
            if name not in fields:
                raise InvalidOption(key, "not a rtgevent setting")
            values[name] = value
        return cls(**values)


def _positive_int(config: Config, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidOption(name, f"must be a positive integer, got {value!r}")

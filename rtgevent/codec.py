"""Codecs turn frames into `Message` envelopes and back (pure: no I/O).

`Codec.encode` returns ``str`` for a text frame or ``bytes`` for a binary frame;
`Codec.decode` raises `BadMessage` for anything it cannot understand, and nothing else:
the reader relies on that to keep a healthy session open whatever a client sends.
"""

from __future__ import annotations

import json
import math
from typing import Any, Protocol, runtime_checkable

import orjson

from .errors import BadMessage
from .message import Message

__all__ = ["CmdCodec", "Codec", "JSONCodec"]


@runtime_checkable
class Codec(Protocol):
    def encode(self, message: Message) -> str | bytes: ...

    def decode(self, frame: str | bytes) -> Message: ...


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
#: for text holding lone surrogates (a client's JSON may carry them as \u escapes): they cannot
#: be UTF-8 encoded into a text frame, so they go out escaped, the way they came in
_ascii_encoder = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def _dumps(value: Any) -> str:
    """JSON text for ``value``: orjson (about 20x faster on a 16 KiB envelope), else the stdlib.

    orjson refuses what the stdlib can still write (integers past 64 bits, lone
    surrogates): those take the stdlib path, so every value encodes the same way it
    always did.  NaN and Infinity never come from a client (decode refuses them); a
    handler that returns one gets ``null`` on the wire.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        pass
    text = _encoder.encode(value)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return _ascii_encoder.encode(value)
    return text


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259 section 6) and could not be encoded back
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses to inf, which no JSON encoder can write back: refuse it at the door
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"{text} is out of the range of a double")
    return value


_decoder = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


_BEYOND_64_BITS = float(1 << 63)


def _inexact(value: Any) -> bool:
    """True if orjson may have turned an integer past 64 bits into a float somewhere in ``value``."""
    kind = type(value)
    if kind is dict:
        items: Any = value.values()
    elif kind is list:
        items = value
    elif kind is float:
        return bool(value.is_integer() and abs(value) >= _BEYOND_64_BITS)
    else:
        return False
    for item in items:
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue  # the common leaves, without a call
        if _inexact(item):
            return True
    return False


def _loads(frame: str) -> Any:
    """Parse with orjson (about 5x faster than the stdlib); where it would differ, the stdlib decides.

    orjson refuses lone-surrogate escapes, NaN and 1e400, and reads integers past 64 bits
    as floats: the first three fall back to the stdlib parser (which accepts surrogates
    and refuses the rest), the last is detected and re-parsed exactly.
    """
    try:
        value = orjson.loads(frame)
    except orjson.JSONDecodeError:
        value = None
    else:
        if not _inexact(value):
            return value
    try:
        return _decoder.decode(frame)
    except (ValueError, RecursionError) as exc:
        raise BadMessage(f"invalid JSON: {exc}") from None


def _metadata_value(value: object) -> bool:
    # strings, and integers for ``in_reply_to`` (a numeric request id goes back as a number)
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


class JSONCodec:
    """The default codec: one JSON object per text frame (SPEC section 2)."""

    def encode(self, message: Message) -> str:
        envelope: dict[str, Any] = {"route": message.route}
        if message.id is not None:
            envelope["id"] = message.id
        if message.data is not None:
            envelope["data"] = message.data
        if message.metadata:
            envelope["metadata"] = message.metadata
        return _dumps(envelope)

    def decode(self, frame: str | bytes) -> Message:
        if not isinstance(frame, str):
            raise BadMessage("binary frames are not accepted by the JSON codec")
        envelope = _loads(frame)
        if not isinstance(envelope, dict):
            raise BadMessage("an envelope must be a JSON object")
        route = envelope.get("route")
        if not isinstance(route, str) or not route:
            raise BadMessage("an envelope needs a non-empty string route")
        msg_id = envelope.get("id")
        if msg_id is not None and (isinstance(msg_id, bool) or not isinstance(msg_id, (str, int))):
            raise BadMessage("id must be a string or an integer")
        metadata = envelope.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict) and all(_metadata_value(v) for v in metadata.values())
        ):
            raise BadMessage("metadata must be an object of strings (or integer ids)")
        # an empty metadata object is no metadata (encode leaves it out)
        return Message(route, envelope.get("data"), id=msg_id, metadata=metadata or None)


class CmdCodec:
    """The seed-003 text protocol: ``"<route> <body>"``, the body being raw text.

    For clients that cannot speak JSON.  There is no id, so requests get no replies;
    an outgoing non-string body is written as JSON.
    """

    def encode(self, message: Message) -> str:
        data = message.data
        if data is None:
            return message.route
        body = data if isinstance(data, str) else _dumps(data)
        return f"{message.route} {body}"

    def decode(self, frame: str | bytes) -> Message:
        if not isinstance(frame, str):
            raise BadMessage("binary frames are not accepted by the command codec")
        route, _, body = frame.partition(" ")
        if not route or not route.isprintable():
            raise BadMessage("a command needs a route before the first space")
        return Message(route, body)

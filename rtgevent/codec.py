"""Codecs turn frames into `Message` envelopes and back (pure: no I/O).

`Codec.encode` returns ``str`` for a text frame or ``bytes`` for a binary frame;
`Codec.decode` raises `BadMessage` for anything it cannot understand, and nothing else:
the reader relies on that to keep a healthy session open whatever a client sends.

Nesting is bounded: a JSON frame whose arrays and objects nest deeper than `MAX_DEPTH`
(128 levels, the envelope object counting as one) is refused with `BadMessage`.  orjson,
which bounds its own recursion (1,024 levels) off the Python stack, parses first, and
what it gave is walked at most one level past the bound; the stdlib parser, which
recurses on the Python stack, sees only text whose brackets were bounded first.  So the
same frame is refused whichever greenlet decodes it, however deep its stack already is;
and whatever is accepted stays well inside what recursive code can walk: the handlers
and orjson's encoder (which stops at 254 levels), so an echoed value always encodes back
the fast way.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any, Protocol, runtime_checkable

import orjson

from .errors import BadMessage
from .message import Message

__all__ = ["MAX_DEPTH", "CmdCodec", "Codec", "JSONCodec"]

#: the deepest nesting of arrays and objects a JSON frame may have, the envelope counting as one
MAX_DEPTH = 128


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


#: what `_inspect` finds in a parsed value
_FINE, _INEXACT, _TOO_DEEP = 0, 1, 2


def _inspect(value: Any, depth: int = 1) -> int:
    """Whether a value orjson parsed nests deeper than `MAX_DEPTH` (``value`` at ``depth``),
    or may hold an integer past 64 bits that orjson turned into a float; `_FINE` otherwise.

    A walk over the containers alone, so a long string costs nothing (a count of the
    frame's brackets cost more than the parse: 10 µs for 16 KiB); it stops one level past
    the bound, so it never recurses deeper than that.
    """
    kind = type(value)
    if kind is dict:
        items: Any = value.values()
    elif kind is list:
        items = value
    elif kind is float:
        return _INEXACT if value.is_integer() and abs(value) >= _BEYOND_64_BITS else _FINE
    else:
        return _FINE
    if depth > MAX_DEPTH:
        return _TOO_DEEP
    found = _FINE
    for item in items:
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue  # the common leaves, without a call
        verdict = _inspect(item, depth + 1)
        if verdict == _TOO_DEEP:
            return _TOO_DEEP
        found |= verdict
    return found


#: outside strings, openers become 1 and closers 255; every other byte is deleted
_OPEN_CLOSE = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
#: the depth step of each byte value left: +1 for an opener (1), -1 for a closer (255)
_STEP = (0, 1, *([0] * 253), -1)
_CHUNK = 1 << 12


def _outside_strings(frame: str) -> str:
    """``frame`` without the contents of its JSON strings (where brackets do not nest).

    Escaped backslashes go first, then escaped quotes: every quote left opens or closes a
    string, so every other piece between quotes is string content.
    """
    return "".join(frame.replace("\\\\", "").replace('\\"', "").split('"')[::2])


def _too_deep(frame: str) -> bool:
    """True if ``frame`` nests arrays and objects deeper than `MAX_DEPTH` (outside strings).

    Linear and iterative, at C speed: a frame with no more brackets than the bound (nearly
    every message) is passed by two counts; any other has its strings cut out and the
    running depth of its brackets summed a chunk at a time, stopping at the first chunk
    that goes too deep.  Text that is not JSON may be called too deep or not: the parser
    refuses it either way.
    """
    if frame.count("[") + frame.count("{") <= MAX_DEPTH:
        return False
    # outside strings valid JSON is ASCII: what the encoding drops, the parser refuses
    brackets = _outside_strings(frame).encode("ascii", "ignore").translate(_OPEN_CLOSE, _NOT_BRACKET)
    if brackets.count(1) <= MAX_DEPTH:
        return False
    depth = 0
    for start in range(0, len(brackets), _CHUNK):
        chunk = brackets[start : start + _CHUNK]
        if max(itertools.accumulate(map(_STEP.__getitem__, chunk), initial=depth)) > MAX_DEPTH:
            return True
        depth += chunk.count(1) - chunk.count(255)
    return False


def _loads(frame: str) -> Any:
    """Parse with orjson (about 5x faster than the stdlib); where it would differ, the stdlib decides.

    orjson refuses lone-surrogate escapes, NaN and 1e400, and reads integers past 64 bits
    as floats: the first three fall back to the stdlib parser (which accepts surrogates
    and refuses the rest), the last is detected and re-parsed exactly.  orjson bounds its
    own recursion (1,024 levels), so it parses first and `_inspect` bounds what it gave;
    the stdlib parser recurses on the Python stack, so its text is bounded first (`_too_deep`).
    """
    try:
        value = orjson.loads(frame)  # safe at any depth: orjson stops at 1,024 levels by itself
    except orjson.JSONDecodeError:
        pass  # perhaps too deep for orjson: the stdlib decides below, once the text is bounded
    else:
        verdict = _inspect(value)
        if verdict == _FINE:
            return value
        if verdict == _TOO_DEEP:
            raise BadMessage(f"JSON nested deeper than {MAX_DEPTH} levels")
    if _too_deep(frame):
        raise BadMessage(f"JSON nested deeper than {MAX_DEPTH} levels")
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

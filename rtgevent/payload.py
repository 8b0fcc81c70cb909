"""The broker payload format: versioned JSON, shared by gateway nodes and the Emitter.

Never pickle: a broker is shared, and unpickling is code execution.  One payload::

    {"v": 1, "kind": "broadcast" | "identity" | "kick" | "channel", "origin": <node id>,
     "tenant": str, "identity": str, "text": <envelope> | "binary": <base64 envelope>,
     "code": int, "reason": str, "channel": str, "exclude": <session id>,
     "offset": "<n>", "epoch": str}

``offset`` and ``epoch`` come with a publication to a stream (SPEC section 14): a string,
so that the history store can put the offset it hands out into an already encoded
payload (`rtgevent.history.Stamp`).

The envelope is encoded once by the sender; every node frames it once for all of its
sessions.  Pure: no socket, no gevent, so a process without gevent can publish.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

from .errors import InvalidBrokerMessage

__all__ = ["BROADCAST_TOPIC", "KINDS", "VERSION", "BrokerPayload", "decode_payload", "encode_payload", "node_topic"]

VERSION = 1
KINDS = ("broadcast", "identity", "kick", "channel")
BROADCAST_TOPIC = "rtgevent.broadcast"


def node_topic(node_id: str) -> str:
    """The topic only ``node_id`` consumes: identity sends and kicks aimed at its sessions."""
    return f"rtgevent.node.{node_id}"


@dataclasses.dataclass(frozen=True)
class BrokerPayload:
    kind: str
    origin: str
    envelope: str | bytes = ""
    tenant: str = ""
    identity: str = ""
    code: int = 1000
    reason: str = ""
    #: kind "channel": the channel, and the session not to deliver to ("" for none)
    channel: str = ""
    exclude: str = ""
    #: a publication to a stream: its offset (a decimal string; a `Stamp` token before the
    #: store rendered it) and the stream's epoch; "" for none
    offset: str = ""
    epoch: str = ""

    @property
    def position(self) -> tuple[int, str] | None:
        """The stream position this payload carries, or None."""
        return (int(self.offset), self.epoch) if self.offset else None


def encode_payload(payload: BrokerPayload) -> bytes:
    obj: dict[str, Any] = {"v": VERSION, "kind": payload.kind, "origin": payload.origin}
    if payload.tenant or payload.identity:
        obj["tenant"] = payload.tenant
        obj["identity"] = payload.identity
    if payload.kind == "channel":
        obj["channel"] = payload.channel
        if payload.exclude:
            obj["exclude"] = payload.exclude
    if payload.offset:
        obj["offset"] = payload.offset
        obj["epoch"] = payload.epoch
    if payload.kind == "kick":
        obj["code"] = payload.code
        obj["reason"] = payload.reason
    elif isinstance(payload.envelope, str):
        obj["text"] = payload.envelope
    else:
        obj["binary"] = base64.b64encode(payload.envelope).decode("ascii")
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def decode_payload(raw: bytes) -> BrokerPayload:
    """Parse a broker payload; anything unexpected raises `InvalidBrokerMessage`."""
    try:
        obj = json.loads(raw)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidBrokerMessage(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidBrokerMessage("not a JSON object")
    if obj.get("v") != VERSION:
        raise InvalidBrokerMessage(f"unsupported version {obj.get('v')!r}")
    kind, origin = obj.get("kind"), obj.get("origin")
    if kind not in KINDS or not isinstance(origin, str):
        raise InvalidBrokerMessage("missing or unknown kind / origin")
    tenant, identity = obj.get("tenant", ""), obj.get("identity", "")
    if not isinstance(tenant, str) or not isinstance(identity, str):
        raise InvalidBrokerMessage("tenant and identity must be strings")
    if kind == "channel":
        channel, exclude = obj.get("channel"), obj.get("exclude", "")
        if not isinstance(channel, str) or not channel or not isinstance(exclude, str):
            raise InvalidBrokerMessage("channel needs a channel name and a string exclude")
    elif kind != "broadcast" and not identity:
        raise InvalidBrokerMessage(f"{kind} needs an identity")
    if kind == "kick":
        code, reason = obj.get("code", 1000), obj.get("reason", "")
        if not isinstance(code, int) or not isinstance(reason, str):
            raise InvalidBrokerMessage("kick needs an integer code and a string reason")
        return BrokerPayload(kind, origin, tenant=tenant, identity=identity, code=code, reason=reason)
    envelope: str | bytes
    if isinstance(obj.get("text"), str):
        envelope = obj["text"]
    elif isinstance(obj.get("binary"), str):
        try:
            envelope = base64.b64decode(obj["binary"], validate=True)
        except ValueError:
            raise InvalidBrokerMessage("binary envelope is not base64") from None
    else:
        raise InvalidBrokerMessage("no envelope")
    offset, epoch = obj.get("offset", ""), obj.get("epoch", "")
    if offset != "" and (
        not isinstance(offset, str)
        or not (offset.isascii() and offset.isdigit())
        or len(offset) > 19
        or not isinstance(epoch, str)
    ):
        raise InvalidBrokerMessage("offset must be a decimal string, with a string epoch")
    if kind == "channel":
        return BrokerPayload(
            kind, origin, envelope, channel=obj["channel"], exclude=obj.get("exclude", ""), offset=offset, epoch=epoch
        )
    return BrokerPayload(kind, origin, envelope, tenant, identity, offset=offset, epoch=epoch)

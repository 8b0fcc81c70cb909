"""Delivery: broadcast, send_to_identity and kick, locally and through the broker.

A broker payload is a versioned JSON object (never pickle: a broker is shared, and
unpickling is code execution)::

    {"v": 1, "kind": "broadcast" | "identity" | "kick", "origin": <node id>,
     "tenant": str, "identity": str, "text": <envelope> | "binary": <base64 envelope>,
     "code": int, "reason": str}

The envelope is encoded once by the sender; every node frames it once for all of its
sessions.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .broker.base import Broker
from .errors import BackpressureError, BrokerUnavailable, InvalidBrokerMessage, SessionClosed
from .hub import Hub
from .transport.frames import Closing, encode_frame
from .types import Initiator

if TYPE_CHECKING:
    from .session import Session

__all__ = [
    "BROADCAST_TOPIC",
    "BrokerPayload",
    "decode_payload",
    "deliver_local",
    "encode_payload",
    "node_topic",
    "publish_to_nodes",
]

log = logging.getLogger("rtgevent.delivery")

VERSION = 1
KINDS = ("broadcast", "identity", "kick")
BROADCAST_TOPIC = "rtgevent.broadcast"


def node_topic(node_id: str) -> str:
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


def encode_payload(payload: BrokerPayload) -> bytes:
    obj: dict[str, Any] = {"v": VERSION, "kind": payload.kind, "origin": payload.origin}
    if payload.tenant or payload.identity:
        obj["tenant"] = payload.tenant
        obj["identity"] = payload.identity
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
    if kind != "broadcast" and not identity:
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
    return BrokerPayload(kind, origin, envelope, tenant, identity)


def publish_to_nodes(broker: Broker, nodes: Iterable[str], raw: bytes) -> int:
    """Publish ``raw`` to each node's topic; how many took it.

    One stale or unreachable node (dead, but its lease not yet expired) must not keep
    the message from the others, so every node is tried; `BrokerUnavailable` is raised
    only when none took it.
    """
    failed: list[BrokerUnavailable] = []
    targets = sorted(nodes)
    for node in targets:
        try:
            broker.publish(node_topic(node), raw)
        except BrokerUnavailable as exc:
            failed.append(exc)
    if failed and len(failed) == len(targets):
        raise failed[0]
    return len(targets) - len(failed)


def deliver_local(sessions: list[Session], envelope: str | bytes) -> int:
    """Queue one envelope to ``sessions``, framed once; returns how many took it.

    A session that is closing or whose queue refused the message is skipped: one slow
    or dying client never fails a delivery to the others.
    """
    frame = encode_frame(envelope)
    delivered = 0
    for session in sessions:
        try:
            session._push_frame(frame, envelope)
        except (SessionClosed, BackpressureError):
            continue
        delivered += 1
    return delivered


def kick_local(sessions: list[Session], code: int, reason: str, initiator: Initiator) -> int:
    closed = 0
    for session in sessions:
        if session._close(Closing(initiator, code, reason, flush=False)):
            closed += 1
    return closed


def handle_broker_message(
    hub: Hub,
    node_id: str,
    raw: bytes,
    report: Callable[[BaseException], None],
) -> None:
    """Apply one payload received from the broker to this node's sessions."""
    try:
        payload = decode_payload(raw)
    except InvalidBrokerMessage as exc:
        report(exc)
        return
    if payload.kind == "broadcast":
        if payload.origin == node_id:
            return  # delivered locally when it was sent
        deliver_local(hub.sessions(), payload.envelope)
    elif payload.kind == "identity":
        deliver_local(hub.of_identity(payload.tenant, payload.identity), payload.envelope)
    else:
        initiator = Initiator.REPLACED if payload.code == 4001 else Initiator.SERVER
        kick_local(hub.of_identity(payload.tenant, payload.identity), payload.code, payload.reason, initiator)

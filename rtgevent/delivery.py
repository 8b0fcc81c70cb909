"""Fan-out: one algorithm for where a message goes, used by `Realtime` and `Emitter` alike.

A message for everybody goes to this node's sessions, framed once, and to the broadcast
topic; a message for an identity goes to its sessions here and, through the broker, to
only the other nodes presence names (never a topic per identity: ARCHITECTURE.md says
why).  A gateway node owns a `Hub` of local sessions; the Emitter has none and reaches
every session through the broker.  What arrives from the broker is applied to the hub
by `Fanout.receive`.

Imports no gevent: the Emitter runs in processes that have none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .broker.base import Broker
from .errors import BackpressureError, BrokerUnavailable, InvalidBrokerMessage, SessionClosed
from .hub import Hub
from .lifecycle import Closing, kick_initiator
from .payload import BROADCAST_TOPIC, BrokerPayload, decode_payload, encode_payload, node_topic
from .presence.base import Presence
from .transport.frames import encode_frame
from .types import Initiator

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Fanout", "Reach", "deliver_local", "kick_local", "publish_to_nodes"]

ErrorSink = Callable[[BaseException], None]


@dataclasses.dataclass(frozen=True)
class Reach:
    """How far one send went: local sessions found and reached, other nodes published to."""

    found: int = 0
    sessions: int = 0
    nodes: int = 0


class Fanout:
    """Where messages go from one origin: a node (with its hub) or an Emitter (none)."""

    __slots__ = ("broker", "hub", "origin", "presence", "publishing")

    def __init__(self, broker: Broker, presence: Presence, origin: str, hub: Hub | None = None) -> None:
        self.broker = broker
        self.presence = presence
        self.origin = origin
        self.hub = hub
        #: broadcasts and kicks go to the broker only from a started node (an Emitter: always)
        self.publishing = hub is None

    def broadcast(self, envelope: str | bytes) -> int:
        """Every local session, then every other node; how many local sessions took it."""
        delivered = deliver_local(self.hub.sessions(), envelope) if self.hub is not None else 0
        if self.publishing:
            self.broker.publish(BROADCAST_TOPIC, encode_payload(BrokerPayload("broadcast", self.origin, envelope)))
        return delivered

    def to_identity(self, tenant_id: str, identity_id: str, envelope: str | bytes) -> Reach:
        """The identity's local sessions, then each other node presence names for it."""
        local = self.hub.of_identity(tenant_id, identity_id) if self.hub is not None else []
        delivered = deliver_local(local, envelope)
        nodes = self.nodes_of(tenant_id, identity_id)
        sent = 0
        if nodes:
            raw = encode_payload(BrokerPayload("identity", self.origin, envelope, tenant_id, identity_id))
            sent = publish_to_nodes(self.broker, nodes, raw)
        return Reach(len(local), delivered, sent)

    def kick_identity(
        self,
        tenant_id: str,
        identity_id: str,
        code: int,
        reason: str,
        *,
        spare: Session | None = None,
    ) -> Reach:
        """Close the identity's sessions here (all but ``spare``) and on the nodes presence names."""
        local = self.hub.of_identity(tenant_id, identity_id) if self.hub is not None else []
        local = [s for s in local if s is not spare]
        closed = kick_local(local, code, reason, kick_initiator(code))
        sent = 0
        if self.publishing:
            nodes = self.nodes_of(tenant_id, identity_id)
            if nodes:
                payload = BrokerPayload(
                    "kick", self.origin, tenant=tenant_id, identity=identity_id, code=code, reason=reason
                )
                sent = publish_to_nodes(self.broker, nodes, encode_payload(payload))
        return Reach(len(local), closed, sent)

    def nodes_of(self, tenant_id: str, identity_id: str) -> list[str]:
        """The other nodes presence knows a session of this identity on, sorted."""
        nodes = {info.node_id for info in self.presence.get_identity_sessions(tenant_id, identity_id)}
        nodes.discard(self.origin)
        return sorted(nodes)

    def receive(self, raw: bytes, report: ErrorSink) -> None:
        """Apply one payload from the broker to this node's sessions."""
        hub = self.hub
        if hub is None:
            return
        try:
            payload = decode_payload(raw)
        except InvalidBrokerMessage as exc:
            report(exc)
            return
        if payload.kind == "broadcast":
            if payload.origin == self.origin:
                return  # delivered locally when it was sent
            deliver_local(hub.sessions(), payload.envelope)
        elif payload.kind == "identity":
            deliver_local(hub.of_identity(payload.tenant, payload.identity), payload.envelope)
        else:
            sessions = hub.of_identity(payload.tenant, payload.identity)
            kick_local(sessions, payload.code, payload.reason, kick_initiator(payload.code))


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
    if not sessions:
        return 0
    frame = encode_frame(envelope)
    delivered = 0
    for session in sessions:
        try:
            session.push_frame(frame, envelope)
        except (SessionClosed, BackpressureError):
            continue
        delivered += 1
    return delivered


def kick_local(sessions: list[Session], code: int, reason: str, initiator: Initiator) -> int:
    """Close ``sessions`` at once (queued data is dropped); how many were still open."""
    closed = 0
    for session in sessions:
        if session.request_close(Closing(initiator, code, reason, flush=False)):
            closed += 1
    return closed

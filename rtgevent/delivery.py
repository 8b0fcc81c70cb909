"""Fan-out: one algorithm for where a message goes, used by `Realtime` and `Emitter` alike.

A message for everybody goes to this node's sessions, framed once, and to the broadcast
topic; a publication to a channel goes to the channel's subscribers here and to the
channel's topic, which only nodes with a subscriber listen to; a message for an identity
goes to its sessions here and, through the broker, to only the other nodes presence names
(never a topic per identity: ARCHITECTURE.md says why). A gateway node owns a `Hub` of
local sessions; the Emitter has none and reaches every session through the broker. What
arrives from the broker is applied to the hub by `Fanout.receive`. Imports no gevent: the
Emitter runs in processes that have none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .broker.base import Broker
from .channels import channel_topic
from .codec import Codec
from .errors import BackpressureError, BrokerUnavailable, InvalidBrokerMessage, SessionClosed
from .history.base import History, Position, Stamp
from .history.memory import MemoryHistory
from .hub import Hub
from .lifecycle import Closing, kick_initiator
from .message import Message
from .payload import BROADCAST_TOPIC, BrokerPayload, decode_payload, encode_payload, node_topic
from .presence.base import Presence
from .streams import Streams, channel_stream, identity_stream, stream_owner
from .transport.frames import encode_frame
from .types import Initiator

if TYPE_CHECKING:
    from .session import Session

__all__ = [
    "REPLACED_CODE",
    "REPLACED_REASON",
    "Fanout",
    "Reach",
    "deliver_local",
    "kick_local",
    "publish_to_nodes",
    "stamp_message",
]

ErrorSink = Callable[[BaseException], None]

#: ``session_policy="replace"``: how a session a newer login of its identity replaced is closed.
#: A kick with exactly this code and reason is the policy's own: it closes only the sessions
#: older than the identity's newest login (any other kick closes every session it names).
REPLACED_CODE = 4001
REPLACED_REASON = "replaced by a new session"


class Reach(int):
    """How far one send went; as a number, how many places took it: ``sessions + nodes``.

    ``found`` local sessions of the target were in the hub, ``sessions`` of them took the
    message (a closing session or a full queue does not), and it was published to ``nodes``
    other nodes, which deliver it to their own sessions.  An `Emitter` has no local
    sessions, so its reach is its node count, the number it always returned.
    """

    found: int
    sessions: int
    nodes: int

    def __new__(cls, found: int = 0, sessions: int = 0, nodes: int = 0) -> Reach:
        reach = super().__new__(cls, sessions + nodes)
        reach.__dict__.update(found=found, sessions=sessions, nodes=nodes)
        return reach

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Reach is immutable")

    def __str__(self) -> str:
        return int.__repr__(self)

    def __repr__(self) -> str:
        return f"Reach(found={self.found}, sessions={self.sessions}, nodes={self.nodes})"

    def __reduce__(self) -> tuple[type[Reach], tuple[int, int, int]]:
        return (Reach, (self.found, self.sessions, self.nodes))


class Fanout:
    """Where messages go from one origin: a node (with its hub) or an Emitter (none).

    Publications to a stream (SPEC section 14) are appended to ``history`` first, and reach
    this node's sessions through `streams` (a node's; an Emitter has none), which delivers
    every offset once and in order.
    """

    __slots__ = ("broker", "history", "hub", "origin", "presence", "publishing", "streams")

    def __init__(
        self,
        broker: Broker,
        presence: Presence,
        origin: str,
        hub: Hub | None = None,
        history: History | None = None,
        report: ErrorSink | None = None,
    ) -> None:
        self.broker = broker
        self.presence = presence
        self.origin = origin
        self.hub = hub
        self.history: History = history if history is not None else MemoryHistory()
        #: this node's streams, or None for an Emitter
        self.streams = Streams(self.history, deliver_local, report or _ignore) if hub is not None else None
        #: broadcasts and kicks go to the broker only from a started node (an Emitter: always)
        self.publishing = hub is None

    def broadcast(self, envelope: str | bytes) -> int:
        """Every local session, then every other node; how many local sessions took it."""
        delivered = deliver_local(self.hub.sessions(), envelope) if self.hub is not None else 0
        if self.publishing:
            self.broker.publish(BROADCAST_TOPIC, encode_payload(BrokerPayload("broadcast", self.origin, envelope)))
        return delivered

    def publish(self, channel: str, envelope: str | bytes, exclude: str = "") -> int:
        """The channel's subscribers here (but ``exclude``), then its topic; how many here took it.

        Nodes with no subscriber do not listen to the topic, so they never see it; a
        channel nobody subscribes to anywhere is not an error.
        """
        local = self.hub.of_channel(channel) if self.hub is not None else []
        delivered = deliver_local([s for s in local if s.id != exclude] if exclude else local, envelope)
        if self.publishing:
            payload = BrokerPayload("channel", self.origin, envelope, channel=channel, exclude=exclude)
            self.broker.publish(channel_topic(channel), encode_payload(payload), expect_receiver=False)
        return delivered

    def publish_stream(self, channel: str, stamp: Stamp, exclude: str, size: int, ttl: float) -> tuple[int, Position]:
        """A publication to a channel with history: appended, then delivered like `publish`.

        With a `RedisHistory` on the broker's own Redis the append script publishes it
        too, so every node receives the channel's publications in offset order; with any
        other pair, it is published after the append and nodes put crossed publications
        back in order (`Streams.admit`).  Returns how many local subscribers took it, and
        the offset and epoch it got.
        """
        stream = channel_stream(channel)
        payload = None
        if self.publishing:
            raw = encode_payload(
                BrokerPayload(
                    "channel",
                    self.origin,
                    stamp.text,
                    channel=channel,
                    exclude=exclude,
                    offset=stamp.offset_token,
                    epoch=stamp.epoch_token,
                )
            )
            payload = stamp.sibling(raw.decode())
        publisher = getattr(self.history, "publisher", None)
        name = publisher(self.broker) if payload is not None and publisher is not None else None
        if name is not None and payload is not None:
            position: Position = self.history.append(  # type: ignore[call-arg]
                stream, stamp, size, ttl, publish=(name(channel_topic(channel)), payload)
            )
        else:
            position = self.history.append(stream, stamp, size, ttl)
        delivered = 0
        if self.streams is not None and self.hub is not None:
            local = self.hub.of_channel(channel)
            if exclude:
                local = [s for s in local if s.id != exclude]
            envelope = stamp.render(*position)
            delivered = self.streams.deliver(stream, self.streams.admit(stream, *position, envelope), local)
        if payload is not None and name is None:
            self.broker.publish(channel_topic(channel), _encoded(payload.render(*position)), expect_receiver=False)
        return delivered, position

    def to_identity_stream(
        self, tenant_id: str, identity_id: str, stamp: Stamp, size: int, ttl: float
    ) -> tuple[Reach, Position]:
        """`to_identity` for an identity with a personal stream: appended first, offsets in order."""
        stream = identity_stream(tenant_id, identity_id)
        position = self.history.append(stream, stamp, size, ttl)
        envelope = stamp.render(*position)
        local = self.hub.of_identity(tenant_id, identity_id) if self.hub is not None else []
        delivered = 0
        if self.streams is not None and local:
            delivered = self.streams.deliver(stream, self.streams.admit(stream, *position, envelope), local)
        nodes = self.nodes_of(tenant_id, identity_id)
        sent = 0
        if nodes:
            payload = BrokerPayload(
                "identity",
                self.origin,
                envelope,
                tenant_id,
                identity_id,
                offset=str(position.offset),
                epoch=position.epoch,
            )
            try:
                sent = publish_to_nodes(self.broker, nodes, encode_payload(payload))
            except BrokerUnavailable as exc:
                # kept in the stream: the client gets it when it reconnects (or the node,
                # when it comes back, sees the gap); a dead node still leased is no error here
                if self.streams is not None:
                    self.streams.report(exc)
        return Reach(len(local), delivered, sent), position

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

    def replace_older(self, session: Session) -> None:
        """``session_policy="replace"``: after ``session`` registered, leave only the newest login.

        Presence numbers an identity's logins in one order every node agrees on
        (`Presence.register`), so whatever the interleaving of concurrent logins, here or on
        other nodes, each one ends the same way: the older sessions of the identity here are
        closed; if presence already knows a newer login, ``session`` closes itself; else every
        other node holding a session of the identity is asked to close those older than the
        newest login (`receive`).  A session whose registration is still in flight has no
        number yet: it is left alone, and runs this same check once it has one.
        """
        tenant_id, identity_id = session.identity.tenant_id, session.identity.id
        mine = session.sequence
        local = self.hub.of_identity(tenant_id, identity_id) if self.hub is not None else []
        others = [s for s in local if s is not session]
        if not mine:
            # presence could not number this login: close what this node knows of, no more
            kick_local(others, REPLACED_CODE, REPLACED_REASON, Initiator.REPLACED)
            return
        kick_local(_older_than(others, mine), REPLACED_CODE, REPLACED_REASON, Initiator.REPLACED)
        if self.presence.sequence(tenant_id, identity_id) > mine:
            kick_local([session], REPLACED_CODE, REPLACED_REASON, Initiator.REPLACED)
            return
        if self.publishing:
            nodes = self.nodes_of(tenant_id, identity_id)
            if nodes:
                payload = BrokerPayload(
                    "kick",
                    self.origin,
                    tenant=tenant_id,
                    identity=identity_id,
                    code=REPLACED_CODE,
                    reason=REPLACED_REASON,
                )
                publish_to_nodes(self.broker, nodes, encode_payload(payload))

    def stream_sessions(self, stream: str) -> list[Session]:
        """The local sessions a stream is delivered to: a channel's subscribers, an identity's sessions."""
        if self.hub is None:
            return []
        owner = stream_owner(stream)
        return self.hub.of_channel(owner) if isinstance(owner, str) else self.hub.of_identity(*owner)

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
        elif payload.kind == "channel":
            if payload.origin == self.origin:
                return  # delivered locally when it was published
            local = hub.of_channel(payload.channel)
            if payload.exclude:
                local = [s for s in local if s.id != payload.exclude]
            position = payload.position
            if position is None or self.streams is None:
                deliver_local(local, payload.envelope)
            else:
                stream = channel_stream(payload.channel)
                self.streams.deliver(stream, self.streams.admit(stream, *position, payload.envelope), local)
        elif payload.kind == "identity":
            local = hub.of_identity(payload.tenant, payload.identity)
            position = payload.position
            if position is None or self.streams is None:
                deliver_local(local, payload.envelope)
            elif local:
                stream = identity_stream(payload.tenant, payload.identity)
                self.streams.deliver(stream, self.streams.admit(stream, *position, payload.envelope), local)
        else:
            sessions = hub.of_identity(payload.tenant, payload.identity)
            if sessions and (payload.code, payload.reason) == (REPLACED_CODE, REPLACED_REASON):
                # the replace policy: only what is older than the newest login goes
                try:
                    newest = self.presence.sequence(payload.tenant, payload.identity)
                except Exception as exc:
                    report(exc)
                    return
                sessions = _older_than(sessions, newest)
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


def stamp_message(codec: Codec, route: str, data: Any, metadata: dict[str, str]) -> Stamp:
    """The envelope of a publication to a stream, encoded once with its offset and epoch to come."""
    stamp = Stamp()
    metadata = {**metadata, "offset": stamp.offset_token, "epoch": stamp.epoch_token}
    return stamp.cut(codec.encode(Message(route, data, metadata=metadata)))


def _encoded(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


def _ignore(error: BaseException) -> None:
    pass


def _older_than(sessions: list[Session], number: int) -> list[Session]:
    """The sessions registered before login ``number`` (or never numbered); in-flight ones are spared."""
    return [s for s in sessions if s.sequence is not None and s.sequence < number]


def kick_local(sessions: list[Session], code: int, reason: str, initiator: Initiator) -> int:
    """Close ``sessions`` at once (queued data is dropped); how many were still open."""
    closed = 0
    for session in sessions:
        if session.request_close(Closing(initiator, code, reason, flush=False)):
            closed += 1
    return closed

"""One gateway node of the cluster tests, run as its own process by ``rtgevent serve``.

Configuration comes as JSON in ``RTG_CLUSTER``: broker and presence URLs, a namespace
unique to the test, presence_ttl, session_policy.  Clients authenticate with
``?access_token=<identity>`` (tenant ``acme``).  ``/_control/...`` lets the test act on
this node and read what its broker consumer received.  Channels starting with ``live:``
keep presence and tell their subscribers who joins and leaves (``rt.join`` / ``rt.leave``);
``seen:`` ones keep presence only; ``hist:`` ones keep history (``history_size``, 2,000 by
default, for 300 s) in the store at ``history`` (a URL; each node's memory without one),
which also keeps every identity's personal stream when ``identity_history`` (a size) is set;
every other channel none of these.  With ``admin_token`` the admin page is served at
``/admin`` (its stats record written every ``admin_interval`` s, 1 by default).  With a
``history`` store the broker is not wrapped in `CountingBroker`, so a `RedisHistory` on the
broker's Redis publishes in its append script.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from rtgevent import BearerTokenAuthenticator, ChannelOptions, Config, Identity, Message, Realtime, Session
from rtgevent.broker import Broker, broker_from_url
from rtgevent.broker.base import BrokerHandler, Subscription
from rtgevent.errors import RealtimeError
from rtgevent.history import history_from_url
from rtgevent.payload import decode_payload
from rtgevent.presence import presence_from_url
from rtgevent.types import DisconnectInfo
from tests.app import with_control


class CountingBroker:
    """A real broker, with a count of the payloads this node's consumer received, by kind."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner
        self.received: Counter[str] = Counter()

    def publish(self, topic: str, payload: bytes, *, expect_receiver: bool = True) -> None:
        self.inner.publish(topic, payload, expect_receiver=expect_receiver)

    def subscribe(self, topic: str, handler: BrokerHandler) -> Subscription:
        def counting(payload: bytes) -> None:
            try:
                self.received[decode_payload(payload).kind] += 1
            except RealtimeError:
                self.received["invalid"] += 1
            handler(payload)

        return self.inner.subscribe(topic, counting)

    def close(self) -> None:
        self.inner.close()


def make_node() -> Callable[..., Iterable[bytes]]:
    spec = json.loads(os.environ["RTG_CLUSTER"])
    namespace = spec["namespace"]
    raw_broker = broker_from_url(spec["broker"], namespace=namespace)
    history = history_from_url(spec["history"], namespace=namespace) if spec.get("history") else None
    broker: Any = raw_broker if history is not None else CountingBroker(raw_broker)
    presence = presence_from_url(spec["presence"], ttl=spec.get("presence_ttl", 90), namespace=namespace)
    events = None
    if spec.get("events_queue"):
        from rtgevent.events import KombuEvents

        events = KombuEvents(spec["events_url"], queue=spec["events_queue"], routes=spec.get("events_routes", ()))
    rt = Realtime(
        Config(
            presence_ttl=spec.get("presence_ttl", 90),
            session_policy=spec.get("session_policy", "multi"),
            heartbeat_interval=None,
            identity_history_size=spec.get("identity_history", 0),
            identity_history_ttl=300 if spec.get("identity_history") else None,
        ),
        authenticator=BearerTokenAuthenticator(lambda token: Identity(token, tenant_id="acme")),
        broker=broker,
        presence=presence,
        events=events,
        history=history,
    )
    rt.channel_namespace("hist:", ChannelOptions(history_size=spec.get("history_size", 2000), history_ttl=300))
    rt.channel_namespace("live:", ChannelOptions(presence=True, join_leave=True))
    rt.channel_namespace("seen:", ChannelOptions(presence=True))
    disconnects: list[dict[str, Any]] = []

    @rt.on_subscribe
    def allow(session: Session, channel: str) -> None:
        pass  # every channel: the cluster tests are about routing, not authorization

    @rt.route("whoami")
    def whoami(session: Session, msg: Message) -> Any:
        return {"identity": session.identity.id, "node": rt.node_id, "session": session.id}

    @rt.on_disconnect
    def gone(session: Session, info: DisconnectInfo) -> None:
        disconnects.append({"identity": session.identity.id, "code": info.code, "initiator": str(info.initiator)})

    def control(action: str, q: dict[str, str]) -> Any:
        try:
            if action == "send":
                rt.send_to_identity("acme", q["identity"], q.get("route", "dm"), q.get("data"))
                return {"ok": True}
            if action == "publish":
                return {
                    "local": rt.publish(q["channel"], q.get("route", "pub"), q.get("data"), exclude=q.get("exclude"))
                }
            if action == "broadcast":
                rt.broadcast(q.get("route", "news"), q.get("data"))
                return {"ok": True}
            if action == "online":
                return {
                    "online": rt.is_online("acme", q["identity"]),
                    "sessions": [s.node_id for s in rt.get_identity_sessions("acme", q["identity"])],
                }
            if action == "members":
                return [info.identity_id for info in rt.channel_members(q["channel"])]
            if action == "member_sessions":
                return [[info.session_id, info.node_id] for info in rt.channel_members(q["channel"])]
            if action == "count":
                return {"count": rt.channel_count(q["channel"])}
        except RealtimeError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
        if action == "subscribed":
            return sorted(rt.rooms.subscribed())
        if action == "hub_channels":
            return sorted(rt.hub.channels())
        if action == "counts":
            return dict(broker.received) if isinstance(broker, CountingBroker) else {}
        if action == "node":
            return {"node": rt.node_id, "sessions": len(rt.sessions())}
        if action == "disconnects":
            return disconnects
        return {"error": f"unknown action {action}"}

    app = with_control(rt, control)
    if spec.get("admin_token"):
        from werkzeug.middleware.dispatcher import DispatcherMiddleware

        admin = rt.admin_app(spec["admin_token"], refresh=1.0, stats_interval=spec.get("admin_interval", 1.0))
        return DispatcherMiddleware(app, {"/admin": admin})
    return app

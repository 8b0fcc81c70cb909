"""One gateway node of the ``history`` scenario, served by ``rtgevent serve``: channels with history.

Run as its own process (the driver pins it to CPU 0)::

    RTG_BENCH_NODE='{"broker": URL, "presence": URL, "history": URL, "namespace": NS,
                     "history_size": 1000, "history_ttl": 300}' \\
        python -m rtgevent serve 'bench.history_node:make_node()' --bind 127.0.0.1:0

`bench.channel_node`'s node (default `Config`, the broker and `RedisPresence` in the namespace
``NS``, ``?access_token=<identity>``, every client subscription allowed, the same
``/_bench/publish`` publisher) plus ``history=RedisHistory(URL, namespace=NS)`` and
``rt.channel_namespace("hist:", ChannelOptions(history_size=..., history_ttl=...))``: a channel
starting with ``hist:`` keeps history, any other channel does not, in the same process.  With
`RedisBroker` on the same Redis the append script also publishes.  Plain HTTP on
``/_bench/...`` (127.0.0.1 only):

* ``GET /_bench/publish?channel=C&count=N&size=B&interval=S``: as `bench.channel_node`'s.
* ``GET /_bench/stats[?channel=C]``: ``rt.stats()`` plus ``node``, ``members`` (C's local
  subscribers), ``history_calls`` (calls into the history store, by method: ``append``,
  ``since``, ``position``; each one script or command, one round trip unless retried),
  ``redis_writes`` (commands and pipelines this process sent to Redis, every client of it:
  broker, presence, history; each one round trip), ``redis_by_command`` (the same by first
  command, ``EVALSHA`` by script: ``history.append``, ``presence.lookup``, ...) and the publisher's ``published`` /
  ``publish_seconds`` / ``publish_errors``.
* ``GET /_bench/gc``: ``gc.collect()``.
"""

from __future__ import annotations

import functools
import gc
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from bench.channel_node import TENANT, Publisher
from bench.common import with_control

#: the namespace of channels with history
HISTORY_PREFIX = "hist:"


def _count_calls(history: Any, names: Iterable[str]) -> dict[str, int]:
    """Wrap the history store's methods (on the instance) to count the calls."""
    counts = dict.fromkeys(names, 0)

    def counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return method(*args, **kwargs)

        return call

    for name in counts:
        setattr(history, name, counted(name, getattr(history, name)))
    return counts


def _count_redis_writes(scripts: dict[bytes, str]) -> dict[str, Any]:
    """Count every command or pipeline redis-py sends from this process (one round trip each).

    ``redis_writes`` is the total; ``redis_by_command`` names each by its first command
    (``EVALSHA`` by the script: ``scripts`` maps a SHA1 to a name, any other is ``other``).
    """
    from redis.connection import AbstractConnection

    by_command: dict[str, int] = {}
    counts: dict[str, Any] = {"redis_writes": 0, "redis_by_command": by_command}
    send: Callable[..., None] = AbstractConnection.send_packed_command

    def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        counts["redis_writes"] += 1
        first = command[0] if isinstance(command, list) and command else command
        # "*<n>\r\n$<len>\r\n<NAME>\r\n$<len>\r\n<first argument>\r\n..."
        parts = bytes(first[:160]).split(b"\r\n") if isinstance(first, (bytes, bytearray, memoryview)) else []
        name = parts[2].decode(errors="replace").upper() if len(parts) > 2 else "?"
        if name == "EVALSHA":
            name = f"EVALSHA {scripts.get(parts[4], 'other') if len(parts) > 4 else '?'}"
        by_command[name] = by_command.get(name, 0) + 1
        send(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    return counts


def _scripts(kind: str, store: Any) -> dict[bytes, str]:
    """SHA1 -> ``<kind>.<attribute>`` of the Lua scripts a store registered (``register_script``)."""
    from redis.commands.core import Script

    return {
        str(value.sha).encode(): f"{kind}.{name.lstrip('_')}"
        for name, value in vars(store).items()
        if isinstance(value, Script) and value.sha
    }


def make_node() -> Callable[..., Iterable[bytes]]:
    from rtgevent import BearerTokenAuthenticator, ChannelOptions, Config, Identity, Realtime, Session
    from rtgevent.broker import broker_from_url
    from rtgevent.history import history_from_url
    from rtgevent.presence import presence_from_url

    spec = json.loads(os.environ["RTG_BENCH_NODE"])
    namespace = spec["namespace"]
    history = history_from_url(spec["history"], namespace=namespace)
    presence = presence_from_url(spec["presence"], namespace=namespace)
    writes = _count_redis_writes({**_scripts("history", history), **_scripts("presence", presence)})
    calls = _count_calls(history, ("append", "since", "position"))
    rt = Realtime(
        Config(),
        authenticator=BearerTokenAuthenticator(lambda token: Identity(token, tenant_id=TENANT)),
        broker=broker_from_url(spec["broker"], namespace=namespace),
        presence=presence,
        history=history,
    )
    rt.channel_namespace(
        HISTORY_PREFIX,
        ChannelOptions(history_size=int(spec["history_size"]), history_ttl=float(spec["history_ttl"])),
    )

    @rt.on_subscribe
    def allow(session: Session, channel: str) -> None:
        return None

    publisher = Publisher(lambda data: None)

    def control(action: str, q: dict[str, str]) -> Any:
        if action == "publish":
            channel = q["channel"]
            publisher.send = lambda data: rt.publish(channel, "tick", data)
            return publisher.handle(q)
        if action == "stats":
            return {
                "node": rt.node_id,
                "members": rt.hub.channel_size(q["channel"]) if "channel" in q else 0,
                "history_calls": dict(calls),
                "redis_writes": writes["redis_writes"],
                "redis_by_command": dict(writes["redis_by_command"]),
                **publisher.stats(),
                **rt.stats(),
            }
        if action == "gc":
            return {"collected": gc.collect()}
        return {"error": f"unknown action {action!r}"}

    return with_control(rt, control, (KeyError, ValueError, RuntimeError))

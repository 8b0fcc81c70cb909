"""rtgevent: a realtime WebSocket gateway framework for Python on gevent.

Public names only.  They are imported on first use (PEP 562), so that
``from rtgevent import Emitter`` in a process without gevent imports neither gevent nor
the gateway, and ``import rtgevent`` never needs kombu or redis.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .auth import (
        AnonymousAuthenticator,
        Authenticator,
        BearerTokenAuthenticator,
        InBandAuthenticator,
        StaticTokenAuthenticator,
    )
    from .broker import Broker, LocalBroker, Subscription, broker_from_url
    from .broker.kombu import KombuBroker
    from .broker.redis import RedisBroker
    from .broker.redis_cluster import RedisClusterBroker
    from .channels import ChannelOptions
    from .cli import serve
    from .codec import CmdCodec, Codec, JSONCodec
    from .config import Backpressure, Config, Deflate
    from .emitter import Emitter
    from .errors import (
        AlreadyStarted,
        BackpressureError,
        BadMessage,
        BrokerUnavailable,
        ConnectionLimit,
        HandlerError,
        HandlerTimeout,
        InvalidBrokerMessage,
        InvalidOption,
        LimitExceeded,
        RealtimeClosed,
        RealtimeError,
        SessionClosed,
        Unauthorized,
        UnknownRoute,
    )
    from .events import KombuEvents
    from .history import History, MemoryHistory, history_from_url
    from .history.redis import RedisHistory
    from .ids import SnowflakeIds, random_id
    from .message import Message
    from .middleware import logger, recovery, timeout
    from .node import NotMonkeyPatched
    from .presence import MemoryPresence, Presence, presence_from_url
    from .presence.redis import RedisPresence
    from .realtime import Realtime
    from .session import Session
    from .types import DisconnectInfo, Identity, Initiator, SessionInfo

_LAZY = {
    "AlreadyStarted": ".errors",
    "AnonymousAuthenticator": ".auth",
    "Authenticator": ".auth",
    "Backpressure": ".config",
    "BackpressureError": ".errors",
    "BadMessage": ".errors",
    "BearerTokenAuthenticator": ".auth",
    "Broker": ".broker",
    "BrokerUnavailable": ".errors",
    "ChannelOptions": ".channels",
    "CmdCodec": ".codec",
    "Codec": ".codec",
    "Config": ".config",
    "Deflate": ".config",
    "ConnectionLimit": ".errors",
    "DisconnectInfo": ".types",
    "Emitter": ".emitter",
    "HandlerError": ".errors",
    "HandlerTimeout": ".errors",
    "History": ".history",
    "Identity": ".types",
    "InBandAuthenticator": ".auth",
    "Initiator": ".types",
    "InvalidBrokerMessage": ".errors",
    "InvalidOption": ".errors",
    "JSONCodec": ".codec",
    "KombuBroker": ".broker.kombu",
    "KombuEvents": ".events",
    "LimitExceeded": ".errors",
    "LocalBroker": ".broker",
    "MemoryHistory": ".history",
    "MemoryPresence": ".presence",
    "Message": ".message",
    "NotMonkeyPatched": ".node",
    "Presence": ".presence",
    "Realtime": ".realtime",
    "RealtimeClosed": ".errors",
    "RealtimeError": ".errors",
    "RedisBroker": ".broker.redis",
    "RedisClusterBroker": ".broker.redis_cluster",
    "RedisHistory": ".history.redis",
    "RedisPresence": ".presence.redis",
    "Session": ".session",
    "SessionClosed": ".errors",
    "SessionInfo": ".types",
    "SnowflakeIds": ".ids",
    "StaticTokenAuthenticator": ".auth",
    "Subscription": ".broker",
    "Unauthorized": ".errors",
    "UnknownRoute": ".errors",
    "broker_from_url": ".broker",
    "history_from_url": ".history",
    "logger": ".middleware",
    "presence_from_url": ".presence",
    "random_id": ".ids",
    "recovery": ".middleware",
    "serve": ".cli",
    "timeout": ".middleware",
}

__version__ = "0.2.0"

__all__ = [
    "AlreadyStarted",
    "AnonymousAuthenticator",
    "Authenticator",
    "Backpressure",
    "BackpressureError",
    "BadMessage",
    "BearerTokenAuthenticator",
    "Broker",
    "BrokerUnavailable",
    "ChannelOptions",
    "CmdCodec",
    "Codec",
    "Config",
    "ConnectionLimit",
    "Deflate",
    "DisconnectInfo",
    "Emitter",
    "HandlerError",
    "HandlerTimeout",
    "History",
    "Identity",
    "InBandAuthenticator",
    "Initiator",
    "InvalidBrokerMessage",
    "InvalidOption",
    "JSONCodec",
    "KombuBroker",
    "KombuEvents",
    "LimitExceeded",
    "LocalBroker",
    "MemoryHistory",
    "MemoryPresence",
    "Message",
    "NotMonkeyPatched",
    "Presence",
    "Realtime",
    "RealtimeClosed",
    "RealtimeError",
    "RedisBroker",
    "RedisClusterBroker",
    "RedisHistory",
    "RedisPresence",
    "Session",
    "SessionClosed",
    "SessionInfo",
    "SnowflakeIds",
    "StaticTokenAuthenticator",
    "Subscription",
    "Unauthorized",
    "UnknownRoute",
    "__version__",
    "broker_from_url",
    "history_from_url",
    "logger",
    "presence_from_url",
    "random_id",
    "recovery",
    "serve",
    "timeout",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rtgevent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

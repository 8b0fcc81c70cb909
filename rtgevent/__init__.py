"""rtgevent: a realtime WebSocket gateway framework for Python on gevent.

Public names only; kombu and redis are imported lazily by the implementations that
need them, so ``import rtgevent`` needs neither.
"""

from .auth import (
    AnonymousAuthenticator,
    Authenticator,
    BearerTokenAuthenticator,
    InBandAuthenticator,
    StaticTokenAuthenticator,
)
from .broker import Broker, LocalBroker, Subscription
from .codec import CmdCodec, Codec, JSONCodec
from .config import Backpressure, Config
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
    RealtimeClosed,
    RealtimeError,
    SessionClosed,
    Unauthorized,
    UnknownRoute,
)
from .ids import SnowflakeIds, random_id
from .message import Message
from .middleware import logger, recovery, timeout
from .presence import MemoryPresence, Presence
from .realtime import Realtime
from .session import Session
from .types import DisconnectInfo, Identity, Initiator, SessionInfo

__version__ = "0.1.0"

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
    "CmdCodec",
    "Codec",
    "Config",
    "ConnectionLimit",
    "DisconnectInfo",
    "HandlerError",
    "HandlerTimeout",
    "Identity",
    "InBandAuthenticator",
    "Initiator",
    "InvalidBrokerMessage",
    "InvalidOption",
    "JSONCodec",
    "LocalBroker",
    "MemoryPresence",
    "Message",
    "Presence",
    "Realtime",
    "RealtimeClosed",
    "RealtimeError",
    "Session",
    "SessionClosed",
    "SessionInfo",
    "SnowflakeIds",
    "StaticTokenAuthenticator",
    "Subscription",
    "Unauthorized",
    "UnknownRoute",
    "__version__",
    "logger",
    "random_id",
    "recovery",
    "timeout",
]

"""Brokers carry broker payloads between nodes (SPEC section 7).

Only this package imports kombu; `broker_from_url` imports an implementation lazily so
that ``import rtgevent`` never needs kombu or redis.
"""

from .base import Broker, BrokerHandler, Subscription
from .local import LocalBroker

__all__ = ["Broker", "BrokerHandler", "LocalBroker", "Subscription"]

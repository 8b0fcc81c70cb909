"""Presence: who is online, on which node (SPEC section 7)."""

from .base import Presence
from .memory import MemoryPresence

__all__ = ["MemoryPresence", "Presence"]

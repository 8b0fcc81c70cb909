"""Channels (rooms), the pure part: names, namespaces and their options, broker topics.

A channel is a string of 1 to 255 printable ASCII characters without spaces (``room:42``,
``doc.abc``).  Options come from namespaces: `Namespaces.options` picks the longest prefix
registered with `rt.channel_namespace`; the default namespace (prefix ``""``) has every
option off.

Broker topics: one per channel, subscribed by a node while it has at least one local
subscriber.  A name made only of letters, digits, ``_``, ``:`` and ``-`` is its own topic
suffix (readable in ``PUBSUB CHANNELS`` and RabbitMQ's bindings); anything else (a ``.``,
which kombu's Redis transport splits on, or a name that would push a RabbitMQ routing key
past 255 bytes) is replaced by a digest.  Receivers compare the channel name carried in the
payload, so a digest can never deliver one channel's publication to another.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

from .errors import InvalidOption
from .history.base import check_stream_bounds

__all__ = ["DEFAULT_OPTIONS", "ChannelOptions", "Namespaces", "channel_topic", "check_channel"]

_CHANNEL = re.compile(r"[\x21-\x7e]{1,255}")
_PLAIN = re.compile(r"[A-Za-z0-9_:-]{1,160}")


def check_channel(channel: object) -> str:
    """Return ``channel`` if it is a valid channel name, else raise `InvalidOption`."""
    if not isinstance(channel, str) or not _CHANNEL.fullmatch(channel):
        shown = repr(channel)[:60]
        raise InvalidOption("channel", f"{shown} must be 1-255 printable ASCII characters without spaces")
    return channel


def channel_topic(channel: str) -> str:
    """The broker topic of ``channel`` (see the module docstring)."""
    if _PLAIN.fullmatch(channel):
        return f"rtgevent.ch.{channel}"
    return f"rtgevent.ch.~{hashlib.sha256(channel.encode()).hexdigest()[:40]}"


@dataclasses.dataclass(frozen=True)
class ChannelOptions:
    """What a namespace of channels does beyond delivery (SPEC section 13).

    ``presence``: members are kept cluster-wide (`rt.channel_members`); ``join_leave``:
    subscribers get ``rt.join`` / ``rt.leave`` as others come and go; ``history_size`` /
    ``history_ttl``: the channel keeps its last ``history_size`` publications for
    ``history_ttl`` seconds after the latest, with offsets, so that a client that
    reconnects gets back what it missed (section 14; both set, or neither);
    ``max_subscribers``: a bound on the channel's subscribers on one node.
    """

    presence: bool = False
    join_leave: bool = False
    history_size: int = 0
    history_ttl: float | None = None
    max_subscribers: int | None = None

    def __post_init__(self) -> None:
        if self.max_subscribers is not None and (
            isinstance(self.max_subscribers, bool)
            or not isinstance(self.max_subscribers, int)
            or self.max_subscribers < 1
        ):
            raise InvalidOption("max_subscribers", f"must be a positive int or None, got {self.max_subscribers!r}")
        check_stream_bounds(self.history_size, self.history_ttl, field="history")


DEFAULT_OPTIONS = ChannelOptions()


class Namespaces:
    """Prefix → `ChannelOptions`; the longest registered prefix of a channel wins."""

    __slots__ = ("_by_prefix",)

    def __init__(self) -> None:
        self._by_prefix: dict[str, ChannelOptions] = {"": DEFAULT_OPTIONS}

    def add(self, prefix: str, options: ChannelOptions) -> None:
        if not isinstance(prefix, str) or (prefix and not _CHANNEL.fullmatch(prefix)):
            raise InvalidOption("prefix", f"{prefix!r} must be empty or printable ASCII without spaces")
        if not isinstance(options, ChannelOptions):
            raise InvalidOption("options", "must be a ChannelOptions")
        self._by_prefix[prefix] = options

    @property
    def histories(self) -> bool:
        """Whether any namespace keeps history."""
        return any(options.history_size for options in self._by_prefix.values())

    def options(self, channel: str) -> ChannelOptions:
        best = ""
        for prefix in self._by_prefix:
            if len(prefix) > len(best) and channel.startswith(prefix):
                best = prefix
        return self._by_prefix[best]

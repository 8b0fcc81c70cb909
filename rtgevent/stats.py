"""Counters of one `Realtime`, low in the house so that transport and metrics can type them.

The frame engine counts messages and drops as they happen (a plain attribute increment:
no lock is needed, the hub runs one greenlet at a time); `Realtime.stats` and the
Prometheus collector read them at scrape time.
"""

from __future__ import annotations

__all__ = ["Stats"]


class Stats:
    """Counters since start; `Realtime.stats` reads them as a dict.

    * ``connections_total``: sessions accepted; ``messages_in`` / ``messages_out``: data
      messages read from / written to clients;
    * ``queue_drops``: messages a ``DROP_NEWEST`` / ``DROP_OLDEST`` send queue dropped;
    * ``backpressure_closes``: sessions a ``CLOSE`` send queue closed (their overflowing
      message is not a drop: the session ends);
    * ``broker_errors``: what this node saw go wrong with the broker (a malformed payload, a
      subscription that failed); `Realtime.stats` adds the broker's own ``errors`` (lost or
      refused connections, failed publishes).
    """

    __slots__ = (
        "backpressure_closes",
        "broker_errors",
        "connections_total",
        "messages_in",
        "messages_out",
        "queue_drops",
    )

    def __init__(self) -> None:
        self.connections_total = 0
        self.messages_in = 0
        self.messages_out = 0
        self.queue_drops = 0
        self.backpressure_closes = 0
        self.broker_errors = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

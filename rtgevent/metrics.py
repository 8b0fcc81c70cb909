"""Prometheus exposition of `Realtime.stats` (optional: ``pip install rtgevent[prometheus]``).

The counters already exist in `Realtime.stats`; a custom collector reads them at scrape
time, so serving metrics costs nothing per message.  Handler latency is the one figure
that needs timing on the hot path: it comes from the `latency` middleware, which a user
adds only when they want it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .message import Message
    from .middleware import Handler, Middleware
    from .realtime import Realtime
    from .session import Session

__all__ = ["RealtimeCollector", "latency", "metrics_app", "register"]

_COUNTERS = {
    "connections_total": "WebSocket sessions accepted",
    "messages_in": "messages received from clients",
    "messages_out": "messages written to clients",
    "queue_drops": "messages dropped by a DROP_NEWEST / DROP_OLDEST send queue",
    "backpressure_closes": "sessions closed because their send queue was full",
    "broker_errors": "broker failures: lost or refused consumer connections, failed publishes, malformed payloads",
    "broker_reconnects": "broker consumer connections restored after a failure",
}

_GAUGES = {
    "broker_up": "1 while the broker consumer is connected and subscribed, else 0",
    "presence_up": "1 while the presence store answers the lease renewals, else 0",
}


class RealtimeCollector(Collector):
    """Reads one Realtime's counters at scrape time (label ``node``)."""

    def __init__(self, rt: Realtime, prefix: str = "rtgevent") -> None:
        self._rt = rt
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        stats = self._rt.stats()
        node = self._rt.node_id
        gauge = GaugeMetricFamily(f"{self._prefix}_connections", "WebSocket sessions open now", labels=["node"])
        gauge.add_metric([node], stats["connections"])
        yield gauge
        for name, text in _GAUGES.items():
            up = GaugeMetricFamily(f"{self._prefix}_{name}", text, labels=["node"])
            up.add_metric([node], int(stats.get(name, 1)))
            yield up
        for name, text in _COUNTERS.items():
            metric_name = f"{self._prefix}_{name.removesuffix('_total')}"
            family = CounterMetricFamily(metric_name, text, labels=["node"])
            family.add_metric([node], stats.get(name, 0))
            yield family


def register(rt: Realtime, registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """Register ``rt``'s collector in ``registry`` (a new one by default) and return it."""
    registry = registry if registry is not None else CollectorRegistry()
    registry.register(RealtimeCollector(rt))
    return registry


def metrics_app(registry: CollectorRegistry) -> Any:
    """A WSGI app serving the exposition format (mount it at ``/metrics``)."""
    return make_wsgi_app(registry)


def latency(registry: CollectorRegistry, name: str = "rtgevent_handler_seconds") -> Middleware:
    """Middleware observing each handler's run time in a histogram labelled by outcome."""
    histogram = Histogram(name, "handler run time", ["outcome"], registry=registry)
    ok, failed = histogram.labels("ok"), histogram.labels("error")

    def middleware(next_handler: Handler) -> Handler:
        def handler(session: Session, msg: Message) -> Any:
            started = time.perf_counter()
            try:
                result = next_handler(session, msg)
            except BaseException:
                failed.observe(time.perf_counter() - started)
                raise
            ok.observe(time.perf_counter() - started)
            return result

        return handler

    return middleware

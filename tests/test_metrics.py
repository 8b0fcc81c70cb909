"""Prometheus exposition: parses with prometheus_client's parser; counters move with traffic."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import websocket
from prometheus_client.parser import text_string_to_metric_families

from rtgevent import Config, Realtime, recovery
from rtgevent.metrics import latency, metrics_app, register
from tests.conftest import Server
from tests.waiting import WAIT


def scrape(server: Server) -> dict[str, float]:
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=WAIT) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + (f"{{{sample.labels['outcome']}}}" if "outcome" in sample.labels else "")
            values[key] = sample.value
    return values


def test_prometheus_counters_move_with_traffic(serve_realtime: Callable[[Any], Server]) -> None:
    """connections, messages in/out, drops and handler latency appear and move as traffic flows."""
    rt = Realtime(Config())
    registry = register(rt)
    rt.use(latency(registry), recovery())

    @rt.route("echo")
    def echo(session: Any, msg: Any) -> Any:
        return msg.data

    @rt.route("boom")
    def boom(session: Any, msg: Any) -> Any:
        raise RuntimeError("no")

    metrics = metrics_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["PATH_INFO"] == "/metrics":
            return metrics(environ, start_response)
        return rt(environ, start_response)

    server = serve_realtime(app)
    before = scrape(server)
    assert before["rtgevent_connections"] == 0
    ws = websocket.create_connection(f"ws://{server.host}:{server.port}/", timeout=WAIT)
    for i in range(5):
        ws.send(json.dumps({"id": i, "route": "echo", "data": i}))
        assert json.loads(ws.recv())["data"] == i
    ws.send(json.dumps({"id": 9, "route": "boom"}))
    assert json.loads(ws.recv())["metadata"]["code"] == "handler_error"
    during = scrape(server)
    assert during["rtgevent_connections"] == 1
    assert during["rtgevent_connections_total"] == before["rtgevent_connections_total"] + 1
    assert during["rtgevent_messages_in_total"] == before["rtgevent_messages_in_total"] + 6
    assert during["rtgevent_messages_out_total"] >= before["rtgevent_messages_out_total"] + 6
    assert during["rtgevent_handler_seconds_count{ok}"] == 5
    assert during["rtgevent_handler_seconds_count{error}"] == 1
    assert "rtgevent_queue_drops_total" in during and "rtgevent_broker_reconnects_total" in during
    ws.close()

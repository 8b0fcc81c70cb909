"""Channel churn: 1,000 sessions joining and leaving channels for 30 s leave nothing behind.

One ``rtgevent serve`` node on RedisBroker and Redis presence.  Every session cycles through
10 of 50 channels (subscribe, unsubscribe) for the whole time; at the end every session
leaves and closes, and the node holds no channel in its hub, no broker subscription, Redis
has no subscriber on any of the channel topics and no channel presence key is left.  The
node counts a session as gone once it left the hub, a moment before its presence write is
done: the keys are awaited, not expected at once.
"""

from __future__ import annotations

import json
import time
import uuid

import gevent
import redis
import websocket

from rtgevent.channels import channel_topic
from tests.clusterkit import BROKERS, REDIS
from tests.waiting import WAIT, wait_until

SESSIONS, CHANNELS, PER_SESSION, SECONDS = 1000, 50, 10, 30.0


def test_churn_leaves_no_subscription_behind(cluster) -> None:
    namespace = f"rtgtest-{uuid.uuid4().hex[:10]}"
    [node] = cluster(1, broker=BROKERS["redis"], namespace=namespace)
    prefix = f"seen:churn{uuid.uuid4().hex[:6]}:"  # a namespace with channel presence (tests/cluster_app.py)
    rooms = [f"{prefix}{n}" for n in range(CHANNELS)]
    clients = []
    for n in range(SESSIONS):
        ws = websocket.create_connection(f"{node.ws_base}/?access_token=user{n}", timeout=WAIT)
        clients.append(ws)
    deadline = time.monotonic() + SECONDS
    done = {"pairs": 0}

    def churn(i: int, ws: websocket.WebSocket) -> None:
        mine = [rooms[(i + k * 5) % CHANNELS] for k in range(PER_SESSION)]
        rounds = 0
        while time.monotonic() < deadline and rounds < 1000:  # bounded in time and count
            rounds += 1
            for route in ("rt.subscribe", "rt.unsubscribe"):
                for channel in mine:
                    ws.send(json.dumps({"id": 1, "route": route, "data": {"channel": channel}}))
                for _ in mine:
                    reply = json.loads(ws.recv())
                    assert reply["route"] == "rt.reply", reply
            done["pairs"] += len(mine)

    workers = [gevent.spawn(churn, i, ws) for i, ws in enumerate(clients)]
    gevent.joinall(workers, timeout=SECONDS + 60, raise_error=True)
    assert all(w.successful() for w in workers)
    print(f"[churn] {done['pairs']} subscribe+unsubscribe pairs in {SECONDS:.0f} s over {SESSIONS} sessions")
    # the last round left every channel; now some join again and the sessions close with it
    for ws in clients[:100]:
        ws.send(json.dumps({"id": 2, "route": "rt.subscribe", "data": {"channel": rooms[0]}}))
        assert json.loads(ws.recv())["route"] == "rt.reply"
    for ws in clients:
        ws.close()
    wait_until(lambda: node.control("node")["sessions"] == 0, "every session to end", timeout=WAIT * 3)
    assert node.control("hub_channels") == []
    assert node.control("subscribed") == []
    client = redis.Redis.from_url(REDIS)
    topics = [f"{namespace}.{channel_topic(room)}" for room in rooms]
    wait_until(
        lambda: all(count == 0 for _, count in client.pubsub_numsub(*topics)), "Redis to have no channel subscriber"
    )

    def presence_keys() -> list[bytes]:  # members, counts per node, the node's channel index
        return list(client.scan_iter(match=f"{namespace}:*chan*", count=1000))

    wait_until(lambda: presence_keys() == [], lambda: f"no channel presence key to be left: {presence_keys()[:5]}")
    client.close()

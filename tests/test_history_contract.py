"""The History contract (SPEC section 14): one suite, run against every implementation (STYLE.md).

The first half holds for `MemoryHistory` and `RedisHistory` alike: offsets 1, 2, 3 ... under
one epoch, envelopes that carry their own offset and epoch, trimming by size, expiry by ttl
and no gap under concurrent publishers.  The second half is what only Redis has: other
processes appending to the same stream, a Redis that restarts empty, the PUBLISH done by the
append script, a retried append whose first reply was lost, and what a stream costs in
Redis' memory.  Redis tests use a fresh namespace each and delete its keys afterwards, so
they can share a Redis with anything.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import gevent
import pytest
import redis
from gevent import monkey

import rtgevent.history
from rtgevent.errors import BrokerUnavailable, InvalidOption
from rtgevent.history import History, MemoryHistory, Position, Publication, Recovery, Stamp, history_from_url
from rtgevent.history.redis import RedisHistory
from tests.services import REDIS_URL, RedisServer, free_port
from tests.waiting import WAIT, wait_until

start_native_thread = monkey.get_original("_thread", "start_new_thread")
allocate_native_lock = monkey.get_original("_thread", "allocate_lock")
ROOT = Path(__file__).resolve().parent.parent


def stamped(stamp: Stamp, data: str, channel: str = "room:1") -> Stamp:
    """An envelope as a publisher encodes it: the stamp's tokens where the offset and the epoch go."""
    metadata = {"channel": channel, "offset": stamp.offset_token, "epoch": stamp.epoch_token}
    return stamp.cut(json.dumps({"route": "pub", "data": data, "metadata": metadata}))


def texts(recovery: Recovery) -> list[str | bytes]:
    return [publication.envelope for publication in recovery.publications]


def offsets(recovery: Recovery) -> list[int]:
    return [publication.offset for publication in recovery.publications]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def redis_history(ns: str) -> Iterator[Callable[..., RedisHistory]]:
    """``redis_history(**kw)``: RedisHistory objects in this test's namespace, closed afterwards."""
    made: list[RedisHistory] = []

    def factory(**kwargs: Any) -> RedisHistory:
        kwargs.setdefault("namespace", ns)
        history = RedisHistory(REDIS_URL, **kwargs)
        made.append(history)
        return history

    yield factory
    for history in made:
        history.close()


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def history(request: pytest.FixtureRequest) -> Iterator[History]:
    """Each implementation in turn; RedisHistory on one Redis and on a Redis Cluster (SPEC section 15)."""
    store: History
    if request.param == "memory":
        store = MemoryHistory()
    elif request.param == "redis":
        store = request.getfixturevalue("redis_history")()
    else:
        cluster = request.getfixturevalue("redis_cluster")
        store = RedisHistory(cluster.url, namespace=f"t{uuid.uuid4().hex[:8]}")
    yield store
    store.close()


# ---------------------------------------------------------------------------- the contract


def test_offsets_count_from_one_under_one_epoch(history: History) -> None:
    """A new stream stands at (0, ""); appends get offsets 1, 2, 3 ... and one epoch; since(0, "") returns all."""
    assert history.position("room:1") == Position(0, "")
    assert history.since("room:1", 0, "", 100) == Recovery([], 0, "", True)  # nothing missed: nothing there

    got = [history.append("room:1", f"m{i}", 100, 30) for i in range(1, 6)]
    epoch = got[0].epoch
    assert isinstance(epoch, str) and epoch != ""
    assert got == [Position(i, epoch) for i in range(1, 6)]
    assert history.position("room:1") == Position(5, epoch)

    recovery = history.since("room:1", 0, "", 100)
    assert recovery == Recovery([Publication(i, f"m{i}") for i in range(1, 6)], 5, epoch, True)
    publications, top, top_epoch, complete = recovery  # SPEC's (publications, top_offset, epoch, complete)
    assert (top, top_epoch, complete) == (5, epoch, True)
    assert history.since("room:1", 2, epoch, 100) == Recovery(publications[2:], 5, epoch, True)

    # every stream counts on its own, with an epoch of its own
    assert history.position("room:2") == Position(0, "")
    other = history.append("room:2", "x", 100, 30)
    assert other.offset == 1 and other.epoch != ""
    assert history.position("room:1") == Position(5, epoch)


def test_a_stamped_envelope_carries_its_own_offset_and_epoch(history: History) -> None:
    """What a recovering client receives says which offset and epoch it is, like the live copy did."""
    appended = [history.append("room:1", stamped(Stamp(), f"m{i}"), 10, 30) for i in range(3)]
    appended.append(history.append("room:1", '{"route": "plain"}', 10, 30))  # a finished envelope: as it is
    appended.append(history.append("room:1", b"\x00\xffbinary", 10, 30))  # bytes stay bytes
    epoch = appended[0].epoch
    assert appended == [Position(i, epoch) for i in range(1, 6)]

    recovery = history.since("room:1", 0, "", 10)
    assert recovery.complete and offsets(recovery) == [1, 2, 3, 4, 5]
    for i, publication in enumerate(recovery.publications[:3]):
        assert isinstance(publication.envelope, str)
        assert json.loads(publication.envelope) == {
            "route": "pub",
            "data": f"m{i}",
            "metadata": {"channel": "room:1", "offset": str(publication.offset), "epoch": epoch},
        }
    assert recovery.publications[3].envelope == '{"route": "plain"}'
    assert recovery.publications[4].envelope == b"\x00\xffbinary"
    assert isinstance(recovery.publications[4].envelope, bytes)


def test_a_stamp_cannot_be_forged_by_application_data(history: History) -> None:
    """Data that looks like another stamp's token, or like the slot markers, is left as it was."""
    earlier = Stamp()
    data = f"{earlier.offset_token} {earlier.epoch_token} o e"
    history.append("room:1", stamped(Stamp(), data), 10, 30)
    [publication] = history.since("room:1", 0, "", 10).publications
    assert isinstance(publication.envelope, str)
    assert json.loads(publication.envelope)["data"] == data


def test_a_stream_keeps_its_last_size_entries(history: History) -> None:
    """After 10 appends with size 3 only 8..10 are kept: readers from before 7 are told they missed some."""
    for i in range(1, 11):
        epoch = history.append("room:1", f"m{i}", 3, 30).epoch
    assert history.position("room:1") == Position(10, epoch)

    assert history.since("room:1", 0, "", 100) == Recovery([], 10, epoch, False)
    assert history.since("room:1", 6, epoch, 100) == Recovery([], 10, epoch, False)  # 7 is gone
    kept = history.since("room:1", 7, epoch, 100)
    assert kept == Recovery([Publication(i, f"m{i}") for i in (8, 9, 10)], 10, epoch, True)
    assert history.since("room:1", 10, epoch, 100) == Recovery([], 10, epoch, True)  # up to date
    assert history.since("room:1", 11, epoch, 100) == Recovery([], 10, epoch, False)  # from the future
    assert history.since("room:1", -1, epoch, 100).complete is False
    assert history.since("room:1", 7, "not-the-epoch", 100) == Recovery([], 10, epoch, False)
    assert history.since("room:1", 9, "", 100) == Recovery([], 10, epoch, False)  # "" matches only offset 0

    # limit caps the list, oldest first; the rest is read page by page
    assert history.since("room:1", 7, epoch, 2) == Recovery(
        [Publication(8, "m8"), Publication(9, "m9")], 10, epoch, True
    )
    assert history.since("room:1", 9, epoch, 2) == Recovery([Publication(10, "m10")], 10, epoch, True)


def test_limit_pages_through_a_stream_from_the_start(history: History) -> None:
    """since(0, "", limit) returns the first entries; paging on from the last one seen returns the rest once."""
    epoch = ""
    for i in range(1, 8):
        epoch = history.append("room:1", f"m{i}", 100, 30).epoch
    seen: list[int] = []
    offset, at = 0, ""
    while True:
        page = history.since("room:1", offset, at, 3)
        assert page.complete and page.offset == 7 and page.epoch == epoch
        if not page.publications:
            break
        assert len(page.publications) <= 3
        seen += offsets(page)
        offset, at = page.publications[-1].offset, page.epoch
    assert seen == list(range(1, 8))


def test_a_smaller_size_trims_the_stream_at_the_next_append(history: History) -> None:
    """The size given with an append bounds the stream from then on."""
    for i in range(1, 6):
        epoch = history.append("room:1", f"m{i}", 10, 30).epoch
    history.append("room:1", "m6", 2, 30)
    assert history.since("room:1", 4, epoch, 10) == Recovery(
        [Publication(5, "m5"), Publication(6, "m6")], 6, epoch, True
    )
    assert history.since("room:1", 3, epoch, 10).complete is False


def test_an_expired_stream_starts_again_under_a_new_epoch(history: History) -> None:
    """ttl after the last append the stream is gone; the next append is offset 1 of a new epoch."""
    history.append("room:1", "old-1", 10, 0.3)
    old = history.append("room:1", "old-2", 10, 0.3)
    assert old.offset == 2
    wait_until(lambda: history.position("room:1") == Position(0, ""), "the stream to expire")
    assert history.since("room:1", old.offset, old.epoch, 10) == Recovery([], 0, "", False)

    new = history.append("room:1", "new-1", 10, 30)
    assert new.offset == 1 and new.epoch not in ("", old.epoch)
    assert history.since("room:1", old.offset, old.epoch, 10) == Recovery([], 1, new.epoch, False)
    assert history.since("room:1", 1, old.epoch, 10) == Recovery([], 1, new.epoch, False)  # an offset that exists again
    assert history.since("room:1", 0, "", 10) == Recovery([Publication(1, "new-1")], 1, new.epoch, True)


_PUBLISHER = """
import json, sys, threading
from rtgevent.history.redis import RedisHistory

url, namespace, stream, threads, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
history = RedisHistory(url, namespace=namespace)  # one store shared by the threads of a gevent-free process
history.position(stream)  # connected
print("ready", flush=True)
sys.stdin.readline()
got, errors = {}, []

def run(t):
    try:
        got[f"proc{t}"] = [history.append(stream, f"proc{t}-{i}", 100000, 60) for i in range(count)]
    except BaseException as exc:
        errors.append(repr(exc))

workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
history.close()
assert not errors, errors
assert "gevent" not in sys.modules
print(json.dumps({name: [[p.offset, p.epoch] for p in positions] for name, positions in got.items()}), flush=True)
"""


def test_concurrent_publishers_get_every_offset_once_in_order(history: History, request: pytest.FixtureRequest) -> None:
    """8 OS threads and 2 greenlets (with Redis, and 4 threads of another process) append at once: 1..N, no gap."""
    threads, per_thread, greenlets, per_greenlet, process_threads, per_process_thread = 8, 200, 2, 100, 4, 100
    stream = "room:busy"
    got: dict[str, list[Position]] = {}
    errors: list[BaseException] = []
    proc: subprocess.Popen[str] | None = None
    threads_bound = 3 * WAIT
    if isinstance(history, RedisHistory):
        on_cluster = request.node.callspec.params["history"] == "redis-cluster"
        url = request.getfixturevalue("redis_cluster").url if on_cluster else REDIS_URL
        script = [sys.executable, "-c", _PUBLISHER, url, history.namespace, stream]
        proc = subprocess.Popen(
            [*script, str(process_threads), str(per_process_thread)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        def store_for_a_thread() -> History:
            # gevent's sockets belong to the thread that made them: a native thread of this
            # (monkey-patched) process needs a client of its own, as a node of its own would
            return RedisHistory(url, namespace=history.namespace)
    else:

        def store_for_a_thread() -> History:
            return history  # one MemoryHistory shared by the hub and every thread

    try:
        if proc is not None:
            assert proc.stdout is not None and proc.stdin is not None
            with gevent.Timeout(WAIT, AssertionError("the publisher process did not start")):
                assert proc.stdout.readline().strip() == "ready"

        def publish(store: History, name: str, count: int) -> None:
            try:
                got[name] = [store.append(stream, f"{name}-{i}", 100000, 60) for i in range(count)]
            except BaseException as exc:
                errors.append(exc)

        done = [allocate_native_lock() for _ in range(threads)]

        def worker(n: int) -> None:
            try:
                store = store_for_a_thread()
                publish(store, f"thread{n}", per_thread)
                if store is not history:
                    store.close()
            finally:
                done[n].release()

        for n in range(threads):
            done[n].acquire()
            start_native_thread(worker, (n,))
        if proc is not None:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        jobs = [gevent.spawn(publish, history, f"greenlet{n}", per_greenlet) for n in range(greenlets)]
        gevent.joinall(jobs, timeout=3 * WAIT, raise_error=True)
        running = list(done)

        def all_finished() -> bool:
            running[:] = [lock for lock in running if not lock.acquire(False)]
            return not running

        wait_until(all_finished, "every thread to finish", timeout=threads_bound)
        if proc is not None:
            out, err = proc.communicate(timeout=3 * WAIT)
            assert proc.returncode == 0, err
            for name, positions in json.loads(out).items():
                got[name] = [Position(offset, epoch) for offset, epoch in positions]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)
    assert errors == []

    total = threads * per_thread + greenlets * per_greenlet
    if proc is not None:
        total += process_threads * per_process_thread
    assert len(got) == threads + greenlets + (process_threads if proc is not None else 0)
    every = [position for positions in got.values() for position in positions]
    assert sorted(position.offset for position in every) == list(range(1, total + 1))
    assert len({position.epoch for position in every}) == 1
    for positions in got.values():  # each publisher's own appends in its order
        assert [p.offset for p in positions] == sorted(p.offset for p in positions)

    recovery = history.since(stream, 0, "", total + 10)
    assert recovery.complete and recovery.offset == total and recovery.epoch == every[0].epoch
    assert offsets(recovery) == list(range(1, total + 1))
    expected = {f"{name}-{i}" for name, positions in got.items() for i in range(len(positions))}
    envelopes = texts(recovery)
    assert len(envelopes) == len(set(envelopes)) and set(envelopes) == expected
    # the offset each publisher was told is the one its payload is stored under
    stored = {publication.envelope: publication.offset for publication in recovery.publications}
    for name, positions in got.items():
        assert [stored[f"{name}-{i}"] for i in range(len(positions))] == [p.offset for p in positions]


# ---------------------------------------------------------------------------- MemoryHistory

_THREADS_OF_A_PLAIN_PROCESS = """
import json, sys, threading
from rtgevent.history import MemoryHistory

threads, count = int(sys.argv[1]), int(sys.argv[2])
history = MemoryHistory()
got, errors = {}, []

def run(t):
    try:
        got[f"thread{t}"] = [history.append("room:busy", f"thread{t}-{i}", 100000, 60) for i in range(count)]
    except BaseException as exc:
        errors.append(repr(exc))

workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
assert not errors, errors
assert "gevent" not in sys.modules
recovery = history.since("room:busy", 0, "", threads * count + 10)
print(json.dumps({
    "got": {name: [[p.offset, p.epoch] for p in positions] for name, positions in got.items()},
    "recovery": [[p.offset, p.envelope] for p in recovery.publications],
    "complete": recovery.complete,
}))
"""


def test_memory_history_is_shared_by_the_threads_of_a_plain_process() -> None:
    """8 threads of a process without gevent append to one MemoryHistory: offsets 1..N, each payload once."""
    threads, per_thread = 8, 200
    proc = subprocess.Popen(
        [sys.executable, "-c", _THREADS_OF_A_PLAIN_PROCESS, str(threads), str(per_thread)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=3 * WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)
    assert proc.returncode == 0, err
    result = json.loads(out)
    total = threads * per_thread
    every = [position for positions in result["got"].values() for position in positions]
    assert sorted(offset for offset, _ in every) == list(range(1, total + 1))
    assert len({epoch for _, epoch in every}) == 1
    for positions in result["got"].values():
        assert [offset for offset, _ in positions] == sorted(offset for offset, _ in positions)
    assert result["complete"] is True
    assert [offset for offset, _ in result["recovery"]] == list(range(1, total + 1))
    stored = {envelope: offset for offset, envelope in result["recovery"]}
    assert len(stored) == total
    for name, positions in result["got"].items():
        assert [stored[f"{name}-{i}"] for i in range(per_thread)] == [offset for offset, _ in positions]


def test_memory_forgets_expired_streams_nobody_touches_again() -> None:
    """Streams that expired are dropped by the periodic sweep: many short-lived streams do not pile up."""
    history = MemoryHistory()
    for n in range(200):
        history.append(f"room:{n}", "x", 10, 0.2)
    assert len(history) == 200
    # the streams expire in the order they were appended: the last one gone means all are
    wait_until(lambda: history.position("room:199") == Position(0, ""), "the streams to expire")
    assert len(history) == 199  # expired, still held until touched or swept
    history.sweep_every = 50
    for _ in range(50):
        history.append("room:alive", "y", 10, 30)
    assert len(history) == 1
    assert history.position("room:alive").offset == 50
    history.close()
    assert len(history) == 0


# ---------------------------------------------------------------------------- RedisHistory


def test_nodes_share_a_stream_and_namespaces_separate_them(
    redis_history: Callable[..., RedisHistory], ns: str, admin: redis.Redis
) -> None:
    """Two nodes on one namespace append to one stream; another namespace's stream of that name is another."""
    node_a, node_b = redis_history(), redis_history()
    elsewhere = redis_history(namespace=f"{ns}:other")
    first = node_a.append("room:1", "from a", 10, 30)
    second = node_b.append("room:1", "from b", 10, 30)
    assert second == Position(2, first.epoch)
    assert node_a.since("room:1", 0, "", 10) == node_b.since("room:1", 0, "", 10)
    assert texts(node_b.since("room:1", 0, "", 10)) == ["from a", "from b"]
    assert elsewhere.position("room:1") == Position(0, "")
    assert elsewhere.append("room:1", "x", 10, 30).offset == 1
    # both keys of a stream expire with it: a stream left alone costs nothing after its ttl
    for key in node_a.keys("room:1"):
        assert 0 < admin.pttl(key) <= 30_000


def test_a_redis_restarted_empty_gives_the_stream_a_new_epoch() -> None:
    """Redis restarts without persistence: the next append is offset 1 of a new epoch, old readers are told."""
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server to start a private Redis")
    server = RedisServer()
    server.start()
    history = RedisHistory(server.url, namespace="trestart", socket_timeout=5, retries=3)
    try:
        for i in range(1, 4):
            old = history.append("room:1", f"before-{i}", 10, 60)
        assert old.offset == 3
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=WAIT)
        server.start()  # same port, empty: it kept nothing

        assert history.position("room:1") == Position(0, "")
        new = history.append("room:1", "after-1", 10, 60)
        assert new.offset == 1 and new.epoch not in ("", old.epoch)
        assert history.since("room:1", old.offset, old.epoch, 10) == Recovery([], 1, new.epoch, False)
        assert history.since("room:1", 0, "", 10) == Recovery([Publication(1, "after-1")], 1, new.epoch, True)
    finally:
        history.close()
        server.stop()


def test_publish_delivers_the_rendered_payload_in_offset_order(
    redis_history: Callable[..., RedisHistory], admin: redis.Redis, ns: str
) -> None:
    """With publish=, subscribers get each payload with its offset, in offset order, and history already holds it."""
    history = redis_history()
    channel = f"{ns}.topic.room:1"
    pubsub = redis.client.PubSub(admin.connection_pool)
    try:
        pubsub.subscribe(channel)
        confirmed = pubsub.get_message(timeout=WAIT)
        assert confirmed is not None and confirmed["type"] == "subscribe"
        epoch = ""
        for i in range(1, 101):
            message = Stamp()
            wire = message.cut(json.dumps({"node": "n1", "offset": message.offset_token, "epoch": message.epoch_token}))
            position = history.append("room:1", stamped(Stamp(), f"m{i}"), 1000, 30, publish=(channel, wire))
            assert position.offset == i
            epoch = position.epoch
        history.append("room:1", "plain", 1000, 30, publish=(channel, Stamp().cut(b"\x00bin")))

        received: list[bytes] = []

        def next_message() -> bool:
            got = pubsub.get_message(timeout=1.0)
            if got is not None and got["type"] == "message":
                received.append(got["data"])
            return len(received) == 101

        wait_until(next_message, lambda: f"101 messages, got {len(received)}")
    finally:
        pubsub.close()
    assert [json.loads(data) for data in received[:100]] == [
        {"node": "n1", "offset": str(i), "epoch": epoch} for i in range(1, 101)
    ]
    assert received[100] == b"\x00bin"
    # history holds what was published, rendered with the same offset and epoch
    recovery = history.since("room:1", 0, "", 1000)
    assert offsets(recovery) == list(range(1, 102))
    for publication in recovery.publications[:100]:
        assert isinstance(publication.envelope, str)
        assert json.loads(publication.envelope)["metadata"]["offset"] == str(publication.offset)


def test_a_retried_append_whose_reply_was_lost_appends_once(
    redis_history: Callable[..., RedisHistory], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The append reached Redis but its reply did not come back: the retry finds it, nothing is stored twice."""
    history, other = redis_history(), redis_history()
    for i in range(1, 4):
        epoch = history.append("room:1", f"m{i}", 100, 30).epoch
    script = history._append
    attempts: list[str] = []

    def reply_lost(keys: Sequence[str], args: list[Any]) -> Any:
        attempts.append(str(args[4]))
        result = script(keys=keys, args=args)
        if len(attempts) == 1:
            for i in range(5):  # other publishers append meanwhile
                other.append("room:1", f"other-{i}", 100, 30)
            raise redis.ConnectionError("connection lost before the reply")
        return result

    monkeypatch.setattr(history, "_append", reply_lost)
    assert history.append("room:1", "once", 100, 30) == Position(4, epoch)
    assert attempts == ["0", "1"]  # the second attempt said it was a retry
    recovery = history.since("room:1", 0, "", 100)
    assert texts(recovery) == ["m1", "m2", "m3", "once", *(f"other-{i}" for i in range(5))]
    assert offsets(recovery) == list(range(1, 10))


def test_an_append_that_never_reached_redis_is_made_by_the_retry(
    redis_history: Callable[..., RedisHistory], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that failed before the append ran: the retry appends it (once, not zero times)."""
    history = redis_history()
    epoch = history.append("room:1", "m1", 100, 30).epoch
    script = history._append
    attempts: list[str] = []

    def request_lost(keys: Sequence[str], args: list[Any]) -> Any:
        attempts.append(str(args[4]))
        if len(attempts) == 1:
            raise redis.ConnectionError("connection lost before the request")
        return script(keys=keys, args=args)

    monkeypatch.setattr(history, "_append", request_lost)
    assert history.append("room:1", "m2", 100, 30) == Position(2, epoch)
    assert attempts == ["0", "1"]
    assert texts(history.since("room:1", 0, "", 100)) == ["m1", "m2"]


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
def test_a_redis_that_does_not_answer_raises_broker_unavailable(scheme: str) -> None:
    """No Redis at the URL: every call fails quickly with BrokerUnavailable, naming the URL without its password.

    On a cluster too: making the store does not connect (a node starts while its Redis is
    down), its calls fail like a lost connection until a node answers.
    """
    port = free_port()  # nobody listens there
    history = RedisHistory(f"{scheme}://:secret@127.0.0.1:{port}/", socket_timeout=1, retries=1)
    try:
        calls: list[Callable[[], object]] = [
            lambda: history.append("room:1", "x", 10, 30),
            lambda: history.since("room:1", 0, "", 10),
            lambda: history.position("room:1"),
        ]
        for call in calls:
            with gevent.Timeout(WAIT, AssertionError("a call hung")), pytest.raises(BrokerUnavailable) as caught:
                call()
            assert "secret" not in str(caught.value)
    finally:
        history.close()


def test_memory_per_entry_is_bounded_by_size(
    redis_history: Callable[..., RedisHistory], admin: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """1,000 appends of 200 B with size 100 keep 100 entries: a small fraction of what size 1,000 costs."""
    history = redis_history()
    usage: dict[int, int] = {}
    for size in (100, 1000):
        stream = f"room:size-{size}"
        for i in range(1000):
            history.append(stream, f"{i:08d}".ljust(200, "x"), size, 60)
        key = history.keys(stream)[0]
        assert admin.xlen(key) == size
        used = admin.memory_usage(key, samples=0)
        assert isinstance(used, int)
        usage[size] = used
    with capsys.disabled():
        for size, used in usage.items():
            print(
                f"\n[history] Redis stream of 1,000 x 200 B appends, size {size}: {used} B, {used / size:.0f} B/entry"
            )
    assert usage[100] < 0.4 * usage[1000]


def test_history_from_url_picks_the_store() -> None:
    """memory:// and redis:// (rediss://) name the two stores; a password never shows in what they print."""
    assert isinstance(history_from_url("memory://"), MemoryHistory)
    assert isinstance(history_from_url("memory://"), History)
    with_password = history_from_url("redis://:secret@127.0.0.1:6379/0", namespace="tfromurl", retries=1)
    assert isinstance(with_password, RedisHistory) and isinstance(with_password, History)
    assert "secret" not in repr(with_password)
    with_password.close()
    tls = history_from_url("rediss://127.0.0.1:6380/0", socket_timeout=1.0)
    assert isinstance(tls, RedisHistory)
    tls.close()
    assert rtgevent.history.RedisHistory is RedisHistory  # the lazy export is the class


def test_history_from_url_takes_a_redis_cluster(redis_cluster: Any) -> None:
    """``redis+cluster://`` (SPEC section 15): a RedisHistory whose streams spread over the shards."""
    store = history_from_url(redis_cluster.url, namespace=f"t{uuid.uuid4().hex[:8]}")
    try:
        assert isinstance(store, RedisHistory)
        slots = set()
        for n in range(50):
            assert store.append(f"room:{n}", "x", 10, 30).offset == 1
            stream_key, meta_key = store.keys(f"room:{n}")
            slots.add(store._client.keyslot(stream_key))
            assert store._client.keyslot(meta_key) == store._client.keyslot(stream_key)  # one script, one slot
        owners = {store._client.nodes_manager.get_node_from_slot(slot).port for slot in slots}
        assert len(owners) == 3  # 50 streams reach every master
    finally:
        store.close()


@pytest.mark.parametrize(
    "url, options",
    [
        ("mongo://u:secret@h/", {}),
        ("http://u:secret@127.0.0.1/", {}),
        ("", {}),
        ("memory", {}),
        ("redis:/127.0.0.1:6379", {}),
        ("redis://:secret@127.0.0.1:notaport/0", {}),
        ("memory://", {"bogus": 1}),
        ("redis://:secret@127.0.0.1:6379/0", {"bogus": 1}),
        ("redis://:secret@127.0.0.1:6379/0", {"namespace": "has space"}),
        ("redis://:secret@127.0.0.1:6379/0", {"socket_timeout": 0}),
        ("redis://:secret@127.0.0.1:6379/0", {"retries": -1}),
        ("redis+cluster://u:secret@127.0.0.1/", {}),
        ("redis+cluster://127.0.0.1:7000,nohost/", {}),
    ],
)
def test_history_from_url_refuses_what_it_cannot_use(url: str, options: dict[str, Any]) -> None:
    """An unsupported URL or an unknown or bad option raises InvalidOption, without the password."""
    with pytest.raises(InvalidOption) as caught:
        history_from_url(url, **options)
    assert "secret" not in str(caught.value)
    if "bogus" in options:
        assert "bogus" in str(caught.value)

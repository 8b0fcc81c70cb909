"""rtgevent.retry: backoff, deadlines, password-safe URLs and the Redis client settings, without a server.

One test at the end connects to the real Redis, to show a client built here works; it is
skipped when none is reachable.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
import uuid

import gevent
import pytest
import redis

from rtgevent.errors import InvalidOption
from rtgevent.retry import POOL_SIZE, Backoff, Deadline, backoff_delay, redact_url, redis_client, sleep_backoff
from tests.conftest import ROOT
from tests.services import REDIS_URL, LiveServices
from tests.waiting import WAIT

# ---------------------------------------------------------------------------- backoff


def test_backoff_doubles_from_start_to_the_cap() -> None:
    """Without jitter the delays are start, 2 x start, 4 x start, ... and then the cap, forever."""
    backoff = Backoff(0.1, 5.0, jitter=0)
    delays = [backoff.next() for _ in range(10)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0])


def test_backoff_jitter_stays_within_half_and_all_of_the_nominal_delay() -> None:
    """With the default jitter every delay lies in 50-100 % of its nominal value, and they differ."""
    for attempt, nominal in enumerate([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]):
        samples = [backoff_delay(attempt) for _ in range(200)]
        assert all(nominal * 0.5 <= delay <= nominal for delay in samples)
        assert len(set(samples)) > 1


def test_backoff_reset_starts_over() -> None:
    """After reset() the next delay is the shortest again, and the attempt count is back to 0."""
    backoff = Backoff(0.05, 1.0, jitter=0)
    for _ in range(5):
        backoff.next()
    assert backoff.attempt == 5
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next() == pytest.approx(0.05)


def test_backoff_after_very_many_attempts_is_the_cap() -> None:
    """A loop that has failed for days gets the cap, not an overflow."""
    assert backoff_delay(10_000, start=0.1, cap=5.0, jitter=0) == 5.0


@pytest.mark.parametrize(("start", "cap", "jitter"), [(0, 1, 0.5), (2, 1, 0.5), (0.1, 1, 1.5), (0.1, 1, -0.1)])
def test_backoff_refuses_nonsense(start: float, cap: float, jitter: float) -> None:
    """A start of 0, a start above the cap or a jitter outside 0..1 is misuse: InvalidOption."""
    with pytest.raises(InvalidOption):
        Backoff(start, cap, jitter=jitter)


# ---------------------------------------------------------------------------- deadline


def test_deadline_counts_down() -> None:
    """timeout() is the time left, shrinking as time passes, and the deadline is not expired meanwhile."""
    deadline = Deadline(10.0)
    first = deadline.timeout()
    assert 9.0 < first <= 10.0
    time.sleep(0.02)
    assert deadline.timeout() < first
    assert not deadline.expired()


def test_deadline_expired_returns_or_raises() -> None:
    """Once elapsed, timeout() returns <= 0, or raises TimeoutError when asked to; expired() is True."""
    deadline = Deadline(0.01)
    time.sleep(0.02)
    assert deadline.expired()
    assert deadline.timeout() <= 0
    with pytest.raises(TimeoutError):
        deadline.timeout(raise_if_elapsed=True)


def test_deadline_without_a_limit_never_expires() -> None:
    """Deadline(None): timeout() is infinite (min() with it just works) and it never expires."""
    deadline = Deadline(None)
    assert deadline.timeout(raise_if_elapsed=True) == math.inf
    assert min(0.5, deadline.timeout()) == 0.5
    assert not deadline.expired()


# ---------------------------------------------------------------------------- sleep_backoff


def test_sleep_backoff_sleeps_the_delay() -> None:
    """Nothing wakes it: it returns after the delay, not before."""
    started = time.monotonic()
    sleep_backoff(threading.Event(), 0.15, lambda: False)
    assert 0.15 <= time.monotonic() - started < 2.0


def test_sleep_backoff_ends_when_woken_or_stopped() -> None:
    """A raised flag or a set stop event ends a long wait within its 0.1 s poll."""
    flag = [False]
    threading.Timer(0.05, lambda: flag.__setitem__(0, True)).start()
    started = time.monotonic()
    sleep_backoff(threading.Event(), 30.0, lambda: flag[0])
    assert time.monotonic() - started < 2.0

    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    started = time.monotonic()
    sleep_backoff(stop, 30.0, lambda: False)
    assert time.monotonic() - started < 2.0


# ---------------------------------------------------------------------------- redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://default:secret@cache.example:6380/2", "rediss://default:***@cache.example:6380/2"),
        ("amqp://guest:secret@rabbit:5672//", "amqp://guest:***@rabbit:5672//"),
        ("kombu+redis://u:secret@host/0", "kombu+redis://u:***@host/0"),
        ("redis://host:6379/0?password=secret&db=1", "redis://host:6379/0?password=***&db=1"),
        ("redis://u:p%40ss@host/0", "redis://u:***@host/0"),
    ],
)
def test_redact_url_hides_the_password(url: str, shown: str) -> None:
    """The password goes, in the user part or as a query option; scheme, user, host and path stay."""
    assert redact_url(url) == shown
    assert "secret" not in redact_url(url)


def test_redact_url_leaves_a_url_without_password_alone() -> None:
    """Nothing to hide: the URL comes back unchanged."""
    for url in ("redis://127.0.0.1:6379/0", "amqp://guest@rabbit//", "memory://", "unix:///tmp/redis.sock"):
        assert redact_url(url) == url


def test_redact_url_does_not_echo_an_unparsable_url() -> None:
    """A URL urllib cannot parse is replaced whole: whatever it holds stays out of the log."""
    assert redact_url("redis://user:secret@[::1/0") == "<unparsable url>"


# ---------------------------------------------------------------------------- redis_client


def test_redis_client_sets_timeouts_and_no_hidden_retries() -> None:
    """Socket and connect timeouts on every connection, redis-py's retries off, health checks as asked."""
    client = redis_client(
        "redis://127.0.0.1:6379/0", socket_timeout=1.5, connect_timeout=0.5, health_check_interval=7, client_name="n"
    )
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 1.5
    assert kwargs["socket_connect_timeout"] == 0.5
    assert kwargs["health_check_interval"] == 7
    assert kwargs["client_name"] == "n"
    assert kwargs["retry"].get_retries() == 0
    assert isinstance(client.connection_pool, redis.BlockingConnectionPool)
    assert client.connection_pool.max_connections == POOL_SIZE
    assert client.auto_close_connection_pool
    client.close()


def test_a_burst_of_concurrent_calls_waits_for_connections_instead_of_failing(live: LiveServices) -> None:
    """150 calls at once that each hold a connection a moment (redis-py's own pool stops at
    100 and raises for the next caller): every one of them is answered."""
    live.require(REDIS_URL)
    client = redis_client(REDIS_URL, socket_timeout=5.0)
    key = f"rtgtest-empty-{uuid.uuid4().hex}"
    try:
        calls = [gevent.spawn(client.blpop, [key], 0.2) for _ in range(150)]
        gevent.joinall(calls, timeout=WAIT)
        assert [c.successful() for c in calls] == [True] * 150, [c.exception for c in calls if c.exception][:1]
    finally:
        client.close()


def test_redis_client_connect_timeout_defaults_to_socket_timeout() -> None:
    """Without connect_timeout a connect is bounded like any other socket operation; no health checks."""
    client = redis_client("REDIS://127.0.0.1:6379/3", socket_timeout=2.0)  # any case of the scheme
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_connect_timeout"] == 2.0
    assert kwargs["health_check_interval"] == 0
    assert kwargs["db"] == 3
    assert "client_name" not in kwargs
    client.close()


def test_redis_client_with_max_connections_makes_callers_wait_their_turn() -> None:
    """max_connections gives a blocking pool of that size; a caller waits pool_timeout (default socket_timeout)."""
    client = redis_client("redis://127.0.0.1:6379/0", socket_timeout=2.0, max_connections=3, pool_timeout=4.0)
    pool = client.connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool)
    assert pool.max_connections == 3
    assert pool.timeout == 4.0
    client.close()
    client = redis_client("redis://127.0.0.1:6379/0", socket_timeout=2.0, max_connections=3)
    assert isinstance(client.connection_pool, redis.BlockingConnectionPool)
    assert client.connection_pool.timeout == 2.0
    client.close()


def test_redis_client_refuses_a_bad_url_without_showing_the_password() -> None:
    """A URL redis-py cannot use is an InvalidOption for the caller's field, the password redacted."""
    with pytest.raises(InvalidOption) as caught:
        redis_client("redis://u:secret@host/0?socket_timeout=abc", socket_timeout=1.0, field="presence_url")
    assert caught.value.field == "presence_url"
    assert "secret" not in str(caught.value)


def test_redis_client_talks_to_the_real_redis() -> None:
    """A client built here reaches the real Redis and names its connection (CLIENT GETNAME)."""
    client = redis_client(REDIS_URL, socket_timeout=2.0, client_name="rtgtest-retry")
    try:
        try:
            client.ping()
        except redis.ConnectionError as exc:
            pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
        assert client.client_getname() in ("rtgtest-retry", b"rtgtest-retry")
    finally:
        client.close()


# ---------------------------------------------------------------------------- the house rule


def test_importing_retry_imports_neither_gevent_nor_redis() -> None:
    """Publishing works in processes without gevent, and ``import rtgevent`` must not pay for redis."""
    code = "import sys, rtgevent.retry; bad = {'gevent', 'redis'} & set(sys.modules); assert not bad, bad"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()

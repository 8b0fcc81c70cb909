"""How rtgevent waits and retries: one backoff, one deadline, password-safe URLs, Redis client settings.

Every room that talks to a server (the brokers, the Redis presence store, the backend
events publisher and consumer) retries the same way, so an outage looks the same
everywhere and a fix to the policy lands everywhere at once:

* `Backoff` / `backoff_delay`: doubling from a start to a cap, jittered to 50-100 % of the
  nominal delay, so that the nodes of a cluster do not all reconnect in the same instant
  after a server restart.
* `Deadline`: one point in time shared by several steps (attempts, waits), each asking how
  much is left, modelled on websockets' ``sync/utils.py``.
* `sleep_backoff`: a backoff wait that a stop event or a "the server is back" flag ends early.
* `redact_url`: the one text of a URL that may go into a log line or an error message.
* `redis_client`: the one place that builds redis-py clients, with the timeouts and retry
  settings every Redis room needs; `redis_cluster_client` and `LazyCluster` (made at its
  first call) the same for a Redis Cluster, whose ``redis+cluster://`` URL
  `parse_cluster_url` reads.

Low in the house: it imports nothing from rtgevent but the errors, and neither gevent nor
redis at import time -- publishing must work in processes without gevent (the Emitter),
and ``import rtgevent`` must not pay for redis.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .errors import InvalidOption

if TYPE_CHECKING:
    import redis

__all__ = [
    "CLUSTER_SCHEME",
    "Backoff",
    "ClusterURL",
    "Deadline",
    "LazyCluster",
    "backoff_delay",
    "parse_cluster_url",
    "redact_url",
    "redis_client",
    "redis_cluster_client",
    "redis_retrying",
    "sleep_backoff",
]

#: ``redis+cluster://host1:port1,host2:port2/``: a Redis Cluster, given by some of its nodes
CLUSTER_SCHEME = "redis+cluster"


def backoff_delay(attempt: int, *, start: float = 0.1, cap: float = 5.0, jitter: float = 0.5) -> float:
    """Delay before retry ``attempt`` (0-based): ``start`` doubling up to ``cap``, jittered.

    ``jitter`` is the fraction the delay may be shortened by at random: the default 0.5
    gives 50-100 % of the nominal delay, enough to spread a cluster's reconnects while
    keeping the cap a cap.  0 gives the nominal delay exactly.
    """
    nominal = min(cap, start * 2.0 ** min(attempt, 32))  # the exponent is bounded: no float overflow
    return nominal * (1.0 - jitter * random.random())


class Backoff:
    """The delays of one retry loop: `next` after each failure, `reset` once a connection works.

    A loop keeps one of these instead of an attempt counter, so that the formula and its
    constants live here and not in every loop.
    """

    __slots__ = ("_attempt", "cap", "jitter", "start")

    def __init__(self, start: float = 0.1, cap: float = 5.0, *, jitter: float = 0.5) -> None:
        if not 0 < start <= cap or not 0 <= jitter <= 1:
            raise InvalidOption("backoff", f"needs 0 < start <= cap and 0 <= jitter <= 1, got {start}, {cap}, {jitter}")
        self.start = start
        self.cap = cap
        self.jitter = jitter
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """Failures since the last `reset`: how many delays `next` has handed out."""
        return self._attempt

    def next(self) -> float:
        """The delay to wait after one more failure (each call doubles the nominal delay, up to the cap)."""
        delay = backoff_delay(self._attempt, start=self.start, cap=self.cap, jitter=self.jitter)
        self._attempt += 1
        return delay

    def reset(self) -> None:
        """The server answered: the next failure waits the shortest delay again."""
        self._attempt = 0


class Deadline:
    """Manage one timeout across several steps: each step asks how much time is left.

    ``timeout`` is the time available in seconds, or None for no limit.  Computed from the
    monotonic clock, so a wall-clock jump neither extends nor cuts it.
    """

    __slots__ = ("deadline",)

    def __init__(self, timeout: float | None) -> None:
        self.deadline: float | None = None if timeout is None else time.monotonic() + timeout

    def timeout(self, *, raise_if_elapsed: bool = False) -> float:
        """Seconds left: <= 0 once elapsed (`TimeoutError` instead if ``raise_if_elapsed``), `math.inf` with no limit.

        Unlike websockets' helper it returns `math.inf` rather than None for "no limit", so
        that ``min(step, deadline.timeout())`` just works, and it raises only when asked:
        every retry loop here wants the number, to stop with its own error.
        """
        if self.deadline is None:
            return math.inf
        left = self.deadline - time.monotonic()
        if raise_if_elapsed and left <= 0:
            raise TimeoutError("timed out")
        return left

    def expired(self) -> bool:
        """Whether the time is up (never, with no limit)."""
        return self.deadline is not None and time.monotonic() >= self.deadline


class _Event(Protocol):
    """What `sleep_backoff` needs of its stop event: gevent's and threading's both fit."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = ...) -> bool: ...


def sleep_backoff(stop: _Event, delay: float, woken: Callable[[], bool]) -> None:
    """Wait ``delay`` seconds on the event ``stop``, ending early once it is set or ``woken()``.

    A publish that reached the server proves it is back: the consumer should not sleep out
    the rest of a 5 s backoff meanwhile.  Publishers may be OS threads, which cannot wake a
    gevent Event safely, so they raise a flag that is polled every 0.1 s instead.
    """
    deadline = Deadline(delay)
    while not woken() and not stop.is_set():
        left = deadline.timeout()
        if left <= 0:
            return
        stop.wait(min(0.1, left))


def redact_url(url: str) -> str:
    """The URL without its password (in the user part or a ``password=`` query option), for logs and errors.

    A URL that cannot be parsed is not echoed at all: whatever it holds stays out of the log.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        redacted = parts
        if parts.password is not None:
            host = parts.netloc.rsplit("@", 1)[1]
            redacted = redacted._replace(netloc=f"{parts.username or ''}:***@{host}")
        if parts.query:
            # redis-py takes ``?password=...`` as well as ``user:password@``
            query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if any(key.lower() == "password" for key, _ in query):
                shown = [(key, "***" if key.lower() == "password" else value) for key, value in query]
                redacted = redacted._replace(query=urllib.parse.urlencode(shown, safe="*"))
    except ValueError:
        return "<unparsable url>"
    # unchanged URLs are returned as given: urlunsplit would turn ``memory://`` into ``memory:``
    return url if redacted is parts else urllib.parse.urlunsplit(redacted)


_T = TypeVar("_T")


def redis_retrying(store: str, what: str, retries: int, op: Callable[[int], _T], *, cap: float = 1.0) -> _T:
    """Run ``op(attempt)``; retry connection failures ``retries`` times quickly; else `BrokerUnavailable`.

    The one loop of the Redis stores (presence, history): a lost connection (or a Redis
    Cluster without a master for the slot, mid-failover) is tried again after 50 ms
    doubling to ``cap`` (jittered), any other Redis error at once raises.  ``op``
    gets the attempt number, so a write that is not idempotent can tell a retry.  ``store``
    names the store and where it is (never a password) for the error.
    """
    import redis
    from redis.exceptions import ClusterDownError, RedisClusterException, TryAgainError

    from .errors import BrokerUnavailable

    attempt = 0
    while True:
        try:
            return op(attempt)
        # a cluster in failover (no master for a slot yet, a slot in migration) is an outage too
        except (
            redis.ConnectionError,
            redis.TimeoutError,
            ClusterDownError,
            TryAgainError,
            RedisClusterException,
        ) as exc:
            if attempt >= retries:
                raise BrokerUnavailable(
                    f"{store} did not answer ({what}) after {attempt + 1} attempt(s): {exc}"
                ) from exc
            time.sleep(backoff_delay(attempt, start=0.05, cap=cap))
            attempt += 1
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"{store} refused {what}: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis+cluster://[user:password@]host1:port1[,host2:port2...]/``."""

    #: the nodes named, ``(host, port)``: where a client starts (it learns the others)
    nodes: tuple[tuple[str, int], ...]
    #: ACL user and password of every node (Redis Cluster nodes share them), unquoted
    username: str | None
    password: str | None

    def node_url(self, host: str, port: int) -> str:
        """``redis://`` for one node of the cluster, with the cluster's credentials."""
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.password is None and self.username is None:
            return f"redis://{address}"
        user = urllib.parse.quote(self.username or "", safe="")
        password = "" if self.password is None else ":" + urllib.parse.quote(self.password, safe="")
        return f"redis://{user}{password}@{address}"


def parse_cluster_url(url: str, field: str = "url") -> ClusterURL:
    """``url`` parsed, or `InvalidOption` for ``field`` (the URL redacted) if it is not a cluster URL.

    Checked without connecting, so that a typo fails when the store or broker is made, not
    at its first call.  The user part, as in ``redis://``, is the ACL user and password
    (percent-encoded); TLS (``rediss``) is not offered for a cluster.
    """
    wrong = InvalidOption(
        field, f"{redact_url(str(url))!r}: want redis+cluster://[user:password@]host:port[,host:port...]/"
    )
    scheme, sep, rest = url.partition("://") if isinstance(url, str) else ("", "", "")
    if scheme.lower() != CLUSTER_SCHEME or not sep:
        raise wrong
    location = rest.split("/", 1)[0]
    userinfo, at, hosts = location.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon else None
    nodes: list[tuple[str, int]] = []
    for address in hosts.split(","):
        host, _, port = address.strip().rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or "@" in host:
            raise wrong
        nodes.append((host, int(port)))
    return ClusterURL(tuple(nodes), username, password)


def redis_cluster_client(url: str, *, socket_timeout: float, field: str = "url") -> Any:
    """A redis-py ``RedisCluster`` for ``redis+cluster://[user:password@]h1:p1,h2:p2/`` (SPEC section 15).

    The nodes named are only where it starts: the client learns the slots and the other
    nodes from them, follows ``MOVED`` / ``ASK`` and refreshes the topology after a
    failover by itself.  ``socket_timeout`` bounds every call, as for `redis_client`.  A
    malformed URL raises `InvalidOption` for ``field``, with the URL redacted.  Making one
    connects (it asks a node for the slots).
    """
    from redis.cluster import ClusterNode, RedisCluster

    parsed = parse_cluster_url(url, field)
    nodes = [ClusterNode(host, port) for host, port in parsed.nodes]  # type: ignore[no-untyped-call]
    return RedisCluster(
        startup_nodes=nodes,
        username=parsed.username,
        password=parsed.password,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
    )


class LazyCluster:
    """A ``RedisCluster`` made at its first call, for the stores (presence, history).

    Making a ``RedisCluster`` connects: it asks the nodes for the slots, and raises if none
    answers.  A node must start while its Redis is down (SPEC section 7) and catch up later,
    so the stores hold this instead: the URL is checked now, the client is made by the
    first call, and until a node answers every call fails the way a lost connection does
    (``RedisClusterUnreachableError``, which the stores' retry loop turns into
    `BrokerUnavailable`).  Scripts are registered without a client (their SHA needs only
    the encoding).  Thread-safe: the stores are called from OS threads too (the Emitter).
    """

    def __init__(self, url: str, *, socket_timeout: float, field: str = "url") -> None:
        import threading

        parse_cluster_url(url, field)  # a malformed URL fails now, not at the first call
        self._url = url
        self._socket_timeout = socket_timeout
        self._field = field
        self._client: Any = None
        self._lock = threading.Lock()
        self._closed = False

    def get_encoder(self) -> Any:
        """The encoding every ``RedisCluster`` made here uses (redis-py's default), for `register_script`."""
        from redis._parsers.encoders import Encoder

        return Encoder("utf-8", "strict", False)  # type: ignore[no-untyped-call]

    def register_script(self, script: str) -> Any:
        from redis.commands.core import Script

        return Script(self, script)  # type: ignore[arg-type]  # calls this object's evalsha / script_load

    def client(self) -> Any:
        """The ``RedisCluster``, made now if it is not yet (which connects, or raises)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._closed:
                    import redis

                    raise redis.ConnectionError("the cluster client is closed")
                if self._client is None:
                    self._client = redis_cluster_client(
                        self._url, socket_timeout=self._socket_timeout, field=self._field
                    )
                client = self._client
        return client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client(), name)

    def close(self) -> None:
        with self._lock:
            client, self._client, self._closed = self._client, None, True
        if client is not None:
            client.close()


#: connections of one Redis client's pool unless the caller says otherwise: enough for a burst
#: of concurrent calls (they wait for a free one beyond it, never fail for want of one)
POOL_SIZE = 256


def redis_client(
    url: str,
    *,
    socket_timeout: float,
    connect_timeout: float | None = None,
    health_check_interval: float = 0,
    client_name: str | None = None,
    max_connections: int | None = None,
    pool_timeout: float | None = None,
    field: str = "url",
) -> redis.Redis:
    """A redis-py client for ``url`` with our timeouts and no retries of its own; it owns its pool.

    * ``socket_timeout`` bounds every read and write, ``connect_timeout`` (default: the same)
      every connect: a Redis that stopped answering fails a call instead of hanging it.
    * redis-py's own retries are off (``Retry(NoBackoff(), 0)``; redis-py 8 would otherwise
      retry some errors by itself): the caller's loop retries, so how long a caller waits is
      bounded by its deadline, not by a policy hidden in the client.
    * ``health_check_interval``: PING a pooled connection before use once it has been idle
      that long; 0 (the default) leaves detecting dead connections to the caller, as the
      pub/sub consumer does with its own PINGs.
    * ``client_name`` (``CLIENT SETNAME``) names the connections in ``CLIENT LIST``.
    * ``max_connections``: at most that many connections (None: `POOL_SIZE`); a caller beyond
      that waits for one up to ``pool_timeout`` (default: ``socket_timeout``).  Never
      redis-py's own unbounded-looking default: it stops at 100 connections and *raises* for
      the 101st caller, which a reconnect storm of a thousand sessions reaches at once.

    A malformed URL raises `InvalidOption` for ``field``, with the URL redacted.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    scheme, sep, rest = url.partition("://")
    url = scheme.lower() + sep + rest  # redis-py wants the scheme in lower case
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout if connect_timeout is None else connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": health_check_interval,
    }
    if client_name is not None:
        options["client_name"] = client_name
    try:
        wait = socket_timeout if pool_timeout is None else pool_timeout
        size = POOL_SIZE if max_connections is None else max_connections
        pool: redis.ConnectionPool = redis.BlockingConnectionPool.from_url(
            url, max_connections=size, timeout=wait, **options
        )
    except ValueError as exc:
        raise InvalidOption(field, f"{redact_url(url)!r}: {exc}") from None
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # close() disconnects the pool: nobody else holds it
    return client

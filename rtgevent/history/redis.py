"""RedisHistory: one Redis Stream per stream, bounded by ``MAXLEN`` and expiring (SPEC section 14).

Key layout (``<ns>`` is the namespace; the braces are a Redis Cluster hash tag, so a
stream's two keys always live on one shard and one script may touch both)::

    <ns>:history:{<stream>}        stream  entry id "<offset>-0", fields d (text) or b (binary), i
    <ns>:history:{<stream>}:meta   hash    o -> last offset, e -> epoch

Appending is one script: it makes the epoch if the stream has none (a new stream, one that
expired, or a Redis that restarted empty; the old entries are dropped with it), takes the
next offset, renders the `Stamp` with it, ``XADD``s it with an exact ``MAXLEN`` and gives
both keys the stream's ttl again.  Given a broker channel, the same script ``PUBLISH``es the
publication too: `RedisBroker` on the same server then delivers in exactly the order of the
offsets, and no node can see a publication that history does not hold.

Reading (`since`, `position`) is one script each.  An entry's id is its offset, so reading
from an offset is one ``XRANGE``.

A Redis failure is retried ``retries`` times, quickly, then raises `BrokerUnavailable`.  A
retried append carries the publication's id (field ``i``): the script first looks for it
among the stream's last entries, so a reply lost on the way back never appends twice.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from ..broker.base import check_namespace
from ..errors import InvalidOption
from ..retry import CLUSTER_SCHEME, LazyCluster, redact_url, redis_client, redis_retrying
from .base import Position, Publication, Recovery, Stamp, as_stamp, reaches_back

if TYPE_CHECKING:
    from ..broker.base import Broker

__all__ = ["RedisHistory"]

_T = TypeVar("_T")

#: how many of a stream's last entries a retried append looks through for its own id
_RETRY_LOOKBACK = 16

_APPEND_LUA = """
local size, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local epoch = redis.call('HGET', KEYS[2], 'e')
if ARGV[5] == '1' and epoch then
  for _, entry in ipairs(redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[6])) do
    local fields = entry[2]
    for j = 1, #fields, 2 do
      if fields[j] == 'i' and fields[j + 1] == ARGV[4] then
        return {tonumber(string.match(entry[1], '^(%d+)')), epoch}
      end
    end
  end
end
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch)
end
local offset = redis.call('HINCRBY', KEYS[2], 'o', 1)
local function render(first, count)
  local out = {}
  for i = 0, count - 1 do
    local part = ARGV[first + i]
    if i % 2 == 1 then
      if part == 'o' then part = string.format('%d', offset) else part = epoch end
    end
    out[#out + 1] = part
  end
  return table.concat(out)
end
local n = tonumber(ARGV[8])
redis.call('XADD', KEYS[1], 'MAXLEN', size, string.format('%d-0', offset), ARGV[7], render(9, n), 'i', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
local rest = 9 + n
if #ARGV > rest then
  redis.call('PUBLISH', ARGV[rest], render(rest + 2, tonumber(ARGV[rest + 1])))
end
return {offset, epoch}
"""

_SINCE_LUA = """
local meta = redis.call('HMGET', KEYS[2], 'o', 'e')
if not meta[2] then return {0, '', 1, {}} end
local top = tonumber(meta[1])
local first = top + 1
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #oldest > 0 then first = tonumber(string.match(oldest[1][1], '^(%d+)')) end
local found = {}
if ARGV[3] == meta[2] or (ARGV[3] == '' and ARGV[1] == '0') then
  local start = string.format('%d-0', tonumber(ARGV[1]) + 1)
  for _, entry in ipairs(redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', ARGV[2])) do
    local fields = entry[2]
    found[#found + 1] = tonumber(string.match(entry[1], '^(%d+)'))
    found[#found + 1] = fields[1]
    found[#found + 1] = fields[2]
  end
end
return {top, meta[2], first, found}
"""


class RedisHistory:
    """A `History` in Redis Streams; see the module docstring.

    ``url_or_client`` is a ``redis://`` / ``rediss://`` URL, or ``redis+cluster://h1:p1,h2:p2/``
    for a Redis Cluster (this object then owns its pool), or a ``redis.Redis`` (or
    ``RedisCluster``) the caller owns.  ``socket_timeout`` bounds every call.  On a cluster a
    stream's two keys share a hash tag, so its scripts touch one slot, and streams spread
    over the shards by name.
    """

    #: every node of a cluster shares it
    shared = True

    def __init__(
        self,
        url_or_client: str | redis.Redis | Any,
        *,
        namespace: str = "rtgevent",
        socket_timeout: float = 2.0,
        retries: int = 2,
    ) -> None:
        if not socket_timeout > 0:
            raise InvalidOption("socket_timeout", "must be a positive number of seconds")
        if not isinstance(retries, int) or retries < 0:
            raise InvalidOption("retries", "must be an integer >= 0")
        check_namespace(namespace)
        if isinstance(url_or_client, str) and url_or_client.lower().startswith(CLUSTER_SCHEME + "://"):
            self._client: Any = LazyCluster(url_or_client, socket_timeout=socket_timeout, field="history_url")
            self._owns_client = True
            self._url: str | None = None  # no broker publishes through a cluster's script yet
            self._where = redact_url(url_or_client)
        elif isinstance(url_or_client, str):
            self._client = redis_client(url_or_client, socket_timeout=socket_timeout, field="history_url")
            self._owns_client = True
            self._url = url_or_client
            self._where = redact_url(url_or_client)
        else:
            self._client = url_or_client
            self._owns_client = False
            self._url = None
            self._where = "a caller's redis client"
        #: the first part of every key (streams of another namespace are another world)
        self.namespace = namespace
        self._prefix = f"{namespace}:history:"
        self._retries = retries
        self._append = self._client.register_script(_APPEND_LUA)
        self._since = self._client.register_script(_SINCE_LUA)

    def __repr__(self) -> str:
        return f"RedisHistory({self._where!r})"

    def keys(self, stream: str) -> tuple[str, str]:
        """The stream's two Redis keys: its entries and its offset and epoch."""
        key = f"{self._prefix}{{{stream}}}"
        return key, f"{key}:meta"

    def publisher(self, broker: Broker) -> Callable[[str], str] | None:
        """If ``broker`` is a `RedisBroker` on this very Redis, the topic → channel naming the
        append script can ``PUBLISH`` to; else None (the caller publishes after appending)."""
        from ..broker.redis import RedisBroker

        if isinstance(broker, RedisBroker) and self._url is not None and broker.url == self._url:
            return broker.redis_channel
        return None

    def append(
        self,
        stream: str,
        payload: Stamp | str | bytes,
        size: int,
        ttl: float,
        *,
        publish: tuple[str, Stamp] | None = None,
    ) -> Position:
        """`History.append`; with ``publish`` (a Redis channel and the broker payload) the
        same script publishes the rendered payload."""
        entry = as_stamp(payload)
        field = "b" if isinstance(entry.parts[0], bytes) else "d"
        ident = secrets.token_hex(4)
        args: list[Any] = [size, max(1, int(ttl * 1000)), secrets.token_hex(4), ident, "0", _RETRY_LOOKBACK, field]
        args.append(len(entry.parts))
        args.extend(entry.parts)
        if publish is not None:
            channel, message = publish
            args.append(channel)
            args.append(len(message.parts))
            args.extend(message.parts)
        keys = self.keys(stream)

        def run(attempt: int) -> Position:
            args[4] = "1" if attempt else "0"
            offset, epoch = self._append(keys=keys, args=args)
            return Position(int(offset), _text(epoch))

        return self._run("append", run)

    def since(self, stream: str, offset: int, epoch: str, limit: int) -> Recovery:
        def run(attempt: int) -> Recovery:
            top, top_epoch, first, found = self._since(keys=self.keys(stream), args=[offset, max(1, limit), epoch])
            position = Position(int(top), _text(top_epoch))
            if not reaches_back(offset, epoch, position, int(first)):
                return Recovery([], position.offset, position.epoch, False)
            publications = [
                Publication(int(found[i]), _text(found[i + 2]) if _text(found[i + 1]) == "d" else bytes(found[i + 2]))
                for i in range(0, len(found), 3)
            ]
            return Recovery(publications, position.offset, position.epoch, True)

        return self._run("since", run)

    def position(self, stream: str) -> Position:
        def run(attempt: int) -> Position:
            top, epoch = self._client.hmget(self.keys(stream)[1], ["o", "e"])
            return Position(0, "") if epoch is None else Position(int(top or 0), _text(epoch))

        return self._run("position", run)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def _run(self, what: str, op: Callable[[int], _T]) -> _T:
        return redis_retrying(f"history store {self._where}", what, self._retries, op, cap=0.5)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

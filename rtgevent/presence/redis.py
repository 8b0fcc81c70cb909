"""Presence in Redis, leased per node (SPEC section 7; ARCHITECTURE.md "One node, many nodes").

Theory of operation
-------------------
A session is alive exactly while the lease of its node is alive, so sessions are never
refreshed one by one: a node renews one sorted-set entry every ``presence_ttl / 3`` however
many sessions it holds.  Lookups ignore the sessions of a node whose lease is missing or past
its deadline, so a node that died vanishes from every answer within ``ttl`` without anyone
cleaning up; the next `renew` of any other node then purges its entries.

Key layout (``<ns>`` is the namespace, ``esc()`` percent-escapes ``%`` and ``:`` so that a
tenant ``"a:b"`` with identity ``"c"`` and a tenant ``"a"`` with identity ``"b:c"`` never share
a key: tenants are separate worlds)::

    <ns>:ident:<esc(tenant)>:<identity>   hash  session_id -> '["<node_id>","<remote_addr>","<connected_at>"]'
    <ns>:node:<node_id>                   set   '<esc(session_id)>:<esc(tenant)>:<identity>'
    <ns>:leases                           zset  node_id -> lease deadline (unix seconds, Redis clock)
    <ns>:seq:<esc(tenant)>:<identity>     string the identity's last login number, once it is above 1
    <ns>:chan:<channel>                   hash  session_id -> '["<node_id>","<tenant>","<identity>",
                                                                "<remote_addr>","<connected_at>"]'
    <ns>:chancount:<channel>              hash  node_id -> how many members the channel has on that node
    <ns>:nodechan:<node_id>               set   '<esc(session_id)>:<channel>'
    <ns>:nodestats:<node_id>              string the node's stats record for the admin page (JSON, with a TTL)

The hash value is a compact JSON array rather than `SessionInfo.to_json`: session id, tenant
and identity are already spelled by the field and the key, ``expires_at`` is the node's
lease, and a value under 64 bytes keeps small hashes in Redis' compact listpack encoding
(about half the memory).  A node-set member spells the identity key suffix and the field, so
a purge finds every entry of a node without reading the hashes.

Channel presence (SPEC section 13) is the same design keyed by channel: a member's value
starts with its node like an identity entry (so the one lookup script serves both), and its
channels are listed in the node's own channel set, which the purge empties beside the
node's sessions.  A channel name is printable ASCII without spaces and ends its keys, so it
needs no escaping.  ``chancount`` keeps the count per node, raised and lowered by the same
script that writes a member, so `channel_count` reads one small hash (one field per node)
however large the channel: it adds up the fields of live nodes.  A purge deletes the dead
node's field; the self-healing recounts a node's fields from the member hashes.

Deadlines are computed from Redis' own clock (``TIME`` inside the scripts), never from the
caller's: nodes with skewed clocks still agree on which leases are alive.

Login numbers: `register` gives each new session of an identity the next value of the
identity's counter, in the same script that writes the session, so the numbers are one total
order every node agrees on (``session_policy="replace"`` keeps the highest).  An identity
that is offline has no counter, and its first login is number 1 without one: the counter key
is made by the second login (most identities never have one: about 120 bytes each saved),
and deleted with the identity's last session (by `unregister` or a purge).  The object
remembers each session's number: registering it again (self-healing after a Redis restart)
keeps the number and raises the counter back to it.

Operations and their round trips: `register` and `unregister` are one ``EVALSHA`` of the write
script; `get_identity_sessions` and `is_online` are one ``EVALSHA`` (the script reads the
hash and the lease scores of the nodes named in it); `sequence` is one ``EVALSHA``; `renew` is one
``EVALSHA`` in the steady state.  `channel_join` and `channel_leave` are one ``EVALSHA`` of the
channel script; `unregister` of a session that is in channels is one ``EVALSHA`` of that script,
which removes the session and all its memberships at once (a closing session leaves every
channel); `channel_members` is one ``EVALSHA`` of the lookup script, `channel_count` one of the
count script.  A purge runs in chunks of `purge_chunk` sessions and as many memberships, each
chunk one atomic script that first checks the lease is still expired: two nodes purging the
same dead node at once pop disjoint members (``SPOP``) and never touch a node that renewed
meanwhile.

Self-healing: the object remembers the sessions it registered (it needs them anyway to find
a session's keys on `unregister`) and the channel memberships it wrote.  When `renew` sees
that Redis holds a different number of sessions, or of memberships, for the node than it
wrote (Redis restarted empty, the node was purged during a long pause, an `unregister` or a
`channel_leave` failed while Redis was down), it rewrites the node's entries from what it
knows, after counting again while no write of its own is in flight (one it remembers but
Redis has not seen yet is no drift).  A `channel_join` that fails stays remembered (its
caller gets `BrokerUnavailable`), so the first renew that reaches Redis again writes it.
This assumes one presence object writes each node id, which is how `Realtime` uses it (one
node id per process).

The admin page (`NodeDirectory`): each node keeps a small stats record under its own key
with a TTL (one ``SET``); `nodes` reads the live leases, each node's set size and record in
one script, and `online_identities` walks the node sets of live nodes with ``SSCAN``, so
a node that died is out of both answers as soon as its lease ends, purged or not.

Redis Cluster (``redis+cluster://``, SPEC section 15): the same keys, each owner's under one
hash tag, so that every script touches one slot and the keys spread over the shards::

    {<ns>:ident:<esc(tenant)>:<identity>}         the identity hash ...
    {<ns>:ident:<esc(tenant)>:<identity>}:seq     ... and its login counter
    {<ns>:node:<node_id>}                         the node's session set ...
    {<ns>:node:<node_id>}:chan                    ... its channel set ...
    {<ns>:node:<node_id>}:lease                   ... its own lease (deadline, Redis clock) ...
    {<ns>:node:<node_id>}:stats                   ... and its stats record
    {<ns>:chan:<channel>}                         a channel's members ...
    {<ns>:chan:<channel>}:count                   ... and its counts per node
    {<ns>:leases}                                 the directory: node -> deadline, as above

What one script did across those slots is done per slot, in an order that makes a crash in
between harmless: a session's node-set entry is written before its identity entry and
removed after it (an index entry without a session is removed by a purge without harm; the
opposite, a session no purge can find, never happens); the same for a channel membership
and the node's channel set.  A purge pops a chunk in the dead node's slot, checking its own
lease there atomically, then removes each popped entry in its identity's or channel's slot
(one pipeline, one round trip per shard), and takes the node out of the directory last,
unless it renewed meanwhile.  A node that comes back between a chunk's pop and its
removals heals at that renewal, and the removals may still land after the heal: so a
renewal that healed on a cluster is followed by one that writes everything again.
`renew` is two calls (the node's lease, then the directory).  Lookups read the owner's hash
and check its nodes against the directory as this object last read it (`_alive`), so the
directory's shard is not asked at every lookup.  Redis >= 7 for a cluster, >= 5 otherwise.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, TypeVar

import redis
from redis.cluster import RedisCluster

from ..broker.base import check_namespace
from ..channels import check_channel
from ..errors import InvalidOption
from ..retry import CLUSTER_SCHEME, LazyCluster, redact_url, redis_client, redis_retrying
from ..types import SessionInfo
from .base import NodeLease, OnlineIdentity, identity_matches

__all__ = ["RedisPresence"]

_T = TypeVar("_T")

#: The longest pause between quick retries (`rtgevent.retry.redis_retrying`): long enough
#: for a failover of a pooled connection to be noticed, short enough that the caller is
#: answered promptly.
_RETRY_CAP = 1.0

#: How many expired nodes one `renew` looks at: a mass outage is purged over a few renewals
#: instead of blocking one renewer for long.
_EXPIRED_SCAN = 16

#: How long a self-healing waits for the writes in flight, and a write for a self-healing.
_HEAL_WAIT = 5.0

# Reads the identity hash and the lease of each node named in it, in one round trip, and
# keeps only the sessions of live nodes.  ARGV[1] == "1" answers "anyone alive?" (is_online)
# and stops at the first live session.  Values that do not decode to [node, ...] are skipped:
# they cannot belong to a live node we could route to.
_LOOKUP_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local any = ARGV[1] == '1'
local h = redis.call('HGETALL', KEYS[1])
local deadlines = {}
local out = {}
for i = 1, #h, 2 do
  local ok, v = pcall(cjson.decode, h[i + 1])
  if ok and type(v) == 'table' and type(v[1]) == 'string' then
    local node = v[1]
    local d = deadlines[node]
    if d == nil then
      d = redis.call('ZSCORE', KEYS[2], node)
      deadlines[node] = d
    end
    if d and tonumber(d) > now then
      if any then return 1 end
      out[#out + 1] = h[i]
      out[#out + 1] = h[i + 1]
      out[#out + 1] = d
    end
  end
end
if any then return 0 end
return out
"""

# Sets this node's deadline to now + ttl, and reports how many sessions and channel
# memberships Redis holds for it (to detect lost entries) and a few expired nodes (to purge).
# On Redis Cluster only KEYS[1] is given (the node's sets live in its own slot, counted by
# the lease script) and the counts come back as -1.
_RENEW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local deadline = string.format('%.6f', now + tonumber(ARGV[2]))
redis.call('ZADD', KEYS[1], deadline, ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now),
                           'LIMIT', 0, tonumber(ARGV[3]))
local stored, joined = -1, -1
if KEYS[2] then stored, joined = redis.call('SCARD', KEYS[2]), redis.call('SCARD', KEYS[3]) end
return {deadline, stored, expired, joined}
"""

# Redis Cluster: the node's own lease, in the slot of its session and channel sets (the
# purge checks it atomically with what it pops).  KEYS: the lease, the session set, the
# channel set; ARGV: the ttl.  Returns the deadline and the two set sizes.
_LEASE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local deadline = string.format('%.6f', now + tonumber(ARGV[1]))
redis.call('SET', KEYS[1], deadline)
return {deadline, redis.call('SCARD', KEYS[2]), redis.call('SCARD', KEYS[3])}
"""

# Redis Cluster: pops one chunk of an expired node's entries, in the node's slot; the caller
# removes each from its identity's or channel's slot.  KEYS as `_LEASE_LUA`'s; ARGV: the
# chunk.  Returns {left, sessions popped, memberships popped}; left is -1 if the node
# renewed meanwhile (leave it alone), 0 when nothing is left (the lease key is gone then).
_PURGE_CHUNK_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local d = redis.call('GET', KEYS[1])
if not d then return {0, {}, {}} end
if tonumber(d) > now then return {-1, {}, {}} end
local members = redis.call('SPOP', KEYS[2], tonumber(ARGV[1]))
local joined = redis.call('SPOP', KEYS[3], tonumber(ARGV[1]))
local left = redis.call('SCARD', KEYS[2]) + redis.call('SCARD', KEYS[3])
if left == 0 then redis.call('DEL', KEYS[1]) end
return {left, members, joined}
"""

# Redis Cluster: takes a purged node out of the directory, unless it renewed meanwhile.
_RETIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local d = redis.call('ZSCORE', KEYS[1], ARGV[1])
if d and tonumber(d) <= now then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""

# Redis Cluster: the directory as it is now: Redis' time, then each live node and its
# deadline, at most ARGV[1] of them.
_DIRECTORY_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local live = redis.call('ZRANGEBYSCORE', KEYS[1], string.format('(%.6f', now), '+inf',
                        'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
return {string.format('%.6f', now), live}
"""

# How many members a channel has on live nodes: the count hash has one field per node.
_COUNT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local h = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #h, 2 do
  local d = redis.call('ZSCORE', KEYS[2], h[i])
  if d and tonumber(d) > now then n = n + tonumber(h[i + 1]) end
end
return n
"""

# The node a stored value (identity entry or channel member) names, or nil.
_NODE_OF_LUA = """
local function node_of(v)
  local ok, t = pcall(cjson.decode, v)
  if ok and type(t) == 'table' and type(t[1]) == 'string' then return t[1] end
  return nil
end
"""

# Adds or removes one session's memberships of channels, atomically (a purge sees all or none),
# keeping each channel's count per node.  'unregister' removes the memberships and the
# session's identity entry, as the write script's 'del' does: a closing session is one call.
# ARGV: op ('add', 'del', 'unregister'), session id, node id, member value, the number n of
# channels, then n node-channel-set members, then (unregister) the identity node-set member.
# KEYS: each channel's member hash and count hash, then the node's channel set, then
# (unregister) the identity hash, the identity's login counter and the node set.  On Redis
# Cluster a call names one channel's two keys only (one slot): the caller writes the node's
# channel set itself, and never sends 'unregister'.
# A member is removed only if it names this node: a session id is a node's own.
_CHANNEL_LUA = (
    _NODE_OF_LUA
    + """
local function uncount(key, node)
  if node and redis.call('HINCRBY', key, node, -1) <= 0 then redis.call('HDEL', key, node) end
end
local op, sid, node = ARGV[1], ARGV[2], ARGV[3]
local n = tonumber(ARGV[5])
local set = KEYS[2 * n + 1]
local changed = 0
for i = 1, n do
  local members, counts, entry = KEYS[2 * i - 1], KEYS[2 * i], ARGV[5 + i]
  local old = redis.call('HGET', members, sid)
  local was = old and node_of(old)
  if op == 'add' then
    redis.call('HSET', members, sid, ARGV[4])
    if set then redis.call('SADD', set, entry) end
    if was ~= node then
      uncount(counts, was)
      redis.call('HINCRBY', counts, node, 1)
      changed = changed + 1
    end
  else
    if set then redis.call('SREM', set, entry) end
    if was == node then
      redis.call('HDEL', members, sid)
      uncount(counts, node)
      changed = changed + 1
    end
  end
end
if op == 'unregister' then
  local k = 2 * n + 2
  redis.call('HDEL', KEYS[k], sid)
  redis.call('SREM', KEYS[k + 2], ARGV[6 + n])
  if redis.call('EXISTS', KEYS[k]) == 0 then redis.call('DEL', KEYS[k + 1]) end
end
return changed
"""
)

# Sets a node's count of a channel from the member hash (self-healing only: it reads every
# member).  KEYS: the member hash, the count hash; ARGV: the node id.
_RECOUNT_LUA = (
    _NODE_OF_LUA
    + """
local n = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  if node_of(v) == ARGV[1] then n = n + 1 end
end
if n > 0 then redis.call('HSET', KEYS[2], ARGV[1], n) else redis.call('HDEL', KEYS[2], ARGV[1]) end
return n
"""
)

# Adds or removes one session, atomically (a purge sees all of its entries or none).
# KEYS: the identity hash, the identity's login counter, then the node set -- except on Redis
# Cluster, where the node set lives in another slot and the caller writes it itself (first
# when adding, last when removing: a crash in between leaves an index entry without a
# session, which a purge removes harmlessly, never a session no purge can find).
# ARGV: 'add' or 'del', session id, node-set member, hash value, the number to keep ('' for a
# new login).  'add' returns the session's login number: the next one, or the kept one (the
# counter is raised to it if Redis lost it).  Without a counter the identity's sessions are all
# number 1 (none, if the hash is empty): the first login takes 1 and makes no key, the next
# one makes the counter at 2.  'del' deletes the counter with the identity's last session.
_WRITE_LUA = """
if ARGV[1] == 'del' then
  redis.call('HDEL', KEYS[1], ARGV[2])
  if KEYS[3] then redis.call('SREM', KEYS[3], ARGV[3]) end
  if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
  return 0
end
local last = tonumber(redis.call('GET', KEYS[2])) or redis.call('EXISTS', KEYS[1])
local n
if ARGV[5] == '' then
  n = last + 1
else
  n = tonumber(ARGV[5])
end
if n > 1 and n > last then redis.call('SET', KEYS[2], n) end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
if KEYS[3] then redis.call('SADD', KEYS[3], ARGV[3]) end
return n
"""

# The identity's last login number: its counter, else 1 if it has a session, else 0.
_SEQUENCE_LUA = """
local last = redis.call('GET', KEYS[2])
if last then return tonumber(last) end
return redis.call('EXISTS', KEYS[1])
"""

# Purges one chunk of an expired node, atomically: up to ARGV[3] sessions and as many channel
# memberships.  Returns how many entries are left (0 when done, and then the lease entry is
# gone too), or -1 if the node renewed meanwhile (it is alive: leave it alone; its own renew
# re-adds what an earlier chunk removed).  A node with no lease entry is left alone as well:
# it registered after an earlier purge and has not renewed yet, or another purger just
# finished.  A membership's channel loses the node's count field (the node is dead: none of
# its members count); the member itself goes only if it names the node.
_PURGE_LUA = (
    _NODE_OF_LUA
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local d = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not d then return 0 end
if tonumber(d) > now then return -1 end
local function unesc(text)
  return (string.gsub(text, '%%(%x%x)', function(h) return string.char(tonumber(h, 16)) end))
end
local members = redis.call('SPOP', KEYS[2], tonumber(ARGV[3]))
for _, m in ipairs(members) do
  local sid, rest = string.match(m, '^([^:]*):(.*)$')
  if sid then
    sid = unesc(sid)
    redis.call('HDEL', ARGV[2] .. rest, sid)
    if redis.call('EXISTS', ARGV[2] .. rest) == 0 then redis.call('DEL', ARGV[4] .. rest) end
  end
end
local joined = redis.call('SPOP', KEYS[3], tonumber(ARGV[3]))
for _, m in ipairs(joined) do
  local sid, channel = string.match(m, '^([^:]*):(.*)$')
  if sid then
    sid = unesc(sid)
    local key = ARGV[5] .. channel
    local v = redis.call('HGET', key, sid)
    if v and node_of(v) == ARGV[1] then redis.call('HDEL', key, sid) end
    redis.call('HDEL', ARGV[6] .. channel, ARGV[1])
  end
end
local left = redis.call('SCARD', KEYS[2]) + redis.call('SCARD', KEYS[3])
if left == 0 then redis.call('ZREM', KEYS[1], ARGV[1]) end
return left
"""
)

# The live nodes: for each, its lease (seconds left, by Redis' clock), the size of its session
# set and its stats record (nil when it wrote none).  ARGV: the node-set prefix, the stats
# prefix, the most nodes to list.  Floats go back as strings (Redis truncates Lua numbers).
_NODES_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local live = redis.call('ZRANGEBYSCORE', KEYS[1], string.format('(%.6f', now), '+inf',
                        'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for i = 1, #live, 2 do
  local node = live[i]
  out[#out + 1] = node
  out[#out + 1] = string.format('%.3f', tonumber(live[i + 1]) - now)
  out[#out + 1] = redis.call('SCARD', ARGV[1] .. node)
  out[#out + 1] = redis.call('GET', ARGV[2] .. node)
end
return out
"""

# The ids of the live nodes, at most ARGV[1] of them.
_LIVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], string.format('(%.6f', now), '+inf', 'LIMIT', 0, tonumber(ARGV[1]))
"""

#: Members one ``SSCAN`` step asks for while listing who is online.
_SCAN_COUNT = 500

#: Chunks one `purge_node` call works through at most (x `purge_chunk` = 5M sessions by default).
_PURGE_ROUNDS = 10_000

_UNESCAPE = re.compile(r"%(25|3A)")

#: Redis Cluster: how long the directory of live nodes as last read may answer lookups.
_DIRECTORY_MAX_AGE = 1.0

#: Redis Cluster: the most live nodes one directory read returns.
_DIRECTORY_LIMIT = 10_000


class _Directory(NamedTuple):
    """Redis Cluster: the live nodes and their deadlines, read at ``read_at`` (monotonic) when Redis said ``now``."""

    read_at: float
    now: float
    deadlines: dict[str, float]

    def alive(self, nodes: Iterable[str]) -> dict[str, float]:
        """Those of ``nodes`` whose deadline is still ahead, by Redis' clock as it stands now."""
        now = self.now + (time.monotonic() - self.read_at)
        return {node: d for node in nodes if (d := self.deadlines.get(node)) is not None and d > now}


class _Batch:
    """Writes queued in order, then run together (`run` returns each one's reply).

    One Redis: one call alone is one call; several are one ``MULTI`` (all or nothing, as a
    purge must see them).  Redis Cluster has no transaction across slots, so there
    ``ordered`` batches run one call after another, in the order queued (the order is what
    keeps a crash harmless, see `_WRITE_LUA`), and the others (purges, self-healing) go in
    one pipeline, one round trip per shard, scripts sent as ``EVAL`` text (a pipeline cannot
    load a script a shard lacks, such as a freshly promoted replica).
    """

    __slots__ = ("_client", "_cluster", "_ops", "_ordered")

    def __init__(self, client: Any, *, cluster: bool, ordered: bool) -> None:
        self._client = client
        self._cluster = cluster
        self._ordered = ordered
        self._ops: list[tuple[Any, list[str], list[Any]]] = []

    def script(self, script: Any, keys: list[str], args: list[Any]) -> None:
        self._ops.append((script, keys, args))

    def command(self, *args: Any) -> None:
        self._ops.append((None, [], list(args)))

    def run(self) -> list[Any]:
        ops = self._ops
        if len(ops) == 1 or (self._cluster and self._ordered):
            return [self._call(self._client, op) for op in ops]
        if not self._cluster:
            pipe = self._client.pipeline(transaction=True)
            for op in ops:
                self._call(pipe, op)
            return list(pipe.execute())
        pipe = self._client.pipeline()
        for script, keys, args in ops:
            if script is None:
                pipe.execute_command(*args)
            else:
                pipe.execute_command("EVAL", script.script, len(keys), *keys, *args)
        return list(pipe.execute())

    @staticmethod
    def _call(client: Any, op: tuple[Any, list[str], list[Any]]) -> Any:
        script, keys, args = op
        return client.execute_command(*args) if script is None else script(keys=keys, args=args, client=client)


def _check_ttl(ttl: float) -> None:
    if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
        raise InvalidOption("ttl", "must be a finite, positive number of seconds")


def _esc(text: str) -> str:
    """Make ``text`` free of ``:`` (reversibly), so it can sit before a separator."""
    return text.replace("%", "%25").replace(":", "%3A")


def _unesc(text: str) -> str:
    return _UNESCAPE.sub(lambda m: "%" if m.group(1) == "25" else ":", text)


def _text(value: bytes | str) -> str:
    """Redis replies are bytes unless the caller's client decodes them; accept both."""
    return value.decode() if isinstance(value, bytes) else value


def _glob(search: str) -> str:
    """A ``MATCH`` pattern that keeps every node-set member `identity_matches` could accept (and some more).

    Letters become ``[aA]`` classes (``MATCH`` is case-sensitive, the search is not), glob
    characters are escaped.  A search with ``:`` or ``%`` would differ in the escaped tenant,
    and a non-ASCII one may case-fold to other letters (``ß`` to ``ss``): those match
    everything and the filter in Python decides alone.
    """
    if not search or ":" in search or "%" in search or not search.isascii():
        return "*"
    out = []
    for char in search:
        lower, upper = char.lower(), char.upper()
        if lower != upper:
            out.append(f"[{lower}{upper}]")
        elif char in "*?[]\\":
            out.append("\\" + char)
        else:
            out.append(char)
    return "*" + "".join(out) + "*"


def _dt_out(value: datetime.datetime) -> str:
    """ISO 8601, with ``Z`` for UTC: five bytes less per session and an exact round trip."""
    text = value.isoformat()
    if value.tzinfo is datetime.UTC and text.endswith("+00:00"):
        text = text[:-6] + "Z"
    return text


def _infos(flat: list[Any], decode: Callable[[list[str]], tuple[str, ...]]) -> list[SessionInfo]:
    """The `SessionInfo` of each (session id, value, lease deadline) triple of the lookup script, oldest first.

    ``decode`` turns a stored value into (node, tenant, identity, address, connected at).
    """
    found: list[SessionInfo] = []
    for i in range(0, len(flat), 3):
        node_id, tenant_id, identity_id, remote_addr, connected_at = decode(json.loads(flat[i + 1]))
        found.append(
            SessionInfo(
                session_id=_text(flat[i]),
                identity_id=identity_id,
                tenant_id=tenant_id,
                node_id=node_id,
                remote_addr=remote_addr,
                connected_at=datetime.datetime.fromisoformat(connected_at),
                expires_at=datetime.datetime.fromtimestamp(float(flat[i + 2]), datetime.UTC),
            )
        )
    found.sort(key=lambda s: (s.connected_at, s.session_id))
    return found


class RedisPresence:
    """Who is online on which node, in one Redis shared by every node (see the module docstring).

    ``url_or_client`` is a ``redis://`` / ``rediss://`` URL (this object then owns its pool,
    with ``socket_timeout`` on every connection and no hidden retries) or a ``redis.Redis``
    the caller owns and configures (`close` leaves its pool open).  ``ttl`` is the lease given
    to a node that registers before it ever renewed; `Realtime` renews with its
    ``presence_ttl`` before the first session arrives.  A Redis failure is retried
    ``retries`` times, quickly, then raises `BrokerUnavailable`: a caller is never left hanging.
    """

    #: Members removed per purge script call: bounds how long one call blocks Redis (~1 ms).
    purge_chunk: int = 500

    def __init__(
        self,
        url_or_client: str | redis.Redis | RedisCluster,
        ttl: float = 90.0,
        *,
        namespace: str = "rtgevent",
        socket_timeout: float = 2.0,
        retries: int = 2,
    ) -> None:
        _check_ttl(ttl)
        if not socket_timeout > 0:
            raise InvalidOption("socket_timeout", "must be a positive number of seconds")
        if not isinstance(retries, int) or retries < 0:
            raise InvalidOption("retries", "must be an integer >= 0")
        check_namespace(namespace)
        self._client: Any  # redis.Redis or RedisCluster: the calls made here are common to both
        if isinstance(url_or_client, str):
            if url_or_client.partition("://")[0].lower() == CLUSTER_SCHEME:
                self._client = LazyCluster(url_or_client, socket_timeout=socket_timeout, field="presence_url")
            else:
                # no hidden retries in the client: the bound on how long a caller waits is ours
                self._client = redis_client(url_or_client, socket_timeout=socket_timeout, field="presence_url")
            self._owns_client = True
            self._where = redact_url(url_or_client)
        else:
            self._client = url_or_client
            self._owns_client = False
            self._where = _describe(url_or_client)
        #: on Redis Cluster: keys hash-tagged per owner, and no script touches two slots
        self.cluster = isinstance(self._client, (RedisCluster, LazyCluster))
        self._ttl = float(ttl)
        self._retries = retries
        self._ns = namespace
        self._leases_key = f"{{{namespace}:leases}}" if self.cluster else f"{namespace}:leases"
        self._lookup = self._client.register_script(_LOOKUP_LUA)
        self._count = self._client.register_script(_COUNT_LUA)
        self._channel_script = self._client.register_script(_CHANNEL_LUA)
        self._recount = self._client.register_script(_RECOUNT_LUA)
        self._renew = self._client.register_script(_RENEW_LUA)
        self._purge = self._client.register_script(_PURGE_LUA)
        self._write_script = self._client.register_script(_WRITE_LUA)
        self._sequence = self._client.register_script(_SEQUENCE_LUA)
        self._nodes = self._client.register_script(_NODES_LUA)
        self._live = self._client.register_script(_LIVE_LUA)
        self._lease = self._client.register_script(_LEASE_LUA)
        self._purge_chunk = self._client.register_script(_PURGE_CHUNK_LUA)
        self._retire = self._client.register_script(_RETIRE_LUA)
        self._directory_script = self._client.register_script(_DIRECTORY_LUA)
        #: Redis Cluster: the directory of live nodes as last read (see `_alive`), and the
        #: cluster's configuration epoch at the last renewal (a failover raises it)
        self._directory: _Directory | None = None
        self._epoch: int | None = None
        #: Redis Cluster: nodes whose next renewal rewrites all their entries (see `renew`)
        self._rewrite_next: set[str] = set()
        self._lock = threading.Lock()
        #: writes (register, unregister, channel joins and leaves) in flight, and whether a
        #: self-healing runs: healing waits for the writes in flight and holds new ones back,
        #: so it never rewrites a state that a concurrent write is changing
        self._quiet = threading.Condition(self._lock)
        self._writing = 0
        self._healing = False
        #: sessions this object registered (and has not unregistered): what `unregister` and
        #: the self-healing in `renew` need.  Held only around dict updates, never across I/O.
        self._sessions: dict[str, SessionInfo] = {}
        #: each registered session's login number, kept when it is registered again
        self._numbers: dict[str, int] = {}
        #: node id -> its session ids, for every node this object registered on (kept when empty)
        self._by_node: dict[str, set[str]] = {}
        #: nodes this object renewed (they get retired on close)
        self._leased: set[str] = set()
        #: channel memberships this object wrote (and did not remove): session id -> channel ->
        #: the info it joined with; and node id -> its node-channel-set members (kept when empty)
        self._joined: dict[str, dict[str, SessionInfo]] = {}
        self._joined_by_node: dict[str, set[str]] = {}

    # ------------------------------------------------------------------ keys
    #
    # One Redis: the layout of the module docstring.  Redis Cluster: the same keys, named so
    # that each owner's keys share a hash tag (the braces) and so a slot: an identity's hash
    # and counter, a node's sets, lease and stats, a channel's members and counts.

    def _ident_key_of(self, rest: str) -> str:
        """The identity hash of ``rest`` (``<esc(tenant)>:<identity>``, as node-set members spell it)."""
        return f"{{{self._ns}:ident:{rest}}}" if self.cluster else f"{self._ns}:ident:{rest}"

    def _seq_key_of(self, rest: str) -> str:
        return f"{{{self._ns}:ident:{rest}}}:seq" if self.cluster else f"{self._ns}:seq:{rest}"

    def _ident_key(self, tenant_id: str, identity_id: str) -> str:
        return self._ident_key_of(f"{_esc(tenant_id)}:{identity_id}")

    def _seq_key(self, tenant_id: str, identity_id: str) -> str:
        return self._seq_key_of(f"{_esc(tenant_id)}:{identity_id}")

    def _node_key(self, node_id: str) -> str:
        return f"{{{self._ns}:node:{node_id}}}" if self.cluster else f"{self._ns}:node:{node_id}"

    def _node_channels_key(self, node_id: str) -> str:
        return f"{{{self._ns}:node:{node_id}}}:chan" if self.cluster else f"{self._ns}:nodechan:{node_id}"

    def _lease_key(self, node_id: str) -> str:
        """Redis Cluster only: the node's own lease, beside its sets."""
        return f"{{{self._ns}:node:{node_id}}}:lease"

    def _stats_key(self, node_id: str) -> str:
        return f"{{{self._ns}:node:{node_id}}}:stats" if self.cluster else f"{self._ns}:nodestats:{node_id}"

    def _chan_key(self, channel: str) -> str:
        return f"{{{self._ns}:chan:{channel}}}" if self.cluster else f"{self._ns}:chan:{channel}"

    def _count_key(self, channel: str) -> str:
        return f"{{{self._ns}:chan:{channel}}}:count" if self.cluster else f"{self._ns}:chancount:{channel}"

    @staticmethod
    def _channel_entry(session_id: str, channel: str) -> str:
        """A node-channel-set member: the session id (escaped: it ends at the first ``:``), the channel."""
        return f"{_esc(session_id)}:{channel}"

    @staticmethod
    def _member_value(info: SessionInfo) -> str:
        return json.dumps(
            [info.node_id, info.tenant_id, info.identity_id, info.remote_addr, _dt_out(info.connected_at)],
            separators=(",", ":"),
        )

    @staticmethod
    def _member(info: SessionInfo) -> str:
        return f"{_esc(info.session_id)}:{_esc(info.tenant_id)}:{info.identity_id}"

    @staticmethod
    def _value(info: SessionInfo) -> str:
        return json.dumps([info.node_id, info.remote_addr, _dt_out(info.connected_at)], separators=(",", ":"))

    # ------------------------------------------------------------------ Presence

    def register(self, info: SessionInfo) -> int:
        """Add a session and give it its login number: one EVALSHA, atomic so a purge sees all or nothing."""
        if info.node_id not in self._leased:
            # A session of a node without a lease would be invisible and never purged.
            self.renew(info.node_id, self._ttl)
        with self._write_op():
            return self._register(info)

    def _register(self, info: SessionInfo) -> int:
        with self._lock:
            previous = self._sessions.get(info.session_id)
            kept = self._numbers.get(info.session_id)
            if previous is not None:
                self._forget(previous)
                if (previous.tenant_id, previous.identity_id) != (info.tenant_id, info.identity_id):
                    kept = None  # the id now names another identity's session: a new login
            self._remember(info)
        # Remembered before the write: a concurrent renew's self-healing must not mistake an
        # in-flight registration for a stale entry and remove it.
        try:
            moved = self._moved(previous, info)
            if moved:
                number = self._run("register", lambda: self._write(add=[(info, kept)], remove=moved)[-1])
            else:
                number = self._run("register", lambda: self._write_one(info, kept))
        except BaseException:
            with self._lock:
                if self._sessions.get(info.session_id) is info:
                    self._forget(info)
                    if previous is not None:
                        self._remember(previous)
            raise
        with self._lock:
            if self._sessions.get(info.session_id) is info:
                self._numbers[info.session_id] = int(number)
        return int(number)

    def unregister(self, session_id: str) -> None:
        """Remove a session this object registered, and its channel memberships: one EVALSHA.

        Unknown ids are a no-op.  A session whose registration failed still leaves the
        channels it joined.
        """
        with self._write_op():
            self._unregister(session_id)

    def _unregister(self, session_id: str) -> None:
        with self._lock:
            info = self._sessions.get(session_id)
            # Forgotten first: if Redis is down, the entries left behind are removed by the
            # self-healing of the next renew instead of being re-added.
            if info is not None:
                self._forget(info)
            joined = self._forget_joined(session_id, None)
        if not joined:
            if info is not None:
                self._run("unregister", lambda: self._write_one(info, None, add=False))
            return
        by_node: dict[str, list[tuple[str, SessionInfo]]] = {}
        for channel, member in joined.items():
            by_node.setdefault(member.node_id, []).append((channel, member))
        for node_id, memberships in sorted(by_node.items()):
            # the identity entry goes with the memberships of its own node (normally the only one)
            with_identity = info if info is not None and info.node_id == node_id else None
            self._run("unregister", functools.partial(self._channel_write, "del", memberships, with_identity))
        if info is not None and info.node_id not in by_node:
            self._run("unregister", lambda: self._write_one(info, None, add=False))

    def get_identity_sessions(self, tenant_id: str, identity_id: str) -> list[SessionInfo]:
        """Live sessions of one identity, oldest first; one EVALSHA.  ``expires_at`` is the node's lease."""
        flat = self._lookup_live(self._ident_key(tenant_id, identity_id), first=False)

        def decode(value: list[str]) -> tuple[str, str, str, str, str]:
            node_id, remote_addr, connected_at = value
            return node_id, tenant_id, identity_id, remote_addr, connected_at

        return _infos(flat, decode)

    def is_online(self, tenant_id: str, identity_id: str) -> bool:
        """Whether the identity has a session on a live node; one EVALSHA that stops at the first."""
        return bool(self._lookup_live(self._ident_key(tenant_id, identity_id), first=True))

    def sequence(self, tenant_id: str, identity_id: str) -> int:
        """The identity's last login number (0 once it has no session); one EVALSHA."""
        keys = [self._ident_key(tenant_id, identity_id), self._seq_key(tenant_id, identity_id)]
        return int(self._run("sequence", lambda: self._sequence(keys=keys)))

    def channel_join(self, channel: str, info: SessionInfo) -> None:
        """Make the session a member of ``channel``, on its node's lease: one EVALSHA, idempotent.

        If Redis fails, `BrokerUnavailable` is raised and the membership stays remembered:
        the next `renew` that reaches Redis writes it (the self-healing).
        """
        check_channel(channel)
        if info.node_id not in self._leased:
            self.renew(info.node_id, self._ttl)  # a member of a node without a lease is invisible
        with self._write_op():
            self._channel_join(channel, info)

    def _channel_join(self, channel: str, info: SessionInfo) -> None:
        with self._lock:
            self._forget_joined(info.session_id, channel)
            self._joined.setdefault(info.session_id, {})[channel] = info
            self._joined_by_node.setdefault(info.node_id, set()).add(self._channel_entry(info.session_id, channel))
        self._run("channel_join", lambda: self._channel_write("add", [(channel, info)]))

    def channel_leave(self, channel: str, session_id: str) -> None:
        """Take the session out of ``channel``: one EVALSHA; a membership this object did not write is a no-op."""
        with self._write_op():
            with self._lock:
                joined = self._forget_joined(session_id, channel)
            if joined:
                self._run("channel_leave", lambda: self._channel_write("del", list(joined.items())))

    def channel_members(self, channel: str) -> list[SessionInfo]:
        """The channel's members on live nodes, oldest first; one EVALSHA.  ``expires_at`` is the node's lease."""
        flat = self._lookup_live(self._chan_key(check_channel(channel)), first=False)
        return _infos(flat, tuple)  # a member value spells node, tenant, identity, address, time

    def channel_count(self, channel: str) -> int:
        """How many members the channel has on live nodes; one EVALSHA reading one field per node."""
        key = self._count_key(check_channel(channel))
        if self.cluster:
            stored = self._run("channel_count", lambda: self._client.hgetall(key))
            counts = {_text(node): int(n) for node, n in stored.items()}
            alive = self._alive(set(counts))
            return sum(n for node, n in counts.items() if node in alive)
        return int(self._run("channel_count", lambda: self._count(keys=[key, self._leases_key])))

    def renew(self, node_id: str, ttl: float) -> None:
        """Extend the node's lease to now + ``ttl`` (Redis clock); heal its entries; purge dead nodes.

        One EVALSHA in the steady state.  Purging here puts the cleanup on the renewers,
        which run anyway, instead of on a janitor process someone must remember to deploy.
        """
        _check_ttl(ttl)
        node_keys = [self._node_key(node_id), self._node_channels_key(node_id)]
        args = [node_id, repr(float(ttl)), _EXPIRED_SCAN]
        if self.cluster:
            # the node's own lease first, beside its sets (what a purge checks), then the
            # directory every lookup reads: two slots, two calls
            lease_keys = [self._lease_key(node_id), *node_keys]
            _, stored, stored_joined = self._run("renew", lambda: self._lease(keys=lease_keys, args=[args[1]]))
            deadline, _, expired, _ = self._run("renew", lambda: self._renew(keys=[self._leases_key], args=args))
            self._saw_alive(node_id, float(deadline))
            rewrite = self._failed_over(lease_keys[0])
            with self._lock:
                if node_id in self._rewrite_next:
                    self._rewrite_next.discard(node_id)
                    rewrite = True
        else:
            reply = self._run("renew", lambda: self._renew(keys=[self._leases_key, *node_keys], args=args))
            _deadline, stored, expired, stored_joined = reply
            rewrite = False
        with self._lock:
            self._leased.add(node_id)
        drifted, joined_drifted = self._compare(node_id, stored, stored_joined)
        if (drifted or joined_drifted or rewrite) and self._begin_healing():
            try:
                # the counts were read while writes were in flight (this object remembers a
                # write before it reaches Redis): count again now that none is.  After a
                # failover the counts prove nothing (the node's sets may sit on a shard
                # that lost nothing while an identity's shard lost its last writes):
                # everything is written again.
                drifted, joined_drifted = (True, True) if rewrite else self._drifted(node_id)
                if self.cluster and (drifted or joined_drifted) and not rewrite:
                    # the node was purged while away (the usual drift): another node's purge
                    # may still be removing the popped entries from their identities' and
                    # channels' slots, after this heal rewrote them.  The next renewal
                    # writes everything once more, when that purge has long finished.
                    with self._lock:
                        self._rewrite_next.add(node_id)
                if drifted:
                    self._heal(node_id)
                if joined_drifted:
                    self._heal_channels(node_id)
            finally:
                with self._quiet:
                    self._healing = False
                    self._quiet.notify_all()
        for raw in expired:
            dead = _text(raw)
            if dead != node_id:
                self.purge_node(dead)

    # ------------------------------------------------------------------ NodeDirectory (the admin page)

    def publish_node_stats(self, node_id: str, record: dict[str, Any], ttl: float) -> None:
        """Keep the node's stats record for ``ttl`` seconds: one ``SET`` with an expiry."""
        _check_ttl(ttl)
        value = json.dumps(record, separators=(",", ":"))
        key = self._stats_key(node_id)
        self._run("publish_node_stats", lambda: self._client.set(key, value, px=max(1, int(ttl * 1000))))

    def nodes(self, limit: int = 1000) -> list[NodeLease]:
        """The live nodes with their session counts and stats records, by node id; one EVALSHA.

        On Redis Cluster: the directory, then one pipeline over the nodes' slots.
        """
        if self.cluster:
            flat = self._cluster_nodes(limit)
        else:
            args: list[str | int] = [f"{self._ns}:node:", f"{self._ns}:nodestats:", int(limit)]
            flat = self._run("nodes", lambda: self._nodes(keys=[self._leases_key], args=args))
        found = []
        for i in range(0, len(flat), 4):
            raw = flat[i + 3]
            try:
                stats = json.loads(raw) if raw is not None else None
            except ValueError:
                stats = None  # not ours to interpret: shown as a node without stats
            found.append(NodeLease(_text(flat[i]), int(flat[i + 2]), float(flat[i + 1]), stats))
        found.sort(key=lambda lease: lease.node_id)
        return found

    def online_identities(self, search: str = "", limit: int = 500) -> list[OnlineIdentity]:
        """Who is online on live nodes, from the node sets (``SSCAN``); stops once ``limit`` identities are found.

        One EVALSHA for the live nodes, then ``SSCAN`` steps of `_SCAN_COUNT` members, with a
        ``MATCH`` pattern that lets Redis drop most members that cannot match ``search``.
        """
        if self.cluster:
            nodes = list(self._read_directory(1000).deadlines)
        else:
            nodes = [_text(n) for n in self._run("online", lambda: self._live(keys=[self._leases_key], args=[1000]))]
        pattern = _glob(search)
        counts: dict[tuple[str, str], int] = {}
        for node_id in sorted(nodes):
            key = self._node_key(node_id)
            cursor: Any = 0
            while True:
                step = functools.partial(self._client.sscan, key, cursor, match=pattern, count=_SCAN_COUNT)
                cursor, members = self._run("online", step)
                for raw in members:
                    _sid, _, rest = _text(raw).partition(":")
                    tenant, _, identity = rest.partition(":")
                    tenant = _unesc(tenant)
                    if identity_matches(search, tenant, identity):
                        counts[(tenant, identity)] = counts.get((tenant, identity), 0) + 1
                if int(cursor) == 0 or len(counts) > limit:
                    break
            if len(counts) > limit:
                break
        found = [OnlineIdentity(tenant, identity, n) for (tenant, identity), n in counts.items()]
        found.sort(key=lambda o: (o.tenant_id, o.identity_id))
        return found[:limit]

    def close(self) -> None:
        """Retire the nodes this object renewed (their entries go now, not after ``ttl``); close our pool.

        `Realtime` closes presence after every session ended, so normally only the lease
        entries are left to remove.  A pool passed in by the caller stays open.
        """
        with self._lock:
            leased = sorted(self._leased)
            self._leased.clear()
            self._sessions.clear()
            self._numbers.clear()
            self._by_node.clear()
            self._joined.clear()
            self._joined_by_node.clear()
        try:
            for node_id in leased:
                # Deadline 0 = expired now: lookups ignore it at once and the purge's
                # "still expired?" guard lets it through.
                self._expire_lease(node_id)
                self.purge_node(node_id)
        finally:
            if self._owns_client:
                self._client.close()
                if not self.cluster:  # a cluster client closes every node's pool itself
                    self._client.connection_pool.disconnect()

    # ------------------------------------------------------------------ maintenance

    def purge_node(self, node_id: str) -> bool:
        """Remove an expired node's entries in atomic chunks; False if the node turned out to be alive.

        Safe to run from several nodes at once: each chunk pops distinct members, and a node
        that renewed meanwhile is left alone.  The loop is bounded (a dead node cannot grow;
        the bound only guards against a node registering while its lease is expired): what
        is left is purged by a later renew.
        """
        if self.cluster:
            return self._purge_cluster(node_id)
        keys = [self._leases_key, self._node_key(node_id), self._node_channels_key(node_id)]
        ns = self._ns
        args: list[str | int] = [node_id, f"{ns}:ident:", self.purge_chunk]
        args += [f"{ns}:seq:", f"{ns}:chan:", f"{ns}:chancount:"]
        for _ in range(_PURGE_ROUNDS):
            left = int(self._run("purge", lambda: self._purge(keys=keys, args=args)))
            if left < 0:
                return False
            if left == 0:
                return True
        return True

    def _purge_cluster(self, node_id: str) -> bool:
        """`purge_node` on Redis Cluster: each chunk is popped in the node's slot, then removed
        from the identities' and channels' slots in one pipeline; the directory entry goes last.

        A purger that dies between the pop and the removals leaves those entries behind
        (they name a dead node, so no lookup returns them): at most one chunk per crash.
        """
        keys = [self._lease_key(node_id), self._node_key(node_id), self._node_channels_key(node_id)]
        for _ in range(_PURGE_ROUNDS):
            reply = self._run("purge", lambda: self._purge_chunk(keys=keys, args=[self.purge_chunk]))
            left, members, joined = int(reply[0]), reply[1], reply[2]
            if left < 0:
                return False
            batch = self._batch(ordered=False)
            for raw in members:
                member = _text(raw)
                sid, _, rest = member.partition(":")
                keys_of = [self._ident_key_of(rest), self._seq_key_of(rest)]
                batch.script(self._write_script, keys_of, ["del", _unesc(sid), member, "", ""])
            channels: set[str] = set()
            for raw in joined:
                entry = _text(raw)
                sid, _, channel = entry.partition(":")
                channel_keys = [self._chan_key(channel), self._count_key(channel)]
                batch.script(self._channel_script, channel_keys, ["del", _unesc(sid), node_id, "", 1, entry])
                channels.add(channel)
            for channel in sorted(channels):
                batch.command("HDEL", self._count_key(channel), node_id)  # the node is dead: none of its members count
            self._run("purge", batch.run)
            if left == 0:
                self._run("purge", lambda: self._retire(keys=[self._leases_key], args=[node_id]))
                return True
        return True

    def _expire_lease(self, node_id: str) -> None:
        if self.cluster:
            self._run("close", lambda: self._client.set(self._lease_key(node_id), "0"))
            with self._lock:
                if self._directory is not None:
                    deadlines = {n: d for n, d in self._directory.deadlines.items() if n != node_id}
                    self._directory = self._directory._replace(deadlines=deadlines)
        self._run("close", lambda: self._client.zadd(self._leases_key, {node_id: 0}))

    def _drifted(self, node_id: str) -> tuple[bool, bool]:
        """Whether Redis holds another number of the node's sessions, and of its memberships, than written.

        One round trip; called while no write is in flight, so a mismatch is real.
        """

        def count() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            pipe.scard(self._node_key(node_id))
            pipe.scard(self._node_channels_key(node_id))
            return list(pipe.execute())

        stored, stored_joined = self._run("heal", count)
        return self._compare(node_id, stored, stored_joined)

    def _compare(self, node_id: str, stored: Any, stored_joined: Any) -> tuple[bool, bool]:
        """Whether Redis' counts of the node's sessions and memberships differ from what this object wrote."""
        with self._lock:
            known = self._by_node.get(node_id)
            joined = self._joined_by_node.get(node_id)
            return (
                known is not None and len(known) != int(stored),
                joined is not None and len(joined) != int(stored_joined),
            )

    def _heal(self, node_id: str) -> None:
        """Make Redis hold exactly the sessions this object registered on ``node_id``.

        Three round trips (SMEMBERS, SCRIPT EXISTS, one MULTI of writes), only when `renew` saw a
        count mismatch.
        """
        node_key = self._node_key(node_id)
        members = {_text(m) for m in self._run("heal", lambda: self._client.smembers(node_key))}
        with self._lock:
            mine = [self._sessions[sid] for sid in self._by_node.get(node_id, ())]
            # a registration in flight has no number yet: its own write stores it (healing it
            # here would take a second login number from the counter)
            want = [(info, self._numbers[info.session_id]) for info in mine if info.session_id in self._numbers]
        wanted = {self._member(info) for info in mine}
        stale = [m for m in members if m not in wanted]

        def write() -> None:
            batch = self._batch(ordered=False)
            for member in stale:
                sid, _, rest = member.partition(":")
                self._entry_ops(batch, "del", _unesc(sid), member, rest, node_id, "", None)
            for info, number in want:
                self._session_ops(batch, info, number)
            batch.run()

        if stale or want:
            self._run("heal", write)

    def _heal_channels(self, node_id: str) -> None:
        """Make Redis hold exactly the channel memberships this object wrote on ``node_id``.

        Like `_heal`: SMEMBERS, SCRIPT EXISTS and one MULTI that removes the stale
        memberships, writes the wanted ones and recounts the node in every channel touched.
        """
        set_key = self._node_channels_key(node_id)
        stored = {_text(m) for m in self._run("heal", lambda: self._client.smembers(set_key))}
        with self._lock:
            want: list[tuple[str, SessionInfo]] = []
            for entry in self._joined_by_node.get(node_id, ()):
                sid, _, channel = entry.partition(":")
                want.append((channel, self._joined[_unesc(sid)][channel]))
            wanted = self._joined_by_node.get(node_id, set()).copy()
        stale = [entry for entry in stored if entry not in wanted]
        channels = {channel for channel, _ in want} | {entry.partition(":")[2] for entry in stale}

        def write() -> None:
            batch = self._batch(ordered=False)
            for entry in stale:
                sid, _, channel = entry.partition(":")
                self._membership_op(batch, "del", _unesc(sid), node_id, "", channel)
            for channel, info in want:
                self._membership_op(batch, "add", info.session_id, info.node_id, self._member_value(info), channel)
            for channel in sorted(channels):
                batch.script(self._recount, [self._chan_key(channel), self._count_key(channel)], [node_id])
            batch.run()

        if channels:
            self._run("heal", write)

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _write_op(self) -> Iterator[None]:
        """One write of this object's state (see ``_quiet``): waits while a self-healing runs."""
        with self._quiet:
            self._quiet.wait_for(lambda: not self._healing, timeout=_HEAL_WAIT)
            self._writing += 1
        try:
            yield
        finally:
            with self._quiet:
                self._writing -= 1
                self._quiet.notify_all()

    def _begin_healing(self) -> bool:
        """Hold new writes back and wait for those in flight; False (heal at a later renew) if they do not end."""
        with self._quiet:
            if self._healing:
                return False
            self._healing = True
            if self._quiet.wait_for(lambda: self._writing == 0, timeout=_HEAL_WAIT):
                return True
            self._healing = False
            self._quiet.notify_all()
            return False

    def _remember(self, info: SessionInfo) -> None:
        self._sessions[info.session_id] = info
        self._by_node.setdefault(info.node_id, set()).add(info.session_id)

    def _forget(self, info: SessionInfo) -> None:
        del self._sessions[info.session_id]
        self._numbers.pop(info.session_id, None)
        self._by_node[info.node_id].discard(info.session_id)

    def _forget_joined(self, session_id: str, channel: str | None) -> dict[str, SessionInfo]:
        """Forget one membership of a session (``channel``) or all of them (None); what was forgotten.

        Called with the lock held.
        """
        mine = self._joined.get(session_id)
        if not mine:
            return {}
        if channel is None:
            gone = self._joined.pop(session_id)
        elif channel in mine:
            gone = {channel: mine.pop(channel)}
            if not mine:
                del self._joined[session_id]
        else:
            return {}
        for name, info in gone.items():
            self._joined_by_node[info.node_id].discard(self._channel_entry(session_id, name))
        return gone

    def _channel_call(
        self, op: str, memberships: list[tuple[str, SessionInfo]], identity: SessionInfo | None
    ) -> tuple[list[str], list[str | int]]:
        """One Redis: keys and arguments of the channel script for memberships of one session on one node."""
        first = memberships[0][1]
        keys: list[str] = []
        entries: list[str | int] = []
        for channel, _info in memberships:
            keys += [self._chan_key(channel), self._count_key(channel)]
            entries.append(self._channel_entry(first.session_id, channel))
        keys.append(self._node_channels_key(first.node_id))
        args: list[str | int] = [op, first.session_id, first.node_id, self._member_value(first), len(memberships)]
        args += entries
        if identity is not None:
            keys += self._session_keys(identity)
            args.append(self._member(identity))
        return keys, args

    def _channel_write(
        self, op: str, memberships: list[tuple[str, SessionInfo]], identity: SessionInfo | None = None
    ) -> Any:
        """One EVALSHA of the channel script; with ``identity``, the session's identity entry goes too.

        On Redis Cluster: one call per membership (and the identity's writes), in the order of `_membership_op`.
        """
        batch = self._batch()
        if self.cluster:
            for channel, info in memberships:
                value = self._member_value(info) if op == "add" else ""
                self._membership_op(batch, op, info.session_id, info.node_id, value, channel)
            if identity is not None:
                self._session_ops(batch, identity, None, add=False)
        else:
            keys, args = self._channel_call("unregister" if identity is not None else op, memberships, identity)
            batch.script(self._channel_script, keys, args)
        return batch.run()

    def _membership_op(self, batch: _Batch, op: str, session_id: str, node_id: str, value: str, channel: str) -> None:
        """Queue one membership's add or removal: one script call, or on a cluster the node's channel set apart
        (first when adding, last when removing, as `_entry_ops` does for sessions)."""
        entry = self._channel_entry(session_id, channel)
        keys = [self._chan_key(channel), self._count_key(channel)]
        args: list[str | int] = [op, session_id, node_id, value, 1, entry]
        set_key = self._node_channels_key(node_id)
        if not self.cluster:
            batch.script(self._channel_script, [*keys, set_key], args)
        elif op == "add":
            batch.command("SADD", set_key, entry)
            batch.script(self._channel_script, keys, args)
        else:
            batch.script(self._channel_script, keys, args)
            batch.command("SREM", set_key, entry)

    def _moved(self, previous: SessionInfo | None, info: SessionInfo) -> list[SessionInfo]:
        """A re-registered session id whose keys changed: its old entries must go in the same MULTI."""
        if previous is None:
            return []
        same_keys = (previous.tenant_id, previous.identity_id, previous.node_id) == (
            info.tenant_id,
            info.identity_id,
            info.node_id,
        )
        return [] if same_keys else [previous]

    def _session_keys(self, info: SessionInfo) -> list[str]:
        """The keys the write script touches for one session on one Redis."""
        rest = f"{_esc(info.tenant_id)}:{info.identity_id}"
        return [self._ident_key_of(rest), self._seq_key_of(rest), self._node_key(info.node_id)]

    def _session_ops(self, batch: _Batch, info: SessionInfo, number: int | None, add: bool = True) -> None:
        """Queue one session's add (keeping login ``number``, or a new one for None) or removal."""
        rest = f"{_esc(info.tenant_id)}:{info.identity_id}"
        op = "add" if add else "del"
        self._entry_ops(batch, op, info.session_id, self._member(info), rest, info.node_id, self._value(info), number)

    def _entry_ops(
        self,
        batch: _Batch,
        op: str,
        session_id: str,
        member: str,
        rest: str,
        node_id: str,
        value: str,
        number: int | None,
    ) -> None:
        """Queue the write script for one identity entry; on a cluster the node set apart (first when
        adding, last when removing: see `_WRITE_LUA`)."""
        keys = [self._ident_key_of(rest), self._seq_key_of(rest)]
        args = [op, session_id, member, value, "" if number is None else str(number)]
        node_key = self._node_key(node_id)
        if not self.cluster:
            batch.script(self._write_script, [*keys, node_key], args)
        elif op == "add":
            batch.command("SADD", node_key, member)
            batch.script(self._write_script, keys, args)
        else:
            batch.script(self._write_script, keys, args)
            batch.command("SREM", node_key, member)

    def _write_one(self, info: SessionInfo, number: int | None, add: bool = True) -> Any:
        """One session added (its login number is returned) or removed: one EVALSHA (two calls on a cluster)."""
        batch = self._batch()
        self._session_ops(batch, info, number, add)
        return batch.run()[-1 if add else 0]

    def _write(self, add: Iterable[tuple[SessionInfo, int | None]], remove: Iterable[SessionInfo]) -> list[Any]:
        """Several writes in one MULTI (a session that moved: its old entries go with the new ones)."""
        batch = self._batch()
        for info in remove:
            self._session_ops(batch, info, None, add=False)
        for info, number in add:
            self._session_ops(batch, info, number)
        return batch.run()

    def _batch(self, *, ordered: bool = True) -> _Batch:
        return _Batch(self._client, cluster=self.cluster, ordered=ordered)

    # ------------------------------------------------------------------ Redis Cluster: the directory

    def _lookup_live(self, key: str, *, first: bool) -> list[Any]:
        """(field, value, deadline) triples of a hash's entries on live nodes (just the first with ``first``).

        One Redis: one EVALSHA of the lookup script.  Redis Cluster: the hash lives in its
        owner's slot and the leases in another, so the hash is read (one ``HGETALL``) and its
        nodes checked against the directory as `_alive` last read it.
        """
        if not self.cluster:
            keys = [key, self._leases_key]
            reply = self._run("lookup", lambda: self._lookup(keys=keys, args=["1" if first else "0"]))
            return ([reply] if reply else []) if first else list(reply)
        entries: list[tuple[Any, Any, str]] = []
        for field, value in self._run("lookup", lambda: self._client.hgetall(key)).items():
            try:
                decoded = json.loads(value)
            except ValueError:
                continue  # not ours: it cannot belong to a live node we could route to
            if isinstance(decoded, list) and decoded and isinstance(decoded[0], str):
                entries.append((field, value, decoded[0]))
        alive = self._alive({node for _, _, node in entries})
        flat: list[Any] = []
        for field, value, node in entries:
            if node in alive:
                flat += [field, value, repr(alive[node])]
                if first:
                    break
        return flat

    def _alive(self, nodes: set[str]) -> dict[str, float]:
        """The deadlines of those of ``nodes`` that are alive, from the directory as last read.

        Read again when it is older than `_DIRECTORY_MAX_AGE`, or when it cannot vouch for
        one of ``nodes`` (unknown, or past the deadline it last saw): a node that just
        started or just renewed is never missed, a node's death is seen at its deadline
        exactly, and a lookup naming only live nodes costs no round trip to the directory's
        shard (which would carry every lookup of the cluster otherwise).  The price: while
        a dead node is not purged yet (up to ``ttl / 3`` after its deadline), lookups of its
        identities read the directory each time.
        """
        if not nodes:
            return {}
        directory = self._directory
        if directory is not None:
            age = time.monotonic() - directory.read_at
            found = directory.alive(nodes)
            if age <= _DIRECTORY_MAX_AGE and len(found) == len(nodes):
                return found
        return self._read_directory().alive(nodes)

    def _read_directory(self, limit: int = _DIRECTORY_LIMIT) -> _Directory:
        started = time.monotonic()
        now, flat = self._run("directory", lambda: self._directory_script(keys=[self._leases_key], args=[limit]))
        deadlines = {_text(flat[i]): float(flat[i + 1]) for i in range(0, len(flat), 2)}
        directory = _Directory(started, float(now), deadlines)
        with self._lock:
            self._directory = directory
        return directory

    def _failed_over(self, key: str) -> bool:
        """Redis Cluster: whether the cluster's configuration epoch moved since the last renewal.

        A promoted replica raises it (so does a resharding, harmlessly); one ``CLUSTER INFO``
        per renewal, asked of the node that holds ``key``.  Replication is asynchronous:
        the promoted replica may lack the old master's last writes, and only rewriting what
        this object knows puts them back.
        """
        node = self._client.get_node_from_key(key)
        info = self._run("renew", lambda: self._client.execute_command("CLUSTER INFO", target_nodes=node))
        epoch = int(info.get("cluster_current_epoch", 0))
        previous, self._epoch = self._epoch, epoch
        return previous is not None and epoch != previous

    def _saw_alive(self, node_id: str, deadline: float) -> None:
        """This object renewed ``node_id``: its own lookups see the new deadline at once."""
        with self._lock:
            if self._directory is not None:
                deadlines = {**self._directory.deadlines, node_id: deadline}
                self._directory = self._directory._replace(deadlines=deadlines)

    def _cluster_nodes(self, limit: int) -> list[Any]:
        """`nodes` on a cluster, flattened as the single Redis script returns it."""
        directory = self._read_directory(limit)
        ids = sorted(directory.deadlines)

        def read() -> list[Any]:
            pipe = self._client.pipeline()
            for node_id in ids:
                pipe.scard(self._node_key(node_id))
                pipe.get(self._stats_key(node_id))
            return list(pipe.execute())

        found = self._run("nodes", read) if ids else []
        flat: list[Any] = []
        for i, node_id in enumerate(ids):
            flat += [node_id, f"{directory.deadlines[node_id] - directory.now:.3f}", found[2 * i], found[2 * i + 1]]
        return flat

    def _run(self, what: str, op: Callable[[], _T]) -> _T:
        """Run ``op``; retry connection failures ``retries`` times quickly; else `BrokerUnavailable`.

        Every operation here is idempotent (or, for a purge chunk, harmless to repeat), so a
        retry after a lost reply is safe.
        """
        return redis_retrying(
            f"presence store {self._where}", what, self._retries, lambda attempt: op(), cap=_RETRY_CAP
        )


def _describe(client: redis.Redis | RedisCluster) -> str:
    """Where a caller's client points, for error messages: built from its pool, so never the password.

    A store made from a URL shows `redact_url` of it instead; a client passed in has no URL.
    """
    if isinstance(client, RedisCluster):
        nodes = client.get_nodes()  # type: ignore[no-untyped-call]
        return f"{CLUSTER_SCHEME}://" + ",".join(node.name for node in nodes[:3]) + "/"
    kwargs: dict[str, Any] = getattr(client.connection_pool, "connection_kwargs", {})
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    scheme = "rediss" if "SSL" in getattr(client.connection_pool, "connection_class", type).__name__ else "redis"
    return f"{scheme}://{kwargs.get('host', '?')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"

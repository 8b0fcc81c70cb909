"""KombuBroker: broker payloads over RabbitMQ (``amqp://``) or kombu's Redis transport.

Topology (RabbitMQ)::

    publish(BROADCAST) ─▶ fanout exchange <ns>.broadcast ─┬─▶ queue <ns>.q.<node A>
                                                          └─▶ queue <ns>.q.<node B>
    publish(topic)     ─▶ direct exchange <ns>.direct  ──(routing key = topic)──▶ the queue
                                                            of the broker that subscribed it

Each broker instance (one per node process) declares one queue, non-exclusive so that it
survives a reconnect with the messages of the gap, but with ``x-expires`` (a dead node's
queue disappears), ``x-message-ttl`` (stale realtime messages are worthless) and
``x-max-length`` with ``drop-head`` (a stalled node costs bounded memory, newest wins).
It is bound to the fanout exchange, and to the direct exchange once per subscribed topic:
per-node topics, never per-identity bindings (those churn RabbitMQ on every connect).
Messages carry their topic in the ``rtgevent-topic`` header, so the consumer dispatches
without caring how the exchange used the routing key.

Consuming: one connection, one channel, one greenlet (never shared: py-amqp connections
are not safe across greenlets or threads).  no_ack, because realtime delivery is at most
once anyway.  The greenlet drains with a short timeout (well under half the heartbeat) so
that it can call ``heartbeat_check()`` on its own ticker and apply (un)bindings requested by
`subscribe` / `Subscription.close`; it yields with ``gevent.idle()`` every few dozen
messages so that a flood does not starve the hub.  On any error it throws the connection
away, waits (0.1 s doubling to 5 s, jittered) and starts over, re-declaring exchanges,
queue and bindings: a RabbitMQ restart forgets non-durable queues.  The first drop logs one
WARNING, the recovery one INFO (logger ``rtgevent.broker``), never a line per retry.

Publishing never touches the consumer's connection: it takes a connection from a small
thread-safe pool, so it works from greenlets and from plain threads alike (the Emitter)
and needs no gevent.  Every kombu call gets ``max_retries`` (kombu retries forever by
default); a failed attempt is retried ``publish_retries`` times with a short backoff, all
within ``publish_timeout`` (plus at most one connect / socket timeout), then
`BrokerUnavailable` is raised.  Payloads are JSON bytes sent as ``application/json`` with
no serializer, and the consumer accepts only that: never pickle.

On RabbitMQ each publish waits for the broker's confirm (``confirm_publish=True``, one
round trip, ~0.1 ms on loopback), and is ``mandatory``.  Two things need it.  Order: the
pool may hand one thread a different connection for its next message, and RabbitMQ orders
only within a channel; a confirmed message is already in its queues when the next one
leaves.  Loss made visible: a message no queue takes (its node is gone, or still
re-declaring after a broker restart) comes back before the ack and is retried, then
raised as `BrokerUnavailable`, instead of vanishing while the caller believes it sent.

kombu's Redis transport (``kombu+redis://``): works, with limits -- prefer `RedisBroker`
(native pub/sub, about twice the throughput at a third of the CPU).

* Fanout is Redis pub/sub (PSUBSCRIBE), made lazily on the first drain: a broadcast
  published before that is lost.  `subscribe` of the broadcast topic therefore returns only
  after a probe message went round trip, and "restored" is logged only after the probe
  came back too.
* A queue bound to a fanout exchange is consumed only through pub/sub, so this transport
  uses two keys per broker: ``<ns>.q.<id>`` (a list, direct topics) and ``<ns>.q.<id>.b``
  (fanout).  Fanout publishes use routing key ``""`` because that transport folds a fanout
  routing key into the channel name (RabbitMQ ignores it).
* Directed messages are LPUSHed by the publisher, which does not know the queue's
  ``x-expires``: a dead node's list is re-created without a TTL and keeps what is sent to
  it until its binding is gone (kombu sweeps bindings per exchange, after an hour at the
  soonest).  With Realtime this is bounded: presence stops naming a dead node within
  ``presence_ttl``.  ``close()`` deletes this broker's lists and bindings.
* No confirms, no returns: a message nobody is bound for vanishes silently, and
  consecutive publishes of one thread may in theory use different connections (each
  LPUSH / PUBLISH is synchronous, so in practice they stay in order).
* No message TTL and no max length; unbinding is in-process only (a topic's binding stays
  in Redis until ``close()``; messages of an unsubscribed topic are dropped on arrival).
* A half-open pub/sub connection is not detected while idle (kombu checks it only from an
  event loop); set TCP keepalive at the OS level if that matters.

Threads: `publish` from any thread.  `subscribe`, `Subscription.close` and `close` from the
gevent hub's thread (the consumer is a greenlet).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from kombu import Connection, Consumer, Producer, Queue
from kombu.entity import Exchange
from kombu.exceptions import KombuError

from ..errors import BrokerUnavailable, InvalidOption
from ..payload import BROADCAST_TOPIC
from ..retry import Deadline, redact_url
from ._consumer import IDLE_EVERY as IDLE_EVERY
from ._consumer import ConsumerBroker, pause_before_retry
from .base import check_namespace

__all__ = ["KombuBroker"]

log = logging.getLogger("rtgevent.broker")

#: the topic that goes to every node: RabbitMQ gives it the fanout exchange
DEFAULT_BROADCAST_TOPIC = BROADCAST_TOPIC
TOPIC_HEADER = "rtgevent-topic"
PROBE_HEADER = "rtgevent-probe"
CONTENT_TYPE = "application/json"
#: Seconds between probe re-sends, and before giving up on the probe (Redis transport).
PROBE_EVERY = 0.5
PROBE_GIVE_UP = 10.0

_SCHEMES = {
    "amqp": "amqp",
    "amqps": "amqps",
    "redis": "redis",
    "rediss": "rediss",
    "kombu+redis": "redis",
    "kombu+rediss": "rediss",
}


class _NoRoute(Exception):
    """RabbitMQ returned a mandatory message: nobody subscribes to its topic right now."""


class _Publisher:
    """One pooled publisher connection with its channel and producer, made on first use.

    Used by one caller at a time (the pool sees to it), which is all the thread safety
    py-amqp needs.  Exchanges are declared once per channel, not per message.
    """

    __slots__ = ("channel", "confirm", "conn", "exchanges", "producer", "returned")

    def __init__(self, conn: Connection, exchanges: tuple[Exchange, ...], *, confirm: bool) -> None:
        self.conn = conn
        self.exchanges = exchanges
        self.confirm = confirm
        self.channel: Any = None
        self.producer: Producer | None = None
        #: set by RabbitMQ's basic.return: the last (mandatory) message reached no queue
        self.returned: BaseException | None = None

    def _on_return(self, exc: BaseException, exchange: str, routing_key: str, message: Any) -> None:
        self.returned = exc

    def ready(self) -> Producer:
        if self.producer is None or not self.conn.connected:
            self.producer = None
            self.conn.ensure_connection(max_retries=0)  # one attempt: the retrying is ours, bounded
            channel = self.conn.channel()
            for exchange in self.exchanges:
                channel.exchange_declare(exchange=exchange.name, type=exchange.type, durable=False, auto_delete=False)
            self.channel = channel
            # basic.return exists on RabbitMQ only (and is only safe to ask for with confirms)
            on_return = self._on_return if self.confirm else None
            self.producer = Producer(channel, auto_declare=False, on_return=on_return)
        return self.producer

    def drop(self) -> None:
        """Forget a connection that failed: its socket goes, without a handshake that could hang."""
        self.producer = self.channel = None
        _collect(self.conn)

    def close(self) -> None:
        self.producer = self.channel = None
        _close_quietly(self.conn)


class _PublishPool:
    """Idle publishers; at most ``size`` in use at once, callers beyond that wait their turn."""

    def __init__(self, factory: Callable[[], _Publisher], size: int) -> None:
        self._factory = factory
        self._idle: list[_Publisher] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False

    def acquire(self, timeout: float) -> _Publisher | None:
        if not self._slots.acquire(timeout=max(timeout, 0.0)):
            return None
        with self._lock:
            publisher = self._idle.pop() if self._idle else None
        return publisher if publisher is not None else self._factory()

    def release(self, publisher: _Publisher, *, broken: bool) -> None:
        try:
            if broken:
                publisher.drop()
            with self._lock:
                keep = not self._closed
                if keep:
                    self._idle.append(publisher)
            if not keep:
                publisher.close()
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for publisher in idle:
            publisher.close()


def _collect(conn: Connection) -> None:
    try:
        conn.collect()
    except Exception:  # nothing useful to do with an error while dropping a socket
        log.debug("collecting a kombu connection failed", exc_info=True)


def _close_quietly(conn: Connection) -> None:
    """Close with the protocol's handshake if the connection is up, else just drop it."""
    try:
        if conn.connected:
            conn.release()
        else:
            conn.collect()
    except Exception:
        _collect(conn)


class KombuBroker(ConsumerBroker):
    """A `Broker` over kombu: RabbitMQ, or kombu's Redis transport (see the module docstring).

    ``url``: ``amqp://``, ``amqps://``, ``redis://``, ``rediss://``, or ``kombu+redis://``.
    ``namespace`` prefixes every exchange and queue name, so several applications (or
    test runs) share a broker without seeing each other's traffic.  ``queue_ttl``,
    ``message_ttl`` (seconds) and ``max_length`` become the queue's ``x-expires``,
    ``x-message-ttl`` and ``x-max-length``.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "rtgevent",
        queue_ttl: float = 60.0,
        message_ttl: float = 10.0,
        max_length: int = 10_000,
        publish_retries: int = 3,
        publish_timeout: float = 10.0,
        connect_timeout: float = 4.0,
        socket_timeout: float = 5.0,
        heartbeat: float = 20.0,
        poll_interval: float = 0.1,
        pool_size: int = 10,
        subscribe_timeout: float = 10.0,
        broadcast_topic: str = DEFAULT_BROADCAST_TOPIC,
        confirm_publish: bool = True,
    ) -> None:
        scheme, sep, rest = url.partition("://") if isinstance(url, str) else ("", "", "")
        transport = _SCHEMES.get(scheme.lower()) if sep else None
        if transport is None:
            raise InvalidOption(
                "broker_url", f"KombuBroker needs amqp://, amqps:// or kombu+redis://, got {redact_url(str(url))!r}"
            )
        for name, value in (
            ("queue_ttl", queue_ttl),
            ("message_ttl", message_ttl),
            ("publish_timeout", publish_timeout),
            ("connect_timeout", connect_timeout),
            ("socket_timeout", socket_timeout),
            ("poll_interval", poll_interval),
            ("subscribe_timeout", subscribe_timeout),
        ):
            if not value > 0:
                raise InvalidOption(name, f"must be > 0, got {value!r}")
        if publish_retries < 0 or max_length < 1 or pool_size < 1 or heartbeat < 0:
            raise InvalidOption("publish_retries/max_length/pool_size/heartbeat", "out of range")
        if poll_interval * 4 > heartbeat > 0:
            raise InvalidOption("poll_interval", "must stay well under half the heartbeat")
        self._url = f"{transport}://{rest}"
        self._redis = transport.startswith("redis")
        self.namespace = check_namespace(namespace)
        super().__init__(
            f"rtgevent kombu broker {redact_url(self._url)} [{namespace}]",
            socket_timeout=socket_timeout,
            subscribe_timeout=subscribe_timeout,
        )
        self._broadcast_topic = broadcast_topic
        self._fanout = Exchange(f"{namespace}.broadcast", type="fanout", durable=False, auto_delete=False)
        self._direct = Exchange(f"{namespace}.direct", type="direct", durable=False, auto_delete=False)
        instance = uuid.uuid4().hex[:12]
        self.queue_name = f"{namespace}.q.{instance}"
        #: kombu's Redis transport consumes fanout-bound queues only through pub/sub.
        self._fanout_queue = f"{self.queue_name}.b" if self._redis else self.queue_name
        #: Name of the consumer's connection on the server (RabbitMQ ``connection_name``,
        #: Redis ``CLIENT SETNAME``), to find it in ``rabbitmqctl`` / ``CLIENT LIST``.
        self.consumer_name = f"{namespace}.consumer.{instance}"
        self._publisher_name = f"{namespace}.publisher.{instance}"
        self._queue_args: dict[str, Any] = {"x-expires": int(queue_ttl * 1000)}
        if not self._redis:  # the Redis transport supports neither
            self._queue_args.update(
                {"x-message-ttl": int(message_ttl * 1000), "x-max-length": int(max_length), "x-overflow": "drop-head"}
            )
        self._publish_retries = publish_retries
        self._publish_timeout = publish_timeout
        #: RabbitMQ only (kombu's Redis transport has neither confirms nor returns)
        self._confirm = bool(confirm_publish) and not self._redis
        self._connect_timeout = connect_timeout
        self._heartbeat = heartbeat
        self._poll_interval = poll_interval
        template = self._connection(self._publisher_name, heartbeat=0)
        #: What a publish attempt may fail with and still be worth retrying.
        self._retryable = (
            KombuError,
            OSError,
            *template.connection_errors,
            *template.channel_errors,
        )
        exchanges = (self._fanout, self._direct)
        self._pool = _PublishPool(
            lambda: _Publisher(
                self._connection(self._publisher_name, heartbeat=0, confirm=self._confirm),
                exchanges,
                confirm=self._confirm,
            ),
            pool_size,
        )
        #: set while the fanout probe of the Redis transport is on its way round
        self._probe_token: str | None = None

    def __repr__(self) -> str:
        return f"<KombuBroker {redact_url(self._url)} namespace={self.namespace!r}>"

    def _connection(self, name: str, *, heartbeat: float, confirm: bool = False) -> Connection:
        # transport_options' max_retries also bounds the connects kombu makes on its own
        # (``default_channel``), which otherwise retry forever.
        options: dict[str, Any] = {"max_retries": 0}
        if confirm:
            options["confirm_publish"] = True
        if self._redis:
            options.update(
                {
                    "socket_timeout": self._socket_timeout,
                    "socket_connect_timeout": self._connect_timeout,
                    "client_name": name,
                }
            )
        else:
            options.update(
                {
                    "read_timeout": self._socket_timeout,
                    "write_timeout": self._socket_timeout,
                    "client_properties": {"connection_name": name},
                }
            )
        return Connection(
            self._url, connect_timeout=self._connect_timeout, heartbeat=heartbeat, transport_options=options
        )

    # ------------------------------------------------------------------ publishing

    def publish(self, topic: str, payload: bytes, *, expect_receiver: bool = True) -> None:
        """Send ``payload`` to every subscriber of ``topic``; `BrokerUnavailable` after bounded retries."""
        self._check_publishable(payload)
        if topic == self._broadcast_topic:
            exchange, routing_key = self._fanout, ""  # see the module docstring: Redis fanout
        else:
            exchange, routing_key = self._direct, topic
        self._publish(
            exchange, routing_key, bytes(payload), {TOPIC_HEADER: topic}, f"publish to {topic!r}", expect_receiver
        )

    def _publish(
        self,
        exchange: Exchange,
        routing_key: str,
        body: bytes,
        headers: dict[str, str],
        what: str,
        expect_receiver: bool = True,
    ) -> None:
        deadline = Deadline(self._publish_timeout)
        attempts = 0
        last: BaseException | None = None
        while attempts <= self._publish_retries:
            remaining = deadline.timeout()
            if remaining <= 0:
                break
            publisher = self._pool.acquire(remaining)
            if publisher is None:
                last = TimeoutError(f"all publisher connections stayed busy for {self._publish_timeout:g} s")
                break
            attempts += 1
            broken = True
            try:
                producer = publisher.ready()
                self._nudge()  # the server answers: a consumer that is down should not wait
                publisher.returned = None
                producer.publish(
                    body,
                    exchange=exchange.name,
                    routing_key=routing_key,
                    content_type=CONTENT_TYPE,
                    content_encoding="utf-8",
                    headers=headers,
                    delivery_mode=1,  # transient: realtime messages are not worth a disk write
                    mandatory=self._confirm and expect_receiver,
                    retry=False,
                    timeout=max(remaining, 0.001),
                )
                broken = False
                if publisher.returned is None:
                    return
                # the return came before the ack: no queue took it (its node is gone, or
                # reconnecting after a broker restart and not bound yet): worth a retry
                last = _NoRoute(f"no queue is bound for {routing_key or exchange.name!r} ({publisher.returned})")
            except self._retryable as exc:
                last = exc
            finally:
                self._pool.release(publisher, broken=broken)
            if not pause_before_retry(attempts, deadline):
                break
        raise self._publish_failed(what, attempts, last)

    # ------------------------------------------------------------------ the consumer greenlet

    def _consume_once(self) -> None:
        conn: Connection | None = None
        try:
            conn = self._connection(self.consumer_name, heartbeat=self._heartbeat)
            conn.ensure_connection(max_retries=0)
            channel = conn.channel()
            self._setup(channel)
            self._drain(conn, channel)
            self._teardown(conn, channel)
            conn = None
        finally:
            if conn is not None:
                _collect(conn)

    def _setup(self, channel: Any) -> None:
        """Declare everything (again: a broker restart forgets it) and start consuming."""
        if hasattr(channel, "auto_decode"):
            channel.auto_decode = False  # py-amqp: keep bodies as the bytes that were sent
        for exchange in (self._fanout, self._direct):
            channel.exchange_declare(exchange=exchange.name, type=exchange.type, durable=False, auto_delete=False)
        queues = [self.queue_name] if self._fanout_queue == self.queue_name else [self.queue_name, self._fanout_queue]
        for name in queues:
            channel.queue_declare(
                queue=name, durable=False, exclusive=False, auto_delete=False, arguments=dict(self._queue_args)
            )
        channel.queue_bind(queue=self._fanout_queue, exchange=self._fanout.name, routing_key="")
        self._start_over()
        self._sync_bindings(channel)
        consumer = Consumer(
            channel,
            queues=[Queue(name, no_declare=True) for name in queues],
            no_ack=True,
            on_message=self._on_message,
            accept=[CONTENT_TYPE],
            auto_declare=False,
        )
        consumer.consume()
        if self._redis:
            self._probe_token = uuid.uuid4().hex  # fanout is live once a probe came round
        else:
            self._fanout_live()

    def _sync_bindings(self, channel: Any) -> None:
        """Bind newly subscribed topics, unbind abandoned ones (consumer greenlet only)."""
        _, wanted = self._take_changes(everything=True)  # bindings are few: compare them all
        with self._lock:
            bound = set(self._bound)
        wanted.discard(self._broadcast_topic)
        bound.discard(self._broadcast_topic)
        for topic in sorted(wanted - bound):
            channel.queue_bind(queue=self.queue_name, exchange=self._direct.name, routing_key=topic)
            with self._lock:
                self._bound.add(topic)
        for topic in sorted(bound - wanted):
            with self._lock:  # before the unbind: a subscribe() meanwhile must wait for the re-bind
                self._bound.discard(topic)
            channel.queue_unbind(queue=self.queue_name, exchange=self._direct.name, routing_key=topic)
        self._release_waiters()

    def _fanout_live(self) -> None:
        """The broadcast topic counts as bound once fanout is live: the link is up."""
        self._probe_token = None
        with self._lock:
            self._bound.add(self._broadcast_topic)
        self._set_up()
        self._release_waiters()

    def _set_down(self, exc: BaseException) -> None:
        self._probe_token = None
        super()._set_down(exc)

    def _drain(self, conn: Connection, channel: Any) -> None:
        heartbeat = float(conn.get_heartbeat_interval() or 0)
        tick = min(1.0, heartbeat / 4) if heartbeat else None
        next_tick = time.monotonic() + (tick or 0)
        next_probe = time.monotonic()
        probe_give_up = Deadline(PROBE_GIVE_UP)
        while not self._closed:
            # kombu's Connection.drain_events / heartbeat_check quietly open a *new* connection
            # (without our queue or consumer) when the old one is gone: never let them
            if not conn.connected:
                raise ConnectionError("the consumer connection is closed")
            if self._dirty:
                self._sync_bindings(channel)
            now = time.monotonic()
            if tick is not None and now >= next_tick:
                conn.heartbeat_check()
                next_tick = now + tick
            try:
                conn.drain_events(timeout=self._poll_interval)
            except TimeoutError:
                pass
            # after a drain, not before: the first drain is what subscribes (Redis transport)
            if self._probe_token is not None and now >= next_probe:
                if probe_give_up.expired():
                    log.warning("%s: fanout probe never came back; broadcasts may be lost", self._what)
                    self._fanout_live()
                else:
                    self._send_probe(self._probe_token)
                    next_probe = now + PROBE_EVERY

    def _send_probe(self, token: str) -> None:
        try:
            self._publish(self._fanout, "", b"{}", {PROBE_HEADER: token}, "fanout probe")
        except BrokerUnavailable as exc:
            log.debug("%s: %s", self._what, exc)

    def _on_message(self, message: Any) -> None:
        self._count_message()
        headers = message.headers or {}
        probe = headers.get(PROBE_HEADER)
        if probe is not None:
            if probe == self._probe_token:
                self._fanout_live()
            return  # probes are never payloads, whoever sent them
        if message.content_type != CONTENT_TYPE:
            log.warning("%s: dropped a message of content type %r", self._what, message.content_type)
            return
        topic = headers.get(TOPIC_HEADER) or message.delivery_info.get("routing_key")
        body = message.body
        if isinstance(body, str):
            body = body.encode("utf-8")
        self._dispatch(topic, body)

    def _teardown(self, conn: Connection, channel: Any) -> None:
        """On close: delete this broker's queue(s) now rather than when x-expires fires."""
        try:
            for name in {self.queue_name, self._fanout_queue}:
                channel.queue_delete(queue=name)
        except Exception:
            log.debug("%s: deleting the queue on close failed", self._what, exc_info=True)
            _collect(conn)
            return
        if self._redis:
            # kombu would first wait for the pending BRPOP's reply (up to a second); the
            # Redis protocol has no goodbye, so dropping the sockets loses nothing.
            for client in (getattr(channel, "client", None), getattr(channel, "subclient", None)):
                connection = getattr(client, "connection", None)
                if connection is not None:
                    connection.disconnect()
        _close_quietly(conn)

    # ------------------------------------------------------------------ closing

    def _close_connections(self) -> None:
        self._pool.close()

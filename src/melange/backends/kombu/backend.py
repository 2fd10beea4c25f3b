""":class:`KombuBackend`: Melange's queues and topics on any kombu transport.

One adapter for every transport: it speaks kombu's channel API (``queue_declare``,
``basic_publish``, ``basic_get``, ``basic_ack``...), which kombu implements natively on AMQP
and emulates on its "virtual" transports (Redis, in-memory, ...). See
:mod:`~melange.backends.kombu.topology` for how queues, topics and dead letters map onto it,
and :func:`~melange.backends.kombu.topology.capabilities` for what each transport can do.

- **Receiving**, on AMQP, is a consumer (``basic_consume``) whose prefetch count is the
  receive's batch size: the broker pushes the next messages while the current ones are
  handled, and a backend holds at most a batch it has not handed out yet (the broker gives
  it back when the connection closes). The connection sends AMQP heartbeats (``heartbeat``
  seconds), from the receive loop and from a timer while handlers run, so a half-open
  connection is noticed by both sides; after a lost connection the next receive consumes
  again on a new one. A wait without a message sleeps on the socket, so a delivery ends it at
  once. On virtual transports (Redis...) receiving is ``basic_get`` (one message per call,
  no prefetch): an empty queue is polled with a growing pause (up to ``poll_interval``).
  A publish by the same backend and :meth:`KombuBackend.interrupt` end a wait at once.
- **At-least-once**: a message stays unacknowledged until the dispatcher settles it. On AMQP
  an unacknowledged message goes back to its queue when its channel closes (a crash, a lost
  connection); on Redis, kombu keeps it in an ``unacked`` index and puts it back after the
  visibility timeout (the backend sweeps that index when a receive finds nothing).
- **Retries**: ``nack`` republishes a copy with one more failed attempt in its
  ``melange_deliveries`` header, then acknowledges the original (a crash in between gives a
  duplicate, never a loss). With a delay, the original stays unacknowledged (and, on Redis,
  leased) in the process until the delay ends, so a crash meanwhile hands it back at once.
- **Dead letters**: copied with the failure headers into the dead-letter queue, then the
  original is acknowledged.
- **Connections**: one kombu connection per backend, with a channel for receiving and
  settling and one for publishing, used under a lock (kombu channels are not thread-safe).
  A connection error drops both; the next call opens a new connection (retrying
  ``retries`` times). Messages received on the lost one can no longer be settled
  (:meth:`KombuBackend.holds` says so): the broker delivers them again.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from kombu.transport import virtual as kombu_virtual

from kombu import connection as kombu_connection
from melange.backends.gathering import BusyQueues
from melange.backends.inspection import InspectionUnavailable, QueueStats
from melange.backends.interfaces import BackendCapabilities, MessagingBackend
from melange.backends.kombu import topology
from melange.backends.kombu.connection import (
    kombu_url,
    redacted,
    transport_name,
)
from melange.backends.kombu.connection import transport_options as options_for
from melange.backends.kombu.wire import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    Outgoing,
    Receipt,
    from_delivery,
    publish_arguments,
)
from melange.backends.publish_options import apply_undelayed_publish_keywords
from melange.exceptions import (
    BackendConnectionError,
    BackendError,
    ConfigurationError,
    PublishError,
    QueueNotFoundError,
    TopicNotFoundError,
    WouldBlock,
)
from melange.models import Message, QueueWrapper, TopicWrapper

_T = TypeVar("_T")

# kombu has no type information: its classes are used untyped.
_Connection: Any = kombu_connection.Connection
_VirtualQoS: Any = kombu_virtual.QoS

#: The default backend URL: kombu's Redis transport on this machine, database 0.
DEFAULT_URL = "kombu+redis://127.0.0.1:6379/0"

#: AMQP's reply code for a missing queue or exchange.
_NOT_FOUND = 404

#: kombu's Redis transport takes a message off its list (``RPOP``) and records it as
#: unacknowledged in a second round trip: a connection lost in between loses the message.
#: This script does both at once, in kombu's own layout (``unacked`` hash: tag -> [payload,
#: exchange, routing key]; ``unacked_index``: tag -> time), keeping the payload verbatim.
#: KEYS: unacked, unacked_index, then the queue's lists by priority; ARGV: the index time.
_REDIS_GET = """
for i = 3, #KEYS do
    local item = redis.call('RPOP', KEYS[i])
    if item then
        local properties = cjson.decode(item)['properties']
        local tag = properties['delivery_tag']
        local info = properties['delivery_info'] or {}
        local record = '[' .. item .. ',' .. cjson.encode(info['exchange'] or '') .. ','
            .. cjson.encode(info['routing_key'] or '') .. ']'
        redis.call('HSET', KEYS[1], tag, record)
        redis.call('ZADD', KEYS[2], ARGV[1], tag)
        return item
    end
end
return false
"""

#: Seconds between two sweeps of kombu's Redis ``unacked`` index by one backend.
_SWEEP_SECONDS = 1.0

#: The socket timeout of a read that must not wait (py-amqp keeps a partial frame for the
#: next read on a timeout; a non-blocking socket would make it spin instead).
_NO_WAIT = 0.0001

#: Bytes of message bodies an asyncio publisher writes from its loop at most: a larger
#: publish could fill the socket's buffer and wait for the broker to read, so it takes a thread.
_INLINE_BYTES = 64 * 1024

#: An AMQP consumer's prefetch window, in batches of the receive that starts it: while one
#: batch is handled (and acknowledged together at its end), the broker pushes the next.
_WINDOW_BATCHES = 2

#: Longest sleep of a waiting AMQP receive on its socket: a delivery wakes it, but messages
#: beyond a full prefetch window are not pushed (they are taken when it looks again).
_CONSUMER_WAIT = 0.5

#: Seconds without a receive after which a queue is no longer consumed: what its consumer
#: was pushed goes back to the queue for other consumers (a stopped dispatcher, handlers
#: that take long).
_IDLE_CONSUMER = 5.0


class _ChannelLost(Exception):
    """An AMQP channel error closed the channel named (``"consume"``/``"publish"``)."""

    def __init__(self, which: str, error: BaseException) -> None:
        super().__init__(which)
        self.which = which
        self.error = error


class KombuBackend(MessagingBackend):
    """Queues and topics on a kombu transport, tested on Redis and AMQP (RabbitMQ).

    Every method is thread-safe. Open one backend per process (or per consumer thread that
    should receive on a connection of its own).

    Args:
        url: The transport: ``kombu+redis://host:6379/0``,
            ``kombu+amqp://user:password@host:5672/vhost``, or any kombu URL after
            ``kombu+`` (a plain kombu URL is accepted too).
        prefix: On Redis, the prefix of every key (kombu's ``global_keyprefix``): backends
            with different prefixes do not see each other's queues.
        visibility_timeout: Seconds a received message stays leased to its receiver where
            the transport has leases (Redis); the dispatcher's heartbeat extends it while a
            handler runs. A queue may have its own (``declare_queue(...,
            visibility_timeout=...)``), known to the processes that declared it.
        poll_interval: Longest pause, in seconds, between two looks at an empty queue while a
            receive waits.
        retries: How many times an operation is tried again on a new connection after a
            connection error.
        transport_options: kombu transport options, over the backend's own (see
            :func:`~melange.backends.kombu.connection.transport_options`).
        connect_timeout: Seconds a connection attempt may take.
        heartbeat: On AMQP, the heartbeat interval asked of the broker, in seconds (0: none;
            a lost connection is then noticed only when a read or write fails).
    """

    loop_wait_seconds: float | None = 1.0

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = "melange-kombu:",
        visibility_timeout: float = 30.0,
        poll_interval: float = 0.1,
        retries: int = 5,
        transport_options: Mapping[str, Any] | None = None,
        connect_timeout: float = 10.0,
        heartbeat: float = 10.0,
    ) -> None:
        if isinstance(visibility_timeout, bool) or not visibility_timeout > 0:
            raise ConfigurationError(
                f"visibility_timeout must be a positive number, got {visibility_timeout!r}"
            )
        if not poll_interval > 0:
            raise ConfigurationError(f"poll_interval must be positive, got {poll_interval!r}")
        if retries < 0:
            raise ConfigurationError(f"retries must be 0 or more, got {retries!r}")
        if isinstance(heartbeat, bool) or not heartbeat >= 0:
            raise ConfigurationError(f"heartbeat must be 0 or more seconds, got {heartbeat!r}")
        self.url = redacted(url)
        self._transport = transport_name(url)
        self._prefix = prefix
        self._visibility_timeout = float(visibility_timeout)
        self._poll_interval = float(poll_interval)
        self._retries = int(retries)
        probe = _Connection(kombu_url(url))
        #: kombu's ``driver_type`` of the transport (``redis``, ``amqp``, ``memory``...).
        self.driver: str = str(probe.transport.driver_type)
        probe.release()
        self._amqp = self.driver in topology.AMQP_DRIVERS
        self._options = options_for(self.driver, prefix, visibility_timeout, transport_options)
        self._heartbeat = float(heartbeat) if self._amqp else 0.0
        self._connection: Any = _Connection(
            kombu_url(url),
            transport_options=self._options,
            connect_timeout=connect_timeout,
            heartbeat=self._heartbeat,
        )
        #: What a new connection may cure (the same for every connection of the transport).
        self._recoverable: tuple[type[BaseException], ...] = (
            *self._connection.connection_errors,
            OSError,
        )
        self._lock = threading.RLock()
        self._wake = threading.Condition()
        self._waiting = 0  # receives waiting on ``_wake`` (a publish wakes them)
        self._interrupts = 0
        self._generation = 0
        self._consume: Any = None
        self._publish: Any = None
        self._returned: list[str] = []
        self._exchanges: set[str] = set()
        self._queues: set[str] = set()
        self._topics: set[str] = set()
        self._leases: dict[str, float] = {}
        self._timers: dict[tuple[int, str], threading.Timer] = {}
        self._last_sweep = 0.0
        self._closed = False
        #: AMQP consumers of the receiving channel (queue -> consumer tag), and the
        #: deliveries they pushed that no receive has handed out yet.
        self._consumers: dict[str, str] = {}
        self._pushed: dict[str, deque[Any]] = {}
        self._took: dict[str, float] = {}  # queue -> when a receive last took from it
        # Which queues delivered lately (see melange.backends.gathering).
        self._busy = BusyQueues()
        #: Per consumed queue: its prefetch count, and the tags of the deliveries it pushed
        #: that are handed out and not settled yet (when they fill the window, the broker
        #: pushes nothing more).
        self._prefetch: dict[str, int] = {}
        self._window: dict[str, set[Any]] = {}
        #: Wakes a receive waiting on the AMQP socket (see :meth:`interrupt`).
        self._waker: tuple[socket.socket, socket.socket] | None = None
        self._beating: threading.Thread | None = None
        #: On AMQP, py-amqp's connection under the kombu one, read directly on the receive
        #: path (kombu checks the connection again at each property access); set with the
        #: channels, dropped with them.
        self._raw: Any = None
        #: When the next heartbeat check of the connection is due (monotonic seconds).
        self._next_beat_check = 0.0
        #: Publisher confirms on AMQP (``confirm_publish``, on by default): whether the
        #: publishing channel is in confirm mode, the sequence number of its last publish,
        #: and the outcome of each publish not collected yet (None while the broker has not
        #: answered, then True for an ack, False for a nack). Several can be in flight.
        self._confirming = False
        self._published = 0
        self._confirms: dict[int, bool | None] = {}
        #: Called, from any thread, when a delivery is pushed or a wait is interrupted: how
        #: receives waiting on an event loop learn of deliveries another thread read.
        self._waiters: set[Callable[[], None]] = set()
        #: On AMQP, receives and acknowledgements are tried on an asyncio dispatcher's loop
        #: first (see :meth:`run_inline`); every other call may wait for the broker.
        self.inline_when_free = self._amqp

    def __repr__(self) -> str:
        return f"KombuBackend({self.url!r})"

    # -- state --------------------------------------------------------------------------------

    @property
    def capabilities(self) -> BackendCapabilities:
        return topology.capabilities(self.driver, self._transport, self.driver != "memory")

    @property
    def visibility_timeout(self) -> float | None:
        """Default lease of received messages, in seconds (``None``: the transport has no
        leases; a message comes back only when its receiver's connection closes)."""
        return self._visibility_timeout if self.capabilities.visibility_timeout else None

    def visibility_timeout_for(self, message: Message) -> float | None:
        receipt = message.metadata
        return receipt.lease if isinstance(receipt, Receipt) else None

    def holds(self, message: Message) -> bool:
        """Whether the message came on the current connection (else the broker gives it to
        a consumer again whatever this process does)."""
        receipt = message.metadata
        return isinstance(receipt, Receipt) and receipt.generation == self._generation

    # -- connection -----------------------------------------------------------------------------

    def _channels(self) -> tuple[Any, Any]:
        """The receiving and the publishing channel, opened when needed (under the lock)."""
        if self._closed:
            raise BackendError("the kombu backend is closed")
        if self._consume is None or self._publish is None:
            if self._consume is None and self._publish is not None:
                # Only the receiving channel closed: the messages it delivered are given
                # back by the broker.
                self._generation += 1
                self._forget_consumers()
            self._connection.ensure_connection(max_retries=1)
            self._raw = self._connection.connection if self._amqp else None
            self._beat()
            if self._consume is None:
                self._consume = self._connection.channel()
            if self._publish is None:
                self._publish = self._connection.channel()
                if self._amqp:
                    self._open_confirms(self._publish)
        return self._consume, self._publish

    def _open_confirms(self, channel: Any) -> None:
        """Put a new publishing channel in confirm mode, when the connection asks for
        confirms, with the confirms counted here by sequence number (py-amqp's own publish
        would wait for each confirm before the next publish)."""
        channel.events["basic_return"].add(self._on_return)
        self._published = 0
        self._confirms = {}
        self._confirming = bool(getattr(self._raw, "confirm_publish", False))
        if self._confirming:
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            channel.confirm_select()
            channel._confirm_selected = True  # so py-amqp never selects it again

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle_confirms(delivery_tag, multiple, True)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle_confirms(delivery_tag, multiple, False)

    def _settle_confirms(self, delivery_tag: int, multiple: bool, outcome: bool) -> None:
        # Called while a thread reads the connection, under the lock.
        confirms = self._confirms
        if multiple:
            for seq, state in list(confirms.items()):
                if seq <= delivery_tag and state is None:
                    confirms[seq] = outcome
        elif delivery_tag in confirms:
            confirms[delivery_tag] = outcome
        if self._waiters:
            self._call_waiters()

    def _confirmed(self, seqs: Sequence[int]) -> bool:
        """Whether the broker answered every publish of ``seqs`` (under the lock); those are
        then forgotten.

        Raises:
            PublishError: the broker refused some of them (``basic.nack``).
            ConnectionError: the publishing channel was lost before it answered (``_io``
                publishes again on a new connection).
        """
        confirms = self._confirms
        if any(confirms.get(seq, False) is None for seq in seqs):
            return False
        outcomes = [confirms.pop(seq, None) for seq in seqs]
        if None in outcomes:
            raise ConnectionError("the publishing channel was lost before the broker confirmed")
        refused = outcomes.count(False)
        if refused:
            raise PublishError(
                f"the broker refused {refused} of {len(seqs)} published message(s) (basic.nack)"
            )
        return True

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        # A mandatory publish found no queue (py-amqp calls this before the confirm).
        self._returned.append(routing_key)

    def _reset(self) -> None:
        """Drop the connection after an error: the next call opens a new one."""
        self._generation += 1
        self._consume = self._publish = None
        self._raw = None
        self._confirms = {}
        self._forget_consumers()
        self._exchanges.clear()
        with contextlib.suppress(Exception):
            self._connection.collect()
        self._connection = self._connection.clone()

    def _io(self, operation: Callable[[Any, Any], _T], what: str) -> _T:
        """Run ``operation(receiving channel, publishing channel)`` under the lock, on a new
        connection again after a connection error (``retries`` times)."""
        recoverable = self._recoverable
        attempt = 0
        while True:
            with self._lock:
                try:
                    consume, publish = self._channels()
                    return operation(consume, publish)
                except _ChannelLost as lost:
                    self._lose_channel(lost.which)
                    raise self._channel_error(lost.error, what) from None
                except recoverable as exc:
                    self._reset()
                    if attempt >= self._retries:
                        raise BackendConnectionError(
                            f"{what}: the {self._transport} transport at {self.url} is not "
                            f"reachable ({type(exc).__name__})"
                        ) from None
            time.sleep(min(2.0, 0.1 * 2**attempt))
            attempt += 1

    def _drop_connection(self) -> None:
        """Drop the connection (a confirm that never came): the next call opens another."""
        with self._lock:
            self._reset()

    def _lose_channel(self, which: str) -> None:
        with contextlib.suppress(Exception):
            channel = self._consume if which == "consume" else self._publish
            if channel is not None:
                channel.close()
        if which == "consume":
            self._consume = None
            self._forget_consumers()
        else:
            self._publish = None
            self._confirms = {}

    def _channel_error(self, error: BaseException, what: str) -> Exception:
        return BackendError(f"{what}: the broker refused ({_describe(error)})")

    def _guard(self, which: str, call: Callable[[], _T]) -> _T:
        """Run an AMQP call that may close its channel on a refusal (``which`` names it)."""
        try:
            return call()
        except self._connection.channel_errors as exc:
            if self._amqp:
                raise _ChannelLost(which, exc) from exc
            raise

    @contextlib.contextmanager
    def _spare_channel(self) -> Any:
        """A channel of its own for a call the broker may refuse by closing the channel
        (passive declarations, topology), so the receiving one and its messages live on."""
        with self._lock:
            self._channels()
            channel = self._connection.channel()
            try:
                yield channel
            finally:
                with contextlib.suppress(Exception):
                    channel.close()

    def _topology(self, operation: Callable[[Any], _T], what: str) -> _T:
        """Run ``operation(spare channel)``, on a new connection after a connection error."""

        def run(consume: Any, publish: Any) -> _T:
            with self._spare_channel() as channel:
                return operation(channel)

        return self._io(run, what)

    # -- bindings (AMQP natively; virtual transports through kombu's binding tables) -----------

    def _declare_exchange(self, channel: Any, name: str, kind: str) -> None:
        channel.exchange_declare(name, kind, durable=True, auto_delete=False)
        self._exchanges.add(name)

    def _bind(self, channel: Any, queue: str, exchange: str, kind: str, key: str) -> None:
        self._declare_exchange(channel, exchange, kind)
        if self._amqp or not hasattr(channel, "keyprefix_queue"):
            channel.queue_bind(queue, exchange, key)
            return
        # kombu's Redis transport skips a binding its connection made before, even when the
        # table lost it since (another process deleted it): write it every time.
        meta = channel.typeof(exchange).prepare_bind(queue, exchange, key, None)
        channel._queue_bind(exchange, *meta)

    def _unbind(self, channel: Any, queue: str, exchange: str, kind: str, key: str) -> None:
        if self._amqp:
            channel.queue_unbind(queue, exchange, key)
            return
        self._declare_exchange(channel, exchange, kind)
        meta = channel.typeof(exchange).prepare_bind(queue, exchange, key, None)
        with contextlib.suppress(KeyError):
            channel.state.binding_delete(queue, exchange, key)
        if hasattr(channel, "keyprefix_queue"):
            member = channel.sep.join([m or "" for m in meta])
            channel.client.srem(channel.keyprefix_queue % (exchange,), member)
            permanent = getattr(channel, "keyprefix_binding_permanent", None)
            if permanent:  # kombu 5.6+: the set that keeps the table from its sweeps
                channel.client.srem(permanent % (exchange,), member)
        else:
            channel.queue_unbind(queue, exchange, key)

    def _table(self, channel: Any, exchange: str) -> list[tuple[str, str, str]]:
        """The bindings ``(routing key, pattern, queue)`` of an exchange (virtual only)."""
        try:
            return [tuple(row) for row in channel.get_table(exchange)]
        except KeyError:
            return []

    # -- topology -------------------------------------------------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        topology.check_name("topic", topic_name)

        def declare(channel: Any) -> None:
            self._declare_exchange(channel, topic_name, "topic")
            if not self._amqp:
                self._bind(channel, topic_name, topology.TOPIC_REGISTRY, "direct", topic_name)

        self._topology(declare, f"declaring topic {topic_name!r}")
        self._topics.add(topic_name)
        return TopicWrapper(topic_name, topic_name)

    def get_topic(self, topic_name: str) -> TopicWrapper:
        if topic_name in self._topics:
            return TopicWrapper(topic_name, topic_name)
        if not self._topic_exists(topic_name):
            raise TopicNotFoundError(topic_name)
        self._topics.add(topic_name)
        return TopicWrapper(topic_name, topic_name)

    def _topic_exists(self, name: str) -> bool:
        def exists(channel: Any) -> bool:
            if self._amqp:
                try:
                    channel.exchange_declare(name, "topic", passive=True)
                except self._connection.channel_errors as exc:
                    if _code(exc) == _NOT_FOUND:
                        return False
                    raise
                return True
            return any(row[0] == name for row in self._table(channel, topology.TOPIC_REGISTRY))

        return self._topology(exists, f"looking up topic {name!r}")

    def get_queue(self, queue_name: str) -> QueueWrapper:
        if queue_name in self._queues:
            return QueueWrapper(queue_name, queue_name)
        if not self._queue_exists(queue_name):
            raise QueueNotFoundError(queue_name)
        self._queues.add(queue_name)
        return QueueWrapper(queue_name, queue_name)

    def _queue_exists(self, name: str) -> bool:
        def exists(channel: Any) -> bool:
            if self._amqp:
                return self._declared_count(channel, name) is not None
            return any(row[0] == name for row in self._table(channel, topology.QUEUE_REGISTRY))

        return self._topology(exists, f"looking up queue {name!r}")

    def _declared_count(self, channel: Any, name: str) -> int | None:
        """Ready messages of an AMQP queue by a passive declaration (``None``: missing; the
        channel is then closed)."""
        try:
            declared = channel.queue_declare(name, passive=True)
        except self._connection.channel_errors as exc:
            if _code(exc) == _NOT_FOUND:
                return None
            raise
        return int(declared.message_count)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create the queue (idempotent), its dead-letter queue and its subscriptions.

        Options: ``filter_events`` (manifests the subscriptions let through),
        ``visibility_timeout`` (the queue's lease on Redis, for this process),
        ``max_receive_count`` (accepted for portability; no kombu transport counts
        deliveries, so it is not enforced: the failure policy decides). FIFO queues are
        refused. Declaring again adds bindings and never removes one.
        """
        topology.check_name("queue", queue_name)
        if dead_letter_queue_name is not None:
            topology.check_name("dead-letter queue", dead_letter_queue_name)
        topology.check_queue_options(queue_name, kwargs)
        events = kwargs.get("filter_events")
        keys = sorted({topology.routing_key(e) for e in events}) if events else None

        def declare(channel: Any) -> None:
            names = [queue_name] + ([dead_letter_queue_name] if dead_letter_queue_name else [])
            for name in names:
                channel.queue_declare(name, durable=True, auto_delete=False)
                if not self._amqp:
                    self._bind(channel, name, topology.QUEUE_REGISTRY, "direct", name)
            if dead_letter_queue_name:
                self._bind(
                    channel,
                    dead_letter_queue_name,
                    topology.DEAD_LETTER_EXCHANGE,
                    "direct",
                    queue_name,
                )
            for topic in topics_to_bind:
                self._declare_exchange(channel, topic.name, "topic")
                for key in keys or [topology.EVERY_MESSAGE]:
                    self._bind(channel, queue_name, topic.name, "topic", key)

        try:
            self._topology(declare, f"declaring queue {queue_name!r}")
        except BackendError as exc:
            raise ConfigurationError(
                f"queue {queue_name!r} could not be declared: {exc} (a queue of that name with "
                "other arguments, e.g. declared by the RabbitMQ backend, cannot be reused)"
            ) from None
        if kwargs.get("visibility_timeout") is not None:
            self._leases[queue_name] = float(kwargs["visibility_timeout"])
        self._queues.add(queue_name)
        dead = None
        if dead_letter_queue_name:
            self._queues.add(dead_letter_queue_name)
            dead = QueueWrapper(dead_letter_queue_name, dead_letter_queue_name)
        return QueueWrapper(queue_name, queue_name), dead

    def delete_queue(self, queue: QueueWrapper) -> None:
        name = queue.name

        def delete(channel: Any) -> None:
            if self._amqp:
                channel.queue_delete(name)
                return
            for topic in [row[0] for row in self._table(channel, topology.TOPIC_REGISTRY)]:
                for key, _, bound in self._table(channel, topic):
                    if bound == name:
                        self._unbind(channel, name, topic, "topic", key)
            for key, _, bound in self._table(channel, topology.DEAD_LETTER_EXCHANGE):
                if name in (key, bound):
                    self._unbind(channel, bound, topology.DEAD_LETTER_EXCHANGE, "direct", key)
            self._unbind(channel, name, topology.QUEUE_REGISTRY, "direct", name)
            channel.queue_purge(name)

        self._topology(delete, f"deleting queue {name!r}")
        self._queues.discard(name)
        self._leases.pop(name, None)

    def delete_topic(self, topic: TopicWrapper) -> None:
        name = topic.name

        def delete(channel: Any) -> None:
            if self._amqp:
                channel.exchange_delete(name)
                return
            for key, _, bound in self._table(channel, name):
                self._unbind(channel, bound, name, "topic", key)
            self._unbind(channel, name, topology.TOPIC_REGISTRY, "direct", name)
            channel.state.exchanges.pop(name, None)

        self._topology(delete, f"deleting topic {name!r}")
        self._topics.discard(name)
        self._exchanges.discard(name)

    # -- publishing -----------------------------------------------------------------------------

    def _write(
        self, publish: Any, outgoing: Outgoing, exchange: str, key: str, mandatory: bool = False
    ) -> int | None:
        """Publish on the publishing channel without waiting for the broker's confirm; the
        sequence number to wait for (:meth:`_await_confirms`), or ``None`` when the channel
        has no confirms."""
        # What kombu's Producer.publish ends with, without its per-call work around it (the
        # body is already bytes, nothing is declared, there is no retry policy: ``_io``
        # retries), which cost as much as the rest of the backend's publish.
        message = publish.prepare_message(
            outgoing.body,
            0,
            CONTENT_TYPE,
            CONTENT_ENCODING,
            outgoing.headers,
            dict(outgoing.properties),
        )
        if not self._confirming:
            self._guard(
                "publish",
                lambda: publish.basic_publish(
                    message, exchange=exchange, routing_key=key, mandatory=mandatory
                ),
            )
            return None
        self._published += 1
        seq = self._published
        self._confirms[seq] = None
        # py-amqp's basic_publish waits for this confirm alone; its unconfirmed write lets
        # several publishes be in flight, confirmed by sequence number.
        self._guard(
            "publish",
            lambda: publish._basic_publish(
                message, exchange=exchange, routing_key=key, mandatory=mandatory
            ),
        )
        return seq

    def _await_confirms(self, seqs: Sequence[int | None]) -> None:
        """Read from the connection until the broker confirmed each publish (under the
        lock; a read that times out is a lost connection, and ``_io`` publishes again)."""
        pending = [seq for seq in seqs if seq is not None]
        if not pending:
            return
        raw = self._raw
        while not self._confirmed(pending):
            self._guard("publish", lambda: raw.drain_events(timeout=None))

    def _send(
        self, publish: Any, outgoing: Outgoing, exchange: str, key: str, mandatory: bool = False
    ) -> None:
        """Publish on the publishing channel (confirmed by the broker on AMQP)."""
        self._await_confirms([self._write(publish, outgoing, exchange, key, mandatory)])

    def _publish_now(self, targets: Sequence[tuple[Outgoing, str, str]]) -> list[int]:
        """Publish ``(message, exchange, routing key)`` targets without waiting for the
        confirms (an asyncio publisher, on its loop); their sequence numbers, to be awaited
        with :meth:`_confirmed_now`. A connection found broken is dropped and the returned
        numbers then never confirm (the caller publishes again).

        Raises:
            WouldBlock: not on AMQP with confirms, the connection is not open or in use by
                another thread, or the messages are large enough for a write to wait.
        """
        if not self._confirming or sum(len(t[0].body) for t in targets) > _INLINE_BYTES:
            raise WouldBlock("this publish may wait for the broker")
        with self._connection_free(opened=True):
            publish = self._publish
            seqs: list[int] = []
            try:
                for outgoing, exchange, key in targets:
                    seq = self._write(publish, outgoing, exchange, key)
                    seqs.append(-1 if seq is None else seq)
            except _ChannelLost as lost:
                self._lose_channel(lost.which)
                raise self._channel_error(lost.error, "publishing") from None
            except self._recoverable:
                self._reset()
                seqs.append(-1)  # never confirmed: published again
            return seqs

    def _confirmed_now(self, seqs: Sequence[int]) -> bool:
        """Read what the connection received, without waiting, and tell whether the broker
        confirmed every publish of ``seqs`` (an asyncio publisher, on its loop).

        Raises:
            WouldBlock: another thread is using the connection (it tells the waiters when
                it reads a confirm).
            PublishError: the broker refused some of them.
            ConnectionError: the connection was lost before it confirmed them all.
        """
        with self._connection_free(opened=False):
            if self._raw is not None and not self._closed:
                try:
                    self._drain()
                except (*self._recoverable, *self._connection.channel_errors):
                    self._reset()
            return self._confirmed(seqs)

    @contextlib.contextmanager
    def _connection_free(self, opened: bool) -> Iterator[None]:
        """Hold the lock for a call on an event loop that must not wait: taken only if free
        (and, with ``opened``, the channels open).

        Raises:
            WouldBlock: another thread is using the connection, or it is not open.
        """
        if not self._lock.acquire(blocking=False):
            raise WouldBlock("another thread is using the kombu connection")
        try:
            if opened and (
                self._closed or self._consume is None or self._publish is None or self._raw is None
            ):
                raise WouldBlock("the kombu connection is not open")
            yield
        finally:
            self._lock.release()

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        self.publish_batch_to_queue([message], queue, **kwargs)

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        """Publish the messages one after the other (each confirmed by the broker on AMQP)."""
        self._check_publish(queue.name, messages, kwargs)
        prepared = [publish_arguments(m) for m in messages]

        def publish(consume: Any, channel: Any) -> None:
            # Every message written, then every confirm awaited: one round trip per batch.
            seqs = [self._write(channel, arguments, "", queue.name) for arguments in prepared]
            self._await_confirms(seqs)

        self._publishing(publish, f"publishing to queue {queue.name!r}", queue.name, "queue")
        self._ring()

    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        self.publish_batch_to_topic([message], topic, **kwargs)

    def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        """Publish each message to every queue subscribed to the topic whose filter lets its
        manifest through.

        On AMQP the broker routes; on virtual transports the backend looks the subscribed
        queues up in kombu's binding table and publishes a copy to each (so that kombu's
        Redis transport, when it gives back an unacknowledged copy, gives it to that queue
        only). A publisher dying mid-way on a virtual transport may have reached some of
        the queues only.
        """
        self._check_publish(topic.name, messages, kwargs)
        prepared = [(m, publish_arguments(m)) for m in messages]

        def publish(consume: Any, channel: Any) -> None:
            if topic.name not in self._exchanges:
                if self._amqp:
                    # Refused (closing the channel) when the topic does not exist.
                    self._guard(
                        "publish",
                        lambda: channel.exchange_declare(topic.name, "topic", passive=True),
                    )
                    self._exchanges.add(topic.name)
                else:
                    self._declare_exchange(channel, topic.name, "topic")
            seqs: list[int | None] = []
            for message, arguments in prepared:
                key = topology.routing_key(message.manifest)
                if self._amqp:
                    seqs.append(self._write(channel, arguments, topic.name, key))
                    continue
                for target in sorted(set(channel._lookup(topic.name, key))):
                    self._send(channel, arguments, "", target)
            self._await_confirms(seqs)

        self._publishing(publish, f"publishing to topic {topic.name!r}", topic.name, "topic")
        self._ring()

    def _publishing(
        self, publish: Callable[[Any, Any], None], what: str, name: str, kind: str
    ) -> None:
        try:
            self._io(publish, what)
        except BackendError as exc:
            raise self._publish_failure(exc, name, kind) from None

    def _publish_failure(self, exc: BackendError, name: str, kind: str) -> Exception:
        """What a publish to ``name`` (a ``"queue"`` or ``"topic"``) that failed with
        ``exc`` raises."""
        if not isinstance(exc, BackendConnectionError) and (
            "404" in str(exc) or "NOT_FOUND" in str(exc)
        ):
            self._queues.discard(name)
            self._topics.discard(name)
            return QueueNotFoundError(name) if kind == "queue" else TopicNotFoundError(name)
        return PublishError(str(exc))

    def _check_publish(
        self, destination: str, messages: Sequence[Message], kwargs: Mapping[str, Any]
    ) -> None:
        topology.refuse_fifo_publish(destination, messages, kwargs)
        if kwargs:  # without keywords there is nothing to apply
            apply_undelayed_publish_keywords(messages, kwargs, backend="the kombu backend")

    def _ring(self) -> None:
        """Wake this backend's waiting receives (a publish may be for them)."""
        # Read without the lock: a receive not counted yet misses this ring, as one not yet
        # waiting always did, and waits no longer than its pause.
        if self._waiting:
            with self._wake:
                self._wake.notify_all()

    # -- consuming ------------------------------------------------------------------------------

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Receive up to ``max_messages`` (default 10) messages; with ``wait_seconds``, wait
        that long for one when the queue is empty."""
        limit = max(1, int(kwargs.get("max_messages") or 10))
        wait = float(kwargs.get("wait_seconds") or 0.0)
        deadline = time.monotonic() + wait
        with self._wake:
            interrupts = self._interrupts
        pause = 0.005
        # A receive that may not wait takes what is there (a new consumer's first deliveries
        # are still on their way); one that waits consumes, on AMQP.
        consuming = self._amqp and wait > 0
        receive = self._take if consuming else self._get
        what = f"receiving from queue {queue.name!r}"
        take: Callable[[Any, Any], list[Message]] = lambda consume, publish: receive(  # noqa: E731
            consume, queue.name, limit
        )
        while True:
            got = self._io(take, what)
            if len(got) < limit:
                self._sweep()
            if got:
                self._busy.delivered(queue.name)
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            if consuming:
                if not self._await_delivery(min(left, _CONSUMER_WAIT), interrupts):
                    return []
                # A busy queue's next deliveries are taken together (see gathering).
                gather = self._busy.gather_seconds(queue.name, deadline - time.monotonic())
                if gather > 0:
                    time.sleep(gather)
                continue
            with self._wake:
                if self._interrupts != interrupts:
                    return []
                self._waiting += 1
                try:
                    self._wake.wait(min(pause, left))
                finally:
                    self._waiting -= 1
                if self._interrupts != interrupts:
                    return []
            pause = min(pause * 2, self._poll_interval)

    # -- the AMQP consumer ----------------------------------------------------------------------

    def _take(self, channel: Any, queue: str, limit: int) -> list[Message]:
        """Up to ``limit`` messages the queue's consumer was pushed (under the lock), the
        consumer started when there is none.

        When it was pushed nothing because its prefetch window is full (the caller holds that
        many of its messages unsettled and asks for more), or the broker cancelled it (the
        queue is gone?), the queue's next messages are taken with ``basic_get``.
        """
        self._consumer(channel, queue, limit * _WINDOW_BATCHES)
        try:
            return self._take_pushed(channel, queue, limit)
        except WouldBlock:
            return self._get(channel, queue, limit)

    def _take_pushed(self, channel: Any, queue: str, limit: int) -> list[Message]:
        """Up to ``limit`` messages the queue's consumer was pushed, read without waiting
        (under the lock).

        Raises:
            WouldBlock: the queue's consumer is not started, the broker cancelled it, or
                its window is full (each needs a round trip to the broker).
        """
        if queue not in self._consumers:
            raise WouldBlock(f"queue {queue!r} is not consumed yet")
        self._took[queue] = time.monotonic()
        self._drain()
        pushed = self._pushed.get(queue)
        window = self._window.get(queue)
        if (
            pushed is None
            or window is None
            or (not pushed and len(window) >= self._prefetch[queue])
        ):
            raise WouldBlock(f"queue {queue!r} needs a basic.get")
        return self._hand_out(queue, pushed, window, limit)

    def _hand_out(
        self, queue: str, pushed: deque[Any], window: set[Any], limit: int
    ) -> list[Message]:
        got: list[Message] = []
        while pushed and len(got) < limit:
            delivered = pushed.popleft()
            tag = delivered.delivery_tag
            window.add(tag)
            got.append(from_delivery(delivered, Receipt(queue, tag, self._generation, None)))
        return got

    def _consumer(self, channel: Any, queue: str, prefetch: int) -> None:
        """Consume ``queue`` on the receiving channel, if it is not consumed yet, with a
        prefetch count of ``prefetch``."""
        if queue in self._consumers:
            return
        try:
            # Per consumer (RabbitMQ applies a non-global qos to the consumers started after).
            channel.basic_qos(0, prefetch, False)
            pushed = self._pushed.setdefault(queue, deque())
            self._window[queue] = set()
            self._prefetch[queue] = prefetch
            tag = channel.basic_consume(
                queue, no_ack=False, callback=self._pusher(pushed), on_cancel=self._cancelled
            )
        except self._connection.channel_errors as exc:
            self._lose_channel("consume")
            if _code(exc) == _NOT_FOUND:
                self._queues.discard(queue)
                raise QueueNotFoundError(queue) from None
            raise _ChannelLost("consume", exc) from exc
        self._consumers[queue] = tag

    def _pusher(self, pushed: deque[Any]) -> Callable[[Any], None]:
        """The callback of a consumer: keeps each delivery for a receive, and tells the
        receives waiting on an event loop (the thread that read it may be another one)."""
        waiters = self._waiters

        def push(delivered: Any) -> None:
            pushed.append(delivered)
            if waiters:
                self._call_waiters()

        return push

    def _call_waiters(self) -> None:
        for waiter in list(self._waiters):
            waiter()

    def _add_waiter(self, waiter: Callable[[], None]) -> None:
        """Have ``waiter`` called, from any thread, when a delivery is pushed or waits are
        interrupted, until :meth:`_remove_waiter` (for :class:`AsyncKombuBackend`)."""
        self._waiters.add(waiter)

    def _remove_waiter(self, waiter: Callable[[], None]) -> None:
        self._waiters.discard(waiter)

    def _consuming_socket(self) -> Any:
        """The AMQP connection's socket when it is up and consumed from, else ``None``
        (read without the lock: the caller copes with a socket closed meanwhile)."""
        raw = self._raw
        if self._closed or self._consume is None or raw is None:
            return None
        return getattr(raw.transport, "sock", None)

    @property
    def _interrupt_count(self) -> int:
        return self._interrupts

    def run_inline(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """On AMQP, call ``fn`` on this thread when it needs no round trip to the broker and
        the connection is free: a receive that does not wait takes what the queue's consumer
        was pushed, and acknowledgements are written to the socket (an asyncio dispatcher's
        calls, on its loop). Every other call, a connection not open yet or in use by another
        thread raise :class:`~melange.exceptions.WouldBlock`.

        A connection found broken is dropped, as a reconnection would: the broker gives back
        what it held, so the receive returns nothing and the acknowledgement has nothing
        left to do; the next call that waits opens a new one.
        """
        name = getattr(fn, "__name__", "")
        if not self._amqp or getattr(fn, "__self__", None) is not self:
            raise WouldBlock(f"{type(self).__name__} runs {name or fn!r} on a thread")
        operation: Callable[[Any], Any]
        if name == "retrieve_messages" and not kwargs.get("wait_seconds"):
            queue: QueueWrapper = args[0]
            limit = max(1, int(kwargs.get("max_messages") or 10))
            operation = lambda consume: self._take_pushed(consume, queue.name, limit)  # noqa: E731
            broken: Any = []
        elif name in ("acknowledge", "acknowledge_batch"):
            messages = [args[0]] if name == "acknowledge" else list(args[0])
            operation = lambda consume: self._acknowledge_now(consume, messages)  # noqa: E731
            broken = None
        else:
            raise WouldBlock(f"{type(self).__name__}.{name} may wait for the broker")
        with self._connection_free(opened=True):
            try:
                return operation(self._consume)  # type: ignore[no-any-return]
            except self._recoverable:
                self._reset()
                return broken  # type: ignore[no-any-return]

    def _cancel(self, channel: Any, queue: str) -> None:
        """Stop consuming ``queue`` and give back what its consumer was pushed and no receive
        took (under the lock), so that other consumers get it."""
        tag = self._consumers.pop(queue, None)
        if tag is None:
            return
        channel.basic_cancel(tag)
        self._drain()  # deliveries sent before the cancellation took effect
        self._window.pop(queue, None)
        for delivered in self._pushed.pop(queue, ()):
            channel.basic_reject(delivered.delivery_tag, requeue=True)

    def _cancelled(self, tag: str) -> None:
        """The broker cancelled a consumer (its queue was deleted): the next receive from
        that queue consumes again, or finds the queue missing."""
        for queue, current in list(self._consumers.items()):
            if current == tag:
                del self._consumers[queue]
                self._window.pop(queue, None)
                self._pushed.pop(queue, None)

    def _forget_consumers(self) -> None:
        """The receiving channel is gone: so are its consumers, and what they were pushed
        (unacknowledged, it goes back to the queues)."""
        self._consumers.clear()
        self._pushed.clear()
        self._took.clear()
        self._window.clear()

    def _drain(self) -> None:
        """Read every frame the AMQP connection has received, without waiting (deliveries go
        to their consumer's queue), and send or check heartbeats (under the lock)."""
        raw = self._raw if self._raw is not None else self._connection.connection
        transport = raw.transport
        sock = transport.sock
        if _readable(sock):
            # The frames of what arrived, read under one socket timeout (py-amqp's own loop
            # would set the timeout and restore it for each frame). The frames of a delivery
            # are sent together: the next one is read without asking the socket first.
            with transport.having_timeout(_NO_WAIT):
                while True:
                    try:
                        frame = transport.read_frame()
                    except TimeoutError:
                        break  # a partial frame stays in py-amqp's buffer for the next read
                    raw.on_inbound_frame(frame)
                    if not _followed(frame) and not _readable(sock):
                        break
        if self._heartbeat:
            now = time.monotonic()
            if now >= self._next_beat_check:
                # py-amqp sends a heartbeat when one is due and raises when the broker's are
                # missed: a few checks per interval are enough.
                self._next_beat_check = now + self._heartbeat / 4
                raw.heartbeat_tick(rate=2)

    def _await_delivery(self, seconds: float, interrupts: int) -> bool:
        """Sleep until the AMQP socket has something to read, :meth:`interrupt` is called or
        ``seconds`` pass, without the lock (so settlements go on meanwhile); ``False`` when
        interrupted."""
        # Read without the lock: a connection reset or closed meanwhile makes the select fail
        # or return at once, and the caller looks again under the lock.
        if self._closed:
            return False
        waker = self._waker if self._waker is not None else self._wakers()
        readable: list[Any] = [waker[0]]
        raw = self._raw
        # Only a connection that is up is waited on (kombu's ``connection`` would connect).
        if self._consume is not None and raw is not None:
            sock = getattr(raw.transport, "sock", None)  # no transport: closed meanwhile
            if sock is not None:
                readable.append(sock)
        if self._interrupts != interrupts:  # an int read: interrupt() also rings the waker
            return False
        try:
            ready, _, _ = select.select(readable, [], [], seconds)
        except (OSError, ValueError):  # the connection was closed meanwhile
            ready = []
        if waker[0] in ready:
            with contextlib.suppress(OSError):
                waker[0].recv(4096)
        return self._interrupts == interrupts

    def _wakers(self) -> tuple[socket.socket, socket.socket]:
        with self._wake:  # made once, whichever thread asks first
            if self._waker is None:
                reader, writer = socket.socketpair()
                reader.setblocking(False)
                writer.setblocking(False)
                self._waker = (reader, writer)
            return self._waker

    def _beat(self) -> None:
        """Start the thread that keeps heartbeats going while no call runs (handlers may
        take longer than the broker waits for a heartbeat; a publisher may sit idle)."""
        if not self._amqp or self._beating is not None:
            return
        self._beating = threading.Thread(
            target=self._beat_loop, name="melange-kombu-heartbeat", daemon=True
        )
        self._beating.start()

    def _beat_loop(self) -> None:
        recoverable = self._recoverable
        while not self._closed:
            # Without heartbeats, it only stops consuming queues nobody receives from.
            tick = self._heartbeat / 4 if self._heartbeat else _IDLE_CONSUMER / 2
            time.sleep(tick)
            # A receive or a settlement holding the lock drains and checks on its own.
            if not self._lock.acquire(timeout=tick):
                continue
            try:
                if self._closed or self._consume is None:
                    continue
                self._drain()
                idle = time.monotonic() - _IDLE_CONSUMER
                for queue in [q for q, took in self._took.items() if took < idle]:
                    del self._took[queue]
                    self._cancel(self._consume, queue)
            except recoverable:
                # Missed heartbeats or a broken socket: a new connection for the next call,
                # the broker gives back what the lost one held.
                self._reset()
            except self._connection.channel_errors:
                # The broker closed the receiving channel (its queue was deleted...): the next
                # call opens another, the broker gives back what this one held.
                self._lose_channel("consume")
            finally:
                self._lock.release()

    def _get(self, channel: Any, queue: str, limit: int) -> list[Message]:
        lease = self._leases.get(queue, self._visibility_timeout) if self._leasing else None
        got: list[Message] = []
        while len(got) < limit:
            try:
                if self._leasing:
                    delivered = self._redis_get(channel, queue, lease)
                else:
                    delivered = channel.basic_get(queue, no_ack=False)
            except self._connection.channel_errors as exc:
                if self._amqp:
                    self._lose_channel("consume")
                    if _code(exc) == _NOT_FOUND:
                        self._queues.discard(queue)
                        raise QueueNotFoundError(queue) from None
                    raise _ChannelLost("consume", exc) from exc
                raise
            if delivered is None:
                break
            tag = delivered.delivery_tag
            got.append(from_delivery(delivered, Receipt(queue, tag, self._generation, lease)))
        return got

    def _redis_get(self, channel: Any, queue: str, lease: float | None) -> Any:
        """``basic_get`` on kombu's Redis transport, with the message taken and recorded as
        unacknowledged in one script (see ``_REDIS_GET``), leased for ``lease`` seconds."""
        keys = [
            _raw_key(channel, channel.unacked_key),
            _raw_key(channel, channel.unacked_index_key),
            *(_raw_key(channel, channel._q_for_pri(queue, p)) for p in channel.priority_steps),
        ]
        score = time.time() + (lease or self._visibility_timeout) - self._visibility_timeout
        item = channel.client.eval(_REDIS_GET, len(keys), *keys, score)
        if not item:
            return None
        delivered = channel.Message(json.loads(item), channel=channel)
        # Known to the channel as delivered (kombu's own append would write Redis again).
        _VirtualQoS.append(channel.qos, delivered, delivered.delivery_tag)
        return delivered

    @property
    def _leasing(self) -> bool:
        return self.driver == "redis"

    def _lease(self, channel: Any, tag: Any, seconds: float) -> None:
        """Hold a message on Redis for ``seconds`` from now: kombu gives an unacknowledged
        message back once its entry in the ``unacked`` index is older than kombu's
        visibility timeout, so the entry's time is moved to make that ``seconds`` from now."""
        score = time.time() + seconds - self._visibility_timeout
        channel.client.zadd(channel.unacked_index_key, {tag: score}, xx=True)

    def _sweep(self) -> None:
        """Give back, on Redis, the messages whose lease ran out (kombu does it only in its
        event loop, which ``basic_get`` does not run)."""
        if not self._leasing or time.monotonic() - self._last_sweep < _SWEEP_SECONDS:
            return
        self._last_sweep = time.monotonic()

        def sweep(consume: Any, publish: Any) -> None:
            consume.qos.restore_visible(num=100, interval=1)

        self._io(sweep, "giving back expired leases")

    def _receipt(self, message: Message) -> Receipt:
        receipt = message.metadata
        if not isinstance(receipt, Receipt):
            raise BackendError(
                f"message {message.message_id!r} was not received by a kombu backend"
            )
        return receipt

    def _settle(
        self, message: Message, action: Callable[[Any, Any, Receipt], None], what: str
    ) -> None:
        receipt = self._receipt(message)
        self._cancel_timer(receipt)

        def settle(consume: Any, publish: Any) -> None:
            # A message of a lost connection is the broker's again: settling it is a no-op.
            if receipt.generation == self._generation:
                action(consume, publish, receipt)

        self._io(settle, what)

    def _finish(self, channel: Any, receipt: Receipt, requeue: bool = False) -> None:
        """Acknowledge the delivery (or reject it, back to its queue, with ``requeue``)."""
        if requeue:
            channel.basic_reject(receipt.delivery_tag, requeue=True)
        else:
            channel.basic_ack(receipt.delivery_tag)
        window = self._window.get(receipt.queue)
        if window is not None:
            window.discard(receipt.delivery_tag)

    def acknowledge(self, message: Message) -> None:
        self._settle(
            message,
            lambda consume, publish, receipt: self._finish(consume, receipt),
            f"acknowledging message {message.message_id!r}",
        )

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Acknowledge the messages in one locked call on the receiving channel."""
        what = (
            f"acknowledging message {messages[0].message_id!r}"
            if len(messages) == 1
            else f"acknowledging {len(messages)} messages"
        )
        self._io(lambda consume, publish: self._acknowledge_now(consume, messages), what)

    def _acknowledge_now(self, channel: Any, messages: Sequence[Message]) -> None:
        """Acknowledge ``messages`` on the receiving channel (under the lock)."""
        receipts = [self._receipt(message) for message in messages]
        for receipt in receipts:
            self._cancel_timer(receipt)
        for receipt in receipts:
            # A message of a lost connection is the broker's again: settling it is a no-op.
            if receipt.generation == self._generation:
                self._finish(channel, receipt)

    def nack(self, message: Message, delay: float = 0.0) -> None:
        """Deliver the message again after ``delay`` seconds as its next attempt: a copy
        with one more failed attempt is published, then the original acknowledged."""
        self._give_back(message, delay, failed=True)

    def release(self, message: Message, delay: float = 0.0) -> None:
        """Give the message back unchanged (not a failed attempt) after ``delay`` seconds."""
        self._give_back(message, delay, failed=False)

    def _give_back(self, message: Message, delay: float, failed: bool) -> None:
        receipt = self._receipt(message)
        if receipt.generation != self._generation:
            return
        if delay > 0:
            self._hold(message, receipt, delay, failed)
            return

        def give_back(consume: Any, publish: Any, receipt: Receipt) -> None:
            if failed:
                arguments = publish_arguments(message, deliveries=message.attempt or 1)
                self._send(publish, arguments, "", receipt.queue)
                self._finish(consume, receipt)
            else:
                if self._amqp:
                    # Otherwise the broker pushes it straight back to this backend's consumer,
                    # while what releases messages (a stopping dispatcher) wants no more.
                    self._cancel(consume, receipt.queue)
                self._finish(consume, receipt, requeue=True)

        self._settle(message, give_back, f"giving back message {message.message_id!r}")
        self._ring()

    def _hold(self, message: Message, receipt: Receipt, delay: float, failed: bool) -> None:
        """Keep the message unacknowledged in this process for ``delay`` seconds, then give
        it back (a crash meanwhile hands it back to the broker at once: nothing is lost)."""
        if self._leasing:
            self._io(
                lambda consume, publish: self._lease(consume, receipt.delivery_tag, delay + 30.0),
                f"holding message {message.message_id!r}",
            )
        key = (receipt.generation, str(receipt.delivery_tag))

        def later() -> None:
            with self._lock:
                if self._timers.pop(key, None) is None:
                    return
            with contextlib.suppress(BackendError, QueueNotFoundError):
                self._give_back(message, 0.0, failed)

        timer = threading.Timer(delay, later)
        timer.daemon = True
        with self._lock:
            self._timers[key] = timer
        timer.start()

    def _cancel_timer(self, receipt: Receipt) -> None:
        if not self._timers:  # the common case: no message is held for a delayed give-back
            return
        with self._lock:
            timer = self._timers.pop((receipt.generation, str(receipt.delivery_tag)), None)
        if timer is not None:
            timer.cancel()

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        """Copy the message with ``headers`` into its queue's dead-letter queue, then
        acknowledge it; ``False`` (and the message left as it is) when there is none."""
        receipt = self._receipt(message)
        arguments = publish_arguments(message, extra_headers=headers)
        moved: list[bool] = []

        def move(consume: Any, publish: Any, receipt: Receipt) -> None:
            if self._amqp:
                del self._returned[:]
                self._send(
                    publish,
                    arguments,
                    topology.DEAD_LETTER_EXCHANGE,
                    receipt.queue,
                    mandatory=True,
                )
                if self._returned:
                    return
            else:
                targets = [
                    bound
                    for key, _, bound in self._table(consume, topology.DEAD_LETTER_EXCHANGE)
                    if key == receipt.queue
                ]
                if not targets:
                    return
                for target in sorted(set(targets)):
                    self._send(publish, arguments, "", target)
            self._finish(consume, receipt)
            moved.append(True)

        try:
            self._settle(message, move, f"dead-lettering message {message.message_id!r}")
        except BackendError as exc:
            if self._amqp and "404" in str(exc):
                return False  # no melange.dlx at all: no queue has a dead-letter queue
            raise
        return bool(moved) or receipt.generation != self._generation

    def extend_visibility(self, message: Message, seconds: float) -> None:
        """On Redis, keep the message leased for ``seconds`` from now; a no-op elsewhere."""
        if not self._leasing:
            return
        self._settle(
            message,
            lambda consume, publish, receipt: self._lease(consume, receipt.delivery_tag, seconds),
            f"extending the lease of message {message.message_id!r}",
        )

    def interrupt(self) -> None:
        """End every :meth:`retrieve_messages` wait of this backend."""
        with self._wake:
            self._interrupts += 1
            self._wake.notify_all()
        if self._waker is not None:
            with contextlib.suppress(OSError):
                self._waker[1].send(b"\0")
        if self._waiters:
            self._call_waiters()

    def close_connection(self) -> None:
        """Close the connection (idempotent). Unsettled messages go back to their queues:
        at once on AMQP and on Redis (kombu gives back a closing channel's messages)."""
        self.interrupt()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            timers = list(self._timers.values())
            self._timers.clear()
            for timer in timers:
                timer.cancel()
            for channel in (self._consume, self._publish):
                if channel is not None:
                    with contextlib.suppress(Exception):
                        # Given back before the close: kombu's Redis channel would otherwise
                        # do it on a connection it opens after closing its pool (and leaks).
                        if not self._amqp:
                            channel.qos.restore_unacked_once()
                        channel.close()
            self._consume = self._publish = None
            self._forget_consumers()
            with contextlib.suppress(Exception):
                self._connection.release()
            if self._waker is not None:
                for end in self._waker:
                    end.close()

    # -- inspection (the CLI and tests) ---------------------------------------------------------

    def queue_names(self) -> list[str]:
        """Every queue's name, sorted."""
        if self._amqp:
            from melange.backends.kombu.inspect import management_api

            api = management_api(self._connection, "listing queues")
            return sorted(q["name"] for q in api.queues() if not str(q["name"]).startswith("amq."))
        return sorted(
            {
                row[0]
                for row in self._topology(
                    lambda channel: self._table(channel, topology.QUEUE_REGISTRY), "listing queues"
                )
            }
        )

    def topic_names(self) -> list[str]:
        """Every topic's name, sorted."""
        if self._amqp:
            from melange.backends.kombu.inspect import management_api

            api = management_api(self._connection, "listing topics")
            return sorted(
                e["name"]
                for e in api.exchanges()
                if e.get("type") == "topic"
                and not str(e["name"]).startswith(("amq.", "melange."))
                and e["name"]
            )
        return sorted(
            {
                row[0]
                for row in self._topology(
                    lambda channel: self._table(channel, topology.TOPIC_REGISTRY), "listing topics"
                )
            }
        )

    def dead_letter_sources(self, queue_name: str) -> list[str]:
        """The queues whose dead letters go to ``queue_name``, sorted."""
        if self._amqp:
            from melange.backends.kombu.inspect import management_api

            api = management_api(self._connection, "finding dead-letter sources")
            return sorted(
                {
                    b["routing_key"]
                    for b in api.queue_bindings(queue_name)
                    if b.get("source") == topology.DEAD_LETTER_EXCHANGE and b.get("routing_key")
                }
            )
        rows = self._topology(
            lambda channel: self._table(channel, topology.DEAD_LETTER_EXCHANGE),
            "finding dead-letter sources",
        )
        return sorted({key for key, _, bound in rows if bound == queue_name})

    def queue_stats(self, queue_name: str) -> QueueStats:
        """Ready and in-flight messages of the queue (in flight: on Redis, kombu's
        ``unacked`` entries of the queue; on AMQP, from the management API when it answers,
        else unknown). Messages held for a delayed retry count as in flight."""
        self.get_queue(queue_name)

        def count(channel: Any) -> tuple[int | None, int | None]:
            if self._amqp:
                return self._declared_count(channel, queue_name), None
            ready = int(channel._size(queue_name))
            if not self._leasing:
                return ready, None
            in_flight = 0
            for raw in channel.client.hvals(_raw_key(channel, channel.unacked_key)):
                with contextlib.suppress(ValueError, TypeError):
                    _, exchange, key = json.loads(raw)
                    if not exchange and key == queue_name:
                        in_flight += 1
            return ready, in_flight

        ready, in_flight = self._topology(count, f"counting queue {queue_name!r}")
        if ready is None:
            raise QueueNotFoundError(queue_name)
        if self._amqp:
            with contextlib.suppress(InspectionUnavailable, BackendError, LookupError, ImportError):
                from melange.backends.kombu.inspect import management_api

                api = management_api(self._connection, "counting messages in flight")
                for q in api.queues():
                    if q["name"] == queue_name:
                        in_flight = int(q.get("messages_unacknowledged") or 0)
        return QueueStats(queue_name, ready, in_flight, None)

    def queue_depth(self, queue_name: str) -> int:
        """Messages of the queue, in flight or not (where the transport tells)."""
        return self.queue_stats(queue_name).total

    def peek(self, queue_name: str, limit: int = 10) -> list[Message]:
        """Copies of up to ``limit`` messages, oldest first, without settling them.

        On AMQP they are received on a channel of their own that then closes, so they go back
        to the queue (marked redelivered); on virtual transports they are read in place.
        """
        self.get_queue(queue_name)

        def look(channel: Any) -> list[Message]:
            if self._amqp:
                copies = []
                for _ in range(limit):
                    delivered = channel.basic_get(queue_name, no_ack=False)
                    if delivered is None:
                        break
                    copies.append(from_delivery(delivered, None))
                return copies
            if not hasattr(channel, "_q_for_pri"):
                raise InspectionUnavailable(
                    f"the kombu {self._transport} transport cannot show messages in place"
                )
            key = channel._q_for_pri(queue_name, 0)
            raws = channel.client.lrange(_raw_key(channel, key), -limit, -1) if limit > 0 else []
            copies = []
            for raw in reversed(raws):
                delivered = channel.Message(json.loads(raw), channel=channel)
                copies.append(from_delivery(delivered, None))
            return copies

        return self._topology(look, f"peeking at queue {queue_name!r}")

    def purge(self, queue_name: str) -> int | None:
        """Delete the ready messages of the queue; returns how many."""
        self.get_queue(queue_name)
        purged = self._topology(
            lambda channel: channel.queue_purge(queue_name), f"purging queue {queue_name!r}"
        )
        return int(purged) if purged is not None else None


#: The methods followed by a content header frame (class 60, basic: deliver, get-ok, return).
_CONTENT_METHODS = frozenset(
    struct.pack(">HH", 60, method) for method in (60, 71, 50)
)  # fmt: skip


def _followed(frame: tuple[int, int, Any]) -> bool:
    """Whether the broker sent more frames with ``frame``: a content method's header, or a
    header's body (a body of several frames is read on after asking the socket)."""
    kind, _, payload = frame
    if kind == 1:
        return bytes(payload[:4]) in _CONTENT_METHODS
    if kind == 2:
        return bool(struct.unpack_from(">Q", payload, 4)[0])
    return False


def _readable(sock: Any) -> bool:
    """Whether a read from ``sock`` returns at once (TLS may hold decrypted bytes)."""
    if sock is None:
        return False
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True
    return bool(select.select([sock], [], [], 0)[0])


def _raw_key(channel: Any, key: str) -> str:
    """A Redis key as stored: kombu prefixes only the commands it uses itself."""
    return f"{getattr(channel, 'global_keyprefix', '') or ''}{key}"


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "reply_code", None) or getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    text = str(exc)
    return _NOT_FOUND if "NOT_FOUND" in text or "(404)" in text else None


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"


__all__ = ["DEFAULT_URL", "KombuBackend"]

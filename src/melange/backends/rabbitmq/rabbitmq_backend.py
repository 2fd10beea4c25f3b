"""The RabbitMQ backend: durable queues, topic exchanges, publisher confirms, reconnection.

Mapping onto RabbitMQ (AMQP 0-9-1):

- **Queue**: a durable queue. New queues are *quorum* queues: they are replicated, and with a
  dead-letter queue they dead-letter a message by themselves once it was delivered
  ``max_receive_count`` times without being settled (default 20): a backstop against a message
  that crashes every consumer it reaches, far above the failure policy's attempts. A queue
  that already exists keeps its type: queues created before Melange, or by tools that default
  to classic queues, are used as they are (a queue's type cannot change without deleting it).
  Classic queues work the same way, without the backstop. ``queue_type="quorum"`` or
  ``"classic"`` asks for one type and refuses existing queues of the other, with the broker's
  reason.
- **Attempts**: ``attempt`` counts handler runs, not deliveries. A failed attempt
  (:meth:`RabbitMQBackend.nack`) republishes the message with the attempts so far in the
  ``melange_deliveries`` header and acknowledges the original; messages returned by a
  connection loss, a crash, a stop (:meth:`RabbitMQBackend.release`) or an idle consumer come
  back with the count they had, so neither prefetched messages nor clean stops use up the
  failure policy's attempts.
- **Topic**: a durable ``headers`` exchange. A subscribed queue is bound to it; with
  ``filter_events`` it is bound once per listed manifest (matching the ``manifest`` header), so
  the broker drops what the queue did not ask for.
- **Dead-letter queue**: a queue bound to the ``melange.dlx`` direct exchange with the routing
  key of the queue it serves. :meth:`RabbitMQBackend.dead_letter` publishes there, and the
  queue's native dead-lettering (``x-dead-letter-exchange``) uses the same route, so any
  process can find a queue's dead-letter queue through the broker alone. A message the
  broker dead-lettered by itself (delivery limit reached) is received with
  ``melange_failure_reason`` ``"dead-lettered by RabbitMQ: delivery_limit"``.
- **Delayed retry**: ``nack(message, delay)`` publishes a copy to a retry queue named
  ``<queue>.melange-retry-<ms>ms`` whose message TTL is the delay and whose dead-letter target
  is the original queue, then acknowledges the original (AMQP cannot requeue a message with a
  delay, and per-message TTLs in one shared queue would make short delays wait behind long
  ones). Delays are rounded to the nearest step of a fixed ladder (100 ms, 200 ms, 300 ms,
  500 ms, 1 s, 2 s, 3 s, 5 s, 10 s ...) so a queue gets a handful of retry queues, not one per
  jittered delay. Retry queues are quorum queues with at-least-once dead-lettering, so a
  waiting message survives a broker restart and cannot be dropped on its way back, and they
  never expire: a queue lease (``x-expires``) deletes the messages in the queue with it, and
  RabbitMQ does not renew a quorum queue's lease on redeclaration. They live as long as their
  queue: :meth:`RabbitMQBackend.delete_queue` deletes them.

Publishing waits for the broker's confirm (``publisher_confirms=True``); batches are pipelined
and wait for all confirms once. Queue publishes are *mandatory*: a message for a queue that
does not exist raises :class:`~melange.exceptions.QueueNotFoundError` instead of vanishing.
Topic publishes are not: a topic without subscribers (or whose subscribers' filters do not
match) drops the message, as SNS does, because publishing an event nobody listens to yet is
normal in pub/sub. Pass ``require_topic_subscribers=True`` to raise
:class:`~melange.exceptions.PublishError` instead.

Receiving uses ``basic.consume`` with a prefetch window (``prefetch_count``): messages stream
into a local buffer and :meth:`RabbitMQBackend.retrieve_messages` hands them out. A message
stays unacknowledged (owned by this connection) until it is settled; if the connection drops,
the broker delivers it again. There is no visibility timeout. A queue nobody retrieves from
for ``consumer_idle_timeout`` seconds is no longer consumed, and its buffered messages go back
to the broker for other consumers.

All broker I/O runs on one thread per backend that owns the connection (see
:mod:`melange.backends.rabbitmq.connection`): every method is thread-safe, heartbeats are
answered while handlers run, and a dropped connection is re-established with backoff, after
which consumers resubscribe and interrupted publishes are repeated. Receiving and
acknowledging do not wait for that thread: deliveries are buffered as they arrive, and
acknowledgements (which AMQP does not answer) are queued for it in order, are dropped for
messages of an older connection (the broker delivers those again), and are sent before the
connection closes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pika
import pika.exceptions
import pika.spec

try:  # A pika internal: waiting for confirms without a wake-up per confirm (see _await).
    from pika.adapters.blocking_connection import _IoloopTimerContext
except ImportError:  # pragma: no cover - other pika versions: the public, slower path
    _IoloopTimerContext = None

from melange.backends.interfaces import (
    DEFAULT_MAX_RECEIVE_COUNT,
    BackendCapabilities,
    MessagingBackend,
)
from melange.backends.rabbitmq.connection import ConnectionThread
from melange.backends.rabbitmq.wire import (
    encode_body,
    from_delivery,
    to_properties,
)
from melange.exceptions import (
    BackendError,
    BatchPublishError,
    ConfigurationError,
    MessageTooLargeError,
    PublishError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import Message, QueueWrapper, TopicWrapper

logger = logging.getLogger("melange.backends.rabbitmq")

#: The direct exchange that routes dead-lettered messages to dead-letter queues.
DEAD_LETTER_EXCHANGE = "melange.dlx"

#: RabbitMQ's default largest message (``max_message_size``), in bytes.
DEFAULT_MAX_MESSAGE_SIZE = 128 * 1024 * 1024

#: Retry delays, in milliseconds, that ``nack`` rounds to (beyond the last: whole hours).
DELAY_LADDER_MS = (
    100,
    200,
    300,
    500,
    1_000,
    2_000,
    3_000,
    5_000,
    10_000,
    20_000,
    30_000,
    60_000,
    120_000,
    180_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
)

_QUEUE_OPTIONS = frozenset(
    {"filter_events", "max_receive_count", "visibility_timeout", "queue_type", "arguments", "fifo"}
)
_NOT_FOUND = 404
_PRECONDITION_FAILED = 406


def delay_bucket_ms(delay: float) -> int:
    """The retry delay, in milliseconds, that ``nack(message, delay)`` uses."""
    ms = max(1.0, delay * 1000.0)
    if ms > DELAY_LADDER_MS[-1]:
        return int(math.ceil(ms / 3_600_000) * 3_600_000)
    return min(DELAY_LADDER_MS, key=lambda step: abs(math.log(step / ms)))


def retry_queue_name(queue_name: str, delay_ms: int) -> str:
    """Name of the retry queue that holds messages of ``queue_name`` for ``delay_ms``."""
    return f"{queue_name}.melange-retry-{delay_ms}ms"


def _expiring_retry_queue_name(queue_name: str, delay_ms: int) -> str:
    # Retry queues of earlier versions, declared with a lease (x-expires): deleted with
    # their queue too, and otherwise left to expire once they have drained.
    return f"{queue_name}.melange-delay-{delay_ms}ms"


@dataclass(eq=False)
class _Consumer:
    """A ``basic.consume`` subscription on its own channel, within one connection."""

    queue: str
    channel: Any
    generation: int = 0
    tag: str = ""
    cancelled: bool = False
    unacked: set[int] = field(default_factory=set)

    @property
    def active(self) -> bool:
        return self.channel.is_open and not self.cancelled


@dataclass(frozen=True, eq=False)
class RabbitMQReceipt:
    """What a received message needs to be settled: its queue, consumer and delivery tag.

    Opaque to users; kept in :attr:`~melange.models.Message.metadata`.
    """

    queue: str
    generation: int
    consumer: _Consumer
    delivery_tag: int


class _Session:
    """Per-connection state, used only on the I/O thread."""

    def __init__(self, backend: RabbitMQBackend, connection: Any) -> None:
        self.backend = backend
        self.connection = connection
        self.generation = backend._link.generation
        self.consumers: dict[str, _Consumer] = {}
        self._topology: Any = None
        self._publisher: Any = None
        self.publisher_closed: BaseException | None = None
        self.next_tag = 1
        self.unconfirmed: set[int] = set()
        self.nacked: set[int] = set()
        self.returned: dict[str, str] = {}
        self.collecting = False
        self.waiting_for: set[int] = set()
        # Set by _on_confirm once every tag in waiting_for is confirmed.
        self.all_confirmed = False

    # -- channels ---------------------------------------------------------------------------

    def topology(self) -> Any:
        """The channel for declarations; reopened after the broker closed it on an error."""
        if self._topology is None or not self._topology.is_open:
            self._topology = self.connection.channel()
        return self._topology

    def publisher(self) -> Any:
        """The publishing channel, in confirm mode when confirms are on."""
        if self._publisher is not None and self._publisher.is_open:
            return self._publisher
        channel = self.connection.channel()
        # Pipelined confirms need pika's channel object: BlockingChannel.confirm_delivery()
        # would wait for each confirm in turn.
        impl = channel._impl
        impl.add_on_close_callback(self._on_publisher_closed)
        impl.add_on_return_callback(self._on_return)
        self.publisher_closed = None
        self.next_tag = 1
        self.unconfirmed.clear()
        self.nacked.clear()
        if self.backend._confirms:
            selected: list[bool] = []

            def on_select_ok(_frame: Any) -> None:
                selected.append(True)
                _wake(self.connection)

            impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=on_select_ok)
            deadline = time.monotonic() + self.backend._operation_timeout
            while not selected:
                if channel.is_closed or time.monotonic() > deadline:
                    raise BackendError("the broker did not enable publisher confirms")
                self.connection.process_data_events(time_limit=0.2)
        self._publisher = channel
        return channel

    def _on_publisher_closed(self, _channel: Any, reason: BaseException) -> None:
        self.publisher_closed = reason
        _wake(self.connection)

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        reason = f"{method.reply_code} {method.reply_text}"
        if self.collecting:
            self.returned.setdefault(properties.message_id or "", reason)
        else:
            logger.error(
                "message %s to exchange %r routing key %r was returned by the broker: %s",
                properties.message_id,
                method.exchange,
                method.routing_key,
                reason,
            )

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            tags = [tag for tag in self.unconfirmed if tag <= method.delivery_tag]
        else:
            tags = [method.delivery_tag]
        for tag in tags:
            self.unconfirmed.discard(tag)
            if not acked:
                self.nacked.add(tag)
        if self.waiting_for and self.waiting_for.isdisjoint(self.unconfirmed):
            self.waiting_for = set()
            # Ends the I/O wait in publish (checked after every poll).
            self.all_confirmed = True

    # -- publishing -------------------------------------------------------------------------

    def publish(
        self,
        exchange: str,
        routing_key: str,
        items: Sequence[tuple[bytes, pika.BasicProperties]],
        mandatory: bool,
    ) -> list[str | None]:
        """Publish ``items`` pipelined; per item ``None`` or the reason it was refused."""
        channel = self.publisher()
        self.returned = {}
        confirms = self.backend._confirms
        self.collecting = confirms
        tags: list[int] = []
        try:
            if not confirms:
                for body, properties in items:
                    # The blocking channel's publish returns once the frame is written.
                    channel.basic_publish(exchange, routing_key, body, properties, mandatory)
                return [None] * len(items)
            # With confirms, the frames go out while waiting for the confirms below: pika's
            # channel object only buffers them, saving the blocking channel's flush (a round
            # of I/O) per message.
            impl = channel._impl
            unconfirmed = self.unconfirmed
            for body, properties in items:
                # Register the tag before publishing, so that its confirm is never unknown.
                tag = self.next_tag
                self.next_tag += 1
                tags.append(tag)
                unconfirmed.add(tag)
                impl.basic_publish(exchange, routing_key, body, properties, mandatory)
            self.all_confirmed = False
            self.waiting_for = set(tags)
            self._wait_for_confirms(tags, f"{len(items)} message(s) to {exchange or routing_key!r}")
            outcome: list[str | None] = []
            for (_, properties), tag in zip(items, tags, strict=True):
                if tag in self.nacked:
                    self.nacked.discard(tag)
                    outcome.append("nacked by the broker")
                else:
                    outcome.append(self.returned.pop(properties.message_id or "", None))
            return outcome
        finally:
            self.collecting = False
            self.waiting_for = set()

    def _wait_for_confirms(self, tags: list[int], what: str) -> None:
        """Do I/O until every tag in ``tags`` is confirmed (or nacked); raises on a timeout.

        Uses the connection's own I/O loop with a condition, checked after every poll, rather
        than ``process_data_events``, which only returns once a callback woke it: that
        would cost a wake-up through the I/O loop's pipe for every confirm.
        """
        timeout = self.backend._operation_timeout
        connection = self.connection
        if self.unconfirmed.isdisjoint(tags):
            self.all_confirmed = True

        def finished() -> bool:
            return self.all_confirmed or self.publisher_closed is not None

        if _IoloopTimerContext is not None and hasattr(connection, "_flush_output"):
            with _IoloopTimerContext(timeout, connection._impl) as timer:
                connection._flush_output(timer.is_ready, finished)
        else:
            deadline = time.monotonic() + timeout
            while not finished() and time.monotonic() < deadline:
                connection.process_data_events(time_limit=min(0.05, timeout))
        if self.publisher_closed is not None:
            raise self.publisher_closed
        if not self.unconfirmed.isdisjoint(tags):
            raise PublishError(f"RabbitMQ did not confirm {what} within {timeout}s")

    # -- consuming --------------------------------------------------------------------------

    def subscribe(self, queue: str) -> _Consumer:
        """Start consuming ``queue`` on a new channel (raises if the queue is missing)."""
        old = self.consumers.pop(queue, None)
        if old is not None:
            # Its messages go back to the queue with its channel: forget our copies.
            self.backend._drop_buffered(old)
            if old.channel.is_open:
                with contextlib.suppress(Exception):
                    old.channel.close()
        channel = self.connection.channel()
        channel.basic_qos(prefetch_count=self.backend._prefetch_count)
        consumer = _Consumer(queue, channel, self.generation)
        backend = self.backend
        generation = self.generation
        arrived = backend._arrived

        def on_message(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
            consumer.unacked.add(method.delivery_tag)
            # Handed over after this round of I/O, all at once (see _hand_over).
            arrived.append((consumer, generation, method, properties, body))

        def on_cancel(_frame: Any) -> None:
            consumer.cancelled = True

        channel.add_on_cancel_callback(on_cancel)
        try:
            consumer.tag = channel.basic_consume(queue, on_message)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == _NOT_FOUND:
                raise QueueNotFoundError(queue) from None
            raise
        self.consumers[queue] = consumer
        with self.backend._cond:
            self.backend._consuming[queue] = consumer
        return consumer

    def unsubscribe(self, queue: str) -> None:
        """Stop consuming ``queue``: its unsettled messages go back to the queue."""
        consumer = self.consumers.pop(queue, None)
        if consumer is None:
            return
        with self.backend._cond:
            if self.backend._consuming.get(queue) is consumer:
                del self.backend._consuming[queue]
        if consumer.channel.is_open:
            with contextlib.suppress(Exception):
                consumer.channel.close()
        self.backend._drop_buffered(consumer)


class RabbitMQBackend(MessagingBackend):
    """A messaging backend on RabbitMQ (AMQP 0-9-1, via pika).

    Give either ``url`` (``amqp://user:password@host:5672/vhost``, URL-encoded; ``%2F`` is the
    default vhost ``/``) or keyword connection parameters. The constructor connects and
    raises :class:`~melange.exceptions.BackendConnectionError` naming host, port and vhost when
    the broker cannot be reached or refuses the credentials.

    Args:
        url: An AMQP URL; the keyword connection parameters then must not be given.
        host: Broker host.
        port: Broker port.
        virtual_host: The vhost.
        credentials: pika credentials; alternatively ``username`` and ``password``.
        username: User name (default ``guest``).
        password: Password (default ``guest``).
        heartbeat: Heartbeat interval negotiated with the broker, in seconds.
        connection_attempts: Attempts of the first connection before giving up.
        retry_delay: Seconds between those attempts.
        socket_timeout: Seconds to wait for the TCP connection and the AMQP handshake.
        queue_type: ``"quorum"`` or ``"classic"``: the type of the queues this backend declares
            (``declare_queue(..., queue_type=...)`` overrides it per queue); declaring an
            existing queue of another type then fails. ``None`` (the default) declares new
            queues as quorum queues and uses existing queues with the type they have.
        prefetch_count: Unsettled messages this backend may hold per consumed queue: those
            waiting in the local buffer plus those handed out and not yet settled. When that
            many are unsettled, no more arrive until some are settled, so keep it above the
            number of messages your code holds at once (``workers`` plus a batch).
        publisher_confirms: Wait for the broker to confirm each publish (on by default).
            Without confirms, publishing returns once the message is written to the socket,
            and refused or unroutable messages are only logged.
        require_topic_subscribers: Raise ``PublishError`` when a topic publish reaches no
            queue, instead of dropping the message.
        operation_timeout: Longest time a call waits for the broker (for instance while
            reconnecting) before raising ``BackendConnectionError``.
        consumer_idle_timeout: Seconds without a ``retrieve_messages`` call on a queue after
            which this backend stops consuming it and gives the messages buffered for it back
            to the broker (so another consumer gets them), provided none it handed out is
            still unsettled. Consuming resumes with the next ``retrieve_messages``.
        reconnect_max_delay: Longest pause between reconnection attempts, in seconds.
        connection_name: Name shown for the connection in the broker's management tools.
        **parameters: Further ``pika.ConnectionParameters`` arguments (``ssl_options``, ...).
    """

    loop_wait_seconds = 1.0

    def __init__(
        self,
        url: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        virtual_host: str | None = None,
        credentials: Any = None,
        username: str | None = None,
        password: str | None = None,
        heartbeat: int = 30,
        connection_attempts: int = 3,
        retry_delay: float = 1.0,
        socket_timeout: float = 5.0,
        queue_type: str | None = None,
        prefetch_count: int = 100,
        publisher_confirms: bool = True,
        require_topic_subscribers: bool = False,
        operation_timeout: float = 30.0,
        consumer_idle_timeout: float = 60.0,
        reconnect_max_delay: float = 10.0,
        connection_name: str | None = None,
        **parameters: Any,
    ) -> None:
        if queue_type is not None:
            _check_queue_type(queue_type)
        if prefetch_count < 1:
            raise ConfigurationError(f"prefetch_count must be at least 1, got {prefetch_count}")
        self._params = _connection_parameters(
            url,
            host=host,
            port=port,
            virtual_host=virtual_host,
            credentials=credentials,
            username=username,
            password=password,
            heartbeat=heartbeat,
            connection_attempts=connection_attempts,
            retry_delay=retry_delay,
            socket_timeout=socket_timeout,
            connection_name=connection_name,
            extra=parameters,
        )
        self._queue_type = queue_type
        self._prefetch_count = prefetch_count
        self._confirms = publisher_confirms
        self._require_subscribers = require_topic_subscribers
        self._operation_timeout = operation_timeout
        self._idle_timeout = consumer_idle_timeout
        self._last_retrieve: dict[str, float] = {}
        self._next_idle_check = 0.0
        self._cond = threading.Condition()
        self._buffers: dict[str, deque[Message]] = {}
        # Deliveries of the current round of I/O, not yet in the buffers (I/O thread only).
        self._arrived: list[tuple[_Consumer, int, Any, Any, bytes]] = []
        # The consumer of each queue, so callers can see without asking the I/O thread
        # whether a queue is consumed; written by the I/O thread under _cond.
        self._consuming: dict[str, _Consumer] = {}
        self._wanted: set[str] = set()
        self._subscribe_errors: dict[str, BaseException] = {}
        self._interrupts = 0
        self._known_queues: set[str] = set()
        self._known_topics: set[str] = set()
        # Retry delays used per queue beyond the ladder (whole hours), to delete with it.
        self._retry_steps: dict[str, set[int]] = {}
        self._warned_visibility = False
        self.describe = (
            f"{self._params.host}:{self._params.port}, vhost {self._params.virtual_host!r}"
        )
        self._link = ConnectionThread(
            self._params,
            self._on_connect,
            self._on_disconnect,
            self.describe,
            reconnect_max_delay=reconnect_max_delay,
            on_idle=self._housekeeping,
            after_io=self._hand_over,
        )
        budget = connection_attempts * (socket_timeout * 2 + retry_delay) + 5.0
        self._link.start(timeout=budget)

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(
            name="rabbitmq",
            persistent=True,
            fifo=False,
            topics=True,
            native_dead_letter=self._queue_type != "classic",
            delayed_delivery=True,
            visibility_timeout=False,
            extend_visibility=False,
            receive_count=True,
            filter_policies=True,
            max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
            max_batch_size=None,
        )

    @property
    def queue_type(self) -> str | None:
        """The queue type asked for: ``"quorum"``, ``"classic"`` or ``None`` (see the class)."""
        return self._queue_type

    @property
    def connected(self) -> bool:
        """Whether the connection to the broker is up right now."""
        return self._link.connected

    # -- connection lifecycle (I/O thread) --------------------------------------------------

    def _on_connect(self, connection: Any) -> _Session:
        session = _Session(self, connection)
        with self._cond:
            wanted = sorted(self._wanted)
        for queue in wanted:
            try:
                session.subscribe(queue)
            except QueueNotFoundError as exc:
                with self._cond:
                    self._wanted.discard(queue)
                    self._subscribe_errors[queue] = exc
                    self._cond.notify_all()
        return session

    def _on_disconnect(self) -> None:
        self._arrived.clear()
        with self._cond:
            # The broker gives every unacknowledged message back; drop our copies.
            for buffer in self._buffers.values():
                buffer.clear()
            self._consuming.clear()
            self._cond.notify_all()

    def _hand_over(self, _session: _Session | None = None) -> None:
        """Move the deliveries of the last round of I/O into the buffers (I/O thread).

        One lock and one wake-up per round rather than per message, so a receiving thread
        finds every message of a burst at once instead of waking for each.
        """
        arrived = self._arrived
        if not arrived:
            return
        messages: list[Message] = []
        for consumer, generation, method, properties, body in arrived:
            receipt = RabbitMQReceipt(consumer.queue, generation, consumer, method.delivery_tag)
            messages.append(from_delivery(properties, body, receipt))
        arrived.clear()
        with self._cond:
            buffers = self._buffers
            for message in messages:
                queue = message.metadata.queue
                buffer = buffers.get(queue)
                if buffer is None:
                    buffer = buffers[queue] = deque()
                buffer.append(message)
            self._cond.notify_all()

    def _housekeeping(self, session: _Session) -> None:
        # Before the I/O thread waits for the broker: nothing received may wait with it.
        self._hand_over()
        self._release_idle_consumers(session)

    def _drop_buffered(self, consumer: _Consumer) -> None:
        self._hand_over()
        with self._cond:
            buffer = self._buffers.get(consumer.queue)
            if buffer:
                kept = [m for m in buffer if m.metadata.consumer is not consumer]
                buffer.clear()
                buffer.extend(kept)

    def _release_idle_consumers(self, session: _Session) -> None:
        """Stop consuming queues nobody retrieves from, handing their buffers back."""
        now = time.monotonic()
        if now < self._next_idle_check:
            return
        self._next_idle_check = now + min(1.0, self._idle_timeout / 2)
        idle: list[str] = []
        with self._cond:
            for name, consumer in session.consumers.items():
                if now - self._last_retrieve.get(name, now) < self._idle_timeout:
                    continue
                buffered = self._buffers.get(name) or deque()
                # Only when every unsettled message is still in the buffer: closing the
                # channel would also hand back messages that are being processed.
                if len(consumer.unacked) != len(buffered):
                    continue
                buffered.clear()
                self._wanted.discard(name)
                idle.append(name)
        for name in idle:
            logger.debug("no longer consuming idle queue %s", name)
            session.unsubscribe(name)

    def _call(self, fn: Any, timeout: float | None = None) -> Any:
        try:
            return self._link.call(fn, self._operation_timeout if timeout is None else timeout)
        except pika.exceptions.ChannelClosedByBroker as exc:
            # Refusals not handled where they happen (e.g. 403 ACCESS_REFUSED on a resource).
            raise BackendError(
                f"RabbitMQ at {self.describe} refused the operation: {exc.reply_code} "
                f"{exc.reply_text}"
            ) from None
        except pika.exceptions.AMQPError as exc:
            raise BackendError(f"RabbitMQ at {self.describe}: {type(exc).__name__}: {exc}") from exc

    # -- topology ---------------------------------------------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        def op(session: _Session) -> None:
            _declare(
                lambda ch: ch.exchange_declare(topic_name, "headers", durable=True),
                session,
                f"topic {topic_name!r}",
            )

        self._call(op)
        self._known_topics.add(topic_name)
        return TopicWrapper(topic_name, topic_name)

    def get_topic(self, topic_name: str) -> TopicWrapper:
        if topic_name not in self._known_topics:

            def op(session: _Session) -> bool:
                try:
                    session.topology().exchange_declare(topic_name, passive=True)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code == _NOT_FOUND:
                        return False
                    raise
                return True

            if not self._call(op):
                raise TopicNotFoundError(topic_name)
            self._known_topics.add(topic_name)
        return TopicWrapper(topic_name, topic_name)

    def get_queue(self, queue_name: str) -> QueueWrapper:
        if queue_name not in self._known_queues:
            if not self._call(lambda session: _queue_exists(session, queue_name)):
                raise QueueNotFoundError(queue_name)
            self._known_queues.add(queue_name)
        return QueueWrapper(queue_name, queue_name)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Declare the queue (and its dead-letter queue) and bind it to ``topics_to_bind``.

        Keyword arguments: ``filter_events`` (manifests the queue receives from the topics),
        ``max_receive_count`` (deliveries without a verdict, e.g. to consumers that crashed,
        before a quorum queue dead-letters a message by itself, default 20; only with a
        dead-letter queue; failed attempts are the failure policy's to count),
        ``queue_type`` (``"quorum"`` or ``"classic"``), ``arguments`` (further ``x-`` queue
        arguments). ``visibility_timeout`` is accepted for portability and ignored: RabbitMQ
        keeps a message with its consumer until it is settled or the consumer disconnects.

        Bindings are only ever added: calling it again with other ``filter_events`` adds the new
        manifests but does not remove manifests bound before (delete and re-create the queue,
        or unbind them with the broker's tools).

        Raises:
            ConfigurationError: unknown options, or the queue exists with other arguments (the
                message names the argument, as reported by the broker).
        """
        unknown = set(kwargs) - _QUEUE_OPTIONS
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {sorted(unknown)} for RabbitMQ queue {queue_name!r}; "
                f"known: {sorted(_QUEUE_OPTIONS)}"
            )
        if kwargs.get("fifo"):
            raise ConfigurationError(
                f"queue {queue_name!r}: the RabbitMQ backend has no FIFO queues with per-group "
                "ordering; use the SQS backend for FIFO semantics"
            )
        if "visibility_timeout" in kwargs and not self._warned_visibility:
            self._warned_visibility = True
            logger.info(
                "visibility_timeout is ignored by the RabbitMQ backend: a message stays with "
                "its consumer until settled, or until the consumer disconnects"
            )
        requested = kwargs.get("queue_type", self._queue_type)
        if requested is not None:
            _check_queue_type(requested)
        max_receive = int(kwargs.get("max_receive_count", DEFAULT_MAX_RECEIVE_COUNT))
        if max_receive < 1:
            raise ConfigurationError(f"max_receive_count must be at least 1, got {max_receive}")
        extra = dict(kwargs.get("arguments") or {})
        filter_events = kwargs.get("filter_events")
        if isinstance(filter_events, str):
            raise ConfigurationError(
                f"filter_events must be a list of manifests, got the string {filter_events!r}"
            )
        manifests = list(dict.fromkeys(filter_events or ()))
        dlq = dead_letter_queue_name
        if dlq is not None and dlq == queue_name:
            raise ConfigurationError(f"queue {queue_name!r} cannot be its own dead-letter queue")

        def queue_arguments(queue_type: str) -> dict[str, Any]:
            arguments: dict[str, Any] = _type_arguments(queue_type)
            if dlq is not None:
                arguments["x-dead-letter-exchange"] = DEAD_LETTER_EXCHANGE
                arguments["x-dead-letter-routing-key"] = queue_name
                if queue_type == "quorum":
                    # delivery-limit counts *failed* deliveries: N-1 of them allow N deliveries.
                    arguments["x-delivery-limit"] = max_receive - 1
                    # Without these the broker may drop a message while dead-lettering it.
                    arguments["x-dead-letter-strategy"] = "at-least-once"
                    arguments["x-overflow"] = "reject-publish"
            arguments.update(extra)
            return arguments

        topic_names = [t.name for t in topics_to_bind]
        types: dict[str, str] = {}

        def op(session: _Session) -> None:
            if dlq is not None:
                _declare(
                    lambda ch: ch.exchange_declare(DEAD_LETTER_EXCHANGE, "direct", durable=True),
                    session,
                    f"exchange {DEAD_LETTER_EXCHANGE!r}",
                )
            types[queue_name] = _declare_queue(
                session,
                queue_name,
                requested,
                queue_arguments,
                f"queue {queue_name!r}",
                keep_delivery_limit="max_receive_count" not in kwargs,
            )
            if dlq is not None:
                # The dead-letter queue gets the type of its queue unless it exists already.
                types[dlq] = _declare_queue(
                    session,
                    dlq,
                    requested or types[queue_name],
                    _type_arguments,
                    f"dead-letter queue {dlq!r}",
                    adopt=requested is None,
                )
                session.topology().queue_bind(dlq, DEAD_LETTER_EXCHANGE, routing_key=queue_name)
            for topic in topic_names:
                _bind(session, queue_name, topic, manifests)

        self._call(op)
        self._known_queues.update(types)
        dlq_wrapper = QueueWrapper(dlq, dlq) if dlq is not None else None
        return QueueWrapper(queue_name, queue_name), dlq_wrapper

    def delete_queue(self, queue: QueueWrapper) -> None:
        """Delete the queue, its messages and its retry queues (not its dead-letter queue)."""
        name = queue.name
        steps = sorted({*DELAY_LADDER_MS, *self._retry_steps.get(name, ())})

        def op(session: _Session) -> None:
            session.unsubscribe(name)
            channel = session.topology()
            channel.queue_delete(name)
            # Messages waiting to be retried have nowhere to go back to any more.
            for step in steps:
                channel.queue_delete(retry_queue_name(name, step))
                channel.queue_delete(_expiring_retry_queue_name(name, step))

        with self._cond:
            self._wanted.discard(name)
            self._buffers.pop(name, None)
        self._call(op)
        self._known_queues.discard(name)
        self._retry_steps.pop(name, None)

    def delete_topic(self, topic: TopicWrapper) -> None:
        name = topic.name
        self._call(lambda session: session.topology().exchange_delete(name))
        self._known_topics.discard(name)

    # -- publishing -------------------------------------------------------------------------

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        self._publish_queue([message], queue, batch=False)

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        self._publish_queue(messages, queue, batch=True)

    def _publish_queue(self, messages: Sequence[Message], queue: QueueWrapper, batch: bool) -> None:
        if not messages:
            return
        items = self._encode(messages)

        def op(session: _Session) -> list[str | None]:
            try:
                return session.publish("", queue.name, items, True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise _publish_refused(exc, f"queue {queue.name!r}") from None

        outcome = self._call(op)
        failures = {i: reason for i, reason in enumerate(outcome) if reason is not None}
        if not failures:
            return
        if all("NO_ROUTE" in reason for reason in failures.values()) and len(failures) == len(
            messages
        ):
            self._known_queues.discard(queue.name)
            raise QueueNotFoundError(queue.name)
        if batch:
            raise BatchPublishError(failures)
        raise PublishError(f"RabbitMQ refused the message for queue {queue.name!r}: {failures[0]}")

    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        self._publish_topic([message], topic, batch=False)

    def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        self._publish_topic(messages, topic, batch=True)

    def _publish_topic(self, messages: Sequence[Message], topic: TopicWrapper, batch: bool) -> None:
        if not messages:
            return
        items = self._encode(messages)
        mandatory = self._require_subscribers

        def op(session: _Session) -> list[str | None]:
            try:
                return session.publish(topic.name, "", items, mandatory)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == _NOT_FOUND:
                    raise TopicNotFoundError(topic.name) from None
                raise _publish_refused(exc, f"topic {topic.name!r}") from None

        try:
            outcome = self._call(op)
        except TopicNotFoundError:
            self._known_topics.discard(topic.name)
            raise
        failures: dict[int, str] = {}
        for index, reason in enumerate(outcome):
            if reason is None:
                continue
            if "NO_ROUTE" in reason:
                manifest = messages[index].manifest
                reason = (
                    f"no queue subscribed to topic {topic.name!r} accepts manifest {manifest!r}"
                )
            failures[index] = reason
        if not failures:
            return
        if batch:
            raise BatchPublishError(failures)
        raise PublishError(failures[0])

    @staticmethod
    def _encode(messages: Sequence[Message]) -> list[tuple[bytes, pika.BasicProperties]]:
        items = []
        for message in messages:
            body = encode_body(message.content)
            if len(body) > DEFAULT_MAX_MESSAGE_SIZE:
                raise MessageTooLargeError(len(body), DEFAULT_MAX_MESSAGE_SIZE, "RabbitMQ")
            items.append((body, to_properties(message)))
        return items

    # -- consuming --------------------------------------------------------------------------

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Hand out up to ``max_messages`` (default 10) buffered messages of ``queue``.

        Starts consuming the queue on the first call. Blocks up to ``wait_seconds`` (default
        0) while nothing is buffered; :meth:`interrupt` ends the wait early.
        """
        max_messages = int(kwargs.get("max_messages") or 10)
        wait = float(kwargs.get("wait_seconds") or 0.0)
        name = queue.name
        deadline = time.monotonic() + wait
        with self._cond:
            self._last_retrieve[name] = time.monotonic() + wait
            interrupts = self._interrupts
            error = self._subscribe_errors.pop(name, None)
            consumer = self._consuming.get(name)
            # Consumed already on the current connection: no need to ask the I/O thread.
            # (Reading the channel's state from here is a benign race: a channel closing
            # right now is noticed by the next call.)
            consuming = (
                consumer is not None
                and name in self._wanted
                and consumer.generation == self._link.generation
                and self._link.connected
                and consumer.active
            )
        if error is not None:
            self._known_queues.discard(name)
            raise error
        if not consuming:
            self._ensure_consuming(name, wait)
        with self._cond:
            self._buffers.setdefault(name, deque())
            while True:
                buffer = self._buffers.get(name)
                if buffer:
                    return [buffer.popleft() for _ in range(min(max_messages, len(buffer)))]
                error = self._subscribe_errors.pop(name, None)
                if error is not None:
                    raise error
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._interrupts != interrupts or self._link.closed:
                    return []
                self._cond.wait(remaining)

    def _ensure_consuming(self, name: str, wait: float) -> None:
        with self._cond:
            self._wanted.add(name)

        def op(session: _Session) -> None:
            consumer = session.consumers.get(name)
            if consumer is None or not consumer.active:
                try:
                    session.subscribe(name)
                except QueueNotFoundError:
                    with self._cond:
                        self._wanted.discard(name)
                    self._known_queues.discard(name)
                    raise

        # While the broker is unreachable, fail soon after the caller's own wait so that a
        # consume loop stays responsive to stop() and reports the outage.
        self._call(op, timeout=min(self._operation_timeout, max(wait, 1.0) + 5.0))

    def _settle(self, message: Message, action: Any) -> Any:
        receipt = message.metadata
        if not isinstance(receipt, RabbitMQReceipt):
            raise ValueError(f"{message!r} was not received from a RabbitMQ backend")

        def op(session: _Session) -> Any:
            consumer = receipt.consumer
            if (
                session.generation != receipt.generation
                or not consumer.channel.is_open
                or receipt.delivery_tag not in consumer.unacked
            ):
                # Settled already, or the connection was reset: the broker redelivers it.
                return None
            return action(session, receipt)

        return self._call(op)

    def acknowledge(self, message: Message) -> None:
        """Acknowledge ``message``; see :meth:`acknowledge_batch`."""
        self.acknowledge_batch([message])

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Acknowledge ``messages``: they are removed from their queues.

        Returns without waiting for the I/O thread: AMQP acknowledgements get no answer, so
        waiting would only measure the hand-over. They are sent in order with every other
        operation of this backend, before :meth:`close_connection` closes the connection.
        A message received on a connection that has since been replaced is not acknowledged
        (the broker delivers it again), as when the acknowledgement itself is lost.
        """
        receipts = [m.metadata for m in messages]
        for message, receipt in zip(messages, receipts, strict=True):
            if not isinstance(receipt, RabbitMQReceipt):
                raise ValueError(f"{message!r} was not received from a RabbitMQ backend")
        if receipts:
            self._link.post(lambda session: _ack_many(session, receipts))

    def nack(self, message: Message, delay: float = 0.0) -> None:
        """Report a failed attempt: ``message`` comes back after ``delay`` seconds with its
        attempt count one higher (see the module doc)."""
        self._give_back(message, delay, attempts=message.attempt or 1)

    def release(self, message: Message, delay: float = 0.0) -> None:
        """Give back ``message`` unprocessed: it comes back after ``delay`` seconds with the
        attempt count it had."""
        if delay <= 0:
            self._settle(message, _requeue)
            return
        self._give_back(message, delay, attempts=(message.attempt or 1) - 1)

    def holds(self, message: Message) -> bool:
        """``False`` once the connection ``message`` came on is gone (it is redelivered)."""
        receipt = message.metadata
        if not isinstance(receipt, RabbitMQReceipt):
            return False
        # Reads the I/O thread's state: a connection dropping right now is only noticed by
        # the next call, and the message is then processed in vain, as without this check.
        return (
            receipt.generation == self._link.generation
            and self._link.connected
            and receipt.consumer.active
        )

    def _give_back(self, message: Message, delay: float, attempts: int) -> None:
        """Republish ``message`` (to its retry queue, for ``delay``) recording ``attempts``
        failed attempts, then acknowledge the original."""
        receipt = message.metadata
        queue_name = receipt.queue if isinstance(receipt, RabbitMQReceipt) else ""
        body = encode_body(message.content)
        properties = to_properties(message, deliveries=attempts)
        delay_ms = delay_bucket_ms(delay) if delay > 0 else 0

        def action(session: _Session, receipt: RabbitMQReceipt) -> None:
            target = queue_name
            if delay_ms:
                target = retry_queue_name(queue_name, delay_ms)
                if delay_ms not in DELAY_LADDER_MS:
                    self._retry_steps.setdefault(queue_name, set()).add(delay_ms)
                _declare(
                    lambda ch: ch.queue_declare(
                        target, durable=True, arguments=_retry_arguments(queue_name, delay_ms)
                    ),
                    session,
                    f"retry queue {target!r}",
                )
            [refused] = session.publish("", target, [(body, properties)], True)
            if refused is not None:
                # The copy did not land: keep the original and let the broker return it.
                logger.error(
                    "could not hand message %s back to %s (%s); returning it to the queue now",
                    message.message_id,
                    target,
                    refused,
                )
                _requeue(session, receipt)
                return
            _ack(session, receipt)

        self._settle(message, action)

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        """Publish a copy with ``headers`` to the queue's dead-letter queue, then ack.

        Returns ``False``, leaving the message unsettled, when no dead-letter queue is bound
        for the queue (see the module documentation).
        """
        receipt = message.metadata
        if not isinstance(receipt, RabbitMQReceipt):
            raise ValueError(f"{message!r} was not received from a RabbitMQ backend")
        body = encode_body(message.content)
        properties = to_properties(
            message, deliveries=message.attempt or 1, extra_headers=dict(headers)
        )

        def action(session: _Session, receipt: RabbitMQReceipt) -> bool:
            try:
                [refused] = session.publish(
                    DEAD_LETTER_EXCHANGE, receipt.queue, [(body, properties)], True
                )
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == _NOT_FOUND:  # no dead-letter queue was ever declared
                    return False
                raise
            if refused is not None:
                if "NO_ROUTE" in refused:
                    return False
                raise PublishError(f"dead-lettering message {message.message_id}: {refused}")
            _ack(session, receipt)
            return True

        result = self._settle(message, action)
        if result is None:
            logger.warning(
                "message %s could not be dead-lettered now: the connection was reset since it "
                "was received; the broker delivers it again",
                message.message_id,
            )
            return True
        return bool(result)

    def interrupt(self) -> None:
        with self._cond:
            self._interrupts += 1
            self._cond.notify_all()

    def close_connection(self) -> None:
        """Close the connection; unsettled messages go back to their queues."""
        self.interrupt()
        self._link.close()

    def __repr__(self) -> str:
        return f"RabbitMQBackend({self.describe})"


# -- helpers ---------------------------------------------------------------------------------


def _noop() -> None:
    """Wakes the I/O thread out of ``process_data_events``."""


def _wake(connection: Any) -> None:
    """Make the running ``process_data_events`` return (unless the connection is closing)."""
    if connection.is_open:
        with contextlib.suppress(pika.exceptions.ConnectionWrongStateError):
            connection.add_callback_threadsafe(_noop)


def _ack(session: _Session, receipt: RabbitMQReceipt) -> None:
    receipt.consumer.unacked.discard(receipt.delivery_tag)
    receipt.consumer.channel.basic_ack(receipt.delivery_tag)


def _requeue(session: _Session, receipt: RabbitMQReceipt) -> None:
    # Back in its place in the queue; the broker's delivery count (the backstop) goes up.
    receipt.consumer.unacked.discard(receipt.delivery_tag)
    receipt.consumer.channel.basic_nack(receipt.delivery_tag, requeue=True)


def _ack_many(session: _Session, receipts: Sequence[RabbitMQReceipt]) -> None:
    """Acknowledge what is still unsettled on the current connection, in few frames.

    Frames go through pika's channel object, whose output the I/O thread's next round of
    I/O writes (the blocking channel would flush the socket after every frame). Where a
    consumer's batch holds every tag it has outstanding up to its highest one, a single
    ``multiple`` acknowledgement settles them all.
    """
    by_consumer: dict[int, tuple[_Consumer, list[int]]] = {}
    for receipt in receipts:
        consumer = receipt.consumer
        if (
            session.generation != receipt.generation
            or receipt.delivery_tag not in consumer.unacked
            or not consumer.channel.is_open
        ):
            continue  # settled already, or the connection was reset: redelivered anyway
        entry = by_consumer.get(id(consumer))
        if entry is None:
            entry = by_consumer[id(consumer)] = (consumer, [])
        entry[1].append(receipt.delivery_tag)
    for consumer, tags in by_consumer.values():
        tags = sorted(set(tags))
        unacked = consumer.unacked
        impl = consumer.channel._impl
        highest = tags[-1]
        if len(tags) > 1 and sum(1 for tag in unacked if tag <= highest) == len(tags):
            unacked.difference_update(tags)
            impl.basic_ack(highest, multiple=True)
        else:
            for tag in tags:
                unacked.discard(tag)
                impl.basic_ack(tag)


def _publish_refused(exc: pika.exceptions.ChannelClosedByBroker, target: str) -> PublishError:
    """The broker closed the publishing channel (e.g. a message over its size limit)."""
    return PublishError(
        f"RabbitMQ refused the publish to {target}: {exc.reply_code} {exc.reply_text}"
    )


def _check_queue_type(queue_type: object) -> None:
    if queue_type not in ("quorum", "classic"):
        raise ConfigurationError(f"queue_type must be 'quorum' or 'classic', got {queue_type!r}")


def _type_arguments(queue_type: str) -> dict[str, Any]:
    # Classic queues are declared without x-queue-type so that queues created by other tools
    # (which usually omit it) are equivalent.
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else {}


def _retry_arguments(queue_name: str, delay_ms: int) -> dict[str, Any]:
    return {
        # Quorum, with at-least-once dead-lettering: a message waiting for its retry is
        # replicated, and moving it back to its queue cannot lose it.
        "x-queue-type": "quorum",
        "x-message-ttl": delay_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue_name,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        # No x-expires: a queue lease deletes the messages waiting in the queue with it.
    }


def _declare(fn: Any, session: _Session, what: str) -> Any:
    """Run a declaration, turning PRECONDITION_FAILED into a clear ``ConfigurationError``."""
    try:
        return fn(session.topology())
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == _PRECONDITION_FAILED:
            raise ConfigurationError(
                f"{what} already exists with different settings: {exc.reply_text}. Declare it "
                "with the settings it has, or delete it first"
            ) from None
        raise


def _declare_queue(
    session: _Session,
    name: str,
    requested: str | None,
    arguments_for: Any,
    what: str,
    *,
    adopt: bool | None = None,
    keep_delivery_limit: bool = False,
) -> str:
    """Declare a durable queue of the ``requested`` type; returns the type it has.

    Without a requested type a new queue is a quorum queue, and an existing queue keeps its
    type: a queue created as a classic queue (by other tools, or before Melange) is used as
    it is instead of being refused. With ``keep_delivery_limit``, an existing queue whose
    delivery limit differs (declared by an earlier version, whose default was lower) is used
    as it is, with a warning.
    """
    queue_type = requested or "quorum"
    if adopt is None:
        adopt = requested is None
    channel = session.topology()
    try:
        channel.queue_declare(name, durable=True, arguments=arguments_for(queue_type))
        return queue_type
    except pika.exceptions.ChannelClosedByBroker as exc:
        other = "classic" if queue_type == "quorum" else "quorum"
        if (
            keep_delivery_limit
            and exc.reply_code == _PRECONDITION_FAILED
            and "x-delivery-limit" in exc.reply_text
        ):
            logger.warning(
                "%s exists with another delivery limit; using it as it is (%s). Recreate it, "
                "or pass its max_receive_count, to change it",
                what,
                exc.reply_text,
            )
            session.topology().queue_declare(name, durable=True, passive=True)
            return queue_type
        if not (
            adopt and exc.reply_code == _PRECONDITION_FAILED and "x-queue-type" in exc.reply_text
        ):
            _raise_declare_error(exc, what, queue_type)
        logger.info("%s exists as a %s queue; using it as such", what, other)
    try:
        session.topology().queue_declare(name, durable=True, arguments=arguments_for(other))
    except pika.exceptions.ChannelClosedByBroker as exc:
        _raise_declare_error(exc, what, other)
    return other


def _raise_declare_error(
    exc: pika.exceptions.ChannelClosedByBroker, what: str, queue_type: str
) -> NoReturn:
    if exc.reply_code != _PRECONDITION_FAILED:
        raise exc
    hint = "Declare it with the settings it has, or delete it first (its messages are lost then)"
    if "x-queue-type" in exc.reply_text:
        hint = (
            f"It was declared here as a {queue_type} queue; pass the queue_type it has, or "
            "leave queue_type unset to use existing queues as they are"
        )
    raise ConfigurationError(
        f"{what} already exists with different settings: {exc.reply_text}. {hint}"
    ) from None


def _queue_exists(session: _Session, queue_name: str) -> bool:
    try:
        session.topology().queue_declare(queue_name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == _NOT_FOUND:
            return False
        raise
    return True


def _bind(session: _Session, queue: str, topic: str, manifests: list[str]) -> None:
    channel = session.topology()
    try:
        if manifests:
            # A catch-all binding from an earlier declaration would defeat the filter.
            channel.queue_unbind(queue, topic, arguments={"x-match": "all"})
            for manifest in manifests:
                channel.queue_bind(queue, topic, arguments={"x-match": "all", "manifest": manifest})
        else:
            channel.queue_bind(queue, topic, arguments={"x-match": "all"})
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == _NOT_FOUND:
            raise TopicNotFoundError(topic) from None
        raise


def _connection_parameters(
    url: str | None,
    *,
    host: str | None,
    port: int | None,
    virtual_host: str | None,
    credentials: Any,
    username: str | None,
    password: str | None,
    heartbeat: int,
    connection_attempts: int,
    retry_delay: float,
    socket_timeout: float,
    connection_name: str | None,
    extra: Mapping[str, Any],
) -> pika.ConnectionParameters:
    if heartbeat <= 0:
        raise ConfigurationError(
            f"heartbeat must be positive (got {heartbeat}): without heartbeats a dead "
            "connection goes unnoticed"
        )
    if credentials is not None and (username is not None or password is not None):
        raise ConfigurationError("give either credentials or username/password, not both")
    extra = dict(extra)
    client_properties = dict(extra.pop("client_properties", None) or {})
    if connection_name is not None:
        client_properties["connection_name"] = connection_name
    common: dict[str, Any] = {
        "heartbeat": heartbeat,
        "connection_attempts": connection_attempts,
        "retry_delay": retry_delay,
        "socket_timeout": socket_timeout,
        "stack_timeout": socket_timeout * 2,
        "blocked_connection_timeout": 300,
    }
    if client_properties:
        common["client_properties"] = client_properties
    if url is not None:
        if any(v is not None for v in (host, port, virtual_host, credentials, username, password)):
            raise ConfigurationError(
                "give either url or host/port/virtual_host/credentials, not both"
            )
        if not url.startswith(("amqp://", "amqps://")):
            raise ConfigurationError(
                f"RabbitMQ URL must start with amqp:// or amqps://, got {_redact(url)!r}"
            )
        try:
            params = pika.URLParameters(url)
        except Exception as exc:
            raise ConfigurationError(f"invalid RabbitMQ URL {_redact(url)!r}: {exc}") from exc
        try:
            for key, value in {**common, **extra}.items():
                setattr(params, key, value)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigurationError(f"invalid RabbitMQ connection parameters: {exc}") from exc
        return params
    if credentials is None:
        credentials = pika.PlainCredentials(username or "guest", password or "guest")
    try:
        return pika.ConnectionParameters(
            host=host or "localhost",
            port=port or 5672,
            virtual_host=virtual_host or "/",
            credentials=credentials,
            **common,
            **extra,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"invalid RabbitMQ connection parameters: {exc}") from exc


__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "RabbitMQBackend",
    "RabbitMQReceipt",
    "delay_bucket_ms",
    "retry_queue_name",
]


def _redact(url: str) -> str:
    """``url`` without its password, for error messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

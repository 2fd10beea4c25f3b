""":class:`KafkaBackend`: queues and topics on Apache Kafka, with confluent-kafka (librdkafka).

Mapping onto Kafka (see :mod:`melange.backends.kafka.topology` for the names):

- **Topic**: a Kafka topic.
- **Queue**: a Kafka topic of its own plus a consumer group that reads it and every topic the
  queue is subscribed to. Each queue has its own group, so every queue subscribed to a topic
  gets each of its messages, independently of the others; the consumers of one queue share
  its partitions. A subscription starts at the end of the topic when it is declared.
- **Settling** (at-least-once): a message is done when it is acknowledged or dead-lettered;
  the offset committed per partition is the end of the contiguous prefix of done records
  (see :mod:`melange.backends.kafka.ledger`). A consumer that dies, or loses a partition in a
  rebalance, hands the partition over from that offset: what was not done is delivered again.
- **Leases**: none. While its consumer lives, a message handed out is never delivered to
  anyone else, however long its handler takes (``visibility_timeout`` is meaningless on
  Kafka); the consumer must receive again within ``max_poll_interval`` seconds, or the group
  takes its partitions away. A rebalance waits (``rebalance_drain_timeout``) for the messages
  handed out from the partitions it moves.
- **Retries**: ``nack(message, delay)`` (and ``release`` with a delay) publishes the message
  to the queue's retry topic as a retry record, carrying its failed attempts and when it is
  due, and settles the original; a consumer holds a retry record until it is due while the
  records behind it go on, and moves it to the end of the retry topic once settled records
  wait behind it (see :mod:`melange.backends.kafka.retries`). So the attempt count survives
  a restart or a rebalance, and no committed offset waits for a delay. On a FIFO queue the
  message stays in the consumer instead, ahead of the rest of its group (whose order a copy
  elsewhere would break); other groups go on.
- **Dead letters**: a copy with the failure headers (``melange_failure_reason``,
  ``melange_failure_queue``...) goes to the dead-letter queue's topic, then the original is
  done.
- **FIFO** (``message_group_id``): the group is the record key, so a group's messages share a
  partition and keep their order; on a FIFO queue (name ending in ``.fifo``, or
  ``fifo=True``) the consumer hands out one message of a group at a time.
- **Deduplication**: ``deduplication_id`` travels in a header; dropping duplicates is the
  dispatcher's deduplication cache's work (Kafka has no per-message deduplication).
- **Publishing**: an idempotent producer (``enable.idempotence``, ``acks=all``); a batch is
  produced record after record and flushed once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, Producer

from melange.backends.interfaces import BackendCapabilities, MessagingBackend
from melange.backends.kafka.admin import KafkaAdmin
from melange.backends.kafka.connection import (
    DEFAULT_URL,
    ClientSettings,
    bootstrap_servers,
    check_settings,
    close_producer,
)
from melange.backends.kafka.inspect import QueueStats, peek_queue, queue_stats
from melange.backends.kafka.reader import QueueReader
from melange.backends.kafka.retries import Record, later_attempt
from melange.backends.kafka.topology import (
    DEFAULT_CATALOGUE,
    QueueSpec,
    check_name,
    declared_spec,
    retry_topic,
)
from melange.backends.kafka.wire import (
    RecordHeaders,
    dead_letter_headers,
    encode_body,
    encode_headers,
    receipt_of,
    record_key,
)
from melange.backends.publish_options import apply_fifo_keywords, delay_refused, publish_delay
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

#: How errors name this backend.
BACKEND_NAME = "the Kafka backend"
#: librdkafka's "no partition chosen": the partitioner picks (by key).
_ANY_PARTITION = -1
#: Kafka's default largest record (``message.max.bytes``), less room for the headers.
DEFAULT_MAX_MESSAGE_SIZE = 1_000_000


def capabilities(max_message_size: int | None) -> BackendCapabilities:
    """What the Kafka backends (blocking and asyncio) support.

    No visibility timeout: a message handed out stays with its consumer until it is settled
    or the consumer leaves the group (dies, stops, or misses ``max_poll_interval``); then the
    partition's next owner delivers again from the last committed offset. No broker-side
    dead-lettering (Kafka does not count deliveries): the failure policy dead-letters. No
    subscription filters. No delayed publish.
    """
    return BackendCapabilities(
        name="kafka",
        persistent=True,
        fifo=True,
        topics=True,
        native_dead_letter=False,
        delayed_delivery=True,
        visibility_timeout=False,
        extend_visibility=False,
        receive_count=True,
        filter_policies=False,
        max_message_size=max_message_size,
        max_batch_size=None,
    )


def publish_keywords(
    messages: Sequence[Message], kwargs: Mapping[str, Any], *, topic: bool
) -> None:
    """Apply ``message_group_id``/``message_deduplication_id`` (as every backend does) and
    refuse ``delay_seconds`` as the publishers refuse it on this backend: an invalid delay
    for what it is, a positive one because Kafka cannot hold a record back; 0 is no delay."""
    if publish_delay(kwargs, backend=BACKEND_NAME) is not None:
        raise delay_refused(BACKEND_NAME, "a topic message" if topic else "a message")
    apply_fifo_keywords(messages, kwargs)


def check_sizes(messages: Sequence[Message], limit: int | None) -> None:
    """Raise ``MessageTooLargeError`` for a body over ``limit`` bytes."""
    if limit is None:
        return
    for message in messages:
        size = len(message.content.encode("utf-8"))
        if size > limit:
            raise MessageTooLargeError(size, limit, "Kafka")


def _confirmation(
    outcomes: list[tuple[int, KafkaError | None]], index: int
) -> Callable[[KafkaError | None, Any], None]:
    """The delivery callback of the record at ``index``: notes its outcome."""
    return lambda error, _: outcomes.append((index, error))


class KafkaBackend(MessagingBackend):
    """Queues and topics on Apache Kafka (or a broker speaking its protocol).

    Publishing is thread-safe. Each queue received from gets one consumer of the queue's
    group in this backend; receive from one thread per queue (settling may come from any).

    Args:
        url: The brokers: ``kafka://host:port,host:port``.
        partitions: Partitions of each topic the backend creates (the most consumers of one
            queue that can work at once).
        replication_factor: Replicas of each topic it creates (``None``: the broker's
            ``default.replication.factor``).
        idempotence: ``enable.idempotence`` of the producer. Leave it on with Apache Kafka;
            a broker without idempotent producers needs it off.
        session_timeout: Seconds without a heartbeat before the group gives a consumer's
            partitions to the others (a crashed consumer's messages come back after it).
        max_poll_interval: Longest pause between two receives of a consumer before the
            group takes its partitions away.
        rebalance_drain_timeout: Longest wait, when the group moves partitions, for the
            messages handed out from them to be settled.
        join_timeout: Longest wait of a queue's first receive for the group to assign this
            consumer its partitions.
        publish_timeout: Longest wait for the brokers to confirm a publish.
        catalogue_topic: The compacted topic that records the queues and topics.
        group_prefix: Prefix of the queues' consumer group ids.
        max_message_size: Largest body accepted, in bytes (``None``: the broker decides).
        client_config: Further librdkafka settings for every client (``security.protocol``,
            ``sasl.*``...); they are never shown in a ``repr`` or an error.
    """

    loop_wait_seconds = 1.0

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        partitions: int = 3,
        replication_factor: int | None = None,
        idempotence: bool = True,
        session_timeout: float = 45.0,
        max_poll_interval: float = 300.0,
        rebalance_drain_timeout: float = 10.0,
        join_timeout: float = 60.0,
        publish_timeout: float = 30.0,
        catalogue_topic: str = DEFAULT_CATALOGUE,
        group_prefix: str = "melange.",
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        check_settings(
            partitions,
            replication_factor or 1,
            session_timeout,
            max_poll_interval,
            publish_timeout,
            rebalance_drain_timeout,
        )
        self.servers = bootstrap_servers(url)
        self.settings = ClientSettings(
            self.servers, idempotence, session_timeout, max_poll_interval, dict(client_config or {})
        )
        self.admin = KafkaAdmin(
            self.settings, catalogue_topic, group_prefix, partitions, replication_factor
        )
        self._drain_timeout = rebalance_drain_timeout
        self._join_timeout = join_timeout
        self._publish_timeout = publish_timeout
        self._max_message_size = max_message_size
        self._producer = Producer(self.settings.producer())
        # Publishes using the producer: it is closed once none does (librdkafka's client must
        # not be used while it is destroyed); see _producing and close_connection.
        self._producing_calls = 0
        self._producer_idle = threading.Condition()
        self._producer_open = True
        self._closed = False
        # Set when close gave up waiting for the publishes: the last one closes the producer.
        self._last_publish_closes = False
        self._readers: dict[str, QueueReader] = {}
        self._lock = threading.Lock()
        self._interrupts = 0

    @property
    def capabilities(self) -> BackendCapabilities:
        return capabilities(self._max_message_size)

    def __repr__(self) -> str:
        return f"KafkaBackend({self.servers!r})"

    # -- topology ---------------------------------------------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        check_name("topic", topic_name)
        if topic_name in self.admin.refresh().queues:
            raise ConfigurationError(f"{topic_name!r} is a queue on this Kafka; pick another name")
        self.admin.create_topics([topic_name])
        if topic_name not in self.admin.catalogue.topics:
            self.admin.put_topic(topic_name)
        return TopicWrapper(topic_name, topic_name)

    def get_topic(self, topic_name: str) -> TopicWrapper:
        check_name("topic", topic_name)
        if not self.admin.has_topic(topic_name):
            raise TopicNotFoundError(topic_name)
        return TopicWrapper(topic_name, topic_name)

    def get_queue(self, queue_name: str) -> QueueWrapper:
        check_name("queue", queue_name)
        if self.admin.queue(queue_name) is None:
            raise QueueNotFoundError(queue_name)
        return QueueWrapper(queue_name, queue_name)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create or update the queue, its dead-letter queue and its subscriptions.

        Options: ``fifo`` (default: the name ends in ``.fifo``). ``max_receive_count`` and
        ``visibility_timeout`` are accepted and unused (Kafka counts no deliveries and has no
        leases); ``filter_events`` is refused (no subscription filters). Subscriptions add
        up; each starts at the end of its topic.
        """
        check_name("queue", queue_name)
        if dead_letter_queue_name is not None:
            check_name("queue", dead_letter_queue_name)
        catalogue = self.admin.refresh()
        if queue_name in catalogue.topics:
            raise ConfigurationError(f"{queue_name!r} is a topic on this Kafka; pick another name")
        for topic in topics_to_bind:
            if topic.name not in catalogue.topics:
                raise TopicNotFoundError(topic.name)
        existing = catalogue.queues.get(queue_name)
        spec = declared_spec(
            queue_name,
            existing,
            [t.name for t in topics_to_bind],
            dead_letter_queue_name,
            kwargs,
        )
        dlq: QueueWrapper | None = None
        if spec.dead_letter_queue is not None:
            dlq, _ = self.declare_queue(spec.dead_letter_queue)
        self.admin.create_topics([queue_name, *([spec.retries] if spec.retries else [])])
        added = [t for t in spec.topics if existing is None or t not in existing.topics]
        self.admin.start_at_end(queue_name, added)
        if spec != existing:
            self.admin.put_queue(spec)
        with self._lock:
            reader = self._readers.get(queue_name)
        if reader is not None and reader.spec.sources != spec.sources:
            with reader.poll_lock:
                reader.subscribe(spec)
        return QueueWrapper(queue_name, queue_name), dlq

    def delete_queue(self, queue: QueueWrapper) -> None:
        """Delete the queue's topic, its group and its record (not its dead-letter queue)."""
        with self._lock:
            reader = self._readers.pop(queue.name, None)
        if reader is not None:
            reader.close()
        self.admin.delete_topics([queue.name, retry_topic(queue.name)])
        self.admin.delete_group(queue.name)
        self.admin.drop_queue(queue.name)

    def delete_topic(self, topic: TopicWrapper) -> None:
        """Delete the topic, and the subscriptions of the queues to it."""
        catalogue = self.admin.refresh()
        for spec in list(catalogue.queues.values()):
            if topic.name in spec.topics:
                kept = [t for t in spec.topics if t != topic.name]
                self.admin.put_queue(QueueSpec(spec.name, kept, spec.dead_letter_queue, spec.fifo))
        self.admin.delete_topics([topic.name])
        self.admin.drop_topic(topic.name)

    # -- inspection (the CLI and tests) -----------------------------------------------------

    def queue_names(self) -> list[str]:
        """Names of every queue, sorted."""
        return sorted(self.admin.refresh().queues)

    def topic_names(self) -> list[str]:
        """Names of every topic, sorted."""
        return sorted(self.admin.refresh().topics)

    def queue_stats(self, queue_name: str) -> QueueStats:
        """How many messages the queue's group has not committed yet (Kafka cannot tell
        which of them a consumer holds: ``in_flight`` and ``delayed`` are ``None``)."""
        return queue_stats(self.admin, self._spec(queue_name))

    def queue_depth(self, queue_name: str) -> int:
        """Messages the queue's group has not committed yet."""
        return self.queue_stats(queue_name).total

    def peek(self, queue_name: str, limit: int = 10) -> list[Message]:
        """Up to ``limit`` messages the queue's group has not committed, oldest first, without
        receiving them (their ``metadata`` is ``None``)."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        return peek_queue(self.admin, self._spec(queue_name), limit)

    def purge(self, queue_name: str) -> int:
        """Skip every message of the queue: its group's offsets move to the end of what it
        reads (the records stay for the other queues of a topic). Kafka refuses this while
        consumers of the queue run. Returns how many messages were skipped."""
        spec = self._spec(queue_name)
        with self._lock:
            reader = self._readers.pop(queue_name, None)
        if reader is not None:
            reader.close()
        stats = queue_stats(self.admin, spec)
        ends = {
            key: high
            for key, (_, high) in self.admin.watermarks(
                self.admin.partitions_of(spec.sources)
            ).items()
        }
        self.admin.move_group(queue_name, ends)
        return stats.total

    def consumed_spec(self, queue_name: str) -> QueueSpec:
        """The record of a queue about to be consumed, whose retry topic is made sure of
        (a queue declared by an earlier version has none yet)."""
        spec = self._spec(queue_name)
        if spec.retries is not None:
            self.admin.create_topics([spec.retries])
        return spec

    def _spec(self, queue_name: str) -> QueueSpec:
        spec = self.admin.queue(queue_name)
        if spec is None:
            raise QueueNotFoundError(queue_name)
        return spec

    # -- publishing -------------------------------------------------------------------------

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        self.publish_batch_to_queue([message], queue, **kwargs)

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        """Produce every message, then wait once for the brokers to confirm them all."""
        self._check_open()
        self._spec(queue.name)
        self._publish(queue.name, messages, kwargs, topic=False)

    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        self.publish_batch_to_topic([message], topic, **kwargs)

    def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        """Produce every message to the topic (read by each subscribed queue's group)."""
        self._check_open()
        self.get_topic(topic.name)
        self._publish(topic.name, messages, kwargs, topic=True)

    def _publish(
        self, target: str, messages: Sequence[Message], kwargs: Mapping[str, Any], *, topic: bool
    ) -> None:
        publish_keywords(messages, kwargs, topic=topic)
        if not messages:
            return
        check_sizes(messages, self._max_message_size)
        self.produce(target, [(m, encode_headers(m)) for m in messages])

    def produce(
        self,
        topic: str,
        records: Sequence[tuple[Message, RecordHeaders]],
        partition: int | None = None,
        *,
        closing: bool = False,
    ) -> None:
        """Produce the records (to ``partition``, or where their keys take them) and wait once
        until the brokers confirmed all of them (``closing``: also while the backend closes,
        before its producer is).

        Raises ``PublishError`` (one record) or ``BatchPublishError`` naming the refused ones.
        """
        # Confirmations may be served by another thread's flush: list.append is atomic, so
        # they need no lock (nor an event, since flush returns once all are served).
        outcomes: list[tuple[int, KafkaError | None]] = []
        with self._producing(closing) as producer:
            for index, (message, headers) in enumerate(records):
                while True:
                    try:
                        producer.produce(
                            topic,
                            value=encode_body(message),
                            key=record_key(message),
                            headers=headers,
                            on_delivery=_confirmation(outcomes, index),
                            partition=_ANY_PARTITION if partition is None else partition,
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)  # the local queue is full: let it drain
            producer.flush(self._publish_timeout)
        if len(outcomes) < len(records):
            raise PublishError(
                f"Kafka did not confirm {len(records) - len(outcomes)} message(s) to {topic} "
                f"within {self._publish_timeout:g}s"
            )
        failures = {index: str(error) for index, error in outcomes if error is not None}
        if failures:
            if len(records) == 1:
                raise PublishError(f"Kafka refused the message to {topic}: {failures[0]}")
            raise BatchPublishError(failures)

    def _check_open(self) -> None:
        """Refuse to publish or receive once closed (before looking the destination up,
        which would open the administration's clients again)."""
        if self._closed:
            raise BackendError(f"{self!r} is closed")

    def _move_records(self, topic: str, records: list[Record]) -> None:
        """How a queue's consumer moves held records to the end of its retry topic, which it
        also does while the backend closes."""
        self.produce(topic, records, closing=True)

    @contextlib.contextmanager
    def _producing(self, closing: bool = False) -> Iterator[Producer]:
        """The producer, which :meth:`close_connection` does not close before the block ends;
        raises ``BackendError`` once the backend is closed (``closing``: once its producer
        is)."""
        with self._producer_idle:
            if not closing:
                self._check_open()
            elif not self._producer_open:
                raise BackendError(f"{self!r} is closed")
            self._producing_calls += 1
        try:
            yield self._producer
        finally:
            with self._producer_idle:
                self._producing_calls -= 1
                if not self._producing_calls:
                    self._producer_idle.notify_all()
                last = self._last_publish_closes and self._take_producer()
            if last:
                close_producer(self._producer, self._publish_timeout)

    def _take_producer(self) -> bool:
        """With ``_producer_idle`` held: whether the producer is to be closed by the caller
        (open, and no publish uses it)."""
        if self._producing_calls or not self._producer_open:
            return False
        self._producer_open = False
        return True

    # -- consuming --------------------------------------------------------------------------

    def _reader(self, queue_name: str) -> QueueReader:
        with self._lock:
            reader = self._readers.get(queue_name)
        if reader is not None:
            return reader
        self._check_open()  # before the lookup, which would open the administration again
        spec = self.consumed_spec(queue_name)
        with self._lock:
            reader = self._readers.get(queue_name)
            if reader is None:
                if self._closed:  # a new consumer would live on, reconnecting, unclosed
                    raise BackendError(f"{self!r} is closed")
                reader = QueueReader(
                    self.settings,
                    spec,
                    self.admin.group(queue_name),
                    self._drain_timeout,
                    self._join_timeout,
                    self._move_records,
                )
                self._readers[queue_name] = reader
        return reader

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Receive up to ``max_messages`` (default 10), waiting up to ``wait_seconds``.

        The first receive of a queue joins its consumer group, and waits (up to
        ``join_timeout``) for its partitions; :meth:`interrupt` ends a wait (``[]``).
        """
        max_messages = int(kwargs.get("max_messages") or 10)
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        wait = float(kwargs.get("wait_seconds") or 0.0)
        reader = self._reader(queue.name)
        interrupts = self._interrupts
        return reader.receive(max_messages, wait, lambda: self._interrupts != interrupts)

    def _held_by(self, message: Message) -> tuple[QueueReader, Any] | None:
        receipt = receipt_of(message)
        with self._lock:
            reader = self._readers.get(receipt.queue)
        return (reader, receipt) if reader is not None else None

    def acknowledge(self, message: Message) -> None:
        """Settle the message. A message whose partition moved since is not held any more:
        nothing to do (its new owner delivers it again)."""
        held = self._held_by(message)
        if held is not None:
            held[0].settle(held[1])

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Settle the messages, with one offset commit per queue for the whole batch."""
        by_reader: dict[int, tuple[QueueReader, list[Any]]] = {}
        for message in messages:
            held = self._held_by(message)
            if held is not None:
                by_reader.setdefault(id(held[0]), (held[0], []))[1].append(held[1])
        for reader, receipts in by_reader.values():
            reader.settle_many(receipts)

    def nack(self, message: Message, delay: float = 0.0) -> None:
        """Hand the message out again after ``delay`` seconds, as its next attempt.

        On a standard queue the message goes to the queue's retry topic as a retry record
        (with its failed attempts and when it is due), then the original is done: the count
        survives the consumer, and nothing waits for it in the partition it came from. On a
        FIFO queue it stays in the consumer, ahead of the rest of its group.
        """
        self._later(message, delay, failed=True)

    def release(self, message: Message, delay: float = 0.0) -> None:
        """As :meth:`nack`, but not a failed attempt: ``attempt`` stays as it was. Without a
        delay the message stays in the consumer and is handed out again at once."""
        self._later(message, delay, failed=False)

    def _later(self, message: Message, delay: float, failed: bool) -> None:
        held = self._held_by(message)
        if held is None:
            return
        reader, receipt = held
        retry = later_attempt(reader.spec, message, receipt, delay, failed)
        if retry is None:
            reader.give_back(message, receipt, delay, failed)
            return
        if not reader.holds(receipt):
            return  # its partition moved: the new owner delivers it again
        self.produce(retry[0], [retry[1]])
        reader.settle(receipt)

    def holds(self, message: Message) -> bool:
        held = self._held_by(message)
        return held is not None and held[0].holds(held[1])

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        """Copy the message with ``headers`` to the queue's dead-letter queue, then settle it.
        ``False`` when the queue has none."""
        held = self._held_by(message)
        receipt = receipt_of(message)
        spec = self.admin.queue(receipt.queue)
        if spec is None or spec.dead_letter_queue is None:
            return False
        copy = dead_letter_headers(message, receipt.queue, headers)
        self.produce(spec.dead_letter_queue, [(message, copy)])
        if held is not None:
            held[0].settle(held[1])
        return True

    def visibility_timeout_for(self, message: Message) -> float | None:
        """``None``: no lease to renew (a consumer keeps what it was handed)."""
        return None

    def interrupt(self) -> None:
        """End every :meth:`retrieve_messages` wait of this backend; they return ``[]``."""
        self._interrupts += 1

    def close_connection(self) -> None:
        """Commit what is settled, leave the groups, send what the producer holds and close
        every client, which ends librdkafka's threads (open, they would go on reconnecting to
        the brokers as long as the backend lives). Idempotent; a closed backend refuses to
        publish and to receive (``BackendError``)."""
        self.interrupt()
        with self._lock:
            self._closed = True
            readers = list(self._readers.values())
            self._readers.clear()
        for reader in readers:
            reader.close()
        with self._producer_idle:
            idle = self._producer_idle.wait_for(
                lambda: not self._producing_calls, self._publish_timeout
            )
            self._last_publish_closes = not idle
            mine = self._take_producer()
        if mine:
            close_producer(self._producer, self._publish_timeout)
        self.admin.close()


__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "KafkaBackend", "capabilities"]

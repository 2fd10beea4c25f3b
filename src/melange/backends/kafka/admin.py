"""Blocking administration of the Kafka layout: topics, the catalogue, group offsets.

:class:`KafkaAdmin` creates and deletes topics, reads and writes the catalogue topic (see
:mod:`melange.backends.kafka.topology`) and moves consumer groups' offsets. Both backends
use it (the asyncio one on a worker thread): declaring is rare, and librdkafka's admin API
is future-based and blocking.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from melange.backends.kafka.connection import ClientSettings, close_producer, logger
from melange.backends.kafka.topology import Catalogue, QueueSpec, group_id, queue_key, topic_key
from melange.exceptions import BackendError

#: Seconds an administrative request may take.
ADMIN_TIMEOUT = 15.0


def _error_code(exc: BaseException) -> int | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return int(exc.args[0].code())
    return None


def _wait(futures: dict[Any, Future[Any]], what: str, ignore: Iterable[int] = ()) -> None:
    ignored = set(ignore)
    for name, future in futures.items():
        try:
            future.result(timeout=ADMIN_TIMEOUT)
        except Exception as exc:
            if _error_code(exc) in ignored:
                continue
            raise BackendError(f"Kafka could not {what} {name}: {exc}") from exc


class KafkaAdmin:
    """Topics, the catalogue and group offsets of one backend.

    Args:
        settings: The backend's client settings.
        catalogue: The catalogue topic's name.
        group_prefix: Prefix of the queues' consumer groups.
        partitions: Partitions of each topic created.
        replication_factor: Replicas of each topic created (``None``: the broker's default).
    """

    def __init__(
        self,
        settings: ClientSettings,
        catalogue: str,
        group_prefix: str,
        partitions: int,
        replication_factor: int | None,
    ) -> None:
        self.settings = settings
        self.catalogue_topic = catalogue
        self.group_prefix = group_prefix
        self.partitions = partitions
        self.replication_factor = replication_factor if replication_factor is not None else -1
        self._client: AdminClient | None = None
        self._client_lock = threading.Lock()
        self.catalogue = Catalogue()
        self._lock = threading.Lock()
        self._reader: Consumer | None = None
        self._next = 0
        self._ready = False
        self._writer: Producer | None = None

    @property
    def client(self) -> AdminClient:
        """librdkafka's administration client, opened on first use (and again after
        :meth:`close`)."""
        with self._client_lock:
            if self._client is None:
                self._client = AdminClient(self.settings.admin())
            return self._client

    # -- topics -----------------------------------------------------------------------------

    def create_topics(self, names: Sequence[str], config: dict[str, str] | None = None) -> None:
        """Create the topics that do not exist yet."""
        if not names:
            return
        new = [
            NewTopic(name, self.partitions, self.replication_factor, config=config or {})
            for name in names
        ]
        _wait(
            self.client.create_topics(new, operation_timeout=ADMIN_TIMEOUT),
            "create topic",
            ignore=[KafkaError.TOPIC_ALREADY_EXISTS],
        )

    def delete_topics(self, names: Sequence[str]) -> None:
        """Delete the topics that exist."""
        if names:
            _wait(
                self.client.delete_topics(list(names), operation_timeout=ADMIN_TIMEOUT),
                "delete topic",
                ignore=[KafkaError.UNKNOWN_TOPIC_OR_PART],
            )

    def partitions_of(self, topics: Iterable[str]) -> list[TopicPartition]:
        """Every partition of the topics that exist."""
        metadata = self.client.list_topics(timeout=ADMIN_TIMEOUT)
        found: list[TopicPartition] = []
        for name in topics:
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None:
                continue
            found.extend(TopicPartition(name, p) for p in sorted(topic.partitions))
        return found

    # -- the catalogue ----------------------------------------------------------------------

    def _ensure_catalogue(self) -> None:
        if self._ready:
            return
        _wait(
            self.client.create_topics(
                [
                    NewTopic(
                        self.catalogue_topic,
                        1,
                        self.replication_factor,
                        config={"cleanup.policy": "compact"},
                    )
                ],
                operation_timeout=ADMIN_TIMEOUT,
            ),
            "create topic",
            ignore=[KafkaError.TOPIC_ALREADY_EXISTS],
        )
        config = self.settings.consumer(f"{self.group_prefix}catalogue-{uuid.uuid4().hex}")
        config.pop("partition.assignment.strategy", None)
        self._reader = Consumer(config)
        self._writer = Producer(self.settings.producer())
        self._ready = True

    def refresh(self) -> Catalogue:
        """Read the catalogue records written since the last read."""
        with self._lock:
            self._ensure_catalogue()
            assert self._reader is not None
            partition = TopicPartition(self.catalogue_topic, 0)
            _, high = self._reader.get_watermark_offsets(partition, timeout=ADMIN_TIMEOUT)
            if high <= self._next:
                return self.catalogue
            start = self._next if self._next > 0 else OFFSET_BEGINNING
            self._reader.assign([TopicPartition(self.catalogue_topic, 0, start)])
            while self._next < high:
                records = self._reader.consume(min(500, high - self._next), ADMIN_TIMEOUT)
                if not records:
                    raise BackendError(
                        f"Kafka catalogue {self.catalogue_topic}: no record came in "
                        f"{ADMIN_TIMEOUT:g}s (offset {self._next} of {high})"
                    )
                for record in records:
                    if record.error() is not None:
                        continue
                    self.catalogue.apply(record.key(), record.value())
                    self._next = (record.offset() or 0) + 1
            self._reader.unassign()
            return self.catalogue

    def write(self, key: bytes, value: bytes | None) -> None:
        """Write one catalogue record (``None``: delete), and take it into account."""
        with self._lock:
            self._ensure_catalogue()
            assert self._writer is not None
            errors: list[KafkaError] = []

            def delivered(error: KafkaError | None, _: Any) -> None:
                if error is not None:
                    errors.append(error)

            self._writer.produce(self.catalogue_topic, value=value, key=key, on_delivery=delivered)
            left = self._writer.flush(ADMIN_TIMEOUT)
            if errors or left:
                raise BackendError(
                    f"Kafka catalogue {self.catalogue_topic}: write refused: "
                    f"{errors[0] if errors else 'timed out'}"
                )
        self.refresh()

    def queue(self, name: str) -> QueueSpec | None:
        """The queue's record (read again from the broker when not known here)."""
        spec = self.catalogue.queues.get(name)
        return spec if spec is not None else self.refresh().queues.get(name)

    def has_topic(self, name: str) -> bool:
        return name in self.catalogue.topics or name in self.refresh().topics

    def put_queue(self, spec: QueueSpec) -> None:
        self.write(queue_key(spec.name), spec.encode())

    def put_topic(self, name: str) -> None:
        self.write(topic_key(name), b"{}")

    def drop_queue(self, name: str) -> None:
        self.write(queue_key(name), None)

    def drop_topic(self, name: str) -> None:
        self.write(topic_key(name), None)

    # -- group offsets ----------------------------------------------------------------------

    def group(self, queue: str) -> str:
        return group_id(self.group_prefix, queue)

    def committed(self, queue: str) -> dict[tuple[str, int], int]:
        """The offsets the queue's group committed, per partition."""
        request = [ConsumerGroupTopicPartitions(self.group(queue))]
        futures = self.client.list_consumer_group_offsets(request)
        found: dict[tuple[str, int], int] = {}
        for future in futures.values():
            try:
                result = future.result(timeout=ADMIN_TIMEOUT)
            except KafkaException as exc:
                if _error_code(exc) == KafkaError.GROUP_ID_NOT_FOUND:
                    return {}
                raise BackendError(f"Kafka could not read the offsets of {queue}: {exc}") from exc
            for tp in result.topic_partitions or []:
                if tp.offset >= 0:
                    found[(tp.topic, tp.partition)] = tp.offset
        return found

    def watermarks(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[tuple[str, int], tuple[int, int]]:
        """The low and high watermarks of each partition."""
        with self._lock:
            self._ensure_catalogue()
            assert self._reader is not None
            return {
                (tp.topic, tp.partition): tuple(  # type: ignore[misc]
                    self._reader.get_watermark_offsets(tp, timeout=ADMIN_TIMEOUT)
                )
                for tp in partitions
            }

    def move_group(self, queue: str, offsets: dict[tuple[str, int], int]) -> None:
        """Set the queue's group's committed offsets (refused while the group has members)."""
        if not offsets:
            return
        request = [
            ConsumerGroupTopicPartitions(
                self.group(queue), [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            )
        ]
        for future in self.client.alter_consumer_group_offsets(request).values():
            try:
                future.result(timeout=ADMIN_TIMEOUT)
            except KafkaException as exc:
                raise BackendError(
                    f"Kafka could not move the offsets of queue {queue} (a group with running "
                    f"consumers cannot be moved; stop them first): {exc}"
                ) from exc

    def start_at_end(self, queue: str, topics: Sequence[str]) -> None:
        """Make the queue's group start reading ``topics`` at their current end (a queue
        gets what is published to a topic from its subscription on), where it has not read
        them yet."""
        if not topics:
            return
        done = self.committed(queue)
        ends = {
            key: high
            for key, (_, high) in self.watermarks(self.partitions_of(topics)).items()
            if key not in done
        }
        try:
            self.move_group(queue, ends)
        except BackendError as exc:
            # Running consumers of the queue: they read the new topics from the beginning.
            logger.warning("%s", exc)

    def delete_group(self, queue: str) -> None:
        """Delete the queue's group and its offsets (best effort: not while it has members)."""
        for future in self.client.delete_consumer_groups([self.group(queue)]).values():
            try:
                future.result(timeout=ADMIN_TIMEOUT)
            except KafkaException as exc:
                logger.info("Kafka group of queue %s not deleted: %s", queue, exc)

    def close(self) -> None:
        """Close the clients (their threads end; the next use opens new ones)."""
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            if self._writer is not None:
                writer, self._writer = self._writer, None
                close_producer(writer, ADMIN_TIMEOUT)
            self._ready = False
        with self._client_lock:
            # No close() in confluent-kafka's AdminClient: the last reference going ends it
            # (at once, or when a call using it on another thread returns).
            self._client = None


__all__ = ["ADMIN_TIMEOUT", "KafkaAdmin"]

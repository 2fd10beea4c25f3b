"""Looking into a Kafka queue from outside its consumers (the CLI and tests):
:class:`QueueStats` and the copies of messages a peek returns.

What a queue holds is what its consumer group has not committed: per partition of the topics
it reads, from the committed offset (or the first record, where the group committed none) to
the end.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from melange.backends.kafka.admin import ADMIN_TIMEOUT, KafkaAdmin
from melange.backends.kafka.topology import QueueSpec
from melange.backends.kafka.wire import decode_message
from melange.models import Message


@dataclass(frozen=True)
class QueueStats:
    """How many messages a queue holds.

    Attributes:
        name: The queue.
        ready: Messages its group has not committed (Kafka cannot tell those a consumer
            holds from the others).
        in_flight: ``None``: not known outside the consumers.
        delayed: ``None``: not known outside the consumers.
    """

    name: str
    ready: int
    in_flight: int | None = None
    delayed: int | None = None

    @property
    def total(self) -> int:
        """Every message of the queue."""
        return self.ready


def _backlog(admin: KafkaAdmin, spec: QueueSpec) -> dict[tuple[str, int], tuple[int, int]]:
    """Per partition the queue reads: where its group is, and the end."""
    committed = admin.committed(spec.name)
    found: dict[tuple[str, int], tuple[int, int]] = {}
    for key, (low, high) in admin.watermarks(admin.partitions_of(spec.sources)).items():
        start = max(committed.get(key, low), low)
        found[key] = (start, high)
    return found


def queue_stats(admin: KafkaAdmin, spec: QueueSpec) -> QueueStats:
    """The messages ``spec``'s group has not committed."""
    backlog = _backlog(admin, spec)
    return QueueStats(spec.name, sum(max(0, high - start) for start, high in backlog.values()))


def peek_queue(admin: KafkaAdmin, spec: QueueSpec, limit: int) -> list[Message]:
    """Up to ``limit`` messages the group has not committed, oldest first (by timestamp),
    read without joining the group."""
    pending = {key: span for key, span in _backlog(admin, spec).items() if span[1] > span[0]}
    if not pending:
        return []
    config = admin.settings.consumer(f"{admin.group_prefix}peek-{uuid.uuid4().hex}")
    config.pop("partition.assignment.strategy", None)
    reader = Consumer(config)
    found: list[tuple[int, int, Message]] = []
    try:
        reader.assign([TopicPartition(t, p, start) for (t, p), (start, _) in pending.items()])
        wanted = {key: min(high, start + limit) for key, (start, high) in pending.items()}
        seen = {key: start for key, (start, _) in pending.items()}
        while any(seen[key] < wanted[key] for key in wanted):
            missing = sum(wanted[key] - seen[key] for key in wanted)
            records = reader.consume(max(1, min(500, missing)), ADMIN_TIMEOUT)
            if not records:
                break
            for record in records:
                topic, partition, offset = record.topic(), record.partition(), record.offset()
                if record.error() is not None or topic is None or partition is None:
                    continue
                key = (topic, partition)
                if offset is None or key not in wanted or offset >= wanted[key]:
                    continue
                seen[key] = offset + 1
                _, stamp = record.timestamp()
                message = decode_message(record.value(), record.headers(), None)
                found.append((stamp, len(found), message))
    finally:
        reader.close()
    found.sort(key=lambda item: (item[0], item[1]))
    return [message for _, _, message in found[:limit]]


__all__ = ["QueueStats", "peek_queue", "queue_stats"]

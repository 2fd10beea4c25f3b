"""How Melange's queues and topics are laid out on Kafka, and the names they take.

- A **topic** is a Kafka topic of the same name.
- A **queue** is a Kafka topic of the same name (what is published to the queue itself) read by
  a consumer group of its own (:func:`group_id`), which also reads every topic the queue is
  subscribed to. Each queue's group keeps its own offsets, so every queue bound to a topic
  gets every message published to it, independently of the others.
- A standard queue's **retry topic** (:func:`retry_topic`) holds what waits for a later
  attempt: a message that failed and is due again after a delay, or one given back for a
  while. Its group reads it with the rest; the queue's own and subscribed topics then hold
  nothing back, so their committed offsets only ever wait for messages being handled.
- The **catalogue** is a compacted Kafka topic (``__melange_catalogue`` by default) with one
  record per queue and topic: a queue's record holds its subscriptions, its dead-letter queue
  and whether it is FIFO. It is how any process finds out what a queue reads.

Kafka topic names are 1 to 249 characters: ASCII letters, digits, ``.``, ``_`` and ``-``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from melange.exceptions import ConfigurationError

#: The default name of the catalogue topic.
DEFAULT_CATALOGUE = "__melange_catalogue"
#: The longest Kafka topic name.
MAX_NAME = 249
#: Suffix of a FIFO queue's name (FIFO by default, as on the other backends).
FIFO_SUFFIX = ".fifo"

#: Start of a retry topic's name (no queue's or topic's name starts with ``__``).
RETRY_PREFIX = "__melange.retry."

_LEGAL = re.compile(r"[A-Za-z0-9._-]+")
_QUEUE_KEY = "queue:"
_TOPIC_KEY = "topic:"


def check_name(kind: str, name: object) -> str:
    """Check a queue or topic name against Kafka's rules; returns it."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{kind} name must be a non-empty string, got {name!r}")
    rule = (
        f"Kafka {kind} names are 1 to {MAX_NAME} characters: ASCII letters, digits, '.', '_' "
        "and '-', and not '.' or '..'"
    )
    if len(name) > MAX_NAME:
        raise ConfigurationError(f"{kind} name {name[:40]!r}... is {len(name)} characters; {rule}")
    if not _LEGAL.fullmatch(name) or name in (".", ".."):
        raise ConfigurationError(f"{kind} name {name!r} is not allowed: {rule}")
    if name.startswith("__"):
        raise ConfigurationError(
            f"{kind} name {name!r} starts with '__', which Kafka keeps for internal topics"
        )
    return name


def retry_topic(queue: str) -> str:
    """The retry topic of a standard queue: :data:`RETRY_PREFIX` and the queue's name, which a
    queue name too long for that shortens and tells apart with a hash."""
    name = RETRY_PREFIX + queue
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(queue.encode()).hexdigest()[:16]
    return f"{name[: MAX_NAME - 17]}-{digest}"


def group_id(prefix: str, queue: str) -> str:
    """The consumer group that reads ``queue``."""
    return f"{prefix}{queue}"


@dataclass
class QueueSpec:
    """A queue's catalogue record.

    Attributes:
        name: The queue (and its own Kafka topic).
        topics: The topics it is subscribed to.
        dead_letter_queue: Its dead-letter queue, if any.
        fifo: Whether messages of one group are delivered one at a time, in order.
    """

    name: str
    topics: list[str] = field(default_factory=list)
    dead_letter_queue: str | None = None
    fifo: bool = False

    @property
    def retries(self) -> str | None:
        """The queue's retry topic (``None`` on a FIFO queue, whose messages wait for a later
        attempt in their consumer, ahead of the rest of their group)."""
        return None if self.fifo else retry_topic(self.name)

    @property
    def sources(self) -> list[str]:
        """Every Kafka topic the queue's group reads: its own, its subscriptions, then its
        retry topic."""
        retries = self.retries
        return [self.name, *self.topics, *([retries] if retries else [])]

    def encode(self) -> bytes:
        return json.dumps(
            {"topics": self.topics, "dead_letter_queue": self.dead_letter_queue, "fifo": self.fifo},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, name: str, raw: bytes) -> QueueSpec:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            name,
            [str(t) for t in data.get("topics", [])],
            data.get("dead_letter_queue"),
            bool(data.get("fifo", False)),
        )


def queue_key(name: str) -> bytes:
    """The catalogue key of a queue's record."""
    return (_QUEUE_KEY + name).encode()


def topic_key(name: str) -> bytes:
    """The catalogue key of a topic's record."""
    return (_TOPIC_KEY + name).encode()


@dataclass
class Catalogue:
    """What the catalogue topic says: the queues (with their records) and the topics."""

    queues: dict[str, QueueSpec] = field(default_factory=dict)
    topics: set[str] = field(default_factory=set)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Take one catalogue record into account (``value`` ``None``: a deletion)."""
        if key is None:
            return
        text = key.decode("utf-8", errors="replace")
        if text.startswith(_QUEUE_KEY):
            name = text[len(_QUEUE_KEY) :]
            if value is None:
                self.queues.pop(name, None)
            else:
                self.queues[name] = QueueSpec.decode(name, value)
        elif text.startswith(_TOPIC_KEY):
            name = text[len(_TOPIC_KEY) :]
            if value is None:
                self.topics.discard(name)
            else:
                self.topics.add(name)


def declared_spec(
    queue: str,
    existing: QueueSpec | None,
    topics: Iterable[str],
    dead_letter_queue: str | None,
    options: Mapping[str, Any],
) -> QueueSpec:
    """The record of ``queue`` after a declaration: subscriptions add up (as on SNS and
    RabbitMQ), a dead-letter queue given replaces the one kept, FIFO cannot change."""
    unknown = set(options) - {"fifo", "filter_events", "max_receive_count", "visibility_timeout"}
    if unknown:
        raise ConfigurationError(
            f"declare_queue got unknown option(s) {sorted(unknown)} for the Kafka backend; it "
            "takes fifo (and accepts max_receive_count and visibility_timeout, which Kafka "
            "has no use for)"
        )
    if options.get("filter_events"):
        raise ConfigurationError(
            "the Kafka backend has no subscription filters (filter_events): every queue gets "
            "every message of its topics; filter in the consumer instead"
        )
    fifo = bool(options.get("fifo", queue.endswith(FIFO_SUFFIX)))
    if existing is not None and existing.fifo != fifo:
        kind = "FIFO" if existing.fifo else "standard"
        raise ConfigurationError(
            f"queue {queue!r} exists as a {kind} queue; a queue cannot change its type"
        )
    merged = list(existing.topics) if existing is not None else []
    for topic in topics:
        if topic not in merged:
            merged.append(topic)
    dlq = dead_letter_queue or (existing.dead_letter_queue if existing is not None else None)
    return QueueSpec(queue, merged, dlq, fifo)


__all__ = [
    "DEFAULT_CATALOGUE",
    "FIFO_SUFFIX",
    "MAX_NAME",
    "RETRY_PREFIX",
    "Catalogue",
    "QueueSpec",
    "check_name",
    "declared_spec",
    "group_id",
    "queue_key",
    "retry_topic",
    "topic_key",
]

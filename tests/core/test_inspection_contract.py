"""The inspection contract (melange.backends.inspection): which backends implement it, and
how the CLI prints what they return."""

from __future__ import annotations

import importlib
import json

import pytest

from melange.backends.inspection import (
    Inspectable,
    KnowsDeadLetterSources,
    ListsTopics,
    QueueCounts,
    QueueStats,
)
from melange.cli.inspector import json_text

#: (module, class, also lists topics, also knows dead-letter sources)
BACKENDS = [
    ("melange.backends.sqlite", "SQLiteBackend", True, False),
    ("melange.backends.sqs.backend", "AWSBackend", True, True),
    ("melange.backends.sqs.localsqs", "LocalSQSBackend", True, True),
    ("melange.backends.rabbitmq.backend", "RabbitMQBackend", True, True),
    ("melange.backends.redis_streams", "RedisStreamsBackend", True, False),
    ("melange.backends.nats", "NATSBackend", True, False),
    ("melange.backends.kafka", "KafkaBackend", True, False),
]


@pytest.mark.parametrize(
    ("module", "name", "topics", "sources"), BACKENDS, ids=[b[1] for b in BACKENDS]
)
def test_every_broker_backend_is_inspectable(
    module: str, name: str, topics: bool, sources: bool
) -> None:
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as exc:  # an optional extra that is not installed
        pytest.skip(f"{module} needs an extra: {exc}")

    assert issubclass(cls, Inspectable)
    assert issubclass(cls, ListsTopics) is topics
    assert issubclass(cls, KnowsDeadLetterSources) is sources


def test_queue_stats_total_counts_what_is_known() -> None:
    stats: QueueCounts = QueueStats("orders", 3, None, 2)

    assert stats.total == 5
    assert QueueStats("orders", 0, 0, 0).total == 0


def test_json_output_escapes_every_control_character_and_keeps_the_text() -> None:
    text = "a\x1b[31mb\x07c\x7fd\x9be\u202ef"

    printed = json_text({"body": text})

    assert printed.isprintable() and printed.isascii()
    assert json.loads(printed) == {"body": text}

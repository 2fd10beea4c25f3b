"""``melange queues`` and ``melange dlq`` on the Kafka backend (a tansu broker)."""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner
from tansu_broker import TEST_OPTIONS

from melange.backends.kafka import KafkaBackend
from melange.cli import cli
from melange.models import FAILURE_QUEUE, FAILURE_REASON, Message

pytestmark = pytest.mark.kafka


def test_queues_and_dead_letters_on_kafka(kafka_url: str) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    options = "&".join(f"{k}={v}" for k, v in TEST_OPTIONS.items())
    url = f"{kafka_url}?{options}"
    backend = KafkaBackend(kafka_url, **TEST_OPTIONS)  # type: ignore[arg-type]
    try:
        queue, dlq = backend.declare_queue(name, dead_letter_queue_name=f"{name}-dlq")
        assert dlq is not None
        # One publish each: tansu reports the end of a partition as the last batch's first
        # offset plus one, so a backlog counted from it misses the rest of a batch.
        for i in range(3):
            backend.publish_to_queue(Message.create(f'{{"n": {i}}}', "json", 1), queue)
        dead = Message.create(
            '{"bad": 1}', "json", 1, {FAILURE_REASON: "boom", FAILURE_QUEUE: name}
        )
        backend.publish_to_queue(dead, dlq)
        runner = CliRunner()
        listed = runner.invoke(cli, ["queues", "list", "--backend-url", url])
        assert listed.exit_code == 0, listed.output
        assert name in listed.output
        stats = runner.invoke(cli, ["queues", "stats", name, "--backend-url", url])
        assert stats.exit_code == 0, stats.output
        assert " 3 " in stats.output
        shown = runner.invoke(cli, ["dlq", "show", f"{name}-dlq", "--backend-url", url])
        assert shown.exit_code == 0, shown.output
        assert "boom" in shown.output
        moved = runner.invoke(cli, ["dlq", "redrive", f"{name}-dlq", "--backend-url", url])
        assert moved.exit_code == 0, moved.output
        assert "moved 1 message(s)" in moved.output
        assert backend.queue_depth(name) == 4
        assert backend.queue_depth(f"{name}-dlq") == 0
        purged = runner.invoke(cli, ["queues", "purge", name, "-y", "--backend-url", url])
        assert purged.exit_code == 0, purged.output
        assert backend.queue_depth(name) == 0
    finally:
        for queue_name in (name, f"{name}-dlq"):
            backend.delete_queue(backend.get_queue(queue_name))
        backend.close_connection()

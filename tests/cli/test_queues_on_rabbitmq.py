"""``melange queues`` and ``melange dlq`` on the shared RabbitMQ broker, whose management
plugin may be off: counts by passive declaration, peeks by ``basic.get``, and a clear
message for what needs the plugin."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cli_support import assert_one_line_error, run_melange

from melange import Consumer, FailurePolicy, MessageDispatcher, QueuePublisher
from melange.backends.factory import MessagingBackendFactory
from melange.backends.rabbitmq import RabbitMQBackend
from melange.backends.rabbitmq.inspect import management_for
from melange.serializers.json import JsonSerializer
from service_check import require_service

pytestmark = pytest.mark.rabbitmq

#: A body that would recolour a terminal printed as it is.
HOSTILE = "\x1b[31mred\x1b[0m\x07"


class CardDeclined(Exception):
    pass


@dataclass
class Broker:
    url: str
    queue: str
    dlq: str
    management: bool


@pytest.fixture
def broker() -> Iterator[Broker]:
    """``payments`` with two payments dead-lettered into its DLQ, one message ready and one
    waiting in a retry queue; every queue deleted at the end."""
    host, port = require_service("rabbitmq")
    url = f"amqp://guest:guest@{host}:{port}/"
    suffix = uuid.uuid4().hex[:10]
    queue, dlq = f"payments-{suffix}", f"payments-{suffix}-dlq"
    backend = RabbitMQBackend(url)
    try:
        factory = MessagingBackendFactory(backend)
        wrapper = factory.init_queue(queue, dead_letter_queue_name=dlq)
        publisher = QueuePublisher(JsonSerializer(), backend)
        publisher.publish(queue, {"order": 1, "note": HOSTILE})
        publisher.publish(queue, {"order": 2})

        def charge(payment: dict[str, object]) -> None:
            # The failure header then holds the control characters as they are.
            raise CardDeclined(f"order {payment['order']} declined {payment.get('note', '')}")

        dispatcher = MessageDispatcher(
            JsonSerializer(),
            backend=backend,
            consumers=[Consumer(charge, name="billing.charge")],
            failure_policy=FailurePolicy(max_attempts=1),
        )
        dispatcher.consume_event(queue)
        assert dispatcher.stats.dead_lettered == 2
        publisher.publish(queue, {"order": 3})
        publisher.publish(queue, {"order": 4})
        # One of them waits 30 s in a retry queue; the other is given back at once.
        received: list[object] = []
        while len(received) < 2:
            received.extend(backend.retrieve_messages(wrapper, wait_seconds=1, max_messages=2))
        backend.nack(received[0], 30.0)  # type: ignore[arg-type]
        backend.nack(received[1], 0.0)  # type: ignore[arg-type]
        management = management_for(backend._params).available()
    finally:
        backend.close_connection()
    yield Broker(url, queue, dlq, management)
    cleaner = RabbitMQBackend(url)
    try:
        for name in (queue, dlq):
            cleaner.delete_queue(cleaner.get_queue(name))
    finally:
        cleaner.close_connection()


def test_stats_count_ready_and_delayed_messages(broker: Broker) -> None:
    result = run_melange("queues", "stats", broker.queue, "--json", "--backend-url", broker.url)

    assert result.returncode == 0, result.stderr
    (stats,) = json.loads(result.stdout)["queues"]
    assert stats["name"] == broker.queue
    assert stats["ready"] == 1
    assert stats["delayed"] == 1  # the message waiting in the 30 s retry queue
    assert stats["total"] == 2
    # Without the management API AMQP cannot tell messages held by consumers.
    assert stats["in_flight"] == (0 if broker.management else None)


def test_dlq_show_names_the_failures_with_control_characters_escaped(broker: Broker) -> None:
    table = run_melange("dlq", "show", broker.dlq, "--body", "--backend-url", broker.url)
    as_json = run_melange("dlq", "show", broker.dlq, "--json", "--backend-url", broker.url)

    assert table.returncode == 0, table.stderr
    assert "\x1b" not in table.stdout and "\x07" not in table.stdout
    assert "\\x1b[31mred" in table.stdout
    assert table.stdout.count(broker.queue) >= 2
    assert "2 of 2 message(s) shown" in table.stdout
    assert "failing consumer(s): billing.charge" in table.stdout
    assert as_json.returncode == 0, as_json.stderr
    assert "\x1b" not in as_json.stdout
    document = json.loads(as_json.stdout)
    assert document["total"] == 2
    orders = sorted(json.loads(m["body"])["order"] for m in document["messages"])
    assert orders == [1, 2]
    first = next(m for m in document["messages"] if json.loads(m["body"])["order"] == 1)
    assert json.loads(first["body"])["note"] == HOSTILE  # exact once decoded
    assert first["from_queue"] == broker.queue
    assert first["consumer"] == "billing.charge"
    assert "CardDeclined" in first["exception"]
    if broker.management:
        assert document["sources"] == [broker.queue]
    else:
        assert document["sources"] is None


def test_peeking_leaves_the_dead_letters_in_place(broker: Broker) -> None:
    for _ in range(2):
        assert run_melange("dlq", "show", broker.dlq, "--backend-url", broker.url).returncode == 0

    result = run_melange("queues", "stats", broker.dlq, "--json", "--backend-url", broker.url)

    assert json.loads(result.stdout)["queues"][0]["ready"] == 2


def test_redrive_moves_the_dead_letters_back(broker: Broker) -> None:
    result = run_melange("dlq", "redrive", broker.dlq, "--json", "--backend-url", broker.url)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "queue": broker.dlq,
        "moved": 2,
        "left": 0,
        "duplicates": 0,
    }
    stats = run_melange(
        "queues", "stats", broker.queue, broker.dlq, "--json", "--backend-url", broker.url
    )
    counts = {q["name"]: q for q in json.loads(stats.stdout)["queues"]}
    assert counts[broker.queue]["ready"] == 3
    assert counts[broker.dlq]["total"] == 0


def test_purge_deletes_ready_and_waiting_messages(broker: Broker) -> None:
    result = run_melange(
        "queues", "purge", broker.queue, "-y", "--json", "--backend-url", broker.url
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"queue": broker.queue, "deleted": 2}
    stats = run_melange("queues", "stats", broker.queue, "--json", "--backend-url", broker.url)
    assert json.loads(stats.stdout)["queues"][0]["total"] == 0


def test_a_missing_queue_is_named(broker: Broker) -> None:
    result = run_melange("queues", "stats", broker.queue + "-nope", "--backend-url", broker.url)

    assert_one_line_error(result, broker.queue + "-nope")


def test_listing_without_the_management_plugin_says_what_it_needs(broker: Broker) -> None:
    if broker.management:
        result = run_melange("queues", "list", "--json", "--backend-url", broker.url)
        assert result.returncode == 0, result.stderr
        names = [q["name"] for q in json.loads(result.stdout)["queues"]]
        assert broker.queue in names and broker.dlq in names
        assert not any(".melange-retry-" in name for name in names)
        return
    result = run_melange("queues", "list", "--backend-url", broker.url)

    assert_one_line_error(
        result, "management plugin", "rabbitmq-plugins enable rabbitmq_management"
    )
    assert "guest:guest" not in result.stderr

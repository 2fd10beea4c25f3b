"""``melange queues`` and ``melange dlq`` on NATS JetStream (``nats://`` URLs)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from click.testing import CliRunner

from melange import Consumer, FailurePolicy, MessageDispatcher, QueuePublisher
from melange.backends.factory import MessagingBackendFactory
from melange.backends.nats import NATSBackend
from melange.cli import cli
from melange.models import FAILURE_QUEUE
from melange.serializers.json import JsonSerializer
from melange.testing.conformance import receive

pytestmark = pytest.mark.nats


class CardDeclined(Exception):
    pass


@pytest.fixture
def url(nats_url: str, prefix: str, make_nats: Callable[..., NATSBackend]) -> str:
    """A broker where two payments failed for good and one order waits."""
    backend = make_nats()
    factory = MessagingBackendFactory(backend)
    factory.init_queue("payments", dead_letter_queue_name="payments-dlq")
    factory.init_queue("orders")
    factory.init_topic("events")
    publisher = QueuePublisher(JsonSerializer(), backend)
    publisher.publish("payments", {"order": 1, "card": "4000-0000"})
    publisher.publish("payments", {"order": 2, "card": "4000-0001"})
    publisher.publish("orders", {"order": 3})

    def charge(payment: dict[str, object]) -> None:
        raise CardDeclined(f"card {payment['card']} declined")

    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[Consumer(charge, name="billing.charge")],
        failure_policy=FailurePolicy(max_attempts=1),
    )
    for _ in range(10):
        if dispatcher.stats.dead_lettered == 2:
            break
        dispatcher.consume_event("payments", wait_seconds=1)
    assert dispatcher.stats.dead_lettered == 2
    return f"{nats_url}?prefix={prefix}"


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def rows_of(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:] if line.strip()}


def test_queues_list_shows_every_queue_and_topic_with_its_count(url: str) -> None:
    code, out = invoke("queues", "list", "--backend-url", url)

    assert code == 0, out
    rows = rows_of(out.split("\n\n")[0])
    assert rows == {"orders": ["1"], "payments": ["0"], "payments-dlq": ["2"]}
    assert "topics: events" in out


def test_queue_stats_count_ready_and_in_flight_messages(
    url: str, make_nats: Callable[..., NATSBackend]
) -> None:
    holder = make_nats()
    [held] = receive(holder, holder.get_queue("payments-dlq"), 1, max_messages=1)

    code, out = invoke("queues", "stats", "payments-dlq", "orders", "--backend-url", url)

    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["queue", "ready", "in", "flight", "delayed", "total"]
    assert lines[2].split() == ["payments-dlq", "1", "1", "-", "2"]
    assert lines[3].split() == ["orders", "1", "0", "-", "1"]
    holder.acknowledge(held)


def test_purge_deletes_every_message(url: str, make_nats: Callable[..., NATSBackend]) -> None:
    refused = CliRunner().invoke(
        cli, ["queues", "purge", "orders", "--backend-url", url], input="n\n"
    )
    assert refused.exit_code == 1
    assert make_nats().queue_depth("orders") == 1

    code, out = invoke("queues", "purge", "orders", "--yes", "--backend-url", url)

    assert code == 0, out
    assert "purged orders: 1 message(s) deleted" in out
    assert make_nats().queue_depth("orders") == 0


def test_dlq_show_lists_each_message_with_why_it_failed(url: str) -> None:
    code, out = invoke("dlq", "show", "payments-dlq", "--body", "--backend-url", url)

    assert code == 0, out
    assert "card 4000-0000 declined" in out
    assert "card 4000-0001 declined" in out
    assert '{"order":1,"card":"4000-0000"}' in out
    assert "CardDeclined" in out
    assert "2 of 2 message(s) shown" in out
    assert "failing consumer(s): billing.charge" in out


def test_dlq_show_leaves_the_messages_where_they_are(
    url: str, make_nats: Callable[..., NATSBackend]
) -> None:
    invoke("dlq", "show", "payments-dlq", "--backend-url", url)
    backend = make_nats()
    assert backend.queue_stats("payments-dlq").ready == 2


def test_redrive_moves_dead_letters_back_without_their_failure_headers(
    url: str, make_nats: Callable[..., NATSBackend]
) -> None:
    code, out = invoke("dlq", "redrive", "payments-dlq", "--backend-url", url)

    assert code == 0, out
    assert "moved 2 message(s) out of payments-dlq" in out
    backend = make_nats()
    assert backend.queue_depth("payments-dlq") == 0
    moved = receive(backend, backend.get_queue("payments"), 2)
    assert sorted(m.content for m in moved) == [
        '{"order": 1, "card": "4000-0000"}',
        '{"order": 2, "card": "4000-0001"}',
    ]
    assert all(FAILURE_QUEUE not in m.headers for m in moved)
    backend.acknowledge_batch(moved)

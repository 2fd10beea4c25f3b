"""``melange queues list|stats|purge`` and ``melange dlq show|redrive`` on Redis Streams,
named by a ``redis+streams://`` URL with the test's own key prefix."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from click.testing import CliRunner

from melange import Consumer, FailurePolicy, MessageDispatcher, QueuePublisher
from melange.backends.factory import MessagingBackendFactory
from melange.backends.redis_streams import RedisStreamsBackend
from melange.cli import cli
from melange.serializers.json import JsonSerializer

pytestmark = pytest.mark.redis


class CardDeclined(Exception):
    pass


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.fixture
def url(redis_url: str, prefix: str, make_streams: Callable[..., RedisStreamsBackend]) -> str:
    """A Redis where two payments failed for good and one order waits (as the CLI sees it)."""
    backend = make_streams()
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
    dispatcher.consume_event("payments")
    assert dispatcher.stats.dead_lettered == 2
    return redis_url.replace("redis://", "redis+streams://") + f"?prefix={prefix}"


def test_queues_list_and_stats_count_the_messages_of_each_queue(url: str) -> None:
    code, out = invoke("queues", "list", "--backend-url", url)
    assert code == 0, out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert lines["orders"] == ["1"]
    assert lines["payments"] == ["0"]
    assert lines["payments-dlq"] == ["2"]
    assert "topics: events" in out
    code, out = invoke("queues", "stats", "orders", "payments-dlq", "--backend-url", url)
    assert code == 0, out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:] if line.strip()}
    # ready, in flight, delayed, total
    assert rows["orders"][-4:] == ["1", "0", "0", "1"]
    assert rows["payments-dlq"][-4:] == ["2", "0", "0", "2"]


def test_dlq_show_tells_why_each_message_failed_and_redrive_moves_them_back(
    url: str, make_streams: Callable[..., RedisStreamsBackend]
) -> None:
    code, out = invoke("dlq", "show", "payments-dlq", "--body", "--backend-url", url)
    assert code == 0, out
    assert "2 of 2 message(s) shown" in out
    assert "card 4000-0000 declined" in out
    assert "billing.charge" in out
    assert "4000-0001" in out
    code, out = invoke("dlq", "redrive", "payments-dlq", "--backend-url", url)
    assert code == 0, out
    backend = make_streams()
    assert backend.queue_depth("payments-dlq") == 0
    assert backend.queue_depth("payments") == 2
    back = backend.retrieve_messages(backend.get_queue("payments"), max_messages=10)
    assert sorted(m.content for m in back) == [
        '{"order": 1, "card": "4000-0000"}',
        '{"order": 2, "card": "4000-0001"}',
    ]
    assert not any(k.startswith("melange_failure_") for m in back for k in m.headers)
    backend.acknowledge_batch(back)


def test_queues_purge_deletes_every_message_in_flight_or_not(
    url: str, make_streams: Callable[..., RedisStreamsBackend]
) -> None:
    backend = make_streams()
    [held] = backend.retrieve_messages(backend.get_queue("payments-dlq"), max_messages=1)
    code, out = invoke("queues", "purge", "payments-dlq", "--yes", "--backend-url", url)
    assert code == 0, out
    assert "2 message(s) deleted" in out
    assert backend.queue_depth("payments-dlq") == 0
    backend.acknowledge(held)  # a late settlement of a purged message is a no-op
    assert backend.queue_depth("payments-dlq") == 0
    assert backend.queue_depth("orders") == 1

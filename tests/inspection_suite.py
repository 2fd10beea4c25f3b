"""``melange queues`` and ``melange dlq``: the same scenarios on every backend.

A backend's test module subclasses :class:`InspectionSuite` and provides one fixture,
``inspected``, giving an :class:`Inspected`: the ``--backend-url`` of a broker namespace of
the test's own and a way to open a backend on it. The suite seeds the namespace as a user
would meet it (two payments that failed for good in ``payments-dlq``, an order waiting in
``orders``, a topic ``events``) and runs the commands against it, reading their ``--json``
output (the human tables are covered once, in ``tests/cli/test_queues_and_dlq.py``).

Where a broker cannot tell something (messages in flight, its topics), the subclass says so
in a class attribute and the suite checks the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner

from melange import Consumer, FailurePolicy, MessageDispatcher, QueuePublisher
from melange.backends.factory import MessagingBackendFactory
from melange.backends.interfaces import MessagingBackend
from melange.cli import cli
from melange.models import FAILURE_QUEUE
from melange.serializers.json import JsonSerializer
from melange.testing.conformance import receive


class CardDeclined(Exception):
    """The failure of the seeded payments."""


@dataclass
class Inspected:
    """A broker namespace of the test's own, as the CLI and as a backend see it."""

    url: str
    open_backend: Callable[[], MessagingBackend]


def seed(backend: MessagingBackend) -> None:
    """Two payments dead-lettered by ``billing.charge``, one order waiting, a topic."""
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
    for _ in range(20):
        if dispatcher.stats.dead_lettered == 2:
            break
        dispatcher.consume_event("payments", wait_seconds=1)
    assert dispatcher.stats.dead_lettered == 2


def melange(*args: str, stdin: str | None = None) -> tuple[int, str]:
    """Run ``melange ARGS`` in process; returns its exit code and output."""
    result = CliRunner().invoke(cli, list(args), input=stdin)
    return result.exit_code, result.output


def melange_json(*args: str) -> Any:
    """Run ``melange ARGS --json``, which must succeed; returns the parsed document."""
    code, out = melange(*args, "--json")
    assert code == 0, out
    return json.loads(out)


class InspectionSuite:
    """The inspection commands on one backend (see the module's docstring)."""

    #: Whether ``queues stats`` can count messages handed out and not yet settled.
    counts_in_flight = True
    #: Whether ``queues list`` can name the broker's topics.
    lists_topics = True

    @pytest.fixture
    def broker(self, inspected: Inspected) -> Inspected:
        backend = inspected.open_backend()
        try:
            seed(backend)
        finally:
            backend.close_connection()
        return inspected

    def counts(self, broker: Inspected, *queues: str) -> dict[str, dict[str, int]]:
        found = melange_json("queues", "stats", *queues, "--backend-url", broker.url)
        return {row.pop("name"): row for row in found["queues"]}

    def test_list_names_every_queue_with_its_messages_and_the_topics(
        self, broker: Inspected
    ) -> None:
        found = melange_json("queues", "list", "--backend-url", broker.url)

        messages = {row["name"]: row["messages"] for row in found["queues"]}
        assert messages == {"payments": 0, "payments-dlq": 2, "orders": 1}
        if self.lists_topics:
            assert found["topics"] == ["events"]

    def test_stats_tell_ready_from_in_flight_messages(self, broker: Inspected) -> None:
        holder = broker.open_backend()
        try:
            held = receive(holder, holder.get_queue("payments-dlq"), 1, max_messages=1)
            assert len(held) == 1

            counts = self.counts(broker, "payments-dlq", "orders")

            assert counts["orders"]["ready"] == 1
            assert counts["orders"]["total"] == 1
            assert counts["payments-dlq"]["total"] == 2
            if self.counts_in_flight:
                assert counts["payments-dlq"]["ready"] == 1
                assert counts["payments-dlq"]["in_flight"] == 1
            holder.acknowledge_batch(held)
        finally:
            holder.close_connection()

    def test_purge_asks_first_then_deletes_every_message(self, broker: Inspected) -> None:
        code, out = melange("queues", "purge", "orders", "--backend-url", broker.url, stdin="n\n")
        assert code == 1, out
        assert self.counts(broker, "orders")["orders"]["total"] == 1

        done = melange_json("queues", "purge", "orders", "--yes", "--backend-url", broker.url)

        assert done == {"queue": "orders", "deleted": 1}
        assert self.counts(broker, "orders")["orders"]["total"] == 0

    def test_dlq_show_tells_why_each_message_failed_and_leaves_it_there(
        self, broker: Inspected
    ) -> None:
        shown = melange_json("dlq", "show", "payments-dlq", "--backend-url", broker.url)

        assert shown["total"] == 2
        failures = sorted(shown["messages"], key=lambda m: json.loads(m["body"])["order"])
        assert [json.loads(m["body"])["order"] for m in failures] == [1, 2]
        for failure, card in zip(failures, ["4000-0000", "4000-0001"], strict=True):
            assert f"CardDeclined: card {card} declined" in failure["reason"]
            assert failure["exception"].endswith("CardDeclined")
            assert failure["consumer"] == "billing.charge"
            assert failure["from_queue"] == "payments"
            assert failure["attempts"] == "1"
        # Peeking took nothing away.
        assert self.counts(broker, "payments-dlq")["payments-dlq"]["total"] == 2

    def test_redrive_moves_dead_letters_back_without_their_failure_headers(
        self, broker: Inspected
    ) -> None:
        code, out = melange("dlq", "redrive", "payments-dlq", "--backend-url", broker.url)

        assert code == 0, out
        assert "moved 2 message(s) out of payments-dlq" in out
        assert self.counts(broker, "payments-dlq")["payments-dlq"]["total"] == 0
        backend = broker.open_backend()
        try:
            moved = receive(backend, backend.get_queue("payments"), 2)
            assert sorted(json.loads(m.content)["order"] for m in moved) == [1, 2]
            assert all(FAILURE_QUEUE not in m.headers for m in moved)
            backend.acknowledge_batch(moved)
        finally:
            backend.close_connection()

    def test_a_missing_queue_is_named(self, broker: Inspected) -> None:
        code, out = melange("queues", "stats", "no-such-queue", "--backend-url", broker.url)

        assert code != 0
        assert "no-such-queue" in out

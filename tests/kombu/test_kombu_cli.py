"""``melange queues list|stats|purge`` and ``melange dlq show|redrive`` on the kombu backend.

On kombu's Redis transport the whole inspection suite runs, on a ``kombu+redis://`` URL with
the test's own key prefix. On its AMQP transport the broker's virtual host is shared, so the
commands are checked on queues of unique names (listing through RabbitMQ's management API).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator

import pytest
from kombu_support import transport_url

from inspection_suite import Inspected, InspectionSuite, melange, melange_json
from melange import Consumer, FailurePolicy, MessageDispatcher, QueuePublisher
from melange.backends.factory import MessagingBackendFactory
from melange.backends.kombu import KombuBackend
from melange.models import FAILURE_QUEUE
from melange.serializers.json import JsonSerializer
from melange.testing.conformance import receive


def _management_api_answers() -> bool:
    from melange.backends.rabbitmq.inspect import ManagementAPI

    return bool(ManagementAPI("http://127.0.0.1:15672", "guest", "guest", "/").available())


@pytest.mark.redis
class TestInspectionOnKombuRedis(InspectionSuite):
    @pytest.fixture
    def transport(self) -> str:
        return "redis"

    @pytest.fixture
    def inspected(self, prefix: str, make_kombu: Callable[..., KombuBackend]) -> Inspected:
        return Inspected(f"{transport_url('redis')}?prefix={prefix}", make_kombu)


class Declined(Exception):
    """The failure of the seeded payments."""


@pytest.fixture
def amqp_names() -> Iterator[dict[str, str]]:
    """Queue names unique to the test on the shared RabbitMQ; deleted afterwards."""
    suffix = uuid.uuid4().hex[:10]
    names = {"payments": f"payments-{suffix}", "dlq": f"payments-{suffix}-dlq"}
    yield names
    backend = KombuBackend(transport_url("amqp"))
    for name in names.values():
        with contextlib.suppress(Exception):  # already gone
            backend.delete_queue(backend.get_queue(name))
    backend.close_connection()


@pytest.mark.rabbitmq
def test_the_commands_on_kombu_amqp(amqp_names: dict[str, str]) -> None:
    url = transport_url("amqp")
    payments, dlq = amqp_names["payments"], amqp_names["dlq"]
    backend = KombuBackend(url)
    try:
        MessagingBackendFactory(backend).init_queue(payments, dead_letter_queue_name=dlq)
        publisher = QueuePublisher(JsonSerializer(), backend)
        for order in (1, 2):
            publisher.publish(payments, {"order": order})

        def charge(payment: dict[str, object]) -> None:
            raise Declined(f"order {payment['order']} declined")

        dispatcher = MessageDispatcher(
            JsonSerializer(),
            backend=backend,
            consumers=[Consumer(charge, name="billing.charge")],
            failure_policy=FailurePolicy(max_attempts=1),
        )
        for _ in range(20):
            if dispatcher.stats.dead_lettered == 2:
                break
            dispatcher.consume_event(payments, wait_seconds=1)
        assert dispatcher.stats.dead_lettered == 2

        if _management_api_answers():
            listed = melange_json("queues", "list", "--backend-url", url)
            assert {payments, dlq} <= {row["name"] for row in listed["queues"]}
        else:
            # Without the management plugin AMQP cannot list queues: the command says so.
            code, out = melange("queues", "list", "--backend-url", url)
            assert code != 0
            assert "rabbitmq_management" in out

        stats = melange_json("queues", "stats", dlq, "--backend-url", url)
        [row] = stats["queues"]
        assert row["ready"] == 2

        shown = melange_json("dlq", "show", dlq, "--backend-url", url)
        assert shown["total"] == 2
        for failure in shown["messages"]:
            order = json.loads(failure["body"])["order"]
            assert f"Declined: order {order} declined" in failure["reason"]
            assert failure["consumer"] == "billing.charge"
            assert failure["from_queue"] == payments
        # Peeking took nothing away.
        assert melange_json("queues", "stats", dlq, "--backend-url", url)["queues"][0]["ready"] == 2

        code, out = melange("dlq", "redrive", dlq, "--backend-url", url)
        assert code == 0, out
        assert f"moved 2 message(s) out of {dlq}" in out
        moved = receive(backend, backend.get_queue(payments), 2)
        assert sorted(json.loads(m.content)["order"] for m in moved) == [1, 2]
        assert all(FAILURE_QUEUE not in m.headers for m in moved)
        for message in moved:
            backend.release(message)

        done = melange_json("queues", "purge", payments, "--yes", "--backend-url", url)
        assert done == {"queue": payments, "deleted": 2}
        code, out = melange("queues", "stats", f"{payments}-missing", "--backend-url", url)
        assert code != 0
        assert f"{payments}-missing" in out
    finally:
        backend.close_connection()

"""The harness on a real broker (RabbitMQ), under both dispatchers: delays take real time."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from melange.aio import AsyncMessageDispatcher
from melange.backends.rabbitmq import AsyncRabbitMQBackend, RabbitMQBackend
from melange.consumers import Consumer
from melange.dispatch.policy import FailurePolicy
from melange.dispatch.threaded import MessageDispatcher
from melange.publishers import TopicPublisher
from melange.serializers.json import JsonSerializer
from melange.testing import Harness
from melange.testing.blocking import as_blocking
from service_check import require_service

pytestmark = pytest.mark.rabbitmq

POLICY = FailurePolicy(max_attempts=2, initial_delay=0.2, jitter=0.0)


@pytest.fixture
def names() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {
        "orders": f"harness-orders-{suffix}",
        "queue": f"harness-billing-{suffix}",
        "payments": f"harness-payments-{suffix}",
    }


@pytest.fixture
def rabbit(names: dict[str, str]) -> Iterator[RabbitMQBackend]:
    host, port = require_service("rabbitmq")
    backend = RabbitMQBackend(host=host, port=port)
    topic = backend.declare_topic(names["orders"])
    backend.declare_queue(names["queue"], topic, dead_letter_queue_name=f"{names['queue']}-dlq")
    yield backend
    for queue in (names["queue"], f"{names['queue']}-dlq"):
        with contextlib.suppress(Exception):
            backend.delete_queue(backend.get_queue(queue))
    for name in (names["orders"], names["payments"]):
        with contextlib.suppress(Exception):
            backend.delete_topic(backend.get_topic(name))
    backend.close_connection()


def billing(backend: Any, payments: str) -> Consumer:
    """Fails on order 2 every time, on order 1 the first time; publishes a payment request."""
    publisher = TopicPublisher(JsonSerializer(), backend)
    seen: set[int] = set()

    def on_order(event: dict[str, int]) -> None:
        order = event["order_id"]
        if order == 2 or order not in seen:
            seen.add(order)
            raise ConnectionError(f"bank unreachable for order {order}")
        publisher.publish(payments, {"kind": "PaymentRequested", "order_id": order})

    return Consumer(on_order)


def test_retries_dead_letters_and_topic_publishes_on_rabbitmq(
    rabbit: RabbitMQBackend, names: dict[str, str]
) -> None:
    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=rabbit,
        consumers=[billing(rabbit, names["payments"])],
        failure_policy=POLICY,
    )
    with Harness(rabbit) as harness:
        harness.publish_to_topic(names["orders"], {"order_id": 1})
        harness.publish_to_topic(names["orders"], {"order_id": 2})

        harness.run(dispatcher, names["queue"], timeout=30)

        harness.retried(order_id=1, times=1, reason="ConnectionError")
        # Nothing subscribes to the payments topic: the publish is recorded all the same.
        harness.published(kind="PaymentRequested", order_id=1, to=names["payments"])
        harness.dead_lettered(order_id=2, reason="gave up after 2 attempt(s)")
        harness.not_published(order_id=2)
    dispatcher.close()


def test_the_asyncio_dispatcher_on_the_asynchronous_rabbitmq_backend(
    rabbit: RabbitMQBackend, names: dict[str, str]
) -> None:
    host, port = require_service("rabbitmq")

    async def scenario() -> Harness:
        backend = AsyncRabbitMQBackend(host=host, port=port)
        try:
            # The consumer publishes from a worker thread, through a blocking view of it.
            blocking = as_blocking(AsyncRabbitMQBackend(host=host, port=port))
            try:
                dispatcher = AsyncMessageDispatcher(
                    JsonSerializer(),
                    backend=backend,
                    consumers=[billing(blocking, names["payments"])],
                    failure_policy=POLICY,
                )
                with Harness(backend) as harness:
                    await harness.publish_to_topic_async(names["orders"], {"order_id": 1})
                    await harness.run_async(dispatcher, names["queue"], timeout=30)
                dispatcher.close()
            finally:
                await asyncio.to_thread(blocking.close_connection)
        finally:
            await backend.aclose()
        return harness

    harness = asyncio.run(scenario())
    harness.retried(order_id=1, times=1)
    harness.consumed(order_id=1, times=2)
    harness.published(kind="PaymentRequested", order_id=1)

"""The payment example tested as a user tests a service: with the harness and the plugin only.

The fixtures come from Melange's pytest plugin (``melange_harness``, ``melange_backend``);
``--melange-backend=URL`` runs these same tests on SQLite or a broker.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from melange.aio import AsyncMessageDispatcher
from melange.backends.interfaces import MessagingBackend
from melange.examples.common.commands import DoPayment
from melange.examples.common.runtime import (
    EXAMPLE_POLICY,
    SENDER_HEADER,
    Reporter,
    ServicePublisher,
)
from melange.examples.payment_service import app, orders
from melange.examples.payment_service.consumer import PaymentConsumer
from melange.examples.payment_service.events import (
    SERIALIZER,
    OrderConfirmed,
    OrderCreated,
    OrderRejected,
    OrderResponse,
    PaymentFailed,
    PlaceOrder,
)
from melange.examples.payment_service.scenario import DEMO_ORDERS, EXPECTED
from melange.examples.payment_service.service import (
    GatewayUnavailable,
    PaymentGateway,
    PaymentService,
)
from melange.examples.payment_service.topology import (
    ORDER_QUEUE,
    ORDERS_TOPIC,
    PAYMENT_QUEUE,
    PAYMENTS_TOPIC,
    declare_topology,
)
from melange.models import CAUSATION_ID
from melange.serializers.registry import SerializerSource
from melange.testing import Harness


class UnreachableGateway(PaymentGateway):
    """A gateway that times out on every charge."""

    def charge(self, customer: str, amount_cents: int, reference: str) -> str:
        raise GatewayUnavailable(f"payment gateway timed out charging {reference}")


@pytest.fixture
def melange_serializers() -> SerializerSource:
    """The example's messages are dataclasses: the harness publishes and decodes them."""
    return SERIALIZER


def test_when_the_payment_service_gets_order_created_it_publishes_order_response(
    melange_harness: Harness, melange_backend: MessagingBackend
) -> None:
    service = app.create_dispatcher(melange_backend, PaymentGateway())
    sent = melange_harness.publish_to_topic(
        ORDERS_TOPIC, OrderCreated("ord-1", "A-1", "alice", 12_50)
    )

    melange_harness.run(service, PAYMENT_QUEUE)

    melange_harness.consumed(OrderCreated, reference="A-1", queue=PAYMENT_QUEUE, failed=False)
    response = melange_harness.published(
        OrderResponse, id="ord-1", reference="A-1", to=PAYMENTS_TOPIC, times=1
    )
    assert response.payload.payment_id.startswith("pay-")
    assert response.headers[SENDER_HEADER] == "payment"
    assert response.headers[CAUSATION_ID] == sent.message_id
    melange_harness.not_published(PaymentFailed)


def test_a_declined_payment_publishes_payment_failed_and_no_response(
    melange_harness: Harness, melange_backend: MessagingBackend
) -> None:
    service = app.create_dispatcher(melange_backend, PaymentGateway(credit={"bob": 20_00}))
    melange_harness.publish_to_topic(ORDERS_TOPIC, OrderCreated("ord-2", "A-2", "bob", 99_00))

    melange_harness.run(service, PAYMENT_QUEUE)

    failed = melange_harness.published(PaymentFailed, reference="A-2")
    assert "20.00 of credit" in failed.payload.reason
    melange_harness.not_published(OrderResponse)
    melange_harness.acknowledged(OrderCreated, reference="A-2")


def test_a_gateway_timeout_is_retried_and_then_paid(
    melange_harness: Harness, melange_backend: MessagingBackend
) -> None:
    gateway = PaymentGateway(unavailable_once=["A-3"])
    service = app.create_dispatcher(melange_backend, gateway)
    melange_harness.publish_to_topic(ORDERS_TOPIC, OrderCreated("ord-3", "A-3", "alice", 5_00))

    melange_harness.run(service, PAYMENT_QUEUE)

    melange_harness.retried(OrderCreated, reference="A-3", times=1, reason="GatewayUnavailable")
    melange_harness.consumed(OrderCreated, reference="A-3", times=2)
    melange_harness.published(OrderResponse, reference="A-3", times=1)


def test_a_gateway_that_never_answers_dead_letters_the_order_after_four_attempts(
    melange_harness: Harness, melange_backend: MessagingBackend, melange_backend_url: str | None
) -> None:
    service = app.create_dispatcher(melange_backend, UnreachableGateway())
    melange_harness.publish_to_topic(ORDERS_TOPIC, OrderCreated("ord-4", "A-4", "carol", 1_00))

    started = time.monotonic()
    melange_harness.run(service, PAYMENT_QUEUE)
    elapsed = time.monotonic() - started

    melange_harness.retried(OrderCreated, reference="A-4", times=EXAMPLE_POLICY.max_attempts - 1)
    dead = melange_harness.dead_lettered(
        OrderCreated, reference="A-4", reason="gave up after 4 attempt(s): GatewayUnavailable"
    )
    assert dead.queue == PAYMENT_QUEUE
    melange_harness.not_published()
    if melange_backend_url is None:
        assert elapsed < 1.0  # 0.2 + 0.4 + 0.8 s of backoff, on the fake clock


def test_a_redelivered_payment_command_charges_once_and_answers_twice(
    melange_harness: Harness, melange_backend: MessagingBackend
) -> None:
    service = app.create_dispatcher(melange_backend, PaymentGateway(credit={"dave": 10_00}))
    command = DoPayment("ord-5", "A-5", "dave", 10_00)
    melange_harness.publish_to_queue(PAYMENT_QUEUE, command)
    melange_harness.publish_to_queue(PAYMENT_QUEUE, command)

    melange_harness.run(service, PAYMENT_QUEUE)

    first, second = (
        record.payload
        for record in melange_harness.published_messages
        if isinstance(record.payload, OrderResponse)
    )
    assert first == second  # the same payment id: dave's credit only covered one charge
    melange_harness.not_published(PaymentFailed)


def test_the_whole_flow_confirms_or_rejects_each_demo_order(
    melange_harness: Harness, melange_backend: MessagingBackend
) -> None:
    services = {
        ORDER_QUEUE: orders.create_dispatcher(melange_backend),
        PAYMENT_QUEUE: app.create_dispatcher(melange_backend),
    }
    for order in DEMO_ORDERS:
        melange_harness.publish_to_queue(ORDER_QUEUE, order)

    melange_harness.run(services)

    for reference, event in EXPECTED.items():
        melange_harness.published(event, reference=reference, to=ORDERS_TOPIC, times=1)
    melange_harness.retried(OrderCreated, reference="A-1002", times=1)
    melange_harness.consumed(PlaceOrder, times=len(DEMO_ORDERS))
    assert {type(p.payload) for p in melange_harness.published_messages} == {
        OrderCreated,
        OrderResponse,
        PaymentFailed,
        OrderConfirmed,
        OrderRejected,
    }


def test_the_payment_consumer_under_the_asyncio_dispatcher(
    melange_harness: Harness, melange_backend: MessagingBackend
) -> None:
    declare_topology(melange_backend)
    report = Reporter("payment")
    publisher = ServicePublisher("payment", PAYMENTS_TOPIC, SERIALIZER, melange_backend, report)
    service = PaymentService(publisher, PaymentGateway(unavailable_once=["A-6"]), report)
    dispatcher = AsyncMessageDispatcher(
        SERIALIZER,
        backend=melange_backend,
        consumers=[PaymentConsumer(service)],
        failure_policy=EXAMPLE_POLICY,
    )
    melange_harness.publish_to_topic(ORDERS_TOPIC, OrderCreated("ord-6", "A-6", "erin", 3_00))

    asyncio.run(melange_harness.run_async(dispatcher, PAYMENT_QUEUE))

    melange_harness.retried(OrderCreated, reference="A-6", times=1)
    melange_harness.published(OrderResponse, reference="A-6")


def test_the_service_consuming_on_its_own_thread(
    melange_harness: Harness, melange_backend: MessagingBackend
) -> None:
    service = app.create_dispatcher(melange_backend, PaymentGateway())
    with melange_harness.running(service, PAYMENT_QUEUE):
        melange_harness.publish_to_topic(ORDERS_TOPIC, OrderCreated("ord-7", "A-7", "fred", 1))
        melange_harness.wait_until_published(OrderResponse, reference="A-7", timeout=10)

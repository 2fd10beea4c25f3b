"""The payment example end to end, in one process on the in-memory backend."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from examples_support import quiet_reporter, run_until

from melange import InMemoryMessagingBackend, MessageDispatcher, QueuePublisher
from melange.examples.common.commands import DoPayment
from melange.examples.payment_service import app, orders
from melange.examples.payment_service.consumer import PaymentConsumer
from melange.examples.payment_service.consumer_draft import PaymentConsumer as DraftConsumer
from melange.examples.payment_service.events import (
    SERIALIZER,
    OrderConfirmed,
    OrderCreated,
    OrderResponse,
    PaymentFailed,
)
from melange.examples.payment_service.scenario import DEMO_ORDERS, EXPECTED
from melange.examples.payment_service.service import PaymentGateway, PaymentService
from melange.examples.payment_service.topology import (
    ORDER_QUEUE,
    PAYMENT_QUEUE,
    PAYMENTS_TOPIC,
)
from melange.models import FAILURE_EXCEPTION, FAILURE_QUEUE


class RecordingPublisher:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def publish(self, event: Any) -> None:
        self.events.append(event)


@pytest.fixture
def backend() -> Iterator[InMemoryMessagingBackend]:
    backend = InMemoryMessagingBackend()
    yield backend
    backend.close_connection()


def services(
    backend: InMemoryMessagingBackend, gateway: PaymentGateway | None = None
) -> dict[str, MessageDispatcher]:
    return {
        ORDER_QUEUE: orders.create_dispatcher(backend, quiet_reporter("orders")),
        PAYMENT_QUEUE: app.create_dispatcher(backend, gateway, quiet_reporter("payment")),
    }


def order_service(dispatchers: dict[str, MessageDispatcher]) -> orders.OrderService:
    consumer = dispatchers[ORDER_QUEUE].consumers[0]
    assert isinstance(consumer, orders.OrderConsumer)
    return consumer.order_service


def test_orders_are_confirmed_retried_and_rejected_as_the_demo_expects(
    backend: InMemoryMessagingBackend,
) -> None:
    dispatchers = services(backend)
    for command in DEMO_ORDERS:
        QueuePublisher(SERIALIZER, backend).publish(ORDER_QUEUE, command)
    store = order_service(dispatchers).orders

    def finished() -> bool:
        settled = [o for o in store.values() if o.status != "PENDING_PAYMENT"]
        return len(settled) == len(DEMO_ORDERS)

    run_until(dispatchers, finished)

    statuses = {ref: order.status for ref, order in store.items()}
    assert statuses == {"A-1001": "CONFIRMED", "A-1002": "CONFIRMED", "A-1003": "REJECTED"}
    assert EXPECTED == {
        "A-1001": "OrderConfirmed",
        "A-1002": "OrderConfirmed",
        "A-1003": "OrderRejected",
    }
    assert "credit" in store["A-1003"].detail
    payment_stats = dispatchers[PAYMENT_QUEUE].stats
    assert payment_stats.retried == 1  # the gateway timed out once on A-1002
    assert payment_stats.dead_lettered == 0
    assert backend.queue_depth(ORDER_QUEUE) == backend.queue_depth(PAYMENT_QUEUE) == 0


def test_gateway_that_never_answers_dead_letters_the_order_with_the_reason(
    backend: InMemoryMessagingBackend, caplog: pytest.LogCaptureFixture
) -> None:
    class DownGateway(PaymentGateway):
        def charge(self, customer: str, amount_cents: int, reference: str) -> str:
            from melange.examples.payment_service.service import GatewayUnavailable

            raise GatewayUnavailable("gateway down")

    caplog.set_level(logging.CRITICAL)
    dispatchers = services(backend, DownGateway())
    QueuePublisher(SERIALIZER, backend).publish(ORDER_QUEUE, DEMO_ORDERS[0])

    run_until(dispatchers, lambda: backend.queue_depth(f"{PAYMENT_QUEUE}-dlq") == 1)

    [dead] = backend.peek(f"{PAYMENT_QUEUE}-dlq")
    assert dead.manifest == "OrderCreated"
    assert dead.headers[FAILURE_EXCEPTION].endswith("GatewayUnavailable")
    assert dead.headers[FAILURE_QUEUE] == PAYMENT_QUEUE
    assert order_service(dispatchers).orders["A-1001"].status == "PENDING_PAYMENT"


def test_redelivered_payment_request_is_answered_without_charging_twice() -> None:
    published = RecordingPublisher()
    gateway = PaymentGateway(credit={"alice": 30_00})
    service = PaymentService(published, gateway)
    command = DoPayment("ord-1", "A-1", "alice", 20_00)

    service.do_payment(command)
    service.do_payment(command)  # redelivery: alice has credit for one charge only

    first, second = published.events
    assert isinstance(first, OrderResponse)
    assert first == second
    assert service.payments == {"ord-1": first.payment_id}


def test_confirmation_from_another_instance_prevents_a_second_charge() -> None:
    published = RecordingPublisher()
    service = PaymentService(published, PaymentGateway(default_credit=0))

    service.process(OrderResponse("ord-1", "A-1", "pay-elsewhere"))
    service.do_payment(DoPayment("ord-1", "A-1", "nobody", 10_00))

    assert published.events == [OrderResponse("ord-1", "A-1", "pay-elsewhere")]


def test_declined_payment_is_published_as_payment_failed() -> None:
    published = RecordingPublisher()
    service = PaymentService(published, PaymentGateway(credit={"bob": 5_00}))

    service.pay_order(OrderCreated("ord-2", "A-2", "bob", 50_00))

    [failed] = published.events
    assert isinstance(failed, PaymentFailed)
    assert failed.id == "ord-2"
    assert "5.00 of credit" in failed.reason


@pytest.mark.parametrize("consumer_class", [PaymentConsumer, DraftConsumer])
def test_documented_payment_consumers_route_commands_and_responses(
    backend: InMemoryMessagingBackend, consumer_class: type[Any]
) -> None:
    published = RecordingPublisher()
    service = PaymentService(published, PaymentGateway())
    consumer = consumer_class(service)
    dispatcher = MessageDispatcher(SERIALIZER, backend=backend, consumers=[consumer])
    backend.declare_queue("payments-in")
    publisher = QueuePublisher(SERIALIZER, backend)
    publisher.publish("payments-in", DoPayment("ord-1", "A-1", "alice", 10_00))
    publisher.publish("payments-in", OrderResponse("ord-2", "A-2", "pay-2"))
    publisher.publish("payments-in", OrderConfirmed("ord-3", "A-3", "pay-3"))  # not handled

    dispatcher.consume_event("payments-in")

    assert [type(e).__name__ for e in published.events] == ["OrderResponse"]
    assert set(service.payments) == {"ord-1", "ord-2"}
    assert dispatcher.stats.acknowledged == 3


def test_the_consumers_page_snippets_run_against_the_examples() -> None:
    # The documentation's two PaymentConsumer snippets, as published.
    draft = """
from typing import Any, Optional

from melange.consumers import Consumer
from melange.examples.common.commands import DoPayment
from melange.examples.payment_service.events import OrderResponse
from melange.examples.payment_service.service import PaymentService


class PaymentConsumer(Consumer):
    def __init__(self, payment_service: PaymentService):
        super().__init__()
        self.payment_service = payment_service

    def process(self, message: Any, **kwargs: Any) -> None:
        if isinstance(message, OrderResponse):
            self.payment_service.process(message)
        elif isinstance(message, DoPayment):
            self.payment_service.do_payment(message)

    def accepts(self, manifest: Optional[str]) -> bool:
        return manifest in ["OrderResponse", "DoPayment"]
"""
    single = """
from melange.consumers import SingleDispatchConsumer, consumer
from melange.examples.common.commands import DoPayment
from melange.examples.payment_service.events import OrderResponse
from melange.examples.payment_service.service import PaymentService


class PaymentConsumer(SingleDispatchConsumer):
    def __init__(self, payment_service: PaymentService):
        super().__init__()
        self.payment_service = payment_service

    @consumer
    def consume_order_response(self, event: OrderResponse) -> None:
        self.payment_service.process(event)

    @consumer
    def consume_do_payment(self, command: DoPayment) -> None:
        self.payment_service.do_payment(command)
"""
    for source in (draft, single):
        namespace: dict[str, Any] = {"__name__": "doc_snippet"}
        exec(compile(source, "<consumers page>", "exec"), namespace)
        published = RecordingPublisher()
        service = PaymentService(published, PaymentGateway())
        backend = InMemoryMessagingBackend()
        backend.declare_queue("q")
        dispatcher = MessageDispatcher(
            SERIALIZER, backend=backend, consumers=[namespace["PaymentConsumer"](service)]
        )
        QueuePublisher(SERIALIZER, backend).publish("q", DoPayment("ord-9", "A-9", "alice", 1_00))
        dispatcher.consume_event("q")
        assert [e.reference for e in published.events] == ["A-9"]


def test_payment_events_fan_out_to_the_order_service_only_as_filtered(
    backend: InMemoryMessagingBackend,
) -> None:
    services(backend)
    from melange import TopicPublisher

    TopicPublisher(SERIALIZER, backend).publish(PAYMENTS_TOPIC, OrderResponse("o", "r", "p"))
    TopicPublisher(SERIALIZER, backend).publish(PAYMENTS_TOPIC, DoPayment("o", "r"))

    assert [m.manifest for m in backend.peek(ORDER_QUEUE)] == ["OrderResponse"]

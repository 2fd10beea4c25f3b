"""The saga end to end, in one process on the in-memory backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from examples_support import quiet_reporter, run_until

from melange import InMemoryMessagingBackend, MessageDispatcher, QueuePublisher
from melange.examples.payment_service.service import PaymentDeclined, PaymentGateway
from melange.examples.saga import order, payment, stock
from melange.examples.saga.messages import (
    SERIALIZER,
    OrderPlaced,
    PaymentCompleted,
    PaymentRejected,
    PlaceOrder,
    StockReservationFailed,
)
from melange.examples.saga.scenario import DEMO_ORDERS, EXPECTED
from melange.examples.saga.topology import ORDER_QUEUE, PAYMENT_QUEUE, STOCK_QUEUE


class Saga:
    """The three services on one backend, with handles on their state."""

    def __init__(self, backend: InMemoryMessagingBackend, credit: dict[str, int]) -> None:
        self.backend = backend
        self.gateway = PaymentGateway(credit, default_credit=100_00)
        self.warehouse = stock.Warehouse({"book": 10, "lamp": 5, "mug": 2})
        self.dispatchers: dict[str, MessageDispatcher] = {
            ORDER_QUEUE: order.create_dispatcher(backend, quiet_reporter("order")),
            PAYMENT_QUEUE: payment.create_dispatcher(
                backend, self.gateway, quiet_reporter("payment")
            ),
            STOCK_QUEUE: stock.create_dispatcher(backend, self.warehouse, quiet_reporter("stock")),
        }

    @property
    def orders(self) -> order.OrderService:
        consumer = self.dispatchers[ORDER_QUEUE].consumers[0]
        assert isinstance(consumer, order.OrderSagaConsumer)
        return consumer.order_service

    @property
    def payments(self) -> payment.SagaPaymentService:
        consumer = self.dispatchers[PAYMENT_QUEUE].consumers[0]
        assert isinstance(consumer, payment.SagaPaymentConsumer)
        return consumer.payment_service

    def place(self, *commands: PlaceOrder) -> dict[str, order.SagaOrder]:
        publisher = QueuePublisher(SERIALIZER, self.backend)
        for command in commands:
            publisher.publish(ORDER_QUEUE, command)
        store = self.orders.orders

        def ended() -> bool:
            return sum(o.status != "PENDING" for o in store.values()) == len(commands)

        run_until(self.dispatchers, ended)
        return {o.reference: o for o in store.values()}


@pytest.fixture
def backend() -> Iterator[InMemoryMessagingBackend]:
    backend = InMemoryMessagingBackend()
    yield backend
    backend.close_connection()


def test_saga_approves_an_order_once_paid_and_reserved(
    backend: InMemoryMessagingBackend,
) -> None:
    saga = Saga(backend, {})

    result = saga.place(PlaceOrder("S-1", "alice", 15_00, {"book": 2}))

    assert result["S-1"].status == "APPROVED"
    assert saga.warehouse.stock["book"] == 8
    assert [p.refunded for p in saga.payments.payments.values()] == [False]


def test_declined_payment_cancels_the_order_without_touching_stock(
    backend: InMemoryMessagingBackend,
) -> None:
    saga = Saga(backend, {"bob": 10_00})

    result = saga.place(PlaceOrder("S-2", "bob", 45_00, {"lamp": 1}))

    assert result["S-2"].status == "CANCELLED"
    assert "credit" in result["S-2"].reason
    assert saga.warehouse.stock["lamp"] == 5
    assert saga.payments.payments == {}


def test_missing_stock_refunds_the_payment_and_cancels_the_order(
    backend: InMemoryMessagingBackend,
) -> None:
    saga = Saga(backend, {"carol": 50_00})

    result = saga.place(PlaceOrder("S-3", "carol", 30_00, {"mug": 3, "book": 1}))

    assert result["S-3"].status == "CANCELLED"
    assert result["S-3"].reason.endswith("payment refunded")
    [refunded] = saga.payments.payments.values()
    assert refunded.refunded
    # Compensated everywhere: the credit is back and no item left the warehouse.
    assert saga.gateway.charge("carol", 50_00, "check").startswith("pay-")
    assert saga.warehouse.stock == {"book": 10, "lamp": 5, "mug": 2}


def test_demo_orders_end_as_the_demo_expects_with_a_retry(
    backend: InMemoryMessagingBackend,
) -> None:
    saga = Saga(backend, payment.DEMO_CREDIT)
    saga.warehouse = stock.Warehouse(stock.DEMO_STOCK, stock.DEMO_BUSY_ONCE)
    saga.dispatchers[STOCK_QUEUE] = stock.create_dispatcher(
        backend, saga.warehouse, quiet_reporter("stock")
    )

    result = saga.place(*DEMO_ORDERS)

    ends = {
        ref: "OrderApproved" if o.status == "APPROVED" else "OrderCancelled"
        for ref, o in result.items()
    }
    assert ends == EXPECTED
    assert saga.dispatchers[STOCK_QUEUE].stats.retried == 1  # the warehouse was busy once


def test_redelivered_events_neither_charge_nor_refund_twice() -> None:
    published: list[object] = []

    class Recorder:
        def publish(self, event: object) -> None:
            published.append(event)

    gateway = PaymentGateway({"dave": 20_00})
    service = payment.SagaPaymentService(Recorder(), gateway)
    placed = OrderPlaced("ord-1", "S-9", "dave", 15_00, {"book": 1})
    failed = StockReservationFailed("ord-1", "S-9", "out of stock")

    service.charge(placed)
    service.charge(placed)  # redelivered: dave could not afford a second charge
    service.refund(failed)
    service.refund(failed)  # redelivered: the refund happens once

    kinds = [type(e).__name__ for e in published]
    assert kinds == ["PaymentCompleted", "PaymentCompleted", "PaymentRefunded", "PaymentRefunded"]
    assert isinstance(published[0], PaymentCompleted)
    with pytest.raises(PaymentDeclined, match=r"20\.00 of credit"):
        gateway.charge("dave", 20_01, "probe")  # exactly the original credit is back


def test_an_order_ends_once_even_if_a_late_event_arrives(
    backend: InMemoryMessagingBackend,
) -> None:
    saga = Saga(backend, {})
    result = saga.place(PlaceOrder("S-4", "erin", 10_00, {"book": 1}))
    approved = result["S-4"]

    saga.orders.cancel(PaymentRejected(approved.order_id, "S-4", "late"))

    assert approved.status == "APPROVED"

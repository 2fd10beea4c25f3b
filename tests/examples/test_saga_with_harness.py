"""The saga example tested with the harness and the plugin only.

Each test runs the three services (order, payment, stock) on the plugin's backend and reads
the saga from what they published: the happy path, a declined payment, and missing stock
with its compensation (a refund).
"""

from __future__ import annotations

import pytest

from melange.backends.interfaces import MessagingBackend
from melange.examples.payment_service.service import PaymentGateway
from melange.examples.saga import order, payment, stock
from melange.examples.saga.messages import (
    SERIALIZER,
    OrderApproved,
    OrderCancelled,
    OrderPlaced,
    PaymentCompleted,
    PaymentRefunded,
    PaymentRejected,
    PlaceOrder,
    StockReservationFailed,
    StockReserved,
)
from melange.examples.saga.scenario import DEMO_ORDERS, EXPECTED
from melange.examples.saga.topology import (
    ORDER_QUEUE,
    ORDERS_TOPIC,
    PAYMENT_QUEUE,
    PAYMENTS_TOPIC,
    STOCK_QUEUE,
    STOCK_TOPIC,
)
from melange.message_dispatcher import MessageDispatcher
from melange.serializers.registry import SerializerSource
from melange.testing import Harness


@pytest.fixture
def melange_serializers() -> SerializerSource:
    return SERIALIZER


def saga(
    backend: MessagingBackend,
    credit: dict[str, int] | None = None,
    warehouse: stock.Warehouse | None = None,
) -> dict[str, MessageDispatcher]:
    """The three services of the saga, each by its queue."""
    return {
        ORDER_QUEUE: order.create_dispatcher(backend),
        PAYMENT_QUEUE: payment.create_dispatcher(backend, PaymentGateway(credit or {})),
        STOCK_QUEUE: stock.create_dispatcher(
            backend, warehouse or stock.Warehouse({"book": 10, "lamp": 5, "mug": 2})
        ),
    }


def test_an_order_paid_and_reserved_is_approved(
    melange_harness: Harness, melange_backend: MessagingBackend
) -> None:
    services = saga(melange_backend)
    melange_harness.publish_to_queue(ORDER_QUEUE, PlaceOrder("S-1", "alice", 15_00, {"book": 2}))

    melange_harness.run(services)

    placed = melange_harness.published(OrderPlaced, reference="S-1", to=ORDERS_TOPIC)
    paid = melange_harness.published(PaymentCompleted, reference="S-1", to=PAYMENTS_TOPIC)
    melange_harness.published(StockReserved, reference="S-1", to=STOCK_TOPIC)
    melange_harness.published(OrderApproved, reference="S-1", times=1)
    melange_harness.not_published(OrderCancelled)
    assert paid.payload.items == {"book": 2}
    # Each step is caused by the previous one, and the saga shares one correlation id.
    assert paid.headers["causation_id"] == placed.message_id
    approved = melange_harness.published(OrderApproved)
    assert approved.headers["correlation_id"] == placed.headers["correlation_id"]


def test_a_declined_payment_cancels_the_order_without_touching_the_stock(
    melange_harness: Harness, melange_backend: MessagingBackend
) -> None:
    services = saga(melange_backend, credit={"bob": 10_00})
    melange_harness.publish_to_queue(ORDER_QUEUE, PlaceOrder("S-2", "bob", 45_00, {"lamp": 1}))

    melange_harness.run(services)

    rejected = melange_harness.published(PaymentRejected, reference="S-2")
    assert "credit" in rejected.payload.reason
    melange_harness.published(OrderCancelled, reference="S-2", times=1)
    melange_harness.not_published(StockReserved)
    melange_harness.not_published(StockReservationFailed)


def test_missing_stock_refunds_the_payment_and_cancels_the_order(
    melange_harness: Harness, melange_backend: MessagingBackend
) -> None:
    services = saga(melange_backend)
    melange_harness.publish_to_queue(ORDER_QUEUE, PlaceOrder("S-3", "carol", 30_00, {"mug": 3}))

    melange_harness.run(services)

    melange_harness.published(PaymentCompleted, reference="S-3")
    melange_harness.published(StockReservationFailed, reference="S-3")
    refund = melange_harness.published(PaymentRefunded, reference="S-3", times=1)
    melange_harness.consumed(StockReservationFailed, reference="S-3", queue=PAYMENT_QUEUE)
    cancelled = melange_harness.published(OrderCancelled, reference="S-3", times=1)
    assert cancelled.payload.reason.endswith("payment refunded")
    assert refund.payload.payment_id
    melange_harness.not_published(OrderApproved)


def test_the_demo_sagas_end_as_expected_with_one_retry_of_a_busy_warehouse(
    melange_harness: Harness, melange_backend: MessagingBackend
) -> None:
    services = saga(
        melange_backend,
        credit=dict(payment.DEMO_CREDIT),
        warehouse=stock.Warehouse(stock.DEMO_STOCK, stock.DEMO_BUSY_ONCE),
    )
    for command in DEMO_ORDERS:
        melange_harness.publish_to_queue(ORDER_QUEUE, command)

    melange_harness.run(services)

    for reference, final_event in EXPECTED.items():
        melange_harness.published(final_event, reference=reference, times=1)
    melange_harness.retried(
        PaymentCompleted, reference="S-2001", queue=STOCK_QUEUE, times=1, reason="WarehouseBusy"
    )
    with pytest.raises(AssertionError, match="none matched"):
        melange_harness.dead_lettered()

"""The saga's order service: ``python -m melange.examples.saga.order``.

It starts a saga for each ``PlaceOrder`` command and ends it: approved once the stock is
reserved, cancelled when the payment is rejected or refunded.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from melange.backends.interfaces import MessagingBackend
from melange.consumers import SingleDispatchConsumer, consumer
from melange.examples.common.runtime import (
    EXAMPLE_POLICY,
    EventPublisher,
    Reporter,
    ServicePublisher,
    consumed,
    service_main,
)
from melange.examples.saga.messages import (
    SERIALIZER,
    OrderApproved,
    OrderCancelled,
    OrderPlaced,
    PaymentRefunded,
    PaymentRejected,
    PlaceOrder,
    StockReserved,
)
from melange.examples.saga.topology import ORDER_QUEUE, ORDERS_TOPIC, declare_topology
from melange.message_dispatcher import MessageDispatcher


@dataclass
class SagaOrder:
    """An order and where its saga stands."""

    order_id: str
    reference: str
    customer: str
    amount_cents: int
    items: dict[str, int] = field(default_factory=dict)
    status: str = "PENDING"
    reason: str = ""


class OrderService:
    """Starts and ends the sagas. An order ends once, whatever is redelivered.

    Args:
        publisher: Where the order events go.
        report: Where to report what the service does (default: nowhere).
    """

    def __init__(
        self, publisher: EventPublisher, report: Callable[[str], None] | None = None
    ) -> None:
        self.publisher = publisher
        self._report = report or (lambda text: None)
        self._lock = threading.Lock()
        #: Orders by id.
        self.orders: dict[str, SagaOrder] = {}
        self._by_reference: dict[str, str] = {}

    def place(self, command: PlaceOrder) -> SagaOrder:
        """Create the order (once per reference) and publish ``OrderPlaced``."""
        with self._lock:
            order_id = self._by_reference.get(command.reference)
            if order_id is None:
                order_id = f"ord-{uuid.uuid4().hex[:8]}"
                self._by_reference[command.reference] = order_id
                self.orders[order_id] = SagaOrder(
                    order_id,
                    command.reference,
                    command.customer,
                    command.amount_cents,
                    dict(command.items),
                )
            order = self.orders[order_id]
        self._report(f"{consumed(order.reference)}: order placed by {order.customer}")
        self.publisher.publish(
            OrderPlaced(
                order.order_id, order.reference, order.customer, order.amount_cents, order.items
            )
        )
        return order

    def approve(self, event: StockReserved) -> None:
        """The last step succeeded: approve the order."""
        order = self._end(event.order_id, "APPROVED", "")
        if order is not None:
            self._report(f"{consumed(order.reference)}: order approved")
            self.publisher.publish(OrderApproved(order.order_id, order.reference))

    def cancel(self, event: PaymentRejected | PaymentRefunded) -> None:
        """A step failed (and was compensated): cancel the order."""
        order = self._end(event.order_id, "CANCELLED", event.reason)
        if order is not None:
            self._report(f"{consumed(order.reference)}: order cancelled ({event.reason})")
            self.publisher.publish(OrderCancelled(order.order_id, order.reference, event.reason))

    def _end(self, order_id: str, status: str, reason: str) -> SagaOrder | None:
        with self._lock:
            order = self.orders.get(order_id)
            if order is None or order.status != "PENDING":
                already = "unknown" if order is None else order.status.lower()
                self._report(f"event for {already} order {order_id} ignored")
                return None
            order.status = status
            order.reason = reason
            return order


class OrderSagaConsumer(SingleDispatchConsumer):
    """Hands the order service its commands and the events that end a saga."""

    def __init__(self, order_service: OrderService) -> None:
        super().__init__()
        self.order_service = order_service

    @consumer
    def on_place_order(self, command: PlaceOrder) -> None:
        """A client places an order: start the saga."""
        self.order_service.place(command)

    @consumer
    def on_stock_reserved(self, event: StockReserved) -> None:
        """Every step succeeded."""
        self.order_service.approve(event)

    @consumer
    def on_payment_rejected(self, event: PaymentRejected) -> None:
        """The payment failed: nothing to compensate."""
        self.order_service.cancel(event)

    @consumer
    def on_payment_refunded(self, event: PaymentRefunded) -> None:
        """The stock failed and the payment was refunded."""
        self.order_service.cancel(event)


def create_dispatcher(
    backend: MessagingBackend, report: Reporter | None = None
) -> MessageDispatcher:
    """The order service's dispatcher on ``backend`` (the topology is declared first)."""
    declare_topology(backend)
    report = report or Reporter("order")
    publisher = ServicePublisher("order", ORDERS_TOPIC, SERIALIZER, backend, report)
    return MessageDispatcher(
        SERIALIZER,
        backend=backend,
        consumers=[OrderSagaConsumer(OrderService(publisher, report))],
        failure_policy=EXAMPLE_POLICY,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the order service until SIGINT/SIGTERM."""
    return service_main("order", "The saga's order service.", ORDER_QUEUE, create_dispatcher, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""The order service of the payment example: ``python -m melange.examples.payment_service.orders``.

It takes ``PlaceOrder`` commands, publishes ``OrderCreated`` and confirms or rejects each order
when the payment service answers.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

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
from melange.examples.payment_service.events import (
    SERIALIZER,
    OrderConfirmed,
    OrderCreated,
    OrderRejected,
    OrderResponse,
    PaymentFailed,
    PlaceOrder,
)
from melange.examples.payment_service.topology import ORDER_QUEUE, ORDERS_TOPIC, declare_topology
from melange.message_dispatcher import MessageDispatcher


@dataclass
class Order:
    """An order as the order service keeps it."""

    id: str
    reference: str
    customer: str
    amount_cents: int
    status: str = "PENDING_PAYMENT"
    detail: str = ""


class OrderService:
    """Creates orders and follows their payment.

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
        #: Orders by reference.
        self.orders: dict[str, Order] = {}

    def place_order(self, command: PlaceOrder) -> Order:
        """Create the order (once per reference) and publish ``OrderCreated``."""
        with self._lock:
            order = self.orders.get(command.reference)
            if order is None:
                order = Order(
                    f"ord-{uuid.uuid4().hex[:8]}",
                    command.reference,
                    command.customer,
                    command.amount_cents,
                )
                self.orders[command.reference] = order
        self._report(
            f"{consumed(order.reference)}: order for {order.customer} "
            f"({order.amount_cents / 100:.2f}) created"
        )
        self.publisher.publish(
            OrderCreated(order.id, order.reference, order.customer, order.amount_cents)
        )
        return order

    def confirm(self, response: OrderResponse) -> None:
        """The payment went through: confirm the order."""
        order = self._settle(response.reference, "CONFIRMED", response.payment_id)
        if order is not None:
            self._report(
                f"{consumed(order.reference)}: order confirmed (payment {response.payment_id})"
            )
            self.publisher.publish(OrderConfirmed(order.id, order.reference, response.payment_id))

    def reject(self, failure: PaymentFailed) -> None:
        """The payment was declined: reject the order."""
        order = self._settle(failure.reference, "REJECTED", failure.reason)
        if order is not None:
            self._report(f"{consumed(order.reference)}: order rejected ({failure.reason})")
            self.publisher.publish(OrderRejected(order.id, order.reference, failure.reason))

    def _settle(self, reference: str, status: str, detail: str) -> Order | None:
        with self._lock:
            order = self.orders.get(reference)
            if order is None:
                self._report(f"answer for unknown order {reference} ignored")
                return None
            order.status = status
            order.detail = detail
            return order


class OrderConsumer(SingleDispatchConsumer):
    """Hands the order service its commands and the payment service's answers."""

    def __init__(self, order_service: OrderService) -> None:
        super().__init__()
        self.order_service = order_service

    @consumer
    def on_place_order(self, command: PlaceOrder) -> None:
        """A client places an order."""
        self.order_service.place_order(command)

    @consumer
    def on_order_response(self, event: OrderResponse) -> None:
        """The order was paid."""
        self.order_service.confirm(event)

    @consumer
    def on_payment_failed(self, event: PaymentFailed) -> None:
        """The payment was declined."""
        self.order_service.reject(event)


def create_dispatcher(
    backend: MessagingBackend, report: Reporter | None = None
) -> MessageDispatcher:
    """The order service's dispatcher on ``backend`` (the topology is declared first)."""
    declare_topology(backend)
    report = report or Reporter("orders")
    publisher = ServicePublisher("orders", ORDERS_TOPIC, SERIALIZER, backend, report)
    return MessageDispatcher(
        SERIALIZER,
        backend=backend,
        consumers=[OrderConsumer(OrderService(publisher, report))],
        failure_policy=EXAMPLE_POLICY,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the order service until SIGINT/SIGTERM."""
    return service_main(
        "orders",
        "The example order service: creates orders and follows their payment.",
        ORDER_QUEUE,
        create_dispatcher,
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())

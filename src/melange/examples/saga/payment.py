"""The saga's payment service: ``python -m melange.examples.saga.payment``.

It charges placed orders and, as the saga's compensation, refunds a payment whose stock
could not be reserved.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from melange.backends.interfaces import MessagingBackend
from melange.consumers import SingleDispatchConsumer, consumer
from melange.examples.common.runtime import (
    EXAMPLE_POLICY,
    RETRY_NOTE,
    EventPublisher,
    Reporter,
    ServicePublisher,
    consumed,
    service_main,
)
from melange.examples.payment_service.service import (
    GatewayUnavailable,
    PaymentDeclined,
    PaymentGateway,
)
from melange.examples.saga.messages import (
    SERIALIZER,
    OrderPlaced,
    PaymentCompleted,
    PaymentRefunded,
    PaymentRejected,
    StockReservationFailed,
)
from melange.examples.saga.topology import PAYMENT_QUEUE, PAYMENTS_TOPIC, declare_topology
from melange.message_dispatcher import MessageDispatcher


@dataclass
class Payment:
    """A charge the service made, and whether it was refunded."""

    payment_id: str
    customer: str
    amount_cents: int
    refunded: bool = False


class SagaPaymentService:
    """Charges orders and refunds them when a later step of the saga fails.

    Both steps are idempotent per order, so redelivered events never charge or refund twice.

    Args:
        publisher: Where the payment events go.
        gateway: The card processor.
        report: Where to report what the service does (default: nowhere).
    """

    def __init__(
        self,
        publisher: EventPublisher,
        gateway: PaymentGateway | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.publisher = publisher
        self.gateway = gateway or PaymentGateway()
        self._report = report or (lambda text: None)
        self._lock = threading.Lock()
        #: Payments by order id.
        self.payments: dict[str, Payment] = {}

    def charge(self, event: OrderPlaced) -> None:
        """Charge the order; publish ``PaymentCompleted`` or ``PaymentRejected``.

        An unavailable gateway raises, so the dispatcher retries the event.
        """
        with self._lock:
            payment = self.payments.get(event.order_id)
        if payment is None:
            amount = event.amount_cents / 100
            self._report(f"{consumed(event.reference)}: charging {event.customer} {amount:.2f}")
            try:
                payment_id = self.gateway.charge(
                    event.customer, event.amount_cents, event.reference
                )
            except PaymentDeclined as exc:
                self._report(f"payment of {event.reference} declined: {exc}")
                self.publisher.publish(PaymentRejected(event.order_id, event.reference, str(exc)))
                return
            except GatewayUnavailable as exc:
                self._report(f"{exc}: {RETRY_NOTE}")
                raise
            payment = Payment(payment_id, event.customer, event.amount_cents)
            with self._lock:
                self.payments[event.order_id] = payment
        self.publisher.publish(
            PaymentCompleted(event.order_id, event.reference, payment.payment_id, event.items)
        )

    def refund(self, event: StockReservationFailed) -> None:
        """Compensate: give the order's payment back and publish ``PaymentRefunded``."""
        with self._lock:
            payment = self.payments.get(event.order_id)
            first_time = payment is not None and not payment.refunded
            if payment is not None:
                payment.refunded = True
        if payment is None:
            self._report(f"{consumed(event.reference)}: no payment to refund")
            return
        if first_time:
            self.gateway.refund(payment.customer, payment.amount_cents)
            self._report(
                f"{consumed(event.reference)}: compensating, refunded "
                f"{payment.amount_cents / 100:.2f} "
                f"to {payment.customer} ({event.reason})"
            )
        self.publisher.publish(
            PaymentRefunded(
                event.order_id,
                event.reference,
                payment.payment_id,
                f"{event.reason}; payment refunded",
            )
        )


class SagaPaymentConsumer(SingleDispatchConsumer):
    """Hands the payment service the orders to charge and the payments to refund."""

    def __init__(self, payment_service: SagaPaymentService) -> None:
        super().__init__()
        self.payment_service = payment_service

    @consumer
    def on_order_placed(self, event: OrderPlaced) -> None:
        """Charge the new order."""
        self.payment_service.charge(event)

    @consumer
    def on_stock_reservation_failed(self, event: StockReservationFailed) -> None:
        """Refund the order whose stock is missing."""
        self.payment_service.refund(event)


#: What the demo's gateway does: ``bob`` has too little credit.
DEMO_CREDIT = {"bob": 20_00}


def create_dispatcher(
    backend: MessagingBackend,
    gateway: PaymentGateway | None = None,
    report: Reporter | None = None,
) -> MessageDispatcher:
    """The payment service's dispatcher on ``backend`` (the topology is declared first)."""
    declare_topology(backend)
    report = report or Reporter("payment")
    publisher = ServicePublisher("payment", PAYMENTS_TOPIC, SERIALIZER, backend, report)
    service = SagaPaymentService(publisher, gateway or PaymentGateway(DEMO_CREDIT), report)
    return MessageDispatcher(
        SERIALIZER,
        backend=backend,
        consumers=[SagaPaymentConsumer(service)],
        failure_policy=EXAMPLE_POLICY,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the payment service until SIGINT/SIGTERM."""
    return service_main(
        "payment", "The saga's payment service.", PAYMENT_QUEUE, create_dispatcher, argv
    )


if __name__ == "__main__":
    raise SystemExit(main())

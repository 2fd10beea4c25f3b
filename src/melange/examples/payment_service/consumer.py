"""The payment consumer: one method per message type (``SingleDispatchConsumer``)."""

from __future__ import annotations

from melange.consumers import SingleDispatchConsumer, consumer
from melange.examples.common.commands import DoPayment
from melange.examples.payment_service.events import OrderCreated, OrderResponse
from melange.examples.payment_service.service import PaymentService


class PaymentConsumer(SingleDispatchConsumer):
    """Hands the payment service the orders to pay, payment commands and confirmations."""

    def __init__(self, payment_service: PaymentService) -> None:
        super().__init__()
        self.payment_service = payment_service

    @consumer
    def consume_order_created(self, event: OrderCreated) -> None:
        """A new order: pay for it."""
        self.payment_service.pay_order(event)

    @consumer
    def consume_order_response(self, event: OrderResponse) -> None:
        """A payment confirmed elsewhere: remember it."""
        self.payment_service.process(event)

    @consumer
    def consume_do_payment(self, command: DoPayment) -> None:
        """An explicit request to pay an order."""
        self.payment_service.do_payment(command)

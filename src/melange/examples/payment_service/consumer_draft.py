"""The payment consumer written as a plain :class:`~melange.consumers.Consumer`.

It decides what it accepts from the manifest, as the documentation's first example does;
:mod:`melange.examples.payment_service.consumer` shows the same consumer written with
``SingleDispatchConsumer``, which is what the service runs.
"""

from __future__ import annotations

from typing import Any

from melange.consumers import Consumer
from melange.examples.common.commands import DoPayment
from melange.examples.payment_service.events import OrderResponse
from melange.examples.payment_service.service import PaymentService


class PaymentConsumer(Consumer):
    """Hands ``OrderResponse`` events and ``DoPayment`` commands to the payment service."""

    def __init__(self, payment_service: PaymentService) -> None:
        super().__init__()
        self.payment_service = payment_service

    def process(self, message: Any, **kwargs: Any) -> None:
        """Route the message to the service method that handles its type."""
        if isinstance(message, OrderResponse):
            self.payment_service.process(message)
        elif isinstance(message, DoPayment):
            self.payment_service.do_payment(message)

    def accepts(self, manifest: str | None) -> bool:
        """Accept the messages whose manifest names a type this consumer handles."""
        return manifest in ["OrderResponse", "DoPayment"]

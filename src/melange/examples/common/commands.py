"""Commands: messages that ask one service to do something (events tell what happened)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DoPayment:
    """Ask the payment service to charge a customer for an order.

    Attributes:
        order_id: The order being paid.
        reference: The order's human-readable reference (shown to the customer).
        customer: Who pays.
        amount_cents: How much, in cents.
    """

    order_id: str
    reference: str
    customer: str = ""
    amount_cents: int = 0

"""The payment example's messages: JSON-friendly dataclasses (see ``SERIALIZER``)."""

from __future__ import annotations

from dataclasses import dataclass

from melange.examples.common.commands import DoPayment
from melange.examples.common.serializer import DataclassSerializer


@dataclass(frozen=True)
class PlaceOrder:
    """Command to the order service: a customer orders something.

    Attributes:
        reference: The order's reference, chosen by the client (it makes the command
            idempotent: placing the same reference twice creates one order).
        customer: Who orders.
        amount_cents: The order total, in cents.
    """

    reference: str
    customer: str
    amount_cents: int


@dataclass(frozen=True)
class OrderCreated:
    """Event of the order service: an order was created and awaits payment."""

    id: str
    reference: str
    customer: str
    amount_cents: int


@dataclass(frozen=True)
class OrderResponse:
    """Event of the payment service: the order ``id`` (``reference``) was paid.

    ``payment_id`` names the payment; it is empty in messages from 7.2.0 services.
    """

    id: str
    reference: str
    payment_id: str = ""


@dataclass(frozen=True)
class PaymentFailed:
    """Event of the payment service: the payment of order ``id`` was declined."""

    id: str
    reference: str
    reason: str


@dataclass(frozen=True)
class OrderConfirmed:
    """Event of the order service: the order is paid and confirmed."""

    id: str
    reference: str
    payment_id: str


@dataclass(frozen=True)
class OrderRejected:
    """Event of the order service: the order was rejected because its payment failed."""

    id: str
    reference: str
    reason: str


#: Encodes and decodes every message of this example.
SERIALIZER = DataclassSerializer(
    PlaceOrder, OrderCreated, OrderResponse, PaymentFailed, OrderConfirmed, OrderRejected, DoPayment
)

#: The events that end an order's flow.
FINAL_EVENTS = (OrderConfirmed, OrderRejected)

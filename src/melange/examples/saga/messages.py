"""The saga's commands and events: JSON-friendly dataclasses (see ``SERIALIZER``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from melange.examples.common.serializer import DataclassSerializer


@dataclass(frozen=True)
class PlaceOrder:
    """Command to the order service. ``items`` maps each SKU to a quantity."""

    reference: str
    customer: str
    amount_cents: int
    items: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class OrderPlaced:
    """The order service created an order: the payment service charges it."""

    order_id: str
    reference: str
    customer: str
    amount_cents: int
    items: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PaymentCompleted:
    """The customer was charged: the stock service reserves the items."""

    order_id: str
    reference: str
    payment_id: str
    items: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PaymentRejected:
    """The charge was declined: the order service cancels the order."""

    order_id: str
    reference: str
    reason: str


@dataclass(frozen=True)
class StockReserved:
    """The items are reserved: the order service approves the order."""

    order_id: str
    reference: str


@dataclass(frozen=True)
class StockReservationFailed:
    """The items could not be reserved: the payment service refunds the customer."""

    order_id: str
    reference: str
    reason: str


@dataclass(frozen=True)
class PaymentRefunded:
    """A compensation: the payment was given back; the order service cancels the order."""

    order_id: str
    reference: str
    payment_id: str
    reason: str


@dataclass(frozen=True)
class OrderApproved:
    """The saga succeeded."""

    order_id: str
    reference: str


@dataclass(frozen=True)
class OrderCancelled:
    """The saga failed and every step that had been done was compensated."""

    order_id: str
    reference: str
    reason: str


#: Encodes and decodes every message of the saga.
SERIALIZER = DataclassSerializer(
    PlaceOrder,
    OrderPlaced,
    PaymentCompleted,
    PaymentRejected,
    StockReserved,
    StockReservationFailed,
    PaymentRefunded,
    OrderApproved,
    OrderCancelled,
)

#: The events that end a saga.
FINAL_EVENTS = (OrderApproved, OrderCancelled)

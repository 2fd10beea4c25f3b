"""The orders ``melange demo`` places in the payment example, and how each must end."""

from __future__ import annotations

from melange.examples.payment_service.events import PlaceOrder

#: Three orders: one paid at once, one paid after the gateway times out once (a retry), and
#: one whose payment is declined.
DEMO_ORDERS = (
    PlaceOrder("A-1001", "alice", 12_50),
    PlaceOrder("A-1002", "alice", 25_00),
    PlaceOrder("A-1003", "bob", 99_00),
)

#: The event that must end each order's flow.
EXPECTED = {"A-1001": "OrderConfirmed", "A-1002": "OrderConfirmed", "A-1003": "OrderRejected"}

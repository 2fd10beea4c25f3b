"""The orders ``melange demo`` places in the saga, and how each saga must end."""

from __future__ import annotations

from melange.examples.saga.messages import PlaceOrder

#: Three sagas: one approved (after the warehouse is busy once: a retry), one cancelled
#: because the payment is declined, and one cancelled because the stock is short, which
#: refunds the payment (a compensation).
DEMO_ORDERS = (
    PlaceOrder("S-2001", "alice", 15_00, {"book": 1}),
    PlaceOrder("S-2002", "bob", 45_00, {"lamp": 1}),
    PlaceOrder("S-2003", "carol", 30_00, {"mug": 3}),
)

#: The event that must end each saga.
EXPECTED = {"S-2001": "OrderApproved", "S-2002": "OrderCancelled", "S-2003": "OrderCancelled"}

"""The saga's topics and queues, declared idempotently."""

from __future__ import annotations

from melange.backends.factory import MessagingBackendFactory
from melange.backends.interfaces import MessagingBackend

#: Topic of each service's events.
ORDERS_TOPIC = "saga-orders"
PAYMENTS_TOPIC = "saga-payments"
STOCK_TOPIC = "saga-stock"

#: Queue of each service.
ORDER_QUEUE = "saga-order-service"
PAYMENT_QUEUE = "saga-payment-service"
STOCK_QUEUE = "saga-stock-service"

#: Which topics feed each queue, and which events it wants from them.
SUBSCRIPTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    ORDER_QUEUE: (
        (PAYMENTS_TOPIC, STOCK_TOPIC),
        ("PaymentRejected", "PaymentRefunded", "StockReserved"),
    ),
    PAYMENT_QUEUE: ((ORDERS_TOPIC, STOCK_TOPIC), ("OrderPlaced", "StockReservationFailed")),
    STOCK_QUEUE: ((PAYMENTS_TOPIC,), ("PaymentCompleted",)),
}


def declare_topology(backend: MessagingBackend) -> None:
    """Create the saga's topics, queues (each with a dead-letter queue) and subscriptions.

    Subscriptions filter on the manifest where the backend can; elsewhere the consumers
    ignore (and acknowledge) the events they do not handle.
    """
    factory = MessagingBackendFactory(backend)
    filters = backend.capabilities.filter_policies
    for queue, (topics, events) in SUBSCRIPTIONS.items():
        options = {"filter_events": list(events)} if filters else {}
        factory.init_queue(queue, *topics, dead_letter_queue_name=f"{queue}-dlq", **options)

"""The queues and topics of the payment example, declared idempotently."""

from __future__ import annotations

from melange.backends.factory import MessagingBackendFactory
from melange.backends.interfaces import MessagingBackend

#: Topic of the order service's events.
ORDERS_TOPIC = "orders"
#: Topic of the payment service's events.
PAYMENTS_TOPIC = "payments"
#: Queue the payment service consumes.
PAYMENT_QUEUE = "payment-service"
#: Queue the order service consumes.
ORDER_QUEUE = "order-service"


def declare_topology(backend: MessagingBackend) -> None:
    """Create the example's topics, queues, subscriptions and dead-letter queues.

    Subscriptions filter on the manifest where the backend can; elsewhere the consumers
    ignore (and acknowledge) the events they do not handle.
    """
    factory = MessagingBackendFactory(backend)
    filters = backend.capabilities.filter_policies
    factory.init_queue(
        PAYMENT_QUEUE,
        ORDERS_TOPIC,
        dead_letter_queue_name=f"{PAYMENT_QUEUE}-dlq",
        **({"filter_events": ["OrderCreated"]} if filters else {}),
    )
    factory.init_queue(
        ORDER_QUEUE,
        PAYMENTS_TOPIC,
        dead_letter_queue_name=f"{ORDER_QUEUE}-dlq",
        **({"filter_events": ["OrderResponse", "PaymentFailed"]} if filters else {}),
    )

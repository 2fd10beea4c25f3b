"""The saga's AsyncAPI description: ``melange asyncapi melange.examples.saga.description:saga``.

The three services are described together, as the one system they form: each topic with the
events published to it, each service's queue with its subscriptions, and what each service
sends and receives.
"""

from __future__ import annotations

from melange.asyncapi import ServiceDescription
from melange.examples.saga.messages import (
    OrderApproved,
    OrderCancelled,
    OrderPlaced,
    PaymentCompleted,
    PaymentRefunded,
    PaymentRejected,
    PlaceOrder,
    StockReservationFailed,
    StockReserved,
)
from melange.examples.saga.topology import (
    ORDER_QUEUE,
    ORDERS_TOPIC,
    PAYMENT_QUEUE,
    PAYMENTS_TOPIC,
    STOCK_QUEUE,
    STOCK_TOPIC,
    SUBSCRIPTIONS,
)


def describe_saga() -> ServiceDescription:
    """The order saga's topics, queues, messages and operations."""
    saga = ServiceDescription(
        "Order saga",
        version="1.0.0",
        description=(
            "A choreography saga: the order, payment and stock services react to each other's "
            "events and compensate when a step fails."
        ),
    )
    saga.topic(ORDERS_TOPIC, description="Events of the order service.")
    saga.topic(PAYMENTS_TOPIC, description="Events of the payment service.")
    saga.topic(STOCK_TOPIC, description="Events of the stock service.")
    for queue, (topics, events) in SUBSCRIPTIONS.items():
        saga.queue(queue, topics=topics, filter_events=events, dead_letter_queue=f"{queue}-dlq")

    saga.sends(ORDERS_TOPIC, OrderPlaced, OrderApproved, OrderCancelled, summary="Order service.")
    saga.sends(
        PAYMENTS_TOPIC,
        PaymentCompleted,
        PaymentRejected,
        PaymentRefunded,
        summary="Payment service.",
    )
    saga.sends(STOCK_TOPIC, StockReserved, StockReservationFailed, summary="Stock service.")
    saga.receives(
        ORDER_QUEUE,
        PlaceOrder,
        PaymentRejected,
        PaymentRefunded,
        StockReserved,
        summary="The order service starts a saga on PlaceOrder and ends it.",
    )
    saga.receives(
        PAYMENT_QUEUE,
        OrderPlaced,
        StockReservationFailed,
        summary="The payment service charges orders and refunds them.",
    )
    saga.receives(STOCK_QUEUE, PaymentCompleted, summary="The stock service reserves the items.")
    return saga


#: What ``melange asyncapi`` reads.
saga = describe_saga()

"""The payment service example: an order service and a payment service talking by events.

The flow::

    client --PlaceOrder--> order-service --OrderCreated--> [orders] --> payment-service
    payment-service --OrderResponse | PaymentFailed--> [payments] --> order-service
    order-service --OrderConfirmed | OrderRejected--> [orders]

- The order service takes a ``PlaceOrder`` command on its queue, records the order and
  publishes ``OrderCreated`` on the ``orders`` topic.
- The payment service (its queue subscribed to ``orders``) charges the customer through the
  payment gateway and publishes ``OrderResponse(id, reference)`` on the ``payments`` topic, or
  ``PaymentFailed`` when the gateway declines. A gateway that is unavailable makes the
  consumer raise: the dispatcher retries the message with backoff, and dead-letters it to
  ``payment-service-dlq`` if the gateway never comes back.
- The order service (its queue subscribed to ``payments``) confirms or rejects the order.

Run each service as its own process on any backend::

    python -m melange.examples.payment_service.app --backend-url sqlite:///shop.db
    python -m melange.examples.payment_service.orders --backend-url sqlite:///shop.db

or with ``melange consume melange.examples.payment_service.app:create_dispatcher --queue
payment-service``. ``melange demo`` runs the whole flow.
"""

"""A choreography saga: order, payment and stock services that undo their work on failure.

No service directs the others: each reacts to the events of the previous step and publishes
its own. When a step fails, the services that already did their part compensate::

    PlaceOrder -> order: OrderPlaced -> payment: PaymentCompleted -> stock: StockReserved
                                                                   -> order: OrderApproved
    payment declined:   payment: PaymentRejected -> order: OrderCancelled
    stock unavailable:  stock: StockReservationFailed -> payment: PaymentRefunded
                                                      -> order: OrderCancelled

Each service is its own process on any backend::

    python -m melange.examples.saga.order --backend-url sqlite:///saga.db
    python -m melange.examples.saga.payment --backend-url sqlite:///saga.db
    python -m melange.examples.saga.stock --backend-url sqlite:///saga.db

or ``melange consume melange.examples.saga.stock:create_dispatcher --queue
saga-stock-service``. Transient failures (the warehouse being busy) are retried by the
dispatcher's failure policy; business failures (no credit, no stock) are events that drive
the compensation.
"""

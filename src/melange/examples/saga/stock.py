"""The saga's stock service: ``python -m melange.examples.saga.stock``.

It reserves the items of each paid order, all or nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from melange.backends.interfaces import MessagingBackend
from melange.consumers import SingleDispatchConsumer, consumer
from melange.examples.common.runtime import (
    EXAMPLE_POLICY,
    RETRY_NOTE,
    EventPublisher,
    Reporter,
    ServicePublisher,
    consumed,
    service_main,
)
from melange.examples.saga.messages import (
    SERIALIZER,
    PaymentCompleted,
    StockReservationFailed,
    StockReserved,
)
from melange.examples.saga.topology import STOCK_QUEUE, STOCK_TOPIC, declare_topology
from melange.message_dispatcher import MessageDispatcher


class OutOfStock(Exception):
    """An item is missing: a business failure, answered with ``StockReservationFailed``."""


class WarehouseBusy(Exception):
    """The warehouse could not take the reservation now: transient, so retried."""


class Warehouse:
    """Stock levels per SKU, with all-or-nothing reservations.

    Args:
        stock: Units available per SKU.
        busy_once: Order references whose first reservation finds the warehouse busy (to
            show a retry).
    """

    def __init__(self, stock: Mapping[str, int], busy_once: Iterable[str] = ()) -> None:
        self.stock = dict(stock)
        self._busy = set(busy_once)
        self._lock = threading.Lock()
        #: Order ids whose items are reserved.
        self.reserved: set[str] = set()

    def reserve(self, order_id: str, reference: str, items: Mapping[str, int]) -> None:
        """Take ``items`` out of stock for the order (once); raises ``OutOfStock`` or
        ``WarehouseBusy``."""
        with self._lock:
            if reference in self._busy:
                self._busy.discard(reference)
                raise WarehouseBusy(f"warehouse busy reserving {reference}")
            if order_id in self.reserved:
                return
            missing = {sku: qty for sku, qty in items.items() if self.stock.get(sku, 0) < qty}
            if missing:
                detail = ", ".join(
                    f"{qty} x {sku} asked, {self.stock.get(sku, 0)} left"
                    for sku, qty in sorted(missing.items())
                )
                raise OutOfStock(f"out of stock: {detail}")
            for sku, qty in items.items():
                self.stock[sku] -= qty
            self.reserved.add(order_id)


class StockService:
    """Reserves the items of paid orders and publishes the outcome.

    Args:
        publisher: Where the stock events go.
        warehouse: The stock levels.
        report: Where to report what the service does (default: nowhere).
    """

    def __init__(
        self,
        publisher: EventPublisher,
        warehouse: Warehouse,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.publisher = publisher
        self.warehouse = warehouse
        self._report = report or (lambda text: None)

    def reserve(self, event: PaymentCompleted) -> None:
        """Reserve the order's items; publish ``StockReserved`` or ``StockReservationFailed``."""
        wanted = ", ".join(f"{qty} x {sku}" for sku, qty in sorted(event.items.items()))
        self._report(f"{consumed(event.reference)}: reserving {wanted}")
        try:
            self.warehouse.reserve(event.order_id, event.reference, event.items)
        except OutOfStock as exc:
            self._report(f"cannot reserve {event.reference}: {exc}")
            self.publisher.publish(
                StockReservationFailed(event.order_id, event.reference, str(exc))
            )
            return
        except WarehouseBusy as exc:
            self._report(f"{exc}: {RETRY_NOTE}")
            raise
        self.publisher.publish(StockReserved(event.order_id, event.reference))


class StockConsumer(SingleDispatchConsumer):
    """Hands the stock service the paid orders."""

    def __init__(self, stock_service: StockService) -> None:
        super().__init__()
        self.stock_service = stock_service

    @consumer
    def on_payment_completed(self, event: PaymentCompleted) -> None:
        """Reserve the items of a paid order."""
        self.stock_service.reserve(event)


#: The demo's stock levels, and the order whose first reservation finds the warehouse busy.
DEMO_STOCK = {"book": 10, "lamp": 5, "mug": 2}
DEMO_BUSY_ONCE = ("S-2001",)


def create_dispatcher(
    backend: MessagingBackend,
    warehouse: Warehouse | None = None,
    report: Reporter | None = None,
) -> MessageDispatcher:
    """The stock service's dispatcher on ``backend`` (the topology is declared first)."""
    declare_topology(backend)
    report = report or Reporter("stock")
    publisher = ServicePublisher("stock", STOCK_TOPIC, SERIALIZER, backend, report)
    warehouse = warehouse or Warehouse(DEMO_STOCK, DEMO_BUSY_ONCE)
    return MessageDispatcher(
        SERIALIZER,
        backend=backend,
        consumers=[StockConsumer(StockService(publisher, warehouse, report))],
        failure_policy=EXAMPLE_POLICY,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the stock service until SIGINT/SIGTERM."""
    return service_main("stock", "The saga's stock service.", STOCK_QUEUE, create_dispatcher, argv)


if __name__ == "__main__":
    raise SystemExit(main())

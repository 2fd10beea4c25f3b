"""The payment service as a process: ``python -m melange.examples.payment_service.app``.

``create_dispatcher(backend)`` is also what ``melange consume`` runs::

    melange consume melange.examples.payment_service.app:create_dispatcher \\
        --queue payment-service --backend-url sqlite:///shop.db
"""

from __future__ import annotations

from melange.backends.interfaces import MessagingBackend
from melange.examples.common.runtime import (
    EXAMPLE_POLICY,
    Reporter,
    ServicePublisher,
    service_main,
)
from melange.examples.payment_service.consumer import PaymentConsumer
from melange.examples.payment_service.events import SERIALIZER
from melange.examples.payment_service.service import PaymentGateway, PaymentService
from melange.examples.payment_service.topology import (
    PAYMENT_QUEUE,
    PAYMENTS_TOPIC,
    declare_topology,
)
from melange.message_dispatcher import MessageDispatcher


def demo_gateway() -> PaymentGateway:
    """The demo's gateway: ``bob`` lacks credit, and the first charge of ``A-1002`` times out."""
    return PaymentGateway(credit={"bob": 20_00}, unavailable_once=["A-1002"])


def create_dispatcher(
    backend: MessagingBackend,
    gateway: PaymentGateway | None = None,
    report: Reporter | None = None,
) -> MessageDispatcher:
    """The payment service's dispatcher on ``backend`` (the topology is declared first).

    Args:
        backend: Where to consume and publish.
        gateway: The card processor; by default the demo's (see ``demo_gateway``).
        report: Where to report what the service does; by default standard output.
    """
    declare_topology(backend)
    report = report or Reporter("payment")
    publisher = ServicePublisher("payment", PAYMENTS_TOPIC, SERIALIZER, backend, report)
    service = PaymentService(publisher, gateway or demo_gateway(), report)
    return MessageDispatcher(
        SERIALIZER,
        backend=backend,
        consumers=[PaymentConsumer(service)],
        failure_policy=EXAMPLE_POLICY,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the payment service until SIGINT/SIGTERM."""
    return service_main(
        "payment",
        "The example payment service: pays orders and publishes the outcome.",
        PAYMENT_QUEUE,
        create_dispatcher,
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())

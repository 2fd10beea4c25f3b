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

#: What the demo's gateway does: ``bob`` lacks credit, and the gateway times out once on the
#: first charge of order ``A-1002``.
DEMO_GATEWAY = {"credit": {"bob": 20_00}, "unavailable_once": ["A-1002"]}


def create_dispatcher(
    backend: MessagingBackend,
    gateway: PaymentGateway | None = None,
    report: Reporter | None = None,
) -> MessageDispatcher:
    """The payment service's dispatcher on ``backend`` (the topology is declared first).

    Args:
        backend: Where to consume and publish.
        gateway: The card processor; by default the demo's (see ``DEMO_GATEWAY``).
        report: Where to report what the service does; by default standard output.
    """
    declare_topology(backend)
    report = report or Reporter("payment")
    publisher = ServicePublisher("payment", PAYMENTS_TOPIC, SERIALIZER, backend, report)
    gateway = gateway or PaymentGateway(**DEMO_GATEWAY)  # type: ignore[arg-type]
    service = PaymentService(publisher, gateway, report)
    return MessageDispatcher(
        SERIALIZER,
        backend=backend,
        consumers=[PaymentConsumer(service)],
        failure_policy=EXAMPLE_POLICY,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the payment service until SIGINT/SIGTERM."""
    return service_main(
        "The example payment service: pays orders and publishes the outcome.",
        PAYMENT_QUEUE,
        create_dispatcher,
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())

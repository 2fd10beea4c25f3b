"""The payment service's logic: charge customers through a gateway, publish the outcome."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Mapping

from melange.examples.common.commands import DoPayment
from melange.examples.common.runtime import RETRY_NOTE, EventPublisher, consumed
from melange.examples.payment_service.events import OrderCreated, OrderResponse, PaymentFailed


class PaymentDeclined(Exception):
    """The gateway refused the charge for good (e.g. not enough credit): never retried."""


class GatewayUnavailable(Exception):
    """The gateway could not be reached: a transient failure, so the message is retried."""


class PaymentGateway:
    """A simulated card processor.

    Args:
        credit: Each customer's credit, in cents; a charge above it is declined.
        default_credit: The credit of customers not listed.
        unavailable_once: Order references whose first charge attempt finds the gateway
            unavailable (to show a retry).
    """

    def __init__(
        self,
        credit: Mapping[str, int] | None = None,
        default_credit: int = 100_00,
        unavailable_once: Iterable[str] = (),
    ) -> None:
        self._credit = dict(credit or {})
        self._default_credit = default_credit
        self._unavailable = set(unavailable_once)
        self._lock = threading.Lock()

    def charge(self, customer: str, amount_cents: int, reference: str) -> str:
        """Charge ``amount_cents`` to ``customer``; returns the payment id.

        Raises ``PaymentDeclined`` or ``GatewayUnavailable``.
        """
        with self._lock:
            if reference in self._unavailable:
                self._unavailable.discard(reference)
                raise GatewayUnavailable(f"payment gateway timed out charging {reference}")
            credit = self._credit.get(customer, self._default_credit)
            if amount_cents > credit:
                raise PaymentDeclined(
                    f"{customer} has {credit / 100:.2f} of credit, "
                    f"{amount_cents / 100:.2f} was asked"
                )
            self._credit[customer] = credit - amount_cents
            return f"pay-{uuid.uuid4().hex[:8]}"

    def refund(self, customer: str, amount_cents: int) -> None:
        """Give ``amount_cents`` back to ``customer``."""
        with self._lock:
            credit = self._credit.get(customer, self._default_credit)
            self._credit[customer] = credit + amount_cents


class PaymentService:
    """Charges customers for orders and publishes ``OrderResponse`` or ``PaymentFailed``.

    Charging is idempotent per order: a redelivered request for an order already paid
    publishes the same ``OrderResponse`` again instead of charging twice.

    Args:
        publisher: Where the outcome events go.
        gateway: The card processor.
        report: Where to report what the service does (default: nowhere).
    """

    def __init__(
        self,
        publisher: EventPublisher,
        gateway: PaymentGateway | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.publisher = publisher
        self.gateway = gateway or PaymentGateway()
        self._report = report or (lambda text: None)
        self._lock = threading.Lock()
        #: Order id -> payment id, for every order paid (or known to be paid).
        self.payments: dict[str, str] = {}

    def pay_order(self, event: OrderCreated) -> None:
        """Pay for a newly created order."""
        self.do_payment(DoPayment(event.id, event.reference, event.customer, event.amount_cents))

    def do_payment(self, command: DoPayment) -> None:
        """Charge the order's customer and publish the outcome.

        A declined payment publishes ``PaymentFailed``; an unavailable gateway raises
        ``GatewayUnavailable`` so that the message is retried.
        """
        with self._lock:
            paid = self.payments.get(command.order_id)
        if paid is not None:
            self._report(f"{consumed(command.reference)}: already paid ({paid}), answering again")
            self.publisher.publish(OrderResponse(command.order_id, command.reference, paid))
            return
        amount = command.amount_cents / 100
        self._report(f"{consumed(command.reference)}: charging {command.customer} {amount:.2f}")
        try:
            payment_id = self.gateway.charge(
                command.customer, command.amount_cents, command.reference
            )
        except PaymentDeclined as exc:
            self._report(f"payment of {command.reference} declined: {exc}")
            self.publisher.publish(PaymentFailed(command.order_id, command.reference, str(exc)))
            return
        except GatewayUnavailable as exc:
            self._report(f"{exc}: {RETRY_NOTE}")
            raise
        with self._lock:
            self.payments[command.order_id] = payment_id
        self.publisher.publish(OrderResponse(command.order_id, command.reference, payment_id))

    def process(self, order_response: OrderResponse) -> None:
        """Record a payment confirmed by another payment service instance (or by a 7.2.0
        service), so that this instance never charges that order again."""
        with self._lock:
            known = self.payments.setdefault(
                order_response.id, order_response.payment_id or order_response.reference
            )
        self._report(f"{consumed(order_response.reference)}: paid ({known})")

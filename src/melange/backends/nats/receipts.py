"""What a received NATS message carries to be settled, and settling it.

A received message's :attr:`~melange.models.Message.metadata` is a :class:`NATSReceipt`: its
queue, the JetStream ack subject of its delivery, and its lease. :class:`Settler` sends the
acknowledgement verbs on that subject: ``+ACK`` (acknowledge, or drop), ``-NAK`` (give back,
after a delay with one) and ``+WPI`` (renew the lease; repeated by a task of its own for a
renewal longer than the lease). The server does not answer them: an unsent one leaves the
message to come back when its lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field

from melange.backends.nats.connection import explain
from melange.backends.nats.session import SEND_ERRORS, Session
from melange.models import Message

logger = logging.getLogger("melange.backends.nats")


@dataclass(eq=False)
class NATSReceipt:
    """What a received message needs to be settled: its queue and JetStream ack subject.

    Opaque to users; kept in :attr:`~melange.models.Message.metadata`. ``leased_until`` is
    when, by this process's clock, the server gives the message to another receiver unless
    it is settled or renewed.
    """

    queue: str
    reply: str
    sequence: int
    delivered: int
    lease: float
    leased_until: float
    settled: bool = False
    renewal: asyncio.Task[None] | None = field(default=None, repr=False)


def receipt_of(message: Message) -> NATSReceipt:
    """The receipt of a message received from a NATS backend (else a ``ValueError``)."""
    receipt = message.metadata
    if not isinstance(receipt, NATSReceipt):
        raise ValueError(f"{message!r} was not received from a NATS backend")
    return receipt


def fresh(lease: float, since: float, now: float) -> bool:
    """Whether a message leased for ``lease`` seconds from ``since`` may be handed out at
    ``now``: half its lease left at least, or it may reach another receiver meanwhile."""
    return since + lease - now > lease / 2


class Settler:
    """Settles received messages and renews their leases, over a backend's session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def settle(self, receipt: NATSReceipt, verb: bytes) -> None:
        """Send an acknowledgement verb; the server ignores one for a message already settled
        or delivered again, and an unsent one leaves the message to come back."""
        final = verb != b"+WPI"
        if final:
            receipt.settled = True
            renewal, receipt.renewal = receipt.renewal, None
            if renewal is not None:
                # Settled through another instance (a thread's own connection) maybe: the
                # renewal task belongs to its loop.
                with contextlib.suppress(RuntimeError):  # its loop closed: it ended too
                    renewal.get_loop().call_soon_threadsafe(renewal.cancel)
        try:
            nc = await self._session.client()
            await nc.publish(receipt.reply, verb)
            self._session.unconfirmed = True
        except SEND_ERRORS as exc:
            logger.debug("NATS acknowledgement not sent (%s); redelivered later", explain(exc))

    async def nack(self, message: Message, delay: float) -> None:
        """Give ``message`` back: delivered again after ``delay`` seconds (``-NAK``)."""
        receipt = receipt_of(message)
        if delay > 0:
            verb = b"-NAK " + json.dumps({"delay": int(delay * 1e9)}).encode()
        else:
            verb = b"-NAK"
        await self.settle(receipt, verb)

    async def extend(self, message: Message, seconds: float) -> None:
        """Renew the lease (``+WPI``): the server's ``ack_wait`` starts again. A renewal
        longer than the lease is kept up by renewing every third of the lease until then."""
        receipt = receipt_of(message)
        if receipt.settled:
            return
        await self.settle(receipt, b"+WPI")
        now = time.monotonic()
        receipt.leased_until = now + max(receipt.lease, seconds)
        if seconds > receipt.lease and receipt.renewal is None:
            receipt.renewal = asyncio.get_running_loop().create_task(self._keep_leased(receipt))

    async def _keep_leased(self, receipt: NATSReceipt) -> None:
        try:
            while not receipt.settled:
                await asyncio.sleep(receipt.lease / 3)
                now = time.monotonic()
                if receipt.settled or now >= receipt.leased_until - receipt.lease / 3:
                    return
                await self.settle(receipt, b"+WPI")
        finally:
            receipt.renewal = None


__all__ = ["NATSReceipt", "Settler", "fresh", "receipt_of"]

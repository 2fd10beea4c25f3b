"""The per-connection state of the pika backend, and the operations run with it.

:class:`Session` holds what one connection of the I/O thread
(:mod:`~melange.backends.rabbitmq.io_thread`) has open: the declaration channel, the
publishing channel with its publisher confirms, and a channel per consumed queue. The
functions below it are the operations the backend submits to the I/O thread: settling
deliveries (:func:`ack`, :func:`requeue`, :func:`ack_many`) and performing topology
operations (:func:`perform`). All of it is used only by whoever drives the connection.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions
import pika.spec

# A pika internal: waiting for confirms without a wake-up per confirm (see
# Session._wait_for_confirms).
try:
    from pika.adapters.blocking_connection import _IoloopTimerContext
except ImportError:  # pragma: no cover - other pika versions: the public, slower path
    _IoloopTimerContext = None

from melange.backends.rabbitmq.pika_io import send_now, wake
from melange.backends.rabbitmq.topology import (
    NOT_FOUND,
    Bind,
    DeclareExchange,
    DeclareQueue,
    DeleteQueue,
    Operation,
    Refusal,
    Unbind,
    ack_plan,
)
from melange.exceptions import BackendError, PublishError, QueueNotFoundError

if TYPE_CHECKING:
    from melange.backends.rabbitmq.backend import RabbitMQBackend

logger = logging.getLogger("melange.backends.rabbitmq")


@dataclass(eq=False)
class Subscription:
    """A ``basic.consume`` subscription on its own channel, within one connection."""

    queue: str
    channel: Any
    generation: int = 0
    tag: str = ""
    cancelled: bool = False
    unacked: set[int] = field(default_factory=set)

    @property
    def active(self) -> bool:
        return self.channel.is_open and not self.cancelled


@dataclass(frozen=True, eq=False)
class RabbitMQReceipt:
    """What a received message needs to be settled: its queue, consumer and delivery tag.

    Opaque to users; kept in :attr:`~melange.models.Message.metadata`.
    """

    queue: str
    generation: int
    consumer: Subscription
    delivery_tag: int


class Session:
    """Per-connection state, used only on the I/O thread."""

    def __init__(self, backend: RabbitMQBackend, connection: Any) -> None:
        self.backend = backend
        self.connection = connection
        self.generation = backend._link.generation
        self.consumers: dict[str, Subscription] = {}
        self._topology: Any = None
        self._publisher: Any = None
        self.publisher_closed: BaseException | None = None
        self.next_tag = 1
        self.unconfirmed: set[int] = set()
        self.nacked: set[int] = set()
        self.returned: dict[str, str] = {}
        self.collecting = False
        self.waiting_for: set[int] = set()
        # Set by _on_confirm once every tag in waiting_for is confirmed.
        self.all_confirmed = False

    # -- channels ---------------------------------------------------------------------------

    def topology(self) -> Any:
        """The channel for declarations; reopened after the broker closed it on an error."""
        if self._topology is None or not self._topology.is_open:
            self._topology = self.connection.channel()
        return self._topology

    def publisher(self) -> Any:
        """The publishing channel, in confirm mode when confirms are on."""
        if self._publisher is not None and self._publisher.is_open:
            return self._publisher
        channel = self.connection.channel()
        # Pipelined confirms need pika's channel object: BlockingChannel.confirm_delivery()
        # would wait for each confirm in turn.
        impl = channel._impl
        impl.add_on_close_callback(self._on_publisher_closed)
        impl.add_on_return_callback(self._on_return)
        self.publisher_closed = None
        self.next_tag = 1
        self.unconfirmed.clear()
        self.nacked.clear()
        if self.backend._confirms:
            selected: list[bool] = []

            def on_select_ok(_frame: Any) -> None:
                selected.append(True)
                wake(self.connection)

            impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=on_select_ok)
            deadline = time.monotonic() + self.backend._operation_timeout
            while not selected:
                if channel.is_closed or time.monotonic() > deadline:
                    raise BackendError("the broker did not enable publisher confirms")
                self.connection.process_data_events(time_limit=0.2)
        self._publisher = channel
        return channel

    def _on_publisher_closed(self, _channel: Any, reason: BaseException) -> None:
        self.publisher_closed = reason
        wake(self.connection)

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        reason = f"{method.reply_code} {method.reply_text}"
        if self.collecting:
            self.returned.setdefault(properties.message_id or "", reason)
        else:
            logger.error(
                "message %s to exchange %r routing key %r was returned by the broker: %s",
                properties.message_id,
                method.exchange,
                method.routing_key,
                reason,
            )

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            tags = [tag for tag in self.unconfirmed if tag <= method.delivery_tag]
        else:
            tags = [method.delivery_tag]
        for tag in tags:
            self.unconfirmed.discard(tag)
            if not acked:
                self.nacked.add(tag)
        if self.waiting_for and self.waiting_for.isdisjoint(self.unconfirmed):
            self.waiting_for = set()
            # Ends the I/O wait in publish (checked after every poll).
            self.all_confirmed = True

    # -- publishing -------------------------------------------------------------------------

    def publish(
        self,
        exchange: str,
        routing_key: str,
        items: Sequence[tuple[bytes, pika.BasicProperties]],
        mandatory: bool,
    ) -> list[str | None]:
        """Publish ``items`` pipelined; per item ``None`` or the reason it was refused."""
        channel = self.publisher()
        self.returned = {}
        confirms = self.backend._confirms
        self.collecting = confirms
        tags: list[int] = []
        try:
            if not confirms:
                for body, properties in items:
                    # The blocking channel's publish returns once the frame is written.
                    channel.basic_publish(exchange, routing_key, body, properties, mandatory)
                return [None] * len(items)
            # With confirms, the frames go out while waiting for the confirms below: pika's
            # channel object only buffers them, saving the blocking channel's flush (a round
            # of I/O) per message.
            impl = channel._impl
            unconfirmed = self.unconfirmed
            for body, properties in items:
                # Register the tag before publishing, so that its confirm is never unknown.
                tag = self.next_tag
                self.next_tag += 1
                tags.append(tag)
                unconfirmed.add(tag)
                impl.basic_publish(exchange, routing_key, body, properties, mandatory)
            send_now(self.connection)
            self.all_confirmed = False
            self.waiting_for = set(tags)
            self._wait_for_confirms(tags, f"{len(items)} message(s) to {exchange or routing_key!r}")
            outcome: list[str | None] = []
            for (_, properties), tag in zip(items, tags, strict=True):
                if tag in self.nacked:
                    self.nacked.discard(tag)
                    outcome.append("nacked by the broker")
                else:
                    outcome.append(self.returned.pop(properties.message_id or "", None))
            return outcome
        finally:
            self.collecting = False
            self.waiting_for = set()

    def _wait_for_confirms(self, tags: list[int], what: str) -> None:
        """Do I/O until every tag in ``tags`` is confirmed (or nacked); raises on a timeout.

        Uses the connection's own I/O loop with a condition, checked after every poll, rather
        than ``process_data_events``, which only returns once a callback woke it: that
        would cost a wake-up through the I/O loop's pipe for every confirm.
        """
        timeout = self.backend._operation_timeout
        connection = self.connection
        if self.unconfirmed.isdisjoint(tags):
            self.all_confirmed = True

        def finished() -> bool:
            return self.all_confirmed or self.publisher_closed is not None

        if _IoloopTimerContext is not None and hasattr(connection, "_flush_output"):
            with _IoloopTimerContext(timeout, connection._impl) as timer:
                connection._flush_output(timer.is_ready, finished)
        else:
            deadline = time.monotonic() + timeout
            while not finished() and time.monotonic() < deadline:
                connection.process_data_events(time_limit=min(0.05, timeout))
        if self.publisher_closed is not None:
            raise self.publisher_closed
        if not self.unconfirmed.isdisjoint(tags):
            raise PublishError(f"RabbitMQ did not confirm {what} within {timeout}s")

    # -- consuming --------------------------------------------------------------------------

    def subscribe(self, queue: str) -> Subscription:
        """Start consuming ``queue`` on a new channel (raises if the queue is missing)."""
        old = self.consumers.pop(queue, None)
        if old is not None:
            # Its messages go back to the queue with its channel: forget our copies.
            self.backend._drop_buffered(old)
            if old.channel.is_open:
                with contextlib.suppress(Exception):
                    old.channel.close()
        channel = self.connection.channel()
        channel.basic_qos(prefetch_count=self.backend._prefetch_count)
        consumer = Subscription(queue, channel, self.generation)
        backend = self.backend
        generation = self.generation
        arrived = backend._arrived

        def on_message(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
            consumer.unacked.add(method.delivery_tag)
            # Handed over after this round of I/O, all at once (see _hand_over).
            arrived.append((consumer, generation, method, properties, body))

        def on_cancel(_frame: Any) -> None:
            consumer.cancelled = True

        channel.add_on_cancel_callback(on_cancel)
        try:
            consumer.tag = channel.basic_consume(queue, on_message)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == NOT_FOUND:
                raise QueueNotFoundError(queue) from None
            raise
        self.consumers[queue] = consumer
        with self.backend._cond:
            self.backend._consuming[queue] = consumer
        return consumer

    def unsubscribe(self, queue: str) -> None:
        """Stop consuming ``queue``: its unsettled messages go back to the queue."""
        consumer = self.consumers.pop(queue, None)
        if consumer is None:
            return
        with self.backend._cond:
            if self.backend._consuming.get(queue) is consumer:
                del self.backend._consuming[queue]
        if consumer.channel.is_open:
            with contextlib.suppress(Exception):
                consumer.channel.close()
        self.backend._drop_buffered(consumer)


def ack(session: Session, receipt: RabbitMQReceipt) -> None:
    """Acknowledge the delivery of ``receipt`` on its consumer's channel."""
    receipt.consumer.unacked.discard(receipt.delivery_tag)
    receipt.consumer.channel.basic_ack(receipt.delivery_tag)


def requeue(session: Session, receipt: RabbitMQReceipt) -> None:
    """Give the delivery of ``receipt`` back to its queue (``basic.nack`` with requeue)."""
    # Back in its place in the queue; the broker's delivery count (the backstop) goes up.
    receipt.consumer.unacked.discard(receipt.delivery_tag)
    receipt.consumer.channel.basic_nack(receipt.delivery_tag, requeue=True)


def ack_many(session: Session, receipts: Sequence[RabbitMQReceipt]) -> None:
    """Acknowledge what is still unsettled on the current connection, in few frames.

    Frames go through pika's channel object and are written together at the end (the
    blocking channel would flush the socket after every frame). Where a consumer's batch
    holds every tag it has outstanding up to its highest one, a single ``multiple``
    acknowledgement settles them all.
    """
    by_consumer: dict[int, tuple[Subscription, list[int]]] = {}
    for receipt in receipts:
        consumer = receipt.consumer
        if (
            session.generation != receipt.generation
            or receipt.delivery_tag not in consumer.unacked
            or not consumer.channel.is_open
        ):
            continue  # settled already, or the connection was reset: redelivered anyway
        entry = by_consumer.get(id(consumer))
        if entry is None:
            entry = by_consumer[id(consumer)] = (consumer, [])
        entry[1].append(receipt.delivery_tag)
    for consumer, tags in by_consumer.values():
        highest, multiple, tags = ack_plan(consumer.unacked, tags)
        impl = consumer.channel._impl
        consumer.unacked.difference_update(tags)
        if multiple:
            impl.basic_ack(highest, multiple=True)
        else:
            for tag in tags:
                impl.basic_ack(tag)
    if by_consumer:
        # Written now rather than by a round of I/O after the operation.
        send_now(session.connection)


def perform(session: Session, operation: Operation) -> Refusal | None:
    """Perform a topology operation on the session's declaration channel.

    Returns ``None``, or the :class:`~melange.backends.rabbitmq.topology.Refusal` when the
    broker closed the channel instead (the next operation reopens it).
    """
    channel = session.topology()
    try:
        if isinstance(operation, DeclareQueue):
            if operation.passive:
                channel.queue_declare(operation.name, passive=True)
            else:
                channel.queue_declare(
                    operation.name, durable=True, arguments=dict(operation.arguments)
                )
        elif isinstance(operation, DeclareExchange):
            if operation.passive:
                channel.exchange_declare(operation.name, passive=True)
            else:
                channel.exchange_declare(operation.name, operation.type, durable=True)
        elif isinstance(operation, Bind):
            arguments = dict(operation.arguments) if operation.arguments is not None else None
            channel.queue_bind(
                operation.queue, operation.exchange, operation.routing_key or None, arguments
            )
        elif isinstance(operation, Unbind):
            arguments = dict(operation.arguments) if operation.arguments is not None else None
            channel.queue_unbind(
                operation.queue, operation.exchange, operation.routing_key or None, arguments
            )
        elif isinstance(operation, DeleteQueue):
            channel.queue_delete(operation.name)
        else:
            channel.exchange_delete(operation.name)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return Refusal(exc.reply_code, exc.reply_text, exc)
    return None

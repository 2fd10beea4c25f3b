"""pika's asyncio connection as awaitables, for
:class:`~melange.backends.rabbitmq.async_backend.AsyncRabbitMQBackend`.

The asyncio RabbitMQ backend runs on pika's own asyncio adapter
(``pika.adapters.asyncio_connection.AsyncioConnection``): the socket is watched by the
running event loop and pika calls back from it as frames arrive, with no I/O thread. This
module turns those callbacks into futures:

- :class:`AsyncChannel` resolves an operation's future when the broker answers it, and fails
  every waiting future with the reason when the channel closes (the broker refused an
  operation, or the connection went away).
- :class:`Publisher` publishes on a channel in confirm mode and tracks the confirms itself:
  one future per ``publish`` call, however many messages it pipelines, and the broker's
  returns matched to the publishes they belong to.
- :class:`AsyncSession` holds one connection with its declaration, publishing and consumer
  channels, and performs the shared topology plans
  (:mod:`~melange.backends.rabbitmq.topology`) as the pika backend does.

A delivery costs a method call: pika parses the frames and calls the consumer's callback
directly, which is why this client is used rather than one that creates a task and queue
entries for every delivery (about three times the CPU per message, measured on a quorum
queue with prefetch 20).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pika
import pika.exceptions
import pika.spec
from pika.adapters.asyncio_connection import AsyncioConnection

from melange.backends.rabbitmq.connection import (
    FATAL_CONNECT_ERRORS,
    explain_connection_error,
    quiet_pika_connect_errors,
)
from melange.backends.rabbitmq.topology import (
    Bind,
    DeclareExchange,
    DeclareQueue,
    DeleteQueue,
    Operation,
    Refusal,
    Steps,
    Unbind,
)

logger = logging.getLogger("melange.backends.rabbitmq")

T = TypeVar("T")

#: The broker closed a channel instead of performing an operation (its reply code and text
#: are on the exception).
ChannelRefused = pika.exceptions.ChannelClosedByBroker

#: Errors after which the connection (or the channel an operation used) is gone: the
#: operation may be repeated on a new connection.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ChannelWrongStateError,
    # A channel closed on our side: by a closing connection, or by unsubscribing.
    pika.exceptions.ChannelClosedByClient,
    ConnectionError,
    OSError,
)

#: Errors of an attempt to connect that another attempt cannot fix (credentials, vhost).
AUTH_ERRORS = FATAL_CONNECT_ERRORS

#: Handlers of deliveries and cancellations, as pika calls them.
OnMessage = Callable[[Any, Any, Any, bytes], None]
OnCancel = Callable[[Any], None]


#: pika's loggers that report each failed connection attempt and each lost connection of
#: the asyncio adapter, on several lines at ERROR: the backend reports both itself, on one
#: line naming host, port and reason. They stay visible with pika's logger set to ``DEBUG``.
_PIKA_CONNECTION_LOGGERS = ("pika.adapters.base_connection", "pika.connection")

quiet_pika_connect_errors(_PIKA_CONNECTION_LOGGERS)


def refusal(exc: pika.exceptions.ChannelClosedByBroker) -> Refusal:
    """The reply code and text of a channel the broker closed."""
    return Refusal(int(exc.reply_code), str(exc.reply_text), exc)


def explain(error: BaseException | None) -> str:
    """A readable reason for a connection failure (never the password: pika's errors hold
    none, and the parameters are not part of them)."""
    if isinstance(error, TimeoutError):
        return "timed out"
    return explain_connection_error(error)


async def open_connection(parameters: pika.ConnectionParameters, timeout: float) -> Any:
    """Open an ``AsyncioConnection`` on the running loop: one attempt, within ``timeout``.

    Raises what pika reported (``pika.exceptions.AMQPConnectionError`` and its kinds), or
    ``TimeoutError``.
    """
    loop = asyncio.get_running_loop()
    # One attempt: the backend decides about retries (first connection or reconnection).
    single = copy.copy(parameters)
    single.connection_attempts = 1
    opened: asyncio.Future[None] = loop.create_future()

    def on_open(_connection: Any) -> None:
        if not opened.done():
            opened.set_result(None)

    def on_open_error(_connection: Any, error: BaseException) -> None:
        if not opened.done():
            opened.set_exception(error)

    connection = AsyncioConnection(
        single,
        on_open_callback=on_open,
        on_open_error_callback=on_open_error,
        custom_ioloop=loop,
    )
    try:
        async with asyncio.timeout(timeout):
            await opened
    except BaseException:
        # Abandoned (timed out, cancelled, failed): no socket may stay behind.
        if not (connection.is_closed or connection.is_closing):
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                logger.debug("aborting a connection attempt failed", exc_info=True)
        raise
    return connection


class AsyncChannel:
    """A pika channel whose operations are awaited.

    When the channel closes, every operation waiting on it fails with the reason pika gives:
    ``ChannelClosedByBroker`` when the broker refused something, the connection's error when
    the connection went away, ``ChannelClosedByClient`` when it was closed on purpose.
    """

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.closed_reason: BaseException | None = None
        self._waiting: set[asyncio.Future[Any]] = set()
        self._close_callbacks: list[Callable[[BaseException], None]] = []
        channel.add_on_close_callback(self._on_close)

    @classmethod
    async def open(cls, connection: Any) -> AsyncChannel:
        """Open a new channel on ``connection``."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def on_open(_channel: Any) -> None:
            if not ready.done():
                ready.set_result(None)

        channel = cls(connection.channel(on_open_callback=on_open))
        channel._waiting.add(ready)
        try:
            await ready
        finally:
            channel._waiting.discard(ready)
        return channel

    @property
    def is_closed(self) -> bool:
        """Whether the channel is closed or closing (no operation may start on it)."""
        return not self.channel.is_open

    def add_close_callback(self, callback: Callable[[BaseException], None]) -> None:
        """Call ``callback(reason)`` when the channel closes."""
        self._close_callbacks.append(callback)

    def _on_close(self, _channel: Any, reason: BaseException) -> None:
        self.closed_reason = reason
        waiting, self._waiting = self._waiting, set()
        for future in waiting:
            if not future.done():
                future.set_exception(reason)
        for callback in self._close_callbacks:
            try:
                callback(reason)
            except Exception:  # pika would abort the connection on an exception here
                logger.exception("a channel close callback failed")

    async def _call(self, start: Callable[[Callable[[Any], None]], object]) -> Any:
        """Start an operation with ``start(on_reply)`` and wait for the reply frame."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_reply(frame: Any) -> None:
            if not future.done():
                future.set_result(frame)

        self._waiting.add(future)
        try:
            start(on_reply)
            return await future
        finally:
            self._waiting.discard(future)

    # -- operations ---------------------------------------------------------------------------

    async def queue_declare(
        self, name: str, *, passive: bool = False, arguments: dict[str, Any] | None = None
    ) -> Any:
        return await self._call(
            lambda reply: self.channel.queue_declare(
                name, passive=passive, durable=not passive, arguments=arguments, callback=reply
            )
        )

    async def exchange_declare(
        self, name: str, *, passive: bool = False, exchange_type: str = "headers"
    ) -> Any:
        return await self._call(
            lambda reply: self.channel.exchange_declare(
                name,
                exchange_type=exchange_type,
                passive=passive,
                durable=not passive,
                callback=reply,
            )
        )

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str | None,
        arguments: dict[str, Any] | None,
        unbind: bool = False,
    ) -> Any:
        """Bind ``queue`` to ``exchange`` (remove that binding, with ``unbind``)."""
        method = self.channel.queue_unbind if unbind else self.channel.queue_bind
        return await self._call(
            lambda reply: method(queue, exchange, routing_key, arguments, callback=reply)
        )

    async def queue_delete(self, name: str) -> Any:
        return await self._call(lambda reply: self.channel.queue_delete(name, callback=reply))

    async def exchange_delete(self, name: str) -> Any:
        return await self._call(lambda reply: self.channel.exchange_delete(name, callback=reply))

    async def basic_qos(self, *, prefetch_count: int) -> Any:
        """Set the prefetch window; also a round trip after every frame sent before it."""
        return await self._call(
            lambda reply: self.channel.basic_qos(prefetch_count=prefetch_count, callback=reply)
        )

    async def basic_consume(self, queue: str, on_message: OnMessage) -> str:
        """Start consuming ``queue``; returns the consumer tag once the broker agreed."""
        tags: list[str] = []

        def start(reply: Callable[[Any], None]) -> None:
            tags.append(self.channel.basic_consume(queue, on_message, callback=reply))

        await self._call(start)
        return tags[0]

    def add_cancel_callback(self, on_cancel: OnCancel) -> None:
        """Call ``on_cancel(frame)`` when the broker cancels a consumer of this channel."""
        self.channel.add_on_cancel_callback(on_cancel)

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        """Acknowledge: the frame is queued for the socket (AMQP acknowledgements get no
        answer), in order with every later frame."""
        self.channel.basic_ack(delivery_tag, multiple)

    def basic_nack(self, delivery_tag: int, requeue: bool = True) -> None:
        self.channel.basic_nack(delivery_tag, requeue=requeue)

    async def close(self) -> None:
        """Close the channel (its unsettled deliveries go back to their queues)."""
        if not self.channel.is_open:
            return
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_closed(_reason: BaseException) -> None:
            if not closed.done():
                closed.set_result(None)

        self.add_close_callback(on_closed)
        self.channel.close()
        await closed


class _Batch:
    """The messages of one ``publish`` call waiting for their confirms."""

    __slots__ = ("future", "outcome", "remaining")

    def __init__(self, future: asyncio.Future[list[str | None]], size: int) -> None:
        self.future = future
        self.outcome: list[str | None] = [None] * size
        self.remaining = size

    def settle(self, index: int, reason: str | None) -> None:
        if reason is not None:
            self.outcome[index] = reason
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(self.outcome)


class Publisher:
    """Publishes on one channel; with confirms, each call waits for all of its confirms.

    The broker numbers the messages of a channel in confirm mode from 1; the publisher keeps
    each number's call and position until its ``basic.ack`` (delivered) or ``basic.nack``
    arrives. A mandatory message nobody could route comes back first as ``basic.return``
    (then is confirmed): it is matched to the oldest unconfirmed message with its id,
    exchange and routing key.
    """

    def __init__(self, channel: AsyncChannel, confirms: bool) -> None:
        self.channel = channel
        self.confirms = confirms
        self._next_tag = 1
        self._lowest = 1  # no unconfirmed tag is below this one
        # tag -> (batch, index in it, message id, exchange, routing key)
        self._pending: dict[int, tuple[_Batch, int, str | None, str, str]] = {}
        self._returned: dict[int, str] = {}
        channel.channel.add_on_return_callback(self._on_return)
        channel.add_close_callback(self._on_close)

    @classmethod
    async def open(cls, connection: Any, confirms: bool) -> Publisher:
        channel = await AsyncChannel.open(connection)
        publisher = cls(channel, confirms)
        if confirms:
            await channel._call(
                lambda reply: channel.channel.confirm_delivery(
                    ack_nack_callback=publisher._on_confirm, callback=reply
                )
            )
        return publisher

    @property
    def is_closed(self) -> bool:
        return self.channel.is_closed

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        items: Sequence[tuple[bytes, pika.BasicProperties]],
        mandatory: bool,
    ) -> list[str | None]:
        """Publish ``items`` pipelined; per item ``None`` or the reason it was refused."""
        channel = self.channel.channel
        if not self.confirms:
            for body, properties in items:
                channel.basic_publish(exchange, routing_key, body, properties, mandatory)
            return [None] * len(items)
        future: asyncio.Future[list[str | None]] = asyncio.get_running_loop().create_future()
        batch = _Batch(future, len(items))
        pending = self._pending
        try:
            for index, (body, properties) in enumerate(items):
                # No confirm can arrive before its entry is made: frames are read only once
                # this coroutine waits.
                tag = self._next_tag
                channel.basic_publish(exchange, routing_key, body, properties, mandatory)
                self._next_tag = tag + 1
                pending[tag] = (batch, index, properties.message_id, exchange, routing_key)
        except BaseException:
            future.cancel()  # the confirms of what went out are then ignored
            raise
        return await future

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nacked = isinstance(method, pika.spec.Basic.Nack)
        last = method.delivery_tag
        if method.multiple:
            for tag in range(self._lowest, last + 1):
                self._settle(tag, nacked)
        else:
            self._settle(last, nacked)
        pending = self._pending
        while self._lowest < self._next_tag and self._lowest not in pending:
            self._lowest += 1

    def _settle(self, tag: int, nacked: bool) -> None:
        entry = self._pending.pop(tag, None)
        returned = self._returned.pop(tag, None) if self._returned else None
        if entry is None:
            return
        batch, index = entry[0], entry[1]
        batch.settle(index, "nacked by the broker" if nacked else returned)

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        reason = f"{method.reply_code} {method.reply_text}"
        message_id = properties.message_id
        for tag, (_batch, _index, pending_id, exchange, routing_key) in self._pending.items():
            if (
                tag not in self._returned
                and pending_id == message_id
                and exchange == method.exchange
                and routing_key == method.routing_key
            ):
                self._returned[tag] = reason
                return
        logger.error(
            "message %s to exchange %r routing key %r was returned by the broker: %s",
            message_id,
            method.exchange,
            method.routing_key,
            reason,
        )

    def _on_close(self, reason: BaseException) -> None:
        pending, self._pending = self._pending, {}
        self._returned.clear()
        for batch, *_ in pending.values():
            if not batch.future.done():
                batch.future.set_exception(reason)


class AsyncSession:
    """One AMQP connection (pika's ``AsyncioConnection``) and its channels."""

    def __init__(self, connection: Any, generation: int) -> None:
        self.connection = connection
        self.generation = generation
        # The backend's consumers of this connection, by queue name.
        self.consumers: dict[str, Any] = {}
        self._topology: AsyncChannel | None = None
        self._publisher: Publisher | None = None
        # One plan at a time on the declaration channel: a refusal closes the channel, and
        # must not fail another plan's operation in flight on it.
        self._topology_lock = asyncio.Lock()
        # Resolved with the reason once the connection has closed.
        self._loop = asyncio.get_running_loop()
        self._closed: asyncio.Future[BaseException] = self._loop.create_future()
        self._close_callbacks: list[Callable[[BaseException], None]] = []
        connection.add_on_close_callback(self._on_connection_closed)

    @property
    def alive(self) -> bool:
        """Whether the connection is open (not closing, not closed) and its loop still runs
        (``asyncio.run`` closes its loop, and a connection cannot move to another one)."""
        return bool(self.connection.is_open) and not self._loop.is_closed()

    def on_close(self, callback: Callable[[BaseException], None]) -> None:
        """Call ``callback(reason)`` once the connection has closed."""
        self._close_callbacks.append(callback)

    def _on_connection_closed(self, _connection: Any, reason: BaseException) -> None:
        if not self._closed.done():
            self._closed.set_result(reason)
        # Called at once, as pika reports it: nothing may use the connection's state after.
        for callback in self._close_callbacks:
            try:
                callback(reason)
            except Exception:  # pika would abort the loop's reader on an exception here
                logger.exception("a connection close callback failed")

    async def close(self, timeout: float = 5.0) -> None:
        """Close the connection; unsettled deliveries go back to their queues. Quiet: a
        connection that cannot close cleanly in ``timeout`` is dropped."""
        if self.connection.is_open:
            try:
                self.connection.close()
            except pika.exceptions.AMQPError:
                logger.debug("closing the connection failed", exc_info=True)
        if self._closed.done():
            return
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._closed)
        except TimeoutError:
            logger.debug("the connection did not close within %.0fs; dropping it", timeout)
            # pika has no public way to drop a connection whose close is not answered.
            with contextlib.suppress(Exception):
                self.connection._adapter_disconnect_stream()

    # -- channels ---------------------------------------------------------------------------

    async def topology(self) -> AsyncChannel:
        """The channel for declarations; reopened after the broker closed it on an error."""
        if self._topology is None or self._topology.is_closed:
            self._topology = await AsyncChannel.open(self.connection)
        return self._topology

    async def publisher(self, confirms: bool) -> Publisher:
        """The publishing channel (in confirm mode when ``confirms``)."""
        if self._publisher is None or self._publisher.is_closed:
            self._publisher = await Publisher.open(self.connection, confirms)
        return self._publisher

    # -- topology ---------------------------------------------------------------------------

    async def perform(self, operation: Operation) -> Refusal | None:
        """Perform a topology operation; ``None``, or the broker's refusal."""
        channel = await self.topology()
        try:
            if isinstance(operation, DeclareQueue):
                if operation.passive:
                    await channel.queue_declare(operation.name, passive=True)
                else:
                    await channel.queue_declare(operation.name, arguments=dict(operation.arguments))
            elif isinstance(operation, DeclareExchange):
                await channel.exchange_declare(
                    operation.name, passive=operation.passive, exchange_type=operation.type
                )
            elif isinstance(operation, Bind | Unbind):
                arguments = dict(operation.arguments) if operation.arguments is not None else None
                await channel.queue_bind(
                    operation.queue,
                    operation.exchange,
                    operation.routing_key or None,
                    arguments,
                    unbind=isinstance(operation, Unbind),
                )
            elif isinstance(operation, DeleteQueue):
                await channel.queue_delete(operation.name)
            else:
                await channel.exchange_delete(operation.name)
        except ChannelRefused as exc:
            return refusal(exc)
        return None

    async def run(self, steps: Steps[T]) -> T:
        """Perform topology ``steps`` (see :mod:`~melange.backends.rabbitmq.topology`)."""
        async with self._topology_lock:
            try:
                operation = next(steps)
                while True:
                    operation = steps.send(await self.perform(operation))
            except StopIteration as stop:
                result: T = stop.value
                return result

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        items: Sequence[tuple[bytes, pika.BasicProperties]],
        mandatory: bool,
        confirms: bool,
    ) -> list[str | None]:
        """Publish ``items`` pipelined; per item ``None`` or the reason it was refused."""
        publisher = await self.publisher(confirms)
        return await publisher.publish(exchange, routing_key, items, mandatory)


__all__ = [
    "AUTH_ERRORS",
    "CONNECTION_ERRORS",
    "AsyncChannel",
    "AsyncSession",
    "ChannelRefused",
    "Publisher",
    "explain",
    "open_connection",
    "refusal",
]

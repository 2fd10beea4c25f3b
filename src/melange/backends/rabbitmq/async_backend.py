"""The RabbitMQ backend on asyncio: :class:`AsyncRabbitMQBackend`, on pika's asyncio adapter.

It behaves as :class:`~melange.backends.rabbitmq.backend.RabbitMQBackend` does (same
constructor arguments, capabilities, queues, retry queues, dead letters and message format,
from the shared :mod:`~melange.backends.rabbitmq.topology` and
:mod:`~melange.backends.rabbitmq.wire` modules), with its I/O on the running event loop
instead of a thread: messages published by one are consumed by the other.

- The connection is opened by :meth:`AsyncRabbitMQBackend.connect` (or ``async with``, or the
  first call). When it is lost, buffered messages are dropped (the broker delivers them
  again), :meth:`~AsyncRabbitMQBackend.holds` turns ``False`` for the messages it carried, and
  the next call reconnects; consuming resumes with the next ``retrieve_messages``.
- Publishing waits for the broker's confirms (``publisher_confirms=True``); a batch is
  pipelined and waits for all of them at once.
- Receiving uses ``basic.consume`` with a prefetch window: deliveries are buffered as they
  arrive, and ``retrieve_messages`` hands them out, waiting up to ``wait_seconds`` for the
  first.

The AMQP client is pika's ``AsyncioConnection``: the running loop watches the socket and
pika calls back as frames arrive, so a delivery costs a method call rather than a task and
queue entries (see :mod:`~melange.backends.rabbitmq.async_connection`).

Use one instance from one event loop; only :meth:`~AsyncRabbitMQBackend.interrupt` may be
called from other threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

try:
    import pika
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the asyncio RabbitMQ backend needs pika ({exc}): pip install 'melange[rabbitmq]'"
    ) from exc

from melange.backends.async_interfaces import AsyncMessagingBackend
from melange.backends.rabbitmq.async_connection import AUTH_ERRORS as _AUTH_ERRORS
from melange.backends.rabbitmq.async_connection import CONNECTION_ERRORS as _CONNECTION_ERRORS
from melange.backends.rabbitmq.async_connection import AsyncChannel, ChannelRefused, open_connection
from melange.backends.rabbitmq.async_connection import AsyncSession as _AsyncSession
from melange.backends.rabbitmq.async_connection import explain as _explain
from melange.backends.rabbitmq.async_connection import refusal as _refusal
from melange.backends.rabbitmq.common import (
    RabbitMQBackendBase,
    dead_letter_copy,
    dead_lettered,
    give_back_copy,
    give_back_refused,
    publish_items,
    receive_options,
    topic_publish_refused,
)
from melange.backends.rabbitmq.topology import (
    DEAD_LETTER_EXCHANGE,
    NOT_FOUND,
    DeclareExchange,
    DeclareQueue,
    Steps,
    ack_plan,
    check_queue_publish,
    check_topic_publish,
    dead_letter_routed,
    declare_steps,
    declare_topic_steps,
    delete_queue_steps,
    delete_topic_steps,
    exists_steps,
    give_back,
    publish_refused,
    retry_queue_steps,
    topic_delay_steps,
)
from melange.backends.rabbitmq.wire import from_delivery
from melange.exceptions import (
    BackendConnectionError,
    BackendError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import Message, QueueWrapper, TopicWrapper

logger = logging.getLogger("melange.backends.rabbitmq")

T = TypeVar("T")

#: Errors of an attempt to connect.
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    pika.exceptions.AMQPError,
    *_CONNECTION_ERRORS,
)


@dataclass(eq=False)
class _AsyncConsumer:
    """A ``basic.consume`` subscription on its own channel, within one connection."""

    queue: str
    channel: AsyncChannel
    generation: int
    tag: str = ""
    cancelled: bool = False
    unacked: set[int] = field(default_factory=set)

    @property
    def active(self) -> bool:
        return not self.channel.is_closed and not self.cancelled


@dataclass(frozen=True, eq=False)
class AsyncRabbitMQReceipt:
    """What a received message needs to be settled: its queue, consumer and delivery tag.

    Opaque to users; kept in :attr:`~melange.models.Message.metadata`.
    """

    queue: str
    generation: int
    consumer: _AsyncConsumer
    delivery_tag: int


class AsyncRabbitMQBackend(RabbitMQBackendBase, AsyncMessagingBackend):
    """A messaging backend on RabbitMQ with asyncio-native I/O (pika's asyncio adapter).

    Takes the arguments of :class:`~melange.backends.rabbitmq.backend.RabbitMQBackend`
    (``url`` or ``host``/``port``/``virtual_host``/``credentials``/``username``/``password``,
    ``queue_type``, ``prefetch_count``, ``publisher_confirms``, ``require_topic_subscribers``,
    ``operation_timeout``, ``consumer_idle_timeout``, ...) and means the same by them. The
    constructor only checks them: the connection opens with :meth:`connect`, ``async with``
    or the first call, which raise :class:`~melange.exceptions.BackendConnectionError` naming
    host, port and vhost (never the password) when the broker cannot be reached.

    ``**parameters`` are ``pika.ConnectionParameters`` arguments, as for the pika backend
    (``ssl_options``, ``client_properties``, ``blocked_connection_timeout``, ...). Its
    read-only ``queue_type`` is the pika backend's.
    """

    name = "rabbitmq"

    def _setup(self) -> None:
        self._session: _AsyncSession | None = None
        self._generation = 0
        self._ever_connected = False
        self._closed = False
        self._connect_lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Futures of the retrieve_messages calls waiting for messages (see _notify).
        self._waiters: set[asyncio.Future[None]] = set()
        self._interrupt_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AsyncRabbitMQBackend({self.describe})"

    @property
    def connected(self) -> bool:
        """Whether the connection to the broker is up right now."""
        return self._session is not None and self._session.alive

    # -- connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection now (calls open it when needed)."""
        await self._current()

    async def __aenter__(self) -> AsyncRabbitMQBackend:
        await self.connect()
        return self

    async def _current(self) -> _AsyncSession:
        """The connected session, connecting (again) when there is none."""
        session = self._session
        if session is not None and session.alive:
            return session
        if self._closed:
            raise BackendConnectionError(f"the RabbitMQ backend for {self.describe} is closed")
        loop = asyncio.get_running_loop()
        if self._connect_lock is None or self._loop is not loop:
            # First use, or a new loop (asyncio.run per call): locks belong to one loop.
            self._connect_lock = asyncio.Lock()
            self._loop = loop
        async with self._connect_lock:
            session = self._session
            if session is not None and session.alive:
                return session
            return await self._open()

    async def _open(self) -> _AsyncSession:
        # The first connection gives up after connection_attempts; later ones retry with
        # backoff until operation_timeout, as the pika backend's I/O thread does.
        attempts = 0
        deadline = time.monotonic() + self._operation_timeout
        last: BaseException | None = None
        while True:
            attempts += 1
            try:
                # pika gives up after its stack_timeout (twice socket_timeout); the margin
                # lets its more precise reason win.
                connection = await open_connection(self._params, self._socket_timeout * 2 + 1.0)
            except _CONNECT_ERRORS as exc:
                last = exc
                fatal = isinstance(exc, _AUTH_ERRORS)
                if self._ever_connected and not fatal and time.monotonic() < deadline:
                    pause = min(self._reconnect_max_delay, 0.2 * 2 ** min(attempts, 8))
                    logger.warning(
                        "reconnecting to RabbitMQ at %s failed (%s); next attempt in %.1fs",
                        self.describe,
                        _explain(exc),
                        pause,
                    )
                    await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                    continue
                if not self._ever_connected and not fatal and attempts < self._connection_attempts:
                    await asyncio.sleep(self._retry_delay)
                    continue
                raise BackendConnectionError(
                    f"could not connect to RabbitMQ at {self.describe}: {_explain(last)}"
                ) from None
            break
        self._generation += 1
        session = _AsyncSession(connection, self._generation)
        if self._ever_connected:
            logger.warning("reconnected to RabbitMQ at %s", self.describe)
        self._ever_connected = True
        self._session = session
        session.on_close(lambda _reason: self._on_lost(session))
        return session

    def _on_lost(self, session: _AsyncSession) -> None:
        """The connection closed: the broker gives every unsettled message back."""
        if self._session is session:
            self._session = None
            if not self._closed:
                logger.warning("connection to RabbitMQ at %s lost; reconnecting", self.describe)
        for queue, consumer in session.consumers.items():
            self._drop_buffered_of(queue, consumer)
        self._notify()

    async def _run(self, fn: Callable[[_AsyncSession], Awaitable[T]]) -> T:
        """Run ``fn`` on the current session, once more on a new one if the connection drops.

        Operations are safe to repeat (declarations are idempotent; a repeated publish may
        duplicate a message, which at-least-once delivery allows).
        """
        deadline = time.monotonic() + self._operation_timeout
        while True:
            session = await self._current()
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    return await fn(session)
            except TimeoutError:
                raise BackendConnectionError(
                    f"RabbitMQ at {self.describe} did not complete the operation within "
                    f"{self._operation_timeout:.0f}s"
                ) from None
            except ChannelRefused as exc:
                refusal = _refusal(exc)
                raise BackendError(
                    f"RabbitMQ at {self.describe} refused the operation: {refusal.code} "
                    f"{refusal.text}"
                ) from None
            except _CONNECTION_ERRORS as exc:
                if session.alive:
                    await session.close()
                if self._closed or time.monotonic() >= deadline:
                    raise BackendConnectionError(
                        f"lost the connection to RabbitMQ at {self.describe}: {_explain(exc)}"
                    ) from None
                logger.warning(
                    "connection to RabbitMQ at %s lost (%s); repeating the operation",
                    self.describe,
                    _explain(exc),
                )

    async def _steps(self, steps: Callable[[], Steps[T]]) -> T:
        return await self._run(lambda session: session.run(steps()))

    # -- topology ---------------------------------------------------------------------------

    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        await self._steps(lambda: declare_topic_steps(topic_name))
        self._known_topics.add(topic_name)
        return TopicWrapper(topic_name, topic_name)

    async def get_topic(self, topic_name: str) -> TopicWrapper:
        if topic_name not in self._known_topics:
            if not await self._steps(
                lambda: exists_steps(DeclareExchange(topic_name, passive=True))
            ):
                raise TopicNotFoundError(topic_name)
            self._known_topics.add(topic_name)
        return TopicWrapper(topic_name, topic_name)

    async def get_queue(self, queue_name: str) -> QueueWrapper:
        if queue_name not in self._known_queues:
            if not await self._steps(lambda: exists_steps(DeclareQueue(queue_name, passive=True))):
                raise QueueNotFoundError(queue_name)
            self._known_queues.add(queue_name)
        return QueueWrapper(queue_name, queue_name)

    async def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Declare the queue (and its dead-letter queue) and bind it to ``topics_to_bind``.

        The options are those of :meth:`RabbitMQBackend.declare_queue
        <melange.backends.rabbitmq.backend.RabbitMQBackend.declare_queue>`.
        """
        dlq = dead_letter_queue_name
        plan = self._queue_plan(queue_name, topics_to_bind, dlq, kwargs)
        return self._declared(queue_name, dlq, await self._steps(lambda: declare_steps(plan)))

    async def delete_queue(self, queue: QueueWrapper) -> None:
        """Delete the queue, its messages and its retry queues (not its dead-letter queue)."""
        name = queue.name
        extra = sorted(self._retry_steps.get(name, ()))

        async def op(session: _AsyncSession) -> None:
            await self._unsubscribe(session, name)
            await session.run(delete_queue_steps(name, extra))

        self._buffers.pop(name, None)
        await self._run(op)
        self._known_queues.discard(name)
        self._retry_steps.pop(name, None)

    async def delete_topic(self, topic: TopicWrapper) -> None:
        """Delete the topic's exchange and the queues holding its delayed messages."""
        extra = sorted(self._topic_delay_steps.pop(topic.name, ()))
        await self._steps(lambda: delete_topic_steps(topic.name, extra))
        self._known_topics.discard(topic.name)

    # -- publishing -------------------------------------------------------------------------

    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        """As :meth:`RabbitMQBackend.publish_to_queue
        <melange.backends.rabbitmq.backend.RabbitMQBackend.publish_to_queue>`, with its
        ``delay_seconds=`` and its refusal of FIFO keywords."""
        await self._publish_queue([message], queue, batch=False, kwargs=kwargs)

    async def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        await self._publish_queue(messages, queue, batch=True, kwargs=kwargs)

    async def _publish_queue(
        self,
        messages: Sequence[Message],
        queue: QueueWrapper,
        batch: bool,
        kwargs: Mapping[str, Any],
    ) -> None:
        prepared = publish_items(queue.name, messages, kwargs)
        if prepared is None:
            return
        items, delay_ms = prepared
        if delay_ms:
            # A retry queue routes whatever it holds: the queue itself must exist now.
            await self.get_queue(queue.name)
            self._note_retry_delay(queue.name, delay_ms)

        async def op(session: _AsyncSession) -> list[str | None]:
            target = queue.name
            if delay_ms:
                target = await session.run(retry_queue_steps(queue.name, delay_ms))
            try:
                return await session.publish("", target, items, True, self._confirms)
            except ChannelRefused as exc:
                refusal = _refusal(exc)
                raise publish_refused(refusal.code, refusal.text, f"queue {queue.name!r}") from None

        missing = check_queue_publish(await self._run(op), queue.name, batch)
        if missing is not None:
            self._known_queues.discard(queue.name)
            raise missing

    async def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        """As :meth:`RabbitMQBackend.publish_to_topic
        <melange.backends.rabbitmq.backend.RabbitMQBackend.publish_to_topic>`, with its
        ``delay_seconds=``."""
        await self._publish_topic([message], topic, batch=False, kwargs=kwargs)

    async def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        await self._publish_topic(messages, topic, batch=True, kwargs=kwargs)

    async def _publish_topic(
        self,
        messages: Sequence[Message],
        topic: TopicWrapper,
        batch: bool,
        kwargs: Mapping[str, Any],
    ) -> None:
        prepared = publish_items(topic.name, messages, kwargs)
        if prepared is None:
            return
        items, delay_ms = prepared
        mandatory = self._require_subscribers
        if delay_ms:
            # The delay queue dead-letters into the exchange: it must exist now.
            await self.get_topic(topic.name)
            self._note_topic_delay(topic.name, delay_ms)

        async def op(session: _AsyncSession) -> list[str | None]:
            try:
                if delay_ms:
                    holder = await session.run(topic_delay_steps(topic.name, delay_ms))
                    return await session.publish("", holder, items, True, self._confirms)
                return await session.publish(topic.name, "", items, mandatory, self._confirms)
            except ChannelRefused as exc:
                refusal = _refusal(exc)
                raise topic_publish_refused(refusal.code, refusal.text, topic.name) from None

        try:
            outcome = await self._run(op)
        except TopicNotFoundError:
            self._known_topics.discard(topic.name)
            raise
        check_topic_publish(outcome, messages, topic.name, batch)

    # -- consuming --------------------------------------------------------------------------

    async def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Hand out up to ``max_messages`` (default 10) buffered messages of ``queue``.

        Starts consuming the queue on the first call. Waits up to ``wait_seconds`` (default
        0) while nothing is buffered; :meth:`interrupt` ends the wait early.
        """
        max_messages, wait = receive_options(kwargs)
        name = queue.name
        deadline = time.monotonic() + wait
        interrupts = self._interrupts
        self._last_retrieve[name] = time.monotonic() + wait
        session = self._session
        consumer = session.consumers.get(name) if session is not None else None
        if session is None or not session.alive or consumer is None or not consumer.active:
            budget = self._consume_budget(wait)
            try:
                await asyncio.wait_for(self._run(lambda s: self._ensure_consuming(s, name)), budget)
            except TimeoutError:
                raise BackendConnectionError(
                    f"RabbitMQ at {self.describe} did not start consuming {name!r} within "
                    f"{budget:.0f}s"
                ) from None
        await self._release_idle_consumers()
        buffer = self._buffers.setdefault(name, deque())
        while True:
            if buffer:
                return [buffer.popleft() for _ in range(min(max_messages, len(buffer)))]
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._interrupts != interrupts or self._closed:
                return []
            current = self._session
            consumer = current.consumers.get(name) if current is not None else None
            if consumer is None or not consumer.active:
                return []  # lost meanwhile: the next call consumes again
            # A future of its own and a timer: cheaper than asyncio.wait, and cancelling
            # this call leaves the other waiters alone.
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            timer = loop.call_later(remaining, _release_waiter, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiters.discard(waiter)
            buffer = self._buffers.setdefault(name, deque())

    async def _ensure_consuming(self, session: _AsyncSession, name: str) -> None:
        consumer = session.consumers.get(name)
        if consumer is not None and consumer.active:
            return
        await self._unsubscribe(session, name)
        channel = await AsyncChannel.open(session.connection)
        await channel.basic_qos(prefetch_count=self._prefetch_count)
        consumer = _AsyncConsumer(name, channel, session.generation)
        buffers = self._buffers

        # Called by pika as the frames are read (deliveries may come with the ConsumeOk).
        def on_message(_channel: Any, method: Any, properties: Any, body: bytes) -> None:
            tag = method.delivery_tag
            consumer.unacked.add(tag)
            receipt = AsyncRabbitMQReceipt(name, consumer.generation, consumer, tag)
            try:
                message = from_delivery(properties, body, receipt)
            except Exception:
                # Raising here would make pika drop the connection, and the message would
                # come back to fail again: it stays unsettled until the channel closes.
                logger.exception("could not read a message delivered from %s", name)
                return
            buffers.setdefault(name, deque()).append(message)
            self._notify()

        def on_cancel(_frame: Any) -> None:
            consumer.cancelled = True
            self._notify()

        channel.add_cancel_callback(on_cancel)
        try:
            consumer.tag = await channel.basic_consume(name, on_message)
        except ChannelRefused as exc:
            if exc.reply_code != NOT_FOUND:
                raise
            self._known_queues.discard(name)
            raise QueueNotFoundError(name) from None
        session.consumers[name] = consumer

    async def _unsubscribe(self, session: _AsyncSession, name: str) -> None:
        """Stop consuming ``name``: its unsettled messages go back to the queue."""
        consumer = session.consumers.pop(name, None)
        if consumer is None:
            return
        self._drop_buffered_of(name, consumer)
        if not consumer.channel.is_closed:
            try:
                await consumer.channel.close()
            except Exception:  # closing anyway: the broker requeues what it holds
                logger.debug("closing a consumer channel failed", exc_info=True)

    async def _release_idle_consumers(self) -> None:
        """Stop consuming queues nobody retrieves from, handing their buffers back."""
        session = self._session
        if session is None or not session.alive:
            return
        now = time.monotonic()
        for name, consumer in list(session.consumers.items()):
            if not self._idle(name, len(consumer.unacked), now):
                continue
            logger.debug("no longer consuming idle queue %s", name)
            await self._unsubscribe(session, name)

    def _notify(self) -> None:
        """Wake every ``retrieve_messages`` waiting (on the loop)."""
        waiters = self._waiters
        if waiters:
            self._waiters = set()
            for waiter in waiters:
                _release_waiter(waiter)

    def interrupt(self) -> None:
        """Wake a :meth:`retrieve_messages` waiting for messages (from any thread)."""
        with self._interrupt_lock:
            self._interrupts += 1
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # RuntimeError: the loop closed meanwhile, so nobody is waiting.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._notify)

    # -- settling ---------------------------------------------------------------------------

    def _valid(self, receipt: AsyncRabbitMQReceipt) -> bool:
        session = self._session
        return (
            session is not None
            and session.alive
            and session.generation == receipt.generation
            and not receipt.consumer.channel.is_closed
            and receipt.delivery_tag in receipt.consumer.unacked
        )

    async def _settle(
        self, message: Message, action: Callable[[AsyncRabbitMQReceipt], Awaitable[T]]
    ) -> T | None:
        receipt = _receipt(message)
        if not self._valid(receipt):
            return None  # settled already, or the connection was reset: redelivered anyway
        try:
            return await action(receipt)
        except _CONNECTION_ERRORS:
            return None  # its connection is gone: the broker delivers it again
        except ChannelRefused as exc:
            refusal = _refusal(exc)
            raise BackendError(
                f"RabbitMQ at {self.describe} refused the operation: {refusal.code} {refusal.text}"
            ) from None

    async def acknowledge(self, message: Message) -> None:
        """Acknowledge ``message``; see :meth:`acknowledge_batch`."""
        await self.acknowledge_batch([message])

    async def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Acknowledge ``messages``: they are removed from their queues.

        A message received on a connection that has since been lost is not acknowledged
        (the broker delivers it again). Where a consumer's batch holds every tag it has
        outstanding up to its highest one, a single ``multiple`` acknowledgement settles all.

        Returns once the acknowledgements are queued for the socket, in order with every
        later frame (the loop writes them when it next runs): AMQP acknowledgements get no
        answer, so waiting for them would only cost a round of the loop each.
        """
        receipts = [_receipt(m) for m in messages]
        by_consumer: dict[int, tuple[_AsyncConsumer, list[int]]] = {}
        for receipt in receipts:
            if not self._valid(receipt):
                continue
            entry = by_consumer.setdefault(id(receipt.consumer), (receipt.consumer, []))
            entry[1].append(receipt.delivery_tag)
        for consumer, tags in by_consumer.values():
            highest, multiple, tags = ack_plan(consumer.unacked, tags)
            consumer.unacked.difference_update(tags)
            try:
                if multiple:
                    consumer.channel.basic_ack(highest, multiple=True)
                else:
                    for tag in tags:
                        consumer.channel.basic_ack(tag)
            except _CONNECTION_ERRORS:
                logger.debug("acknowledgement lost with the connection; redelivered")

    async def nack(self, message: Message, delay: float = 0.0) -> None:
        """Report a failed attempt: ``message`` comes back after ``delay`` seconds with its
        attempt count one higher."""
        await self._give_back(message, delay, failed=True)

    async def release(self, message: Message, delay: float = 0.0) -> None:
        """Give back ``message`` unprocessed: it comes back after ``delay`` seconds with the
        attempt count it had."""
        if delay <= 0:
            await self._settle(message, _requeue)
            return
        await self._give_back(message, delay, failed=False)

    def holds(self, message: Message) -> bool:
        """``False`` once the connection ``message`` came on is gone (it is redelivered)."""
        receipt = message.metadata
        if not isinstance(receipt, AsyncRabbitMQReceipt):
            return False
        session = self._session
        return (
            session is not None
            and session.alive
            and session.generation == receipt.generation
            and receipt.consumer.active
        )

    async def _give_back(self, message: Message, delay: float, failed: bool) -> None:
        receipt = _receipt(message)
        plan = give_back(receipt.queue, message, delay, failed)
        copy = give_back_copy(message, plan)
        session = self._session

        async def action(receipt: AsyncRabbitMQReceipt) -> None:
            assert session is not None
            if plan.delay_ms:
                self._note_retry_delay(plan.queue, plan.delay_ms)
                await session.run(retry_queue_steps(plan.queue, plan.delay_ms))
            [refused] = await session.publish("", plan.target, [copy], True, self._confirms)
            if refused is not None:
                # The copy did not land: keep the original and let the broker return it.
                give_back_refused(message, plan.target, refused)
                await _requeue(receipt)
                return
            await _ack(receipt)

        await self._settle(message, action)

    async def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        """Publish a copy with ``headers`` to the queue's dead-letter queue, then ack.

        Returns ``False``, leaving the message unsettled, when no dead-letter queue is bound
        for the queue.
        """
        _receipt(message)  # refuses messages of other backends before any I/O
        copy = dead_letter_copy(message, headers)
        session = self._session

        async def action(receipt: AsyncRabbitMQReceipt) -> bool:
            assert session is not None
            try:
                [refused] = await session.publish(
                    DEAD_LETTER_EXCHANGE, receipt.queue, [copy], True, self._confirms
                )
            except ChannelRefused as exc:
                if exc.reply_code != NOT_FOUND:
                    raise
                return False  # no dead-letter queue was ever declared
            if not dead_letter_routed(refused, message.message_id):
                return False
            await _ack(receipt)
            return True

        return dead_lettered(await self._settle(message, action), message)

    async def aclose(self) -> None:
        """Close the connection; unsettled messages go back to their queues."""
        self._closed = True
        self.interrupt()
        session, self._session = self._session, None
        if session is not None and session.alive:
            # Acknowledgements are queued without waiting for the socket: one round trip on
            # each consumer's channel makes sure they reached the broker before the close,
            # or their messages would be delivered again.
            for consumer in list(session.consumers.values()):
                try:
                    await asyncio.wait_for(
                        consumer.channel.basic_qos(prefetch_count=self._prefetch_count), 5.0
                    )
                except Exception:
                    logger.debug("flushing acknowledgements before the close failed", exc_info=True)
            await session.close()
        self._buffers.clear()


# -- helpers ---------------------------------------------------------------------------------


def _receipt(message: Message) -> AsyncRabbitMQReceipt:
    receipt = message.metadata
    if not isinstance(receipt, AsyncRabbitMQReceipt):
        raise ValueError(f"{message!r} was not received from an AsyncRabbitMQBackend")
    return receipt


def _release_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _ack(receipt: AsyncRabbitMQReceipt) -> None:
    receipt.consumer.unacked.discard(receipt.delivery_tag)
    receipt.consumer.channel.basic_ack(receipt.delivery_tag)


async def _requeue(receipt: AsyncRabbitMQReceipt) -> None:
    # Back in its place in the queue; the broker's delivery count (the backstop) goes up.
    receipt.consumer.unacked.discard(receipt.delivery_tag)
    receipt.consumer.channel.basic_nack(receipt.delivery_tag, requeue=True)


__all__ = ["AsyncRabbitMQBackend", "AsyncRabbitMQReceipt"]

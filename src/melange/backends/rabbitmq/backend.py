"""The RabbitMQ backend: durable queues, topic exchanges, publisher confirms, reconnection.

Mapping onto RabbitMQ (AMQP 0-9-1):

- **Queue**: a durable queue. New queues are *quorum* queues: they are replicated, and with a
  dead-letter queue they dead-letter a message by themselves once it was delivered
  ``max_receive_count`` times without being settled (default 20): a backstop against a message
  that crashes every consumer it reaches, far above the failure policy's attempts. A queue
  that already exists keeps its type: queues created before Melange, or by tools that default
  to classic queues, are used as they are (a queue's type cannot change without deleting it).
  Classic queues work the same way, without the backstop. ``queue_type="quorum"`` or
  ``"classic"`` asks for one type and refuses existing queues of the other, with the broker's
  reason.
- **Attempts**: ``attempt`` counts handler runs, not deliveries. A failed attempt
  (:meth:`RabbitMQBackend.nack`) republishes the message with the attempts so far in the
  ``melange_deliveries`` header and acknowledges the original; messages returned by a
  connection loss, a crash, a stop (:meth:`RabbitMQBackend.release`) or an idle consumer come
  back with the count they had, so neither prefetched messages nor clean stops use up the
  failure policy's attempts.
- **Topic**: a durable ``headers`` exchange. A subscribed queue is bound to it; with
  ``filter_events`` it is bound once per listed manifest (matching the ``manifest`` header), so
  the broker drops what the queue did not ask for.
- **Dead-letter queue**: a queue bound to the ``melange.dlx`` direct exchange with the routing
  key of the queue it serves. :meth:`RabbitMQBackend.dead_letter` publishes there, and the
  queue's native dead-lettering (``x-dead-letter-exchange``) uses the same route, so any
  process can find a queue's dead-letter queue through the broker alone. A message the
  broker dead-lettered by itself (delivery limit reached) is received with
  ``melange_failure_reason`` ``"dead-lettered by RabbitMQ: delivery_limit"``.
- **Delayed retry**: ``nack(message, delay)`` publishes a copy to a retry queue named
  ``<queue>.melange-retry-<ms>ms`` whose message TTL is the delay and whose dead-letter target
  is the original queue, then acknowledges the original (AMQP cannot requeue a message with a
  delay, and per-message TTLs in one shared queue would make short delays wait behind long
  ones). Delays are rounded to the nearest step of a fixed ladder (100 ms, 200 ms, 300 ms,
  500 ms, 1 s, 2 s, 3 s, 5 s, 10 s ...) so a queue gets a handful of retry queues, not one per
  jittered delay. Retry queues are quorum queues with at-least-once dead-lettering, so a
  waiting message survives a broker restart and cannot be dropped on its way back, and they
  never expire: a queue lease (``x-expires``) deletes the messages in the queue with it, and
  RabbitMQ does not renew a quorum queue's lease on redeclaration. They live as long as their
  queue: :meth:`RabbitMQBackend.delete_queue` deletes them.

Publishing waits for the broker's confirm (``publisher_confirms=True``); batches are pipelined
and wait for all confirms once. Queue publishes are *mandatory*: a message for a queue that
does not exist raises :class:`~melange.exceptions.QueueNotFoundError` instead of vanishing.
Topic publishes are not: a topic without subscribers (or whose subscribers' filters do not
match) drops the message, as SNS does, because publishing an event nobody listens to yet is
normal in pub/sub. Pass ``require_topic_subscribers=True`` to raise
:class:`~melange.exceptions.PublishError` instead.

Receiving uses ``basic.consume`` with a prefetch window (``prefetch_count``): messages stream
into a local buffer and :meth:`RabbitMQBackend.retrieve_messages` hands them out. A message
stays unacknowledged (owned by this connection) until it is settled; if the connection drops,
the broker delivers it again. There is no visibility timeout. A queue nobody retrieves from
for ``consumer_idle_timeout`` seconds is no longer consumed, and its buffered messages go back
to the broker for other consumers.

All broker I/O runs on one thread per backend that owns the connection (see
:mod:`melange.backends.rabbitmq.io_thread`): every method is thread-safe, heartbeats are
answered while handlers run, and a dropped connection is re-established with backoff, after
which consumers resubscribe and interrupted publishes are repeated. Receiving and
acknowledging do not wait for that thread: deliveries are buffered as they arrive, and
acknowledgements (which AMQP does not answer) are queued for it in order, are dropped for
messages of an older connection (the broker delivers those again), and are sent before the
connection closes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import pika
import pika.exceptions

from melange.backends.interfaces import MessagingBackend
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
from melange.backends.rabbitmq.inspect import RabbitMQInspection
from melange.backends.rabbitmq.io_thread import ConnectionThread
from melange.backends.rabbitmq.session import (
    RabbitMQReceipt,
    Session,
    Subscription,
    ack,
    ack_many,
    perform,
    requeue,
)
from melange.backends.rabbitmq.topology import (
    DEAD_LETTER_EXCHANGE,
    NOT_FOUND,
    DeclareExchange,
    DeclareQueue,
    Steps,
    check_queue_publish,
    check_topic_publish,
    dead_letter_routed,
    declare_steps,
    declare_topic_steps,
    delete_queue_steps,
    delete_topic_steps,
    drive,
    exists_steps,
    give_back,
    publish_refused,
    retry_queue_steps,
    topic_delay_steps,
)
from melange.backends.rabbitmq.wire import from_delivery
from melange.exceptions import BackendError, QueueNotFoundError, TopicNotFoundError
from melange.models import Message, QueueWrapper, TopicWrapper

logger = logging.getLogger("melange.backends.rabbitmq")

T = TypeVar("T")


class RabbitMQBackend(RabbitMQInspection, RabbitMQBackendBase, MessagingBackend):
    """A messaging backend on RabbitMQ (AMQP 0-9-1, via pika).

    Give either ``url`` (``amqp://user:password@host:5672/vhost``, URL-encoded; ``%2F`` is the
    default vhost ``/``) or keyword connection parameters. The constructor connects and
    raises :class:`~melange.exceptions.BackendConnectionError` naming host, port and vhost when
    the broker cannot be reached or refuses the credentials.

    Args:
        url: An AMQP URL; the keyword connection parameters then must not be given.
        host: Broker host.
        port: Broker port.
        virtual_host: The vhost.
        credentials: pika credentials; alternatively ``username`` and ``password``.
        username: User name (default ``guest``).
        password: Password (default ``guest``).
        heartbeat: Heartbeat interval negotiated with the broker, in seconds.
        connection_attempts: Attempts of the first connection before giving up.
        retry_delay: Seconds between those attempts.
        socket_timeout: Seconds to wait for the TCP connection and the AMQP handshake.
        queue_type: ``"quorum"`` or ``"classic"``: the type of the queues this backend declares
            (``declare_queue(..., queue_type=...)`` overrides it per queue); declaring an
            existing queue of another type then fails. ``None`` (the default) declares new
            queues as quorum queues and uses existing queues with the type they have.
        prefetch_count: Unsettled messages this backend may hold per consumed queue: those
            waiting in the local buffer plus those handed out and not yet settled. When that
            many are unsettled, no more arrive until some are settled, so keep it above the
            number of messages your code holds at once (``workers`` plus a batch).
        publisher_confirms: Wait for the broker to confirm each publish (on by default).
            Without confirms, publishing returns once the message is written to the socket,
            and refused or unroutable messages are only logged.
        require_topic_subscribers: Raise ``PublishError`` when a topic publish reaches no
            queue, instead of dropping the message.
        operation_timeout: Longest time a call waits for the broker (for instance while
            reconnecting) before raising ``BackendConnectionError``.
        consumer_idle_timeout: Seconds without a ``retrieve_messages`` call on a queue after
            which this backend stops consuming it and gives the messages buffered for it back
            to the broker (so another consumer gets them), provided none it handed out is
            still unsettled. Consuming resumes with the next ``retrieve_messages``.
        reconnect_max_delay: Longest pause between reconnection attempts, in seconds.
        connection_name: Name shown for the connection in the broker's management tools.
        **parameters: Further ``pika.ConnectionParameters`` arguments (``ssl_options``, ...).

    Attributes:
        queue_type: The ``queue_type`` asked for (read-only): ``"quorum"``, ``"classic"`` or
            ``None``.
    """

    def _setup(self) -> None:
        self._next_idle_check = 0.0
        self._cond = threading.Condition()
        # Deliveries of the current round of I/O, not yet in the buffers (I/O thread only).
        self._arrived: list[tuple[Subscription, int, Any, Any, bytes]] = []
        # The consumer of each queue, so callers can see without asking the I/O thread
        # whether a queue is consumed; written by the I/O thread under _cond.
        self._consuming: dict[str, Subscription] = {}
        self._wanted: set[str] = set()
        self._subscribe_errors: dict[str, BaseException] = {}
        self._link = ConnectionThread(
            self._params,
            self._on_connect,
            self._on_disconnect,
            self.describe,
            reconnect_max_delay=self._reconnect_max_delay,
            on_idle=self._housekeeping,
            after_io=self._hand_over,
        )
        budget = self._connection_attempts * (self._socket_timeout * 2 + self._retry_delay) + 5.0
        self._link.start(timeout=budget)

    @property
    def connected(self) -> bool:
        """Whether the connection to the broker is up right now."""
        return self._link.connected

    # -- connection lifecycle (I/O thread) --------------------------------------------------

    def _on_connect(self, connection: Any) -> Session:
        session = Session(self, connection)
        with self._cond:
            wanted = sorted(self._wanted)
        for queue in wanted:
            try:
                session.subscribe(queue)
            except QueueNotFoundError as exc:
                with self._cond:
                    self._wanted.discard(queue)
                    self._subscribe_errors[queue] = exc
                    self._cond.notify_all()
        return session

    def _on_disconnect(self) -> None:
        self._arrived.clear()
        with self._cond:
            # The broker gives every unacknowledged message back; drop our copies.
            for buffer in self._buffers.values():
                buffer.clear()
            self._consuming.clear()
            self._cond.notify_all()

    def _hand_over(self, _session: Session | None = None) -> None:
        """Move the deliveries of the last round of I/O into the buffers (I/O thread).

        One lock and one wake-up per round rather than per message, so a receiving thread
        finds every message of a burst at once instead of waking for each.
        """
        arrived = self._arrived
        if not arrived:
            return
        messages: list[Message] = []
        for consumer, generation, method, properties, body in arrived:
            receipt = RabbitMQReceipt(consumer.queue, generation, consumer, method.delivery_tag)
            messages.append(from_delivery(properties, body, receipt))
        arrived.clear()
        with self._cond:
            buffers = self._buffers
            for message in messages:
                queue = message.metadata.queue
                buffer = buffers.get(queue)
                if buffer is None:
                    buffer = buffers[queue] = deque()
                buffer.append(message)
            self._cond.notify_all()

    def _housekeeping(self, session: Session) -> None:
        # Before the I/O thread waits for the broker: nothing received may wait with it.
        self._hand_over()
        self._release_idle_consumers(session)

    def _drop_buffered(self, consumer: Subscription) -> None:
        self._hand_over()
        with self._cond:
            self._drop_buffered_of(consumer.queue, consumer)

    def _release_idle_consumers(self, session: Session) -> None:
        """Stop consuming queues nobody retrieves from, handing their buffers back."""
        now = time.monotonic()
        if now < self._next_idle_check:
            return
        self._next_idle_check = now + min(1.0, self._idle_timeout / 2)
        idle: list[str] = []
        with self._cond:
            for name, consumer in session.consumers.items():
                if not self._idle(name, len(consumer.unacked), now):
                    continue
                buffered = self._buffers.get(name)
                if buffered:
                    buffered.clear()
                self._wanted.discard(name)
                idle.append(name)
        for name in idle:
            logger.debug("no longer consuming idle queue %s", name)
            session.unsubscribe(name)

    def _call(self, fn: Any, timeout: float | None = None) -> Any:
        try:
            return self._link.call(fn, self._operation_timeout if timeout is None else timeout)
        except pika.exceptions.ChannelClosedByBroker as exc:
            # Refusals not handled where they happen (e.g. 403 ACCESS_REFUSED on a resource).
            raise BackendError(
                f"RabbitMQ at {self.describe} refused the operation: {exc.reply_code} "
                f"{exc.reply_text}"
            ) from None
        except pika.exceptions.AMQPError as exc:
            raise BackendError(f"RabbitMQ at {self.describe}: {type(exc).__name__}: {exc}") from exc

    # -- topology ---------------------------------------------------------------------------

    def _steps(self, steps: Steps[T]) -> T:
        """Perform topology ``steps`` (see :mod:`~melange.backends.rabbitmq.topology`)."""
        return self._call(lambda session: drive(steps, lambda op: perform(session, op)))  # type: ignore[no-any-return]

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        self._steps(declare_topic_steps(topic_name))
        self._known_topics.add(topic_name)
        return TopicWrapper(topic_name, topic_name)

    def get_topic(self, topic_name: str) -> TopicWrapper:
        if topic_name not in self._known_topics:
            if not self._steps(exists_steps(DeclareExchange(topic_name, passive=True))):
                raise TopicNotFoundError(topic_name)
            self._known_topics.add(topic_name)
        return TopicWrapper(topic_name, topic_name)

    def get_queue(self, queue_name: str) -> QueueWrapper:
        if queue_name not in self._known_queues:
            if not self._steps(exists_steps(DeclareQueue(queue_name, passive=True))):
                raise QueueNotFoundError(queue_name)
            self._known_queues.add(queue_name)
        return QueueWrapper(queue_name, queue_name)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Declare the queue (and its dead-letter queue) and bind it to ``topics_to_bind``.

        Keyword arguments: ``filter_events`` (manifests the queue receives from the topics),
        ``max_receive_count`` (deliveries without a verdict, e.g. to consumers that crashed,
        before a quorum queue dead-letters a message by itself, default 20; only with a
        dead-letter queue; failed attempts are the failure policy's to count),
        ``queue_type`` (``"quorum"`` or ``"classic"``), ``arguments`` (further ``x-`` queue
        arguments). ``visibility_timeout`` is accepted for portability and ignored: RabbitMQ
        keeps a message with its consumer until it is settled or the consumer disconnects.

        Bindings are only ever added: calling it again with other ``filter_events`` adds the new
        manifests but does not remove manifests bound before (delete and re-create the queue,
        or unbind them with the broker's tools).

        Raises:
            ConfigurationError: unknown options, or the queue exists with other arguments (the
                message names the argument, as reported by the broker).
        """
        dlq = dead_letter_queue_name
        plan = self._queue_plan(queue_name, topics_to_bind, dlq, kwargs)
        return self._declared(queue_name, dlq, self._steps(declare_steps(plan)))

    def delete_queue(self, queue: QueueWrapper) -> None:
        """Delete the queue, its messages and its retry queues (not its dead-letter queue)."""
        name = queue.name
        extra = sorted(self._retry_steps.get(name, ()))

        def op(session: Session) -> None:
            session.unsubscribe(name)
            drive(delete_queue_steps(name, extra), lambda op: perform(session, op))

        with self._cond:
            self._wanted.discard(name)
            self._buffers.pop(name, None)
        self._call(op)
        self._known_queues.discard(name)
        self._retry_steps.pop(name, None)

    def delete_topic(self, topic: TopicWrapper) -> None:
        """Delete the topic's exchange and the queues holding its delayed messages."""
        name = topic.name
        self._steps(delete_topic_steps(name, sorted(self._topic_delay_steps.pop(name, ()))))
        self._known_topics.discard(name)

    # -- publishing -------------------------------------------------------------------------

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        """Publish with a publisher confirm; the message is mandatory (a missing queue raises
        ``QueueNotFoundError``).

        ``delay_seconds=`` holds it back in the queue's retry queue for that delay, rounded
        up to the next step of the retry ladder (see :func:`~melange.backends.rabbitmq.
        topology.publish_delay_ms`). FIFO keywords and ``.fifo`` queues are refused.
        """
        self._publish_queue([message], queue, batch=False, kwargs=kwargs)

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        self._publish_queue(messages, queue, batch=True, kwargs=kwargs)

    def _publish_queue(
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
            self.get_queue(queue.name)
            self._note_retry_delay(queue.name, delay_ms)

        def op(session: Session) -> list[str | None]:
            target = queue.name
            if delay_ms:
                steps = retry_queue_steps(queue.name, delay_ms)
                target = drive(steps, lambda op: perform(session, op))
            try:
                return session.publish("", target, items, True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise publish_refused(
                    exc.reply_code, exc.reply_text, f"queue {queue.name!r}"
                ) from None

        missing = check_queue_publish(self._call(op), queue.name, batch)
        if missing is not None:
            self._known_queues.discard(queue.name)
            raise missing

    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        """Publish to the topic's exchange, with a publisher confirm.

        ``delay_seconds=`` holds the message in the topic's delay queue (rounded up as for
        queues) before the exchange routes it; a subscriber check (``require_subscribers``)
        cannot apply then: a message no queue accepts when it comes out is dropped.
        """
        self._publish_topic([message], topic, batch=False, kwargs=kwargs)

    def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        self._publish_topic(messages, topic, batch=True, kwargs=kwargs)

    def _publish_topic(
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
            self.get_topic(topic.name)
            self._note_topic_delay(topic.name, delay_ms)

        def op(session: Session) -> list[str | None]:
            try:
                if delay_ms:
                    steps = topic_delay_steps(topic.name, delay_ms)
                    holder = drive(steps, lambda op: perform(session, op))
                    return session.publish("", holder, items, True)
                return session.publish(topic.name, "", items, mandatory)
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise topic_publish_refused(exc.reply_code, exc.reply_text, topic.name) from None

        try:
            outcome = self._call(op)
        except TopicNotFoundError:
            self._known_topics.discard(topic.name)
            raise
        check_topic_publish(outcome, messages, topic.name, batch)

    # -- consuming --------------------------------------------------------------------------

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Hand out up to ``max_messages`` (default 10) buffered messages of ``queue``.

        Starts consuming the queue on the first call. Blocks up to ``wait_seconds`` (default
        0) while nothing is buffered; :meth:`interrupt` ends the wait early.
        """
        max_messages, wait = receive_options(kwargs)
        name = queue.name
        deadline = time.monotonic() + wait
        with self._cond:
            self._last_retrieve[name] = time.monotonic() + wait
            interrupts = self._interrupts
            error = self._subscribe_errors.pop(name, None)
            consumer = self._consuming.get(name)
            # Consumed already on the current connection: no need to ask the I/O thread.
            # (Reading the channel's state from here is a benign race: a channel closing
            # right now is noticed by the next call.)
            consuming = (
                consumer is not None
                and name in self._wanted
                and consumer.generation == self._link.generation
                and self._link.connected
                and consumer.active
            )
        if error is not None:
            self._known_queues.discard(name)
            raise error
        if not consuming:
            self._ensure_consuming(name, wait)
        busy = False
        with self._cond:
            self._buffers.setdefault(name, deque())
            while True:
                buffer = self._buffers.get(name)
                if buffer:
                    return [buffer.popleft() for _ in range(min(max_messages, len(buffer)))]
                error = self._subscribe_errors.pop(name, None)
                if error is not None:
                    raise error
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._interrupts != interrupts or self._link.closed:
                    return []
                if not busy:
                    # Read the deliveries on this thread when the connection is free, rather
                    # than wait for the I/O thread to hand them over.
                    self._cond.release()
                    try:
                        busy = not self._link.drive(remaining)
                    finally:
                        self._cond.acquire()
                    continue  # what arrived meanwhile is in the buffer
                self._cond.wait(remaining)
                busy = False

    def _ensure_consuming(self, name: str, wait: float) -> None:
        with self._cond:
            self._wanted.add(name)

        def op(session: Session) -> None:
            consumer = session.consumers.get(name)
            if consumer is None or not consumer.active:
                try:
                    session.subscribe(name)
                except QueueNotFoundError:
                    with self._cond:
                        self._wanted.discard(name)
                    self._known_queues.discard(name)
                    raise

        self._call(op, timeout=self._consume_budget(wait))

    def _settle(self, message: Message, action: Any) -> Any:
        receipt = message.metadata
        if not isinstance(receipt, RabbitMQReceipt):
            raise ValueError(f"{message!r} was not received from a RabbitMQ backend")

        def op(session: Session) -> Any:
            consumer = receipt.consumer
            if (
                session.generation != receipt.generation
                or not consumer.channel.is_open
                or receipt.delivery_tag not in consumer.unacked
            ):
                # Settled already, or the connection was reset: the broker redelivers it.
                return None
            return action(session, receipt)

        return self._call(op)

    def acknowledge(self, message: Message) -> None:
        """Acknowledge ``message``; see :meth:`acknowledge_batch`."""
        self.acknowledge_batch([message])

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Acknowledge ``messages``: they are removed from their queues.

        Returns without waiting for the I/O thread: AMQP acknowledgements get no answer, so
        waiting would only measure the hand-over. They are sent in order with every other
        operation of this backend, before :meth:`close_connection` closes the connection.
        A message received on a connection that has since been replaced is not acknowledged
        (the broker delivers it again), as when the acknowledgement itself is lost.
        """
        receipts = [m.metadata for m in messages]
        for message, receipt in zip(messages, receipts, strict=True):
            if not isinstance(receipt, RabbitMQReceipt):
                raise ValueError(f"{message!r} was not received from a RabbitMQ backend")
        if receipts:
            self._link.post(lambda session: ack_many(session, receipts))

    def nack(self, message: Message, delay: float = 0.0) -> None:
        """Report a failed attempt: ``message`` comes back after ``delay`` seconds with its
        attempt count one higher (see the module doc)."""
        self._give_back(message, delay, failed=True)

    def release(self, message: Message, delay: float = 0.0) -> None:
        """Give back ``message`` unprocessed: it comes back after ``delay`` seconds with the
        attempt count it had."""
        if delay <= 0:
            self._settle(message, requeue)
            return
        self._give_back(message, delay, failed=False)

    def holds(self, message: Message) -> bool:
        """``False`` once the connection ``message`` came on is gone (it is redelivered)."""
        receipt = message.metadata
        if not isinstance(receipt, RabbitMQReceipt):
            return False
        # Reads the I/O thread's state: a connection dropping right now is only noticed by
        # the next call, and the message is then processed in vain, as without this check.
        return (
            receipt.generation == self._link.generation
            and self._link.connected
            and receipt.consumer.active
        )

    def _give_back(self, message: Message, delay: float, failed: bool) -> None:
        """Republish ``message`` (to its retry queue, for ``delay``), counting the attempt when
        it ``failed``, then acknowledge the original (see
        :func:`~melange.backends.rabbitmq.topology.give_back`)."""
        receipt = message.metadata
        queue_name = receipt.queue if isinstance(receipt, RabbitMQReceipt) else ""
        plan = give_back(queue_name, message, delay, failed)
        copy = give_back_copy(message, plan)

        def action(session: Session, receipt: RabbitMQReceipt) -> None:
            if plan.delay_ms:
                self._note_retry_delay(queue_name, plan.delay_ms)
                drive(retry_queue_steps(queue_name, plan.delay_ms), lambda op: perform(session, op))
            [refused] = session.publish("", plan.target, [copy], True)
            if refused is not None:
                # The copy did not land: keep the original and let the broker return it.
                give_back_refused(message, plan.target, refused)
                requeue(session, receipt)
                return
            ack(session, receipt)

        self._settle(message, action)

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        """Publish a copy with ``headers`` to the queue's dead-letter queue, then ack.

        Returns ``False``, leaving the message unsettled, when no dead-letter queue is bound
        for the queue (see the module documentation).
        """
        receipt = message.metadata
        if not isinstance(receipt, RabbitMQReceipt):
            raise ValueError(f"{message!r} was not received from a RabbitMQ backend")
        copy = dead_letter_copy(message, headers)

        def action(session: Session, receipt: RabbitMQReceipt) -> bool:
            try:
                [refused] = session.publish(DEAD_LETTER_EXCHANGE, receipt.queue, [copy], True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == NOT_FOUND:  # no dead-letter queue was ever declared
                    return False
                raise
            if not dead_letter_routed(refused, message.message_id):
                return False
            ack(session, receipt)
            return True

        return dead_lettered(self._settle(message, action), message)

    def interrupt(self) -> None:
        with self._cond:
            self._interrupts += 1
            self._cond.notify_all()
        self._link.interrupt_leader()

    def close_connection(self) -> None:
        """Close the connection; unsettled messages go back to their queues."""
        self.interrupt()
        self._link.close()

    def __repr__(self) -> str:
        return f"RabbitMQBackend({self.describe})"

""":class:`KombuBackend`: Melange's queues and topics on any kombu transport.

One adapter for every transport: it speaks kombu's channel API (``queue_declare``,
``basic_publish``, ``basic_get``, ``basic_ack``...), which kombu implements natively on AMQP
and emulates on its "virtual" transports (Redis, in-memory, ...). See
:mod:`~melange.backends.kombu.topology` for how queues, topics and dead letters map onto it,
and :func:`~melange.backends.kombu.topology.capabilities` for what each transport can do.

- **Receiving**, on AMQP, is a consumer (``basic_consume``) whose prefetch count is the
  receive's batch size: the broker pushes the next messages while the current ones are
  handled, and a backend holds at most a batch it has not handed out yet (the broker gives
  it back when the connection closes). The connection sends AMQP heartbeats (``heartbeat``
  seconds), from the receive loop and from a timer while handlers run, so a half-open
  connection is noticed by both sides; after a lost connection the next receive consumes
  again on a new one. A wait without a message sleeps on the socket, so a delivery ends it at
  once. On virtual transports (Redis...) receiving is ``basic_get`` (one message per call,
  no prefetch): an empty queue is polled with a growing pause (up to ``poll_interval``).
  A publish by the same backend and :meth:`KombuBackend.interrupt` end a wait at once.
- **At-least-once**: a message stays unacknowledged until the dispatcher settles it. On AMQP
  an unacknowledged message goes back to its queue when its channel closes (a crash, a lost
  connection); on Redis, kombu keeps it in an ``unacked`` index and puts it back after the
  visibility timeout (the backend sweeps that index when a receive finds nothing).
- **Retries**: ``nack`` republishes a copy with one more failed attempt in its
  ``melange_deliveries`` header, then acknowledges the original (a crash in between gives a
  duplicate, never a loss). With a delay, the original stays unacknowledged (and, on Redis,
  leased) in the process until the delay ends, so a crash meanwhile hands it back at once.
- **Dead letters**: copied with the failure headers into the dead-letter queue, then the
  original is acknowledged.
- **Connections**: one kombu connection per backend, with a channel for receiving and
  settling and one for publishing, used under a lock (kombu channels are not thread-safe).
  A connection error drops both; the next call opens a new connection (retrying
  ``retries`` times). Messages received on the lost one can no longer be settled
  (:meth:`KombuBackend.holds` says so): the broker delivers them again.

The backend holds its collaborators and delegates to them: the connection and its channels
(:class:`~melange.backends.kombu.connection.Link`), declarations and bindings
(:class:`~melange.backends.kombu.topology.Bindings`), publisher confirms
(:class:`~melange.backends.kombu.confirms.Confirms`), the AMQP consumers
(:class:`~melange.backends.kombu.consuming.Consumers`), ``basic_get`` and leases
(:class:`~melange.backends.kombu.leases.Leases`), what ends waits
(:class:`~melange.backends.kombu.wakeups.Wakeups`) and inspection
(:mod:`~melange.backends.kombu.inspect`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from melange.backends.gathering import BusyQueues
from melange.backends.inspection import QueueStats
from melange.backends.interfaces import BackendCapabilities, MessagingBackend
from melange.backends.kombu import inspect, topology
from melange.backends.kombu.confirms import Confirms
from melange.backends.kombu.connection import Link, driver_type, redacted, transport_name
from melange.backends.kombu.connection import transport_options as options_for
from melange.backends.kombu.consuming import Consumers
from melange.backends.kombu.leases import Leases
from melange.backends.kombu.wakeups import Wakeups
from melange.backends.kombu.wire import Receipt, publish_arguments
from melange.backends.publish_options import apply_undelayed_publish_keywords
from melange.exceptions import (
    BackendConnectionError,
    BackendError,
    ConfigurationError,
    PublishError,
    QueueNotFoundError,
    TopicNotFoundError,
    WouldBlock,
)
from melange.models import Message, QueueWrapper, TopicWrapper

_T = TypeVar("_T")

#: The default backend URL: kombu's Redis transport on this machine, database 0.
DEFAULT_URL = "kombu+redis://127.0.0.1:6379/0"


class KombuBackend(MessagingBackend):
    """Queues and topics on a kombu transport, tested on Redis and AMQP (RabbitMQ).

    Every method is thread-safe. Open one backend per process (or per consumer thread that
    should receive on a connection of its own).

    Args:
        url: The transport: ``kombu+redis://host:6379/0``,
            ``kombu+amqp://user:password@host:5672/vhost``, or any kombu URL after
            ``kombu+`` (a plain kombu URL is accepted too).
        prefix: On Redis, the prefix of every key (kombu's ``global_keyprefix``): backends
            with different prefixes do not see each other's queues.
        visibility_timeout: Seconds a received message stays leased to its receiver where
            the transport has leases (Redis); the dispatcher's heartbeat extends it while a
            handler runs. A queue may have its own (``declare_queue(...,
            visibility_timeout=...)``), known to the processes that declared it.
        poll_interval: Longest pause, in seconds, between two looks at an empty queue while a
            receive waits.
        retries: How many times an operation is tried again on a new connection after a
            connection error.
        transport_options: kombu transport options, over the backend's own (see
            :func:`~melange.backends.kombu.connection.transport_options`).
        connect_timeout: Seconds a connection attempt may take.
        heartbeat: On AMQP, the heartbeat interval asked of the broker, in seconds (0: none;
            a lost connection is then noticed only when a read or write fails).
    """

    loop_wait_seconds: float | None = 1.0

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = "melange-kombu:",
        visibility_timeout: float = 30.0,
        poll_interval: float = 0.1,
        retries: int = 5,
        transport_options: Mapping[str, Any] | None = None,
        connect_timeout: float = 10.0,
        heartbeat: float = 10.0,
    ) -> None:
        if isinstance(visibility_timeout, bool) or not visibility_timeout > 0:
            raise ConfigurationError(
                f"visibility_timeout must be a positive number, got {visibility_timeout!r}"
            )
        if not poll_interval > 0:
            raise ConfigurationError(f"poll_interval must be positive, got {poll_interval!r}")
        if retries < 0:
            raise ConfigurationError(f"retries must be 0 or more, got {retries!r}")
        if isinstance(heartbeat, bool) or not heartbeat >= 0:
            raise ConfigurationError(f"heartbeat must be 0 or more seconds, got {heartbeat!r}")
        self.url = redacted(url)
        self._transport = transport_name(url)
        self._prefix = prefix
        self._visibility_timeout = float(visibility_timeout)
        self._poll_interval = float(poll_interval)
        #: kombu's ``driver_type`` of the transport (``redis``, ``amqp``, ``memory``...).
        self.driver: str = driver_type(url)
        self._amqp = self.driver in topology.AMQP_DRIVERS
        self._link = Link(
            url,
            amqp=self._amqp,
            options=options_for(self.driver, prefix, visibility_timeout, transport_options),
            connect_timeout=connect_timeout,
            heartbeat=float(heartbeat) if self._amqp else 0.0,
            retries=int(retries),
        )
        self._queues: set[str] = set()
        self._topics: set[str] = set()
        self._bindings = topology.Bindings(self._link)
        self._wakeups = Wakeups()
        self._confirms = Confirms(self._link, self._wakeups)
        self._consumers = Consumers(self._link, self._wakeups, self._queues.discard)
        self._leases = Leases(
            self._link,
            leasing=self.driver == "redis",
            visibility_timeout=self._visibility_timeout,
            forget_queue=self._queues.discard,
        )
        self._link.watchers += [self._confirms, self._consumers]
        # Which queues delivered lately (see melange.backends.gathering).
        self._busy = BusyQueues()
        #: On AMQP, receives and acknowledgements are tried on an asyncio dispatcher's loop
        #: first (see :meth:`run_inline`); every other call may wait for the broker.
        self.inline_when_free = self._amqp

    def __repr__(self) -> str:
        return f"KombuBackend({self.url!r})"

    # -- state --------------------------------------------------------------------------------

    @property
    def capabilities(self) -> BackendCapabilities:
        return topology.capabilities(self.driver, self._transport, self.driver != "memory")

    @property
    def visibility_timeout(self) -> float | None:
        """Default lease of received messages, in seconds (``None``: the transport has no
        leases; a message comes back only when its receiver's connection closes)."""
        return self._visibility_timeout if self.capabilities.visibility_timeout else None

    def visibility_timeout_for(self, message: Message) -> float | None:
        receipt = message.metadata
        return receipt.lease if isinstance(receipt, Receipt) else None

    def holds(self, message: Message) -> bool:
        """Whether the message came on the current connection (else the broker gives it to
        a consumer again whatever this process does)."""
        receipt = message.metadata
        return isinstance(receipt, Receipt) and receipt.generation == self._link.generation

    # -- topology -------------------------------------------------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        topology.check_name("topic", topic_name)
        self._link.on_spare(
            lambda channel: self._bindings.declare_topic(channel, topic_name),
            f"declaring topic {topic_name!r}",
        )
        self._topics.add(topic_name)
        return TopicWrapper(topic_name, topic_name)

    def get_topic(self, topic_name: str) -> TopicWrapper:
        if topic_name in self._topics:
            return TopicWrapper(topic_name, topic_name)
        exists = self._link.on_spare(
            lambda channel: self._bindings.topic_exists(channel, topic_name),
            f"looking up topic {topic_name!r}",
        )
        if not exists:
            raise TopicNotFoundError(topic_name)
        self._topics.add(topic_name)
        return TopicWrapper(topic_name, topic_name)

    def get_queue(self, queue_name: str) -> QueueWrapper:
        if queue_name in self._queues:
            return QueueWrapper(queue_name, queue_name)
        exists = self._link.on_spare(
            lambda channel: self._bindings.queue_exists(channel, queue_name),
            f"looking up queue {queue_name!r}",
        )
        if not exists:
            raise QueueNotFoundError(queue_name)
        self._queues.add(queue_name)
        return QueueWrapper(queue_name, queue_name)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create the queue (idempotent), its dead-letter queue and its subscriptions.

        Options: ``filter_events`` (manifests the subscriptions let through),
        ``visibility_timeout`` (the queue's lease on Redis, for this process),
        ``max_receive_count`` (accepted for portability; no kombu transport counts
        deliveries, so it is not enforced: the failure policy decides). FIFO queues are
        refused. Declaring again adds bindings and never removes one.
        """
        topology.check_name("queue", queue_name)
        if dead_letter_queue_name is not None:
            topology.check_name("dead-letter queue", dead_letter_queue_name)
        topology.check_queue_options(queue_name, kwargs)
        events = kwargs.get("filter_events")
        keys = sorted({topology.routing_key(e) for e in events}) if events else None
        topics = [topic.name for topic in topics_to_bind]

        try:
            self._link.on_spare(
                lambda channel: self._bindings.declare_queue(
                    channel, queue_name, dead_letter_queue_name, topics, keys
                ),
                f"declaring queue {queue_name!r}",
            )
        except BackendError as exc:
            raise ConfigurationError(
                f"queue {queue_name!r} could not be declared: {exc} (a queue of that name with "
                "other arguments, e.g. declared by the RabbitMQ backend, cannot be reused)"
            ) from None
        if kwargs.get("visibility_timeout") is not None:
            self._leases.per_queue[queue_name] = float(kwargs["visibility_timeout"])
        self._queues.add(queue_name)
        dead = None
        if dead_letter_queue_name:
            self._queues.add(dead_letter_queue_name)
            dead = QueueWrapper(dead_letter_queue_name, dead_letter_queue_name)
        return QueueWrapper(queue_name, queue_name), dead

    def delete_queue(self, queue: QueueWrapper) -> None:
        name = queue.name
        self._link.on_spare(
            lambda channel: self._bindings.delete_queue(channel, name), f"deleting queue {name!r}"
        )
        self._queues.discard(name)
        self._leases.per_queue.pop(name, None)

    def delete_topic(self, topic: TopicWrapper) -> None:
        name = topic.name
        self._link.on_spare(
            lambda channel: self._bindings.delete_topic(channel, name), f"deleting topic {name!r}"
        )
        self._topics.discard(name)
        self._link.exchanges.discard(name)

    # -- publishing -----------------------------------------------------------------------------

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        self.publish_batch_to_queue([message], queue, **kwargs)

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        """Publish the messages one after the other (each confirmed by the broker on AMQP)."""
        self._check_publish(queue.name, messages, kwargs)
        prepared = [publish_arguments(m) for m in messages]
        confirms = self._confirms

        def publish(consume: Any, channel: Any) -> None:
            # Every message written, then every confirm awaited: one round trip per batch.
            seqs = [confirms.write(channel, arguments, "", queue.name) for arguments in prepared]
            confirms.wait_for(seqs)

        self._publishing(publish, f"publishing to queue {queue.name!r}", queue.name, "queue")
        self._wakeups.ring()

    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        self.publish_batch_to_topic([message], topic, **kwargs)

    def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        """Publish each message to every queue subscribed to the topic whose filter lets its
        manifest through.

        On AMQP the broker routes; on virtual transports the backend looks the subscribed
        queues up in kombu's binding table and publishes a copy to each (so that kombu's
        Redis transport, when it gives back an unacknowledged copy, gives it to that queue
        only). A publisher dying mid-way on a virtual transport may have reached some of
        the queues only.
        """
        self._check_publish(topic.name, messages, kwargs)
        prepared = [(m, publish_arguments(m)) for m in messages]
        link, confirms = self._link, self._confirms

        def publish(consume: Any, channel: Any) -> None:
            if topic.name not in link.exchanges:
                if self._amqp:
                    # Refused (closing the channel) when the topic does not exist.
                    link.guard(
                        "publish",
                        lambda: channel.exchange_declare(topic.name, "topic", passive=True),
                    )
                    link.exchanges.add(topic.name)
                else:
                    self._bindings.declare_exchange(channel, topic.name, "topic")
            seqs: list[int | None] = []
            for message, arguments in prepared:
                key = topology.routing_key(message.manifest)
                if self._amqp:
                    seqs.append(confirms.write(channel, arguments, topic.name, key))
                    continue
                for target in sorted(set(channel._lookup(topic.name, key))):
                    confirms.send(channel, arguments, "", target)
            confirms.wait_for(seqs)

        self._publishing(publish, f"publishing to topic {topic.name!r}", topic.name, "topic")
        self._wakeups.ring()

    def _publishing(
        self, publish: Callable[[Any, Any], None], what: str, name: str, kind: str
    ) -> None:
        try:
            self._link.io(publish, what)
        except BackendError as exc:
            raise self._publish_failure(exc, name, kind) from None

    def _publish_failure(self, exc: BackendError, name: str, kind: str) -> Exception:
        """What a publish to ``name`` (a ``"queue"`` or ``"topic"``) that failed with
        ``exc`` raises."""
        if not isinstance(exc, BackendConnectionError) and (
            "404" in str(exc) or "NOT_FOUND" in str(exc)
        ):
            self._queues.discard(name)
            self._topics.discard(name)
            return QueueNotFoundError(name) if kind == "queue" else TopicNotFoundError(name)
        return PublishError(str(exc))

    def _check_publish(
        self, destination: str, messages: Sequence[Message], kwargs: Mapping[str, Any]
    ) -> None:
        topology.refuse_fifo_publish(destination, messages, kwargs)
        if kwargs:  # without keywords there is nothing to apply
            apply_undelayed_publish_keywords(messages, kwargs, backend="the kombu backend")

    # -- consuming ------------------------------------------------------------------------------

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Receive up to ``max_messages`` (default 10) messages; with ``wait_seconds``, wait
        that long for one when the queue is empty."""
        limit = max(1, int(kwargs.get("max_messages") or 10))
        wait = float(kwargs.get("wait_seconds") or 0.0)
        deadline = time.monotonic() + wait
        interrupts = self._wakeups.mark()
        pause = 0.005
        # A receive that may not wait takes what is there (a new consumer's first deliveries
        # are still on their way); one that waits consumes, on AMQP.
        consuming = self._amqp and wait > 0
        receive = self._take if consuming else self._leases.get
        what = f"receiving from queue {queue.name!r}"
        take: Callable[[Any, Any], list[Message]] = lambda consume, publish: receive(  # noqa: E731
            consume, queue.name, limit
        )
        while True:
            got = self._link.io(take, what)
            if len(got) < limit:
                self._leases.sweep()
            if got:
                self._busy.delivered(queue.name)
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            if consuming:
                if not self._consumers.await_delivery(left, interrupts):
                    return []
                # A busy queue's next deliveries are taken together (see gathering).
                gather = self._busy.gather_seconds(queue.name, deadline - time.monotonic())
                if gather > 0:
                    time.sleep(gather)
                continue
            if not self._wakeups.wait(min(pause, left), interrupts):
                return []
            pause = min(pause * 2, self._poll_interval)

    def _take(self, channel: Any, queue: str, limit: int) -> list[Message]:
        """Up to ``limit`` messages the queue's consumer was pushed (under the lock), the
        consumer started when there is none.

        When it was pushed nothing because its prefetch window is full (the caller holds that
        many of its messages unsettled and asks for more), or the broker cancelled it (the
        queue is gone?), the queue's next messages are taken with ``basic_get``.
        """
        self._consumers.consume(channel, queue, limit)
        try:
            return self._consumers.take_pushed(channel, queue, limit)
        except WouldBlock:
            return self._leases.get(channel, queue, limit)

    def run_inline(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """On AMQP, call ``fn`` on this thread when it needs no round trip to the broker and
        the connection is free: a receive that does not wait takes what the queue's consumer
        was pushed, and acknowledgements are written to the socket (an asyncio dispatcher's
        calls, on its loop). Every other call, a connection not open yet or in use by another
        thread raise :class:`~melange.exceptions.WouldBlock`.

        A connection found broken is dropped, as a reconnection would: the broker gives back
        what it held, so the receive returns nothing and the acknowledgement has nothing
        left to do; the next call that waits opens a new one.
        """
        name = getattr(fn, "__name__", "")
        if not self._amqp or getattr(fn, "__self__", None) is not self:
            raise WouldBlock(f"{type(self).__name__} runs {name or fn!r} on a thread")
        operation: Callable[[Any], Any]
        if name == "retrieve_messages" and not kwargs.get("wait_seconds"):
            queue: QueueWrapper = args[0]
            limit = max(1, int(kwargs.get("max_messages") or 10))
            operation = lambda consume: self._consumers.take_pushed(  # noqa: E731
                consume, queue.name, limit
            )
            broken: Any = []
        elif name in ("acknowledge", "acknowledge_batch"):
            messages = [args[0]] if name == "acknowledge" else list(args[0])
            operation = lambda consume: self._acknowledge_now(consume, messages)  # noqa: E731
            broken = None
        else:
            raise WouldBlock(f"{type(self).__name__}.{name} may wait for the broker")
        link = self._link
        with link.free(opened=True):
            try:
                return operation(link.consume)  # type: ignore[no-any-return]
            except link.recoverable:
                link.reset()
                return broken  # type: ignore[no-any-return]

    # -- settling -------------------------------------------------------------------------------

    def _receipt(self, message: Message) -> Receipt:
        receipt = message.metadata
        if not isinstance(receipt, Receipt):
            raise BackendError(
                f"message {message.message_id!r} was not received by a kombu backend"
            )
        return receipt

    def _settle(
        self, message: Message, action: Callable[[Any, Any, Receipt], None], what: str
    ) -> None:
        receipt = self._receipt(message)
        self._leases.cancel_timer(receipt)

        def settle(consume: Any, publish: Any) -> None:
            # A message of a lost connection is the broker's again: settling it is a no-op.
            if receipt.generation == self._link.generation:
                action(consume, publish, receipt)

        self._link.io(settle, what)

    def _finish(self, channel: Any, receipt: Receipt, requeue: bool = False) -> None:
        """Acknowledge the delivery (or reject it, back to its queue, with ``requeue``)."""
        if requeue:
            channel.basic_reject(receipt.delivery_tag, requeue=True)
        else:
            channel.basic_ack(receipt.delivery_tag)
        self._consumers.settled(receipt)

    def acknowledge(self, message: Message) -> None:
        self._settle(
            message,
            lambda consume, publish, receipt: self._finish(consume, receipt),
            f"acknowledging message {message.message_id!r}",
        )

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Acknowledge the messages in one locked call on the receiving channel."""
        what = (
            f"acknowledging message {messages[0].message_id!r}"
            if len(messages) == 1
            else f"acknowledging {len(messages)} messages"
        )
        self._link.io(lambda consume, publish: self._acknowledge_now(consume, messages), what)

    def _acknowledge_now(self, channel: Any, messages: Sequence[Message]) -> None:
        """Acknowledge ``messages`` on the receiving channel (under the lock)."""
        receipts = [self._receipt(message) for message in messages]
        for receipt in receipts:
            self._leases.cancel_timer(receipt)
        for receipt in receipts:
            # A message of a lost connection is the broker's again: settling it is a no-op.
            if receipt.generation == self._link.generation:
                self._finish(channel, receipt)

    def nack(self, message: Message, delay: float = 0.0) -> None:
        """Deliver the message again after ``delay`` seconds as its next attempt: a copy
        with one more failed attempt is published, then the original acknowledged."""
        self._give_back(message, delay, failed=True)

    def release(self, message: Message, delay: float = 0.0) -> None:
        """Give the message back unchanged (not a failed attempt) after ``delay`` seconds."""
        self._give_back(message, delay, failed=False)

    def _give_back(self, message: Message, delay: float, failed: bool) -> None:
        receipt = self._receipt(message)
        if receipt.generation != self._link.generation:
            return
        if delay > 0:
            self._leases.hold(
                message, receipt, delay, lambda: self._give_back(message, 0.0, failed)
            )
            return

        def give_back(consume: Any, publish: Any, receipt: Receipt) -> None:
            if failed:
                arguments = publish_arguments(message, deliveries=message.attempt or 1)
                self._confirms.send(publish, arguments, "", receipt.queue)
                self._finish(consume, receipt)
            else:
                if self._amqp:
                    # Otherwise the broker pushes it straight back to this backend's consumer,
                    # while what releases messages (a stopping dispatcher) wants no more.
                    self._consumers.cancel(consume, receipt.queue)
                self._finish(consume, receipt, requeue=True)

        self._settle(message, give_back, f"giving back message {message.message_id!r}")
        self._wakeups.ring()

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        """Copy the message with ``headers`` into its queue's dead-letter queue, then
        acknowledge it; ``False`` (and the message left as it is) when there is none."""
        receipt = self._receipt(message)
        arguments = publish_arguments(message, extra_headers=headers)
        moved: list[bool] = []
        confirms = self._confirms

        def move(consume: Any, publish: Any, receipt: Receipt) -> None:
            if self._amqp:
                del confirms.returned[:]
                confirms.send(
                    publish,
                    arguments,
                    topology.DEAD_LETTER_EXCHANGE,
                    receipt.queue,
                    mandatory=True,
                )
                if confirms.returned:
                    return
            else:
                targets = [
                    bound
                    for key, _, bound in self._bindings.table(
                        consume, topology.DEAD_LETTER_EXCHANGE
                    )
                    if key == receipt.queue
                ]
                if not targets:
                    return
                for target in sorted(set(targets)):
                    confirms.send(publish, arguments, "", target)
            self._finish(consume, receipt)
            moved.append(True)

        try:
            self._settle(message, move, f"dead-lettering message {message.message_id!r}")
        except BackendError as exc:
            if self._amqp and "404" in str(exc):
                return False  # no melange.dlx at all: no queue has a dead-letter queue
            raise
        return bool(moved) or receipt.generation != self._link.generation

    def extend_visibility(self, message: Message, seconds: float) -> None:
        """On Redis, keep the message leased for ``seconds`` from now; a no-op elsewhere."""
        if not self._leases.leasing:
            return
        self._settle(
            message,
            lambda consume, publish, receipt: self._leases.lease(
                consume, receipt.delivery_tag, seconds
            ),
            f"extending the lease of message {message.message_id!r}",
        )

    def interrupt(self) -> None:
        """End every :meth:`retrieve_messages` wait of this backend."""
        self._wakeups.interrupt()

    def close_connection(self) -> None:
        """Close the connection (idempotent). Unsettled messages go back to their queues:
        at once on AMQP and on Redis (kombu gives back a closing channel's messages)."""
        self.interrupt()
        link = self._link
        with link.lock:
            if link.closed:
                return
            link.closed = True
            self._leases.cancel_timers()
            link.close()
            self._wakeups.close()

    # -- inspection (the CLI and tests; see melange.backends.kombu.inspect) -------------------

    def queue_names(self) -> list[str]:
        """Every queue's name, sorted."""
        return inspect.queue_names(self._link, self._bindings)

    def topic_names(self) -> list[str]:
        """Every topic's name, sorted."""
        return inspect.topic_names(self._link, self._bindings)

    def dead_letter_sources(self, queue_name: str) -> list[str]:
        """The queues whose dead letters go to ``queue_name``, sorted."""
        return inspect.dead_letter_sources(self._link, self._bindings, queue_name)

    def queue_stats(self, queue_name: str) -> QueueStats:
        """Ready and in-flight messages of the queue (in flight: on Redis, kombu's
        ``unacked`` entries of the queue; on AMQP, from the management API when it answers,
        else unknown). Messages held for a delayed retry count as in flight."""
        self.get_queue(queue_name)
        return inspect.queue_stats(self._link, self._bindings, queue_name, self._leases.leasing)

    def queue_depth(self, queue_name: str) -> int:
        """Messages of the queue, in flight or not (where the transport tells)."""
        return self.queue_stats(queue_name).total

    def peek(self, queue_name: str, limit: int = 10) -> list[Message]:
        """Copies of up to ``limit`` messages, oldest first, without settling them.

        On AMQP they are received on a channel of their own that then closes, so they go back
        to the queue (marked redelivered); on virtual transports they are read in place.
        """
        self.get_queue(queue_name)
        return inspect.peek(self._link, queue_name, limit)

    def purge(self, queue_name: str) -> int | None:
        """Delete the ready messages of the queue; returns how many."""
        self.get_queue(queue_name)
        return inspect.purge(self._link, queue_name)


__all__ = ["DEFAULT_URL", "KombuBackend"]

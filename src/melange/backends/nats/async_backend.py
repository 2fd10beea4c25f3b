"""The NATS JetStream backend on asyncio: :class:`AsyncNATSBackend`, on nats-py.

Queues are work-queue streams, each with one durable pull consumer; topics are streams whose
messages the server copies into the streams of the queues subscribed to them (see
:mod:`melange.backends.nats.topology` for the layout, :mod:`melange.backends.nats.wire` for
the message format). :class:`~melange.backends.nats.backend.NATSBackend` is the same backend
behind the blocking contract.

- Publishing waits for JetStream's acknowledgement (the message is stored), which comes to
  the backend's inbox subscription like the answers to its pull requests; a batch is
  pipelined and waits for all of them at once. ``deduplication_id`` becomes ``Nats-Msg-Id``:
  the stream drops a second publish with that id within its duplicate window.
- Receiving sends a pull request answered at once with what is there (``wait_seconds``
  0); a receive that waits sends one that also takes what comes while messages keep coming,
  up to ``max_messages``, and expires after ``LINGER`` (none is left open for long, whose
  deliveries would wait for a later receive), and, when nothing came, one that waits up to
  ``wait_seconds`` for the next message (see :mod:`melange.backends.nats.pulls`).
- A received message is leased for the queue's ``visibility_timeout`` (the consumer's
  ``ack_wait``): ``acknowledge`` deletes it, ``nack(delay=...)`` gives it back after the delay
  (``-NAK`` with a delay), ``extend_visibility`` renews the lease (``+WPI``, repeated for a
  renewal longer than the lease), and an unsettled message comes back when its lease ends.
  Acknowledgements do not depend on the connection: a message received before a reconnect
  can be settled after it.
- After ``max_receive_count`` deliveries, the next delivery of a message is moved to the
  queue's dead-letter queue with failure headers instead of being handed out; the consumer's
  ``max_deliver`` stops the server from delivering it more often than that.
- FIFO queues (``.fifo``) hand out one message at a time (``max_ack_pending=1``): a message
  waits until the one before it, of any group, was settled, so each group keeps its order.

Use one instance from one event loop; only :meth:`~AsyncNATSBackend.interrupt` may be called
from other threads.

The backend delegates to collaborators, each in a module of its own:
:class:`~melange.backends.nats.session.Session` (the connection and its inbox),
:class:`~melange.backends.nats.streams.Streams` (declaring and finding streams),
:class:`~melange.backends.nats.publishing.Publisher`,
:class:`~melange.backends.nats.pulls.Pulls` and :class:`~melange.backends.nats.receiver.Receiver`
(pull requests, and receiving), :class:`~melange.backends.nats.receipts.Settler` (settling and
leases), :class:`~melange.backends.nats.dead_letters.DeadLetters` and
:class:`~melange.backends.nats.inspect.Inspector` (``melange queues``, ``melange dlq``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from nats.aio.msg import Msg
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the NATS backend needs nats-py ({exc}): pip install 'melange[nats]'"
    ) from exc

from melange.backends.async_interfaces import AsyncMessagingBackend
from melange.backends.interfaces import BackendCapabilities
from melange.backends.nats.connection import connect_options, server_address
from melange.backends.nats.dead_letters import DeadLetters
from melange.backends.nats.inspect import Inspector, QueueStats
from melange.backends.nats.publishing import Publisher
from melange.backends.nats.pulls import Pulls
from melange.backends.nats.receipts import NATSReceipt, Settler, receipt_of
from melange.backends.nats.receiver import Receiver
from melange.backends.nats.session import Session
from melange.backends.nats.streams import Streams
from melange.backends.nats.topology import (
    DEFAULT_DUPLICATE_WINDOW,
    DEFAULT_MAX_ACK_PENDING,
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_TOPIC_MAX_AGE,
    DEFAULT_VISIBILITY_TIMEOUT,
    Names,
    check_prefix,
    nats_capabilities,
    queue_options,
)
from melange.backends.publish_options import apply_undelayed_publish_keywords
from melange.exceptions import ConfigurationError
from melange.models import Message, QueueWrapper, TopicWrapper

#: Rounds of giving back late deliveries and confirming, at most, when closing.
_CLOSE_ROUNDS = 3

_BACKEND = "the NATS backend"


class AsyncNATSBackend(AsyncMessagingBackend):
    """A messaging backend on NATS JetStream with asyncio-native I/O (via nats-py).

    Args:
        url: The server, ``nats://host:4222`` (default ``nats://127.0.0.1:4222``), or several
            comma-separated; ``nats://user:password@host:4222`` for credentials.
        prefix: Starts every stream name and subject this backend uses, so that several
            applications (or tests) share a server without meeting.
        visibility_timeout: Default lease of a received message, in seconds (the consumer's
            ``ack_wait``); ``declare_queue(visibility_timeout=...)`` sets it per queue.
        max_ack_pending: Messages of a queue handed out and not yet settled, at most, across
            all receivers (FIFO queues: 1).
        duplicate_window: Seconds a queue stream remembers a ``Nats-Msg-Id``.
        topic_max_age: Seconds a topic stream keeps its messages.
        storage: ``"file"`` (persistent) or ``"memory"``.
        operation_timeout: Seconds an operation may take, reconnections included, before it
            raises :class:`~melange.exceptions.BackendConnectionError`.
        connection_name: The client name the server shows.
        **options: Further keyword arguments of ``nats.connect`` (``tls``, ``user_credentials``...).
    """

    name = "nats"
    loop_wait_seconds = 1.0

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        prefix: str = "melange",
        visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT,
        max_ack_pending: int = DEFAULT_MAX_ACK_PENDING,
        duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
        topic_max_age: float = DEFAULT_TOPIC_MAX_AGE,
        storage: str = "file",
        connect_timeout: float = 5.0,
        reconnect_time_wait: float = 0.5,
        max_reconnect_attempts: int = -1,
        operation_timeout: float = 30.0,
        connection_name: str | None = None,
        **options: Any,
    ) -> None:
        if storage not in ("file", "memory"):
            raise ConfigurationError(f"NATS storage must be 'file' or 'memory', not {storage!r}")
        if visibility_timeout <= 0 or max_ack_pending < 1:
            raise ConfigurationError(
                "NATS visibility_timeout must be positive and max_ack_pending at least 1"
            )
        self._address = server_address(url)
        self.describe = self._address.describe
        self.names = Names(check_prefix(prefix))
        self.visibility_timeout = float(visibility_timeout)
        self._max_ack_pending = int(max_ack_pending)
        self._storage = storage
        self._session = Session(
            self.describe,
            connect_options(
                self._address,
                name=connection_name,
                connect_timeout=connect_timeout,
                reconnect_time_wait=reconnect_time_wait,
                max_reconnect_attempts=max_reconnect_attempts,
                extra=options,
            ),
            connect_timeout=connect_timeout,
            operation_timeout=operation_timeout,
            on_answer=self._on_inbox,
            on_connect=self._on_connect,
        )
        self._streams = Streams(
            self._session,
            self.names,
            storage=storage,
            duplicate_window=float(duplicate_window),
            topic_max_age=float(topic_max_age),
        )
        self._publisher = Publisher(self._session, self.names, self._streams)
        self._settler = Settler(self._session)
        self._pulls = Pulls(self._session, self.names)
        self._dead_letters = DeadLetters(
            self._session, self.names, self._streams, self._publisher, self._settler
        )
        self._receiver = Receiver(
            self._session, self.names, self._streams, self._pulls, self._settler, self._dead_letters
        )
        self._inspector = Inspector(self._session, self.names, self._streams)

    def read_in_calls_only(self) -> None:
        """Declare that this backend's connection is read only while one of its calls runs
        (on an event loop its caller drives: see :mod:`melange.backends.nats.backend`).

        A message can then wait unread in the socket between calls, and its lease began
        when the server sent it, not when it is read. Each receive sends a marker before its
        first pull request (and then every ``_MARK_EVERY`` seconds while it waits), which
        the server echoes in order with the deliveries: a message read after a marker was
        sent after it, so its lease is timed from the last marker read before it, and a
        message with less than half its lease left is not handed out (it comes back when
        its lease ends).

        And since nothing else runs on that loop, a receive waiting for the rest of a batch
        sleeps, without reading, and then reads what came in one go, instead of waking for
        each message.
        """
        if self._session.options.get("no_echo"):
            raise ConfigurationError("NATS pull markers need the server to echo them")
        self._pulls.horizon = time.monotonic()

    def share_first_deliveries(self, other: AsyncNATSBackend) -> None:
        """Keep one record of first deliveries with ``other`` (see ``Receiver.firsts``), for
        a caller that receives from the same queues on both backends' connections."""
        self._receiver.firsts = other._receiver.firsts

    def __repr__(self) -> str:
        return f"AsyncNATSBackend({self.describe}, prefix={self.names.prefix!r})"

    @property
    def capabilities(self) -> BackendCapabilities:
        # Also read on an instance described without being built (the documentation's
        # table), which has no session: the server's largest message is not known then.
        session: Session | None = self.__dict__.get("_session")
        max_payload = DEFAULT_MAX_PAYLOAD if session is None else session.max_payload
        return nats_capabilities(self._storage, max_payload)

    # -- connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect now (calls connect when needed)."""
        await self._session.client()

    async def __aenter__(self) -> AsyncNATSBackend:
        await self.connect()
        return self

    async def _on_inbox(self, msg: Msg) -> None:
        """A message (or the server's status) on the backend's inbox: a publish's
        acknowledgement, a pull marker, or an answer to one of our pull requests."""
        if not msg.reply:
            token = msg.subject.rsplit(".", 1)[-1]
            if not self._publisher.answered(token, msg):  # a publish's acknowledgement
                self._pulls.on_status(token, msg)
            return
        since = self._pulls.lease_start()
        if not self._pulls.take(msg, since):
            # A late answer to a request that already returned.
            await self._receiver.late(msg, since)

    def _on_connect(self) -> None:
        # The subscriptions to the max_deliver advisories were the previous client's.
        self._dead_letters.watched.clear()

    # -- topology ---------------------------------------------------------------------------

    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        """Create the topic's stream (idempotent)."""
        return await self._streams.declare_topic(topic_name)

    async def get_topic(self, topic_name: str) -> TopicWrapper:
        return await self._streams.get_topic(topic_name)

    async def get_queue(self, queue_name: str) -> QueueWrapper:
        await self._streams.queue_settings(queue_name)
        return QueueWrapper(self.names.queue_stream(queue_name), queue_name)

    async def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create the queue's stream and consumer (idempotent) and subscribe it to topics.

        Options: ``visibility_timeout`` (seconds), ``max_receive_count`` (deliveries before
        a message goes to the dead-letter queue), ``filter_events`` (manifests a topic's
        messages must have to reach the queue), ``max_ack_pending``, ``fifo`` (default: the
        name ends with ``.fifo``).
        """
        options = queue_options(queue_name, kwargs, self.visibility_timeout, self._max_ack_pending)
        dlq_wrapper = None
        if dead_letter_queue_name is not None:
            dlq_wrapper, _ = await self.declare_queue(
                dead_letter_queue_name, visibility_timeout=options.visibility_timeout
            )
        queue = await self._streams.declare_queue(
            queue_name, topics_to_bind, dead_letter_queue_name, options
        )
        return queue, dlq_wrapper

    async def delete_queue(self, queue: QueueWrapper) -> None:
        """Delete the queue's stream, its messages and its consumer (not its dead-letter
        queue)."""
        await self._streams.delete_queue(queue.name)
        self._receiver.forget(queue.name)

    async def delete_topic(self, topic: TopicWrapper) -> None:
        """Delete the topic's stream and the queues' sources on it."""
        await self._streams.delete_topic(topic)

    # -- publishing -------------------------------------------------------------------------

    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        apply_undelayed_publish_keywords([message], kwargs, backend=_BACKEND)
        subject = self.names.queue_subject(queue.name)
        await self._publisher.publish(subject, [message], queue.name, None)

    async def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        apply_undelayed_publish_keywords(messages, kwargs, backend=_BACKEND)
        subject = self.names.queue_subject(queue.name)
        await self._publisher.publish(subject, messages, queue.name, None, batch=True)

    async def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        apply_undelayed_publish_keywords([message], kwargs, backend=_BACKEND)
        await self._publisher.publish(None, [message], None, topic.name)

    async def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        apply_undelayed_publish_keywords(messages, kwargs, backend=_BACKEND)
        await self._publisher.publish(None, messages, None, topic.name, batch=True)

    # -- consuming --------------------------------------------------------------------------

    async def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Receive up to ``max_messages`` (default 10) messages of ``queue``, waiting up to
        ``wait_seconds`` (default 0) for the first; :meth:`interrupt` ends the wait early.

        While the server cannot be reached, it raises
        :class:`~melange.exceptions.BackendConnectionError` a few seconds after the caller's
        own wait, so that a consume loop reports the outage and stays responsive to a stop.
        """
        return await self._receiver.retrieve(queue, kwargs)

    def interrupt(self) -> None:
        """Wake a :meth:`retrieve_messages` waiting for messages (from any thread)."""
        self._pulls.interrupt()

    # -- settling ---------------------------------------------------------------------------

    async def acknowledge(self, message: Message) -> None:
        await self._settler.settle(receipt_of(message), b"+ACK")

    async def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        for message in messages:
            await self._settler.settle(receipt_of(message), b"+ACK")

    async def nack(self, message: Message, delay: float = 0.0) -> None:
        """Give ``message`` back: delivered again after ``delay`` seconds (``-NAK``)."""
        await self._settler.nack(message, delay)

    async def flushed(self) -> None:
        """Return once the client handed what it queued (acknowledgements) to the socket:
        its writer task runs at the next turn of the loop; no round trip to the server."""
        await self._session.flushed()

    def holds(self, message: Message) -> bool:
        """``False`` once the lease of ``message`` ran out (another receiver may have it)."""
        receipt = message.metadata
        return (
            isinstance(receipt, NATSReceipt)
            and not receipt.settled
            and time.monotonic() < receipt.leased_until
        )

    def visibility_timeout_for(self, message: Message) -> float | None:
        receipt = message.metadata
        return receipt.lease if isinstance(receipt, NATSReceipt) else self.visibility_timeout

    async def extend_visibility(self, message: Message, seconds: float) -> None:
        """Renew the lease (``+WPI``): the server's ``ack_wait`` starts again. A renewal
        longer than the lease is kept up by renewing every third of the lease until then."""
        await self._settler.extend(message, seconds)

    async def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        """Publish a copy with ``headers`` to the queue's dead-letter queue, then acknowledge.

        Returns ``False``, leaving the message unsettled, when the queue has none.
        """
        return await self._dead_letters.dead_letter(message, headers)

    # -- inspection -------------------------------------------------------------------------

    async def queue_names(self) -> list[str]:
        """Every queue of this prefix."""
        return await self._inspector.queue_names()

    async def topic_names(self) -> list[str]:
        """Every topic of this prefix."""
        return await self._inspector.topic_names()

    async def queue_stats(self, queue_name: str) -> QueueStats:
        """Messages of the queue: ready, in flight (handed out, unsettled or waiting out a
        retry delay: JetStream does not tell those apart) and in total."""
        return await self._inspector.queue_stats(queue_name)

    async def queue_depth(self, queue_name: str) -> int:
        """Messages the queue holds, in flight or not."""
        return (await self.queue_stats(queue_name)).total

    async def peek(self, queue_name: str, limit: int = 10) -> list[Message]:
        """Up to ``limit`` messages of the queue, oldest first, without receiving them."""
        return await self._inspector.peek(queue_name, limit)

    async def purge(self, queue_name: str) -> int:
        """Delete every message of the queue; returns how many."""
        return await self._inspector.purge(queue_name)

    # -- closing ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Send what is buffered (acknowledgements included) and close the connection.
        Unsettled messages come back when their leases end."""
        session = self._session
        session.closed = True
        self.interrupt()
        nc = session.nc
        if nc is not None and not nc.is_closed:
            # Messages that came after their receive returned go back at once, not after
            # their lease (the delivery counts, as a release does). A pull request still open
            # may be answering meanwhile: what the server sent before a ping's answer has
            # arrived once the answer has, so give back, confirm, and look again.
            for _ in range(_CLOSE_ROUNDS):
                await self._receiver.give_back_leftovers()
                if not await session.confirm_sent(nc):
                    break
                await session.answers_handled()
                if not self._receiver.has_leftovers:
                    break
        await session.close(nc)


# NATSReceipt, QueueStats and nats_capabilities live in the modules of their roles; they
# are imported from here too.
__all__ = ["AsyncNATSBackend", "NATSReceipt", "QueueStats", "nats_capabilities"]

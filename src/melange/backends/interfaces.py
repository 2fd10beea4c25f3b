"""The messaging backend contract: what every broker adapter implements.

A backend only moves bytes: it declares queues and topics, publishes and receives
:class:`~melange.models.Message` envelopes and settles them (acknowledge, negative
acknowledge, dead-letter). Deciding *what* to do with a message lives in the dispatcher.

Contract, for every implementation:

- **At-least-once.** A received message stays owned by its receiver until it is settled with
  :meth:`MessagingBackend.acknowledge`, :meth:`MessagingBackend.nack` or
  :meth:`MessagingBackend.dead_letter`. If the receiver dies or the backend's visibility
  timeout expires first, the message is delivered again (possibly to another consumer).
- **Settling is idempotent enough**: acknowledging a message whose lease already expired must
  not raise for the common "late ack" case; it may be a no-op.
- **Thread safety.** Publishing is safe from several threads unless the capability
  descriptor says otherwise. A message must be settled by the backend instance that
  received it.
- **Errors.** A missing queue or topic raises
  :class:`~melange.exceptions.QueueNotFoundError` / :class:`~melange.exceptions.TopicNotFoundError`;
  a broker refusal raises :class:`~melange.exceptions.PublishError`. Nothing is created
  implicitly on an error.

Third-party backends check themselves with :mod:`melange.testing.conformance`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from melange.exceptions import WouldBlock
from melange.models import Message, QueueWrapper, TopicWrapper

_T = TypeVar("_T")

#: Deliveries after which a broker dead-letters a message by itself, unless a queue's
#: ``max_receive_count`` says otherwise. A backstop for messages no handler ever settles (a
#: message that crashes every consumer it reaches), set far above the failure policy's
#: attempts so that the policy, which records why, always decides first. The SQS backend
#: keeps 7.2.0's 4 (see its documentation).
DEFAULT_MAX_RECEIVE_COUNT = 20


class QueueWatch:
    """A receiver's registration with :meth:`MessagingBackend.watch_queue`."""

    __slots__ = ("_cancel", "_interrupted")

    def __init__(self, cancel: Callable[[], None], interrupted: Callable[[], bool]) -> None:
        self._cancel = cancel
        self._interrupted = interrupted

    @property
    def interrupted(self) -> bool:
        """Whether :meth:`MessagingBackend.interrupt` was called since the watch began (the
        receive then returns at once, with what it has)."""
        return self._interrupted()

    def cancel(self) -> None:
        """Stop the wakes (idempotent)."""
        self._cancel()


@dataclass(frozen=True)
class BackendCapabilities:
    """What a backend can do, so callers (and the conformance suite) know what to expect.

    Attributes:
        name: Short name of the backend (``"memory"``, ``"sqs"``, ``"rabbitmq"``, ...).
        persistent: Messages survive a restart of the broker (or of the process, when the
            backend is embedded).
        fifo: FIFO queues with strict ordering per message group are supported.
        topics: Topics that fan out to subscribed queues are supported.
        native_dead_letter: The broker itself moves a message to the dead-letter queue after
            ``max_receive_count`` deliveries.
        delayed_delivery: ``nack(message, delay=...)`` holds the message back for ``delay``
            seconds; without it, a nacked message comes back at once.
        visibility_timeout: An unsettled message becomes visible again after a timeout (as on
            SQS); without it, it comes back only when its receiver disconnects.
        extend_visibility: :meth:`MessagingBackend.extend_visibility` extends a lease.
        receive_count: Received messages carry ``attempt`` (see :class:`~melange.models.Message`).
        filter_policies: Subscriptions can filter on the message manifest in the broker.
        max_message_size: Largest body in bytes, or ``None`` for no fixed limit.
        max_batch_size: Most messages one native batch publish call takes, or ``None``.
        delayed_publish: ``publish_to_queue(..., delay_seconds=...)`` holds a message back
            for that long (never on FIFO queues; see :mod:`melange.backends.publish_options`).
            Without it, a publish with a delay is refused.
        delayed_topic_publish: The same for ``publish_to_topic``: every copy is held back.
        max_publish_delay: The longest such delay in seconds, or ``None`` for no limit.
        duplicate_deliveries: The broker itself may hand a message out more than once while
            its lease still holds (SQS standard queues: at-least-once by design); the
            deduplication cache is what keeps a consumer from running twice on such a copy.
        loop_wait: Queues can be watched (:meth:`MessagingBackend.watch_queue` and
            :meth:`MessagingBackend.poll_queue`): an asyncio dispatcher's receive waits on the
            event loop for a publish, without a thread of its own.
    """

    name: str
    persistent: bool
    fifo: bool
    topics: bool = True
    native_dead_letter: bool = False
    delayed_delivery: bool = False
    visibility_timeout: bool = False
    extend_visibility: bool = False
    receive_count: bool = False
    filter_policies: bool = False
    max_message_size: int | None = None
    max_batch_size: int | None = None
    delayed_publish: bool = False
    delayed_topic_publish: bool = False
    max_publish_delay: float | None = None
    duplicate_deliveries: bool = False
    loop_wait: bool = False


class MessagingBackend(ABC):
    """Base class of every messaging backend.

    The abstract methods are the 7.2.0 contract, so backends written for it keep working;
    the others have conservative defaults that a backend overrides to offer more.
    """

    #: How long a consume loop blocks in one :meth:`retrieve_messages` call, in seconds;
    #: ``None`` leaves it to the backend's own default (e.g. SQS long polling).
    loop_wait_seconds: float | None = None

    #: Whether calls may block on I/O. An asyncio dispatcher runs the calls of a blocking
    #: backend on worker threads; a backend that never blocks (in memory) it calls on the
    #: event loop, except a receive that has to wait for messages.
    blocking: bool = True

    #: Whether a blocking backend's calls are worth trying on the event loop first, through
    #: :meth:`run_inline`: those that would wait go to a worker thread, the others save the
    #: thread hop (SQLite, whose calls wait only while another connection writes).
    inline_when_free: bool = False

    def run_inline(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Call ``fn`` (one of this backend's methods) on this thread if it can finish
        without waiting for a lock, a connection or the network.

        Raises:
            WouldBlock: it would have had to wait. Nothing was done: the caller makes the
                same call where waiting is allowed (a worker thread).
        """
        if self.blocking:
            raise WouldBlock(f"{type(self).__name__} calls may wait for I/O")
        return fn(*args, **kwargs)

    @property
    def capabilities(self) -> BackendCapabilities:
        """What this backend supports; override it to advertise more."""
        return BackendCapabilities(name=type(self).__name__, persistent=False, fifo=False)

    # -- topology ---------------------------------------------------------------------------

    @abstractmethod
    def declare_topic(self, topic_name: str) -> TopicWrapper:
        """Create the topic if needed (idempotent) and return a handle on it."""

    def get_topic(self, topic_name: str) -> TopicWrapper:
        """Return a handle on an existing topic.

        The default declares it, as 7.2.0 backends did; real backends override this to look
        it up (cached) and raise :class:`~melange.exceptions.TopicNotFoundError`.
        """
        return self.declare_topic(topic_name)

    @abstractmethod
    def get_queue(self, queue_name: str) -> QueueWrapper:
        """Return a handle on an existing queue, or raise ``QueueNotFoundError``."""

    @abstractmethod
    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create the queue if needed (idempotent), subscribe it to ``topics_to_bind`` and set
        up its dead-letter queue. Returns the queue and the dead-letter queue (or ``None``).

        Common keyword arguments: ``filter_events`` (only messages whose manifest is listed
        reach the queue from the topics), ``max_receive_count`` (deliveries before the broker
        dead-letters a message by itself: :data:`DEFAULT_MAX_RECEIVE_COUNT`, 4 on SQS),
        ``visibility_timeout`` (seconds).
        """

    @abstractmethod
    def delete_queue(self, queue: QueueWrapper) -> None:
        """Delete the queue and the messages in it."""

    @abstractmethod
    def delete_topic(self, topic: TopicWrapper) -> None:
        """Delete the topic and its subscriptions."""

    # -- publishing -------------------------------------------------------------------------

    @abstractmethod
    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        """Hand ``message`` to the broker for ``queue``; returns once the broker has it.

        Keyword arguments understood by Melange's backends (see
        :mod:`melange.backends.publish_options`): ``message_group_id`` and
        ``message_deduplication_id`` (the message's FIFO keys, as 7.2.0 passed them) and
        ``delay_seconds`` (where :attr:`BackendCapabilities.delayed_publish` says so).
        """

    @abstractmethod
    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        """Hand ``message`` to the broker for every queue subscribed to ``topic``."""

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        """Publish several messages; raises ``BatchPublishError`` naming the refused ones."""
        for message in messages:
            self.publish_to_queue(message, queue, **kwargs)

    def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        """Publish several messages to a topic; raises ``BatchPublishError`` on refusals."""
        for message in messages:
            self.publish_to_topic(message, topic, **kwargs)

    # -- consuming --------------------------------------------------------------------------

    @abstractmethod
    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Receive the messages available now (at most a backend-defined batch).

        Keyword arguments understood by Melange's backends: ``max_messages`` (batch size) and
        ``wait_seconds`` (how long to block when the queue is empty).
        """

    def yield_messages(self, queue: QueueWrapper, **kwargs: Any) -> Iterator[Message]:
        """Yield the messages of one :meth:`retrieve_messages` call."""
        yield from self.retrieve_messages(queue, **kwargs)

    def watch_queue(self, queue: QueueWrapper, wake: Callable[[], None]) -> QueueWatch | None:
        """Have ``wake()`` called, from whichever thread publishes, when messages may have
        arrived on ``queue``, and on :meth:`interrupt`, until the watch is cancelled.

        With :meth:`poll_queue`, this lets a receive wait without a thread of its own: an
        asyncio dispatcher waits on its event loop for the wake or the pause the poll gave,
        whichever comes first. ``wake`` must return at once (it may run under the backend's
        locks). ``None``, the default: this backend cannot be watched, and a receive that
        has to wait calls :meth:`retrieve_messages` on a worker thread. A backend that
        implements it says so with the ``loop_wait`` capability.
        """
        return None

    def poll_queue(
        self, queue: QueueWrapper, max_messages: int = 10
    ) -> tuple[list[Message], float]:
        """Receive without waiting: the messages claimed (at most ``max_messages``) and, when
        there were none, how many seconds until another poll may find some that no wake
        announces (a delayed message coming due, another process's publish). Only backends
        whose :meth:`watch_queue` returns a watch implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be polled")

    @abstractmethod
    def acknowledge(self, message: Message) -> None:
        """Settle ``message`` as done: the broker deletes it."""

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Acknowledge several messages (backends override it to use one round trip)."""
        for message in messages:
            self.acknowledge(message)

    def nack(self, message: Message, delay: float = 0.0) -> None:
        """Report a failed attempt: deliver ``message`` again after ``delay`` seconds, with
        its ``attempt`` one higher where the backend counts attempts.

        The default does nothing: the broker redelivers when its own timeout expires.
        """

    def release(self, message: Message, delay: float = 0.0) -> None:
        """Give back a message whose handlers did not run, after ``delay`` seconds.

        Unlike :meth:`nack`, which reports a failed attempt, a release must not count as an
        attempt: the dispatcher releases what it received but did not start when it stops,
        and messages whose deduplication claim another process holds. The delivery still
        counts towards the broker's ``max_receive_count`` (a backstop far above the failure
        policy's attempts). The default is :meth:`nack`, for brokers whose only count is the
        receive count (SQS).
        """
        self.nack(message, delay)

    def holds(self, message: Message) -> bool:
        """Whether ``message`` can still be settled by this backend.

        ``False`` once the broker will deliver it again whatever this process does (the
        connection it came on was lost): the dispatcher then does not start it, since its
        handlers would only run twice. The default is ``True``.
        """
        return True

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        """Move ``message`` to its queue's dead-letter queue, adding ``headers``.

        The dead-lettered copy keeps the original body, manifest, serializer id and headers.
        Returns ``False`` (and leaves the message unsettled) when the queue has no dead-letter
        queue; the caller then logs it and leaves it to the broker.
        """
        return False

    def extend_visibility(self, message: Message, seconds: float) -> None:
        """Keep ``message`` invisible to other consumers for ``seconds`` more (a heartbeat)."""

    def visibility_timeout_for(self, message: Message) -> float | None:
        """The lease, in seconds, of a received ``message`` (its queue's visibility timeout).

        The dispatcher's heartbeat renews the lease of a message in hand every third of it.
        The default reads a ``visibility_timeout`` attribute of the backend; ``None`` means
        no lease to renew.
        """
        timeout = getattr(self, "visibility_timeout", None)
        if isinstance(timeout, int | float) and timeout > 0:
            return float(timeout)
        return None

    def interrupt(self) -> None:
        """Wake any :meth:`retrieve_messages` call blocked in this process (used on stop)."""

    def close_connection(self) -> None:
        """Release connections and threads. The backend may not be used afterwards."""

    def close(self) -> None:
        """Alias of :meth:`close_connection`."""
        self.close_connection()

    def __enter__(self) -> MessagingBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_connection()

"""The NATS JetStream backend for blocking code: :class:`NATSBackend`.

nats-py is asyncio-only, so :class:`NATSBackend` runs an
:class:`~melange.backends.nats.async_backend.AsyncNATSBackend` on an event loop of its own,
in a daemon thread, and each call hands its coroutine to that loop. The two are one backend
(same streams, subjects, message format and options): what one publishes, the other consumes.

The bridge costs one hand-over to the loop per call, so calls that carry many messages
(``publish_batch_to_queue``, ``acknowledge_batch``) cross it once for all. Acknowledgements
do not wait: JetStream does not answer them, so the call returns once they are queued on the
loop, where they are sent before any later operation of this backend (an acknowledgement that
never reaches the server leaves its message to come back when its lease ends, as a lost
connection would). ``holds`` and ``visibility_timeout_for`` read the receipt and do not cross.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from melange.backends.interfaces import BackendCapabilities, MessagingBackend
from melange.backends.nats.async_backend import (
    DEFAULT_MAX_PAYLOAD,
    AsyncNATSBackend,
    QueueStats,
    nats_capabilities,
)
from melange.backends.nats.topology import (
    DEFAULT_DUPLICATE_WINDOW,
    DEFAULT_MAX_ACK_PENDING,
    DEFAULT_TOPIC_MAX_AGE,
    DEFAULT_VISIBILITY_TIMEOUT,
)
from melange.models import Message, QueueWrapper, TopicWrapper

T = TypeVar("T")


class NATSBackend(MessagingBackend):
    """A messaging backend on NATS JetStream for blocking code (threads).

    Takes the arguments of :class:`~melange.backends.nats.async_backend.AsyncNATSBackend`
    and means the same by them; see :mod:`melange.backends.nats` for how Melange's queues,
    topics, retries and dead letters map onto JetStream. The connection opens on the first
    call; calls may come from any thread.
    """

    blocking = True
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
        self.backend = AsyncNATSBackend(
            url,
            prefix=prefix,
            visibility_timeout=visibility_timeout,
            max_ack_pending=max_ack_pending,
            duplicate_window=duplicate_window,
            topic_max_age=topic_max_age,
            storage=storage,
            connect_timeout=connect_timeout,
            reconnect_time_wait=reconnect_time_wait,
            max_reconnect_attempts=max_reconnect_attempts,
            operation_timeout=operation_timeout,
            connection_name=connection_name,
            **options,
        )
        self.visibility_timeout = self.backend.visibility_timeout
        self._storage = storage
        self._closed = False
        self._close_lock = threading.Lock()
        self._acks: list[Message] = []
        self._acks_lock = threading.Lock()
        self._acks_scheduled = False
        # Acknowledgements being sent (touched on the loop only).
        self._ack_tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="melange-nats-loop", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def __repr__(self) -> str:
        return f"NATSBackend({self.backend.describe}, prefix={self.backend.names.prefix!r})"

    @property
    def capabilities(self) -> BackendCapabilities:
        inner: AsyncNATSBackend | None = self.__dict__.get("backend")
        if inner is None:  # described without being built (the documentation's table)
            return nats_capabilities(self._storage, DEFAULT_MAX_PAYLOAD)
        return inner.capabilities

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the backend's loop and wait for its result."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("a blocking call from the NATS loop's own thread would wait forever")
        if self._closed:
            coroutine.close()
            raise RuntimeError(f"{self!r} is closed")
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            coroutine, self._loop
        )
        try:
            return future.result()
        except BaseException:
            future.cancel()  # interrupted while waiting: do not leave the call running
            raise

    def _send(self, messages: Sequence[Message]) -> None:
        """Queue acknowledgements for the loop without waiting for them (see the module docs).

        Acknowledgements queued while the loop has not taken the earlier ones yet go with
        them: one wake-up of the loop for all.
        """
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        with self._acks_lock:
            self._acks.extend(messages)
            if self._acks_scheduled:
                return
            self._acks_scheduled = True
        self._loop.call_soon_threadsafe(self._flush_acks)

    def _flush_acks(self) -> None:
        """On the loop: send the queued acknowledgements, in the order they were queued."""
        with self._acks_lock:
            messages, self._acks = self._acks, []
            self._acks_scheduled = False
        if messages:
            task = self._loop.create_task(self.backend.acknowledge_batch(messages))
            self._ack_tasks.add(task)
            task.add_done_callback(self._ack_tasks.discard)

    async def _close(self) -> None:
        """Send every acknowledgement queued so far, then close the asynchronous backend."""
        with self._acks_lock:
            messages, self._acks = self._acks, []
        if self._ack_tasks:
            await asyncio.gather(*self._ack_tasks, return_exceptions=True)
        if messages:
            await self.backend.acknowledge_batch(messages)
        await self.backend.aclose()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of your own on the backend's loop, e.g. with
        :attr:`backend` (the :class:`AsyncNATSBackend`), and return its result."""
        return self._call(coroutine)

    # -- topology ---------------------------------------------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        return self._call(self.backend.declare_topic(topic_name))

    def get_topic(self, topic_name: str) -> TopicWrapper:
        return self._call(self.backend.get_topic(topic_name))

    def get_queue(self, queue_name: str) -> QueueWrapper:
        return self._call(self.backend.get_queue(queue_name))

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """See :meth:`AsyncNATSBackend.declare_queue
        <melange.backends.nats.async_backend.AsyncNATSBackend.declare_queue>` for the options."""
        return self._call(
            self.backend.declare_queue(
                queue_name, *topics_to_bind, dead_letter_queue_name=dead_letter_queue_name, **kwargs
            )
        )

    def delete_queue(self, queue: QueueWrapper) -> None:
        self._call(self.backend.delete_queue(queue))

    def delete_topic(self, topic: TopicWrapper) -> None:
        self._call(self.backend.delete_topic(topic))

    # -- publishing -------------------------------------------------------------------------

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        self._call(self.backend.publish_to_queue(message, queue, **kwargs))

    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        self._call(self.backend.publish_to_topic(message, topic, **kwargs))

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        self._call(self.backend.publish_batch_to_queue(messages, queue, **kwargs))

    def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        self._call(self.backend.publish_batch_to_topic(messages, topic, **kwargs))

    # -- consuming --------------------------------------------------------------------------

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        return self._call(self.backend.retrieve_messages(queue, **kwargs))

    def acknowledge(self, message: Message) -> None:
        self._send([message])

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        if messages:
            self._send(list(messages))

    def nack(self, message: Message, delay: float = 0.0) -> None:
        self._call(self.backend.nack(message, delay))

    def release(self, message: Message, delay: float = 0.0) -> None:
        self._call(self.backend.release(message, delay))

    def holds(self, message: Message) -> bool:
        return self.backend.holds(message)

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        return self._call(self.backend.dead_letter(message, headers))

    def extend_visibility(self, message: Message, seconds: float) -> None:
        self._call(self.backend.extend_visibility(message, seconds))

    def visibility_timeout_for(self, message: Message) -> float | None:
        return self.backend.visibility_timeout_for(message)

    def interrupt(self) -> None:
        self.backend.interrupt()

    # -- inspection (the CLI's ``queues`` and ``dlq`` commands) ------------------------------

    def queue_names(self) -> list[str]:
        """Every queue of this backend's prefix."""
        return self._call(self.backend.queue_names())

    def topic_names(self) -> list[str]:
        """Every topic of this backend's prefix."""
        return self._call(self.backend.topic_names())

    def queue_stats(self, queue_name: str) -> QueueStats:
        """Ready, in-flight and total messages of the queue."""
        return self._call(self.backend.queue_stats(queue_name))

    def queue_depth(self, queue_name: str) -> int:
        """Messages the queue holds, in flight or not."""
        return self._call(self.backend.queue_depth(queue_name))

    def peek(self, queue_name: str, limit: int = 10) -> list[Message]:
        """Up to ``limit`` messages of the queue, oldest first, without receiving them."""
        return self._call(self.backend.peek(queue_name, limit))

    def purge(self, queue_name: str) -> int:
        """Delete every message of the queue; returns how many."""
        return self._call(self.backend.purge(queue_name))

    # -- closing ----------------------------------------------------------------------------

    def close_connection(self) -> None:
        """Send what is queued (acknowledgements too), close the connection and stop the
        loop's thread."""
        with self._close_lock:
            if self._closed:
                return
            try:
                if threading.current_thread() is not self._thread:
                    self._call(self._close())
            finally:
                self._closed = True
                self._loop.call_soon_threadsafe(self._loop.stop)
                if threading.current_thread() is not self._thread:
                    self._thread.join(10.0)


__all__ = ["NATSBackend"]

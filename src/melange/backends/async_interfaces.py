"""The asynchronous messaging backend contract, for transports with a native asyncio client.

:class:`AsyncMessagingBackend` is :class:`~melange.backends.interfaces.MessagingBackend` with
coroutines: the same methods, arguments, results, errors and guarantees (at-least-once,
idempotent-enough settling, a message settled by the instance that received it), so that the
asyncio dispatcher and publishers await broker calls instead of running blocking clients on
worker threads. What a backend decides (queue arguments, the wire format, retry queues, dead
letters) lives in modules shared with its blocking twin; only the I/O differs.

:func:`as_async` presents a blocking backend through this contract (its calls run on worker
threads, or inline for a backend that never blocks, like the in-memory one), so the asyncio
dispatcher talks to one contract whatever it is given. It and
:func:`~melange.testing.blocking.as_blocking` undo each other: an asynchronous backend made
blocking comes back as itself, and is awaited natively rather than through two threads.

A concrete subclass must set :attr:`AsyncMessagingBackend.name` (``"rabbitmq"``, ...): it is
how logs, metrics and the factory name the transport.
"""

from __future__ import annotations

import asyncio
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from melange.backends.interfaces import BackendCapabilities, MessagingBackend
from melange.backends.loop_wait import LoopReceiver, can_wait_on_loop
from melange.exceptions import WouldBlock
from melange.models import Message, QueueWrapper, TopicWrapper

_T = TypeVar("_T")


class AsyncMessagingBackend(ABC):
    """Base class of messaging backends whose I/O is asyncio-native.

    Each coroutine means what the :class:`~melange.backends.interfaces.MessagingBackend`
    method of the same name means; :meth:`holds` and :meth:`visibility_timeout_for` look at
    local state only and are plain methods.
    """

    #: Short name of the transport (``"rabbitmq"``, ``"sqs"``, ...); required.
    name: ClassVar[str]

    #: See :attr:`MessagingBackend.loop_wait_seconds`.
    loop_wait_seconds: float | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "__abstractmethods__", None) and not isinstance(
            getattr(cls, "name", None), str
        ):
            raise TypeError(f"{cls.__name__} must set the class attribute 'name' (a str)")

    @property
    def capabilities(self) -> BackendCapabilities:
        """What this backend supports; override it to advertise more."""
        return BackendCapabilities(name=self.name, persistent=False, fifo=False)

    # -- topology ---------------------------------------------------------------------------

    @abstractmethod
    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        """See :meth:`MessagingBackend.declare_topic`."""

    @abstractmethod
    async def get_topic(self, topic_name: str) -> TopicWrapper:
        """See :meth:`MessagingBackend.get_topic`."""

    @abstractmethod
    async def get_queue(self, queue_name: str) -> QueueWrapper:
        """See :meth:`MessagingBackend.get_queue`."""

    @abstractmethod
    async def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """See :meth:`MessagingBackend.declare_queue`."""

    @abstractmethod
    async def delete_queue(self, queue: QueueWrapper) -> None:
        """See :meth:`MessagingBackend.delete_queue`."""

    @abstractmethod
    async def delete_topic(self, topic: TopicWrapper) -> None:
        """See :meth:`MessagingBackend.delete_topic`."""

    # -- publishing -------------------------------------------------------------------------

    @abstractmethod
    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        """See :meth:`MessagingBackend.publish_to_queue`."""

    @abstractmethod
    async def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        """See :meth:`MessagingBackend.publish_to_topic`."""

    async def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        """See :meth:`MessagingBackend.publish_batch_to_queue`."""
        for message in messages:
            await self.publish_to_queue(message, queue, **kwargs)

    async def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        """See :meth:`MessagingBackend.publish_batch_to_topic`."""
        for message in messages:
            await self.publish_to_topic(message, topic, **kwargs)

    # -- consuming --------------------------------------------------------------------------

    @abstractmethod
    async def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """See :meth:`MessagingBackend.retrieve_messages`."""

    @abstractmethod
    async def acknowledge(self, message: Message) -> None:
        """See :meth:`MessagingBackend.acknowledge`."""

    async def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """See :meth:`MessagingBackend.acknowledge_batch`."""
        for message in messages:
            await self.acknowledge(message)

    async def nack(self, message: Message, delay: float = 0.0) -> None:
        """See :meth:`MessagingBackend.nack`."""

    async def release(self, message: Message, delay: float = 0.0) -> None:
        """See :meth:`MessagingBackend.release` (the default is :meth:`nack`)."""
        await self.nack(message, delay)

    def holds(self, message: Message) -> bool:
        """See :meth:`MessagingBackend.holds`."""
        return True

    async def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        """See :meth:`MessagingBackend.dead_letter`."""
        return False

    async def extend_visibility(self, message: Message, seconds: float) -> None:
        """See :meth:`MessagingBackend.extend_visibility`."""

    def visibility_timeout_for(self, message: Message) -> float | None:
        """See :meth:`MessagingBackend.visibility_timeout_for`."""
        return None

    def interrupt(self) -> None:
        """Wake a :meth:`retrieve_messages` waiting for messages (thread-safe; used on stop)."""

    async def aclose(self) -> None:
        """Release connections. The backend may not be used afterwards."""

    async def __aenter__(self) -> AsyncMessagingBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class BlockingBackendAdapter(AsyncMessagingBackend):
    """A blocking :class:`MessagingBackend` behind the asynchronous contract.

    Calls run on worker threads (:meth:`run_blocking`, ``asyncio.to_thread`` unless a
    subclass runs them elsewhere); for a backend that never blocks (``blocking = False``) they
    run inline on the loop. A backend that blocks only now and then (``inline_when_free``) has
    each call tried on the loop first
    (:meth:`~melange.backends.interfaces.MessagingBackend.run_inline`), and only those that
    would wait go to a thread. A receive that must wait for messages waits on the loop when
    the backend can be watched (:mod:`melange.backends.loop_wait`), else on a thread. Use
    :func:`as_async` rather than this class.
    """

    name = "blocking-adapter"

    def __init__(self, backend: MessagingBackend) -> None:
        self.backend = backend
        self.loop_wait_seconds = backend.loop_wait_seconds
        self._loop_receiver = (
            LoopReceiver(backend, self.run_blocking) if can_wait_on_loop(backend) else None
        )

    def __repr__(self) -> str:
        return f"<as_async({self.backend!r})>"

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.backend.capabilities

    async def run_blocking(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Run a call that may block off the event loop: every call that leaves the loop goes
        through here (a subclass whose client is bound to threads of its own overrides it)."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        backend = self.backend
        if not backend.blocking:
            return fn(*args, **kwargs)
        if backend.inline_when_free:
            try:
                return backend.run_inline(fn, *args, **kwargs)
            except WouldBlock:
                pass  # nothing was done: the same call, where it may wait
        return await self.run_blocking(fn, *args, **kwargs)

    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        return await self.run_blocking(self.backend.declare_topic, topic_name)

    async def get_topic(self, topic_name: str) -> TopicWrapper:
        return await self._call(self.backend.get_topic, topic_name)

    async def get_queue(self, queue_name: str) -> QueueWrapper:
        return await self._call(self.backend.get_queue, queue_name)

    async def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        return await self.run_blocking(
            self.backend.declare_queue,
            queue_name,
            *topics_to_bind,
            dead_letter_queue_name=dead_letter_queue_name,
            **kwargs,
        )

    async def delete_queue(self, queue: QueueWrapper) -> None:
        await self.run_blocking(self.backend.delete_queue, queue)

    async def delete_topic(self, topic: TopicWrapper) -> None:
        await self.run_blocking(self.backend.delete_topic, topic)

    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        await self._call(self.backend.publish_to_queue, message, queue, **kwargs)

    async def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        await self._call(self.backend.publish_to_topic, message, topic, **kwargs)

    async def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        await self._call(self.backend.publish_batch_to_queue, messages, queue, **kwargs)

    async def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        await self._call(self.backend.publish_batch_to_topic, messages, topic, **kwargs)

    async def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        backend = self.backend
        if self._loop_receiver is not None:
            received = await self._loop_receiver.receive(
                queue,
                int(kwargs.get("max_messages") or 10),
                float(kwargs.get("wait_seconds") or 0.0),
            )
            if received is not None:
                return received
        elif not backend.blocking or backend.inline_when_free:
            # What is there now, on the loop; only a wait for more goes to a thread.
            try:
                ready = backend.run_inline(
                    backend.retrieve_messages, queue, **{**kwargs, "wait_seconds": 0}
                )
            except WouldBlock:
                pass
            else:
                if ready or not kwargs.get("wait_seconds"):
                    return ready
        return await self.run_blocking(backend.retrieve_messages, queue, **kwargs)

    async def acknowledge(self, message: Message) -> None:
        await self._call(self.backend.acknowledge, message)

    async def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        await self._call(self.backend.acknowledge_batch, messages)

    async def nack(self, message: Message, delay: float = 0.0) -> None:
        await self._call(self.backend.nack, message, delay)

    async def release(self, message: Message, delay: float = 0.0) -> None:
        await self._call(self.backend.release, message, delay)

    def holds(self, message: Message) -> bool:
        return self.backend.holds(message)

    async def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        return await self._call(self.backend.dead_letter, message, headers)

    async def extend_visibility(self, message: Message, seconds: float) -> None:
        await self._call(self.backend.extend_visibility, message, seconds)

    def visibility_timeout_for(self, message: Message) -> float | None:
        return self.backend.visibility_timeout_for(message)

    def interrupt(self) -> None:
        self.backend.interrupt()

    async def aclose(self) -> None:
        await self.run_blocking(self.backend.close_connection)


def _wrapped_async(backend: MessagingBackend) -> AsyncMessagingBackend | None:
    """The asynchronous backend ``backend`` runs, when :func:`~melange.testing.blocking.as_blocking`
    made it; else ``None``."""
    # Only that module makes such backends: when it was never imported, there is none.
    if "melange.testing.blocking" not in sys.modules:
        return None
    from melange.testing.blocking import BlockingAsyncBackend

    return backend.backend if isinstance(backend, BlockingAsyncBackend) else None


def as_async(backend: MessagingBackend | AsyncMessagingBackend) -> AsyncMessagingBackend:
    """``backend`` through the asynchronous contract (itself when it already is one).

    An asynchronous backend that :func:`~melange.testing.blocking.as_blocking` wrapped comes
    back as it was, to be awaited on the caller's event loop instead of through a worker
    thread and the wrapper's loop. Like any asynchronous backend, it should then be used from
    that one loop only: hand the wrapper over before its own loop has opened connections.
    """
    if isinstance(backend, AsyncMessagingBackend):
        return backend
    if isinstance(backend, MessagingBackend):
        inner = _wrapped_async(backend)
        return inner if inner is not None else BlockingBackendAdapter(backend)
    raise TypeError(
        f"backend must be a MessagingBackend or an AsyncMessagingBackend, got "
        f"{type(backend).__name__}"
    )


def overrides_holds(backend: MessagingBackend | AsyncMessagingBackend) -> bool:
    """Whether ``backend`` can orphan a message (it overrides ``holds``)."""
    if isinstance(backend, BlockingBackendAdapter):
        backend = backend.backend
    if isinstance(backend, MessagingBackend):
        backend = _wrapped_async(backend) or backend
    if isinstance(backend, AsyncMessagingBackend):
        return type(backend).holds is not AsyncMessagingBackend.holds
    return type(backend).holds is not MessagingBackend.holds


__all__ = ["AsyncMessagingBackend", "BlockingBackendAdapter", "as_async", "overrides_holds"]

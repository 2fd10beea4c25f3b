"""Use an asynchronous backend from blocking code: :func:`as_blocking`.

:func:`as_blocking` turns an :class:`~melange.backends.async_interfaces.AsyncMessagingBackend`
into a real :class:`~melange.backends.interfaces.MessagingBackend` whose methods run the
backend's coroutines on an event loop of its own, in a dedicated thread, and wait for them.

It is the way to check an asynchronous backend with the conformance suite (one suite for
both kinds of backend)::

    from melange.testing.blocking import as_blocking
    from melange.testing.conformance import BackendConformance

    class TestMyAsyncBackend(BackendConformance):
        @pytest.fixture
        def backend(self):
            backend = as_blocking(MyAsyncBackend(...))
            yield backend
            backend.close_connection()  # awaits aclose() and stops the loop's thread

and the way to use one from blocking code (a ``MessageDispatcher``, publishers, scripts).
Every call may come from any thread; calls from the loop's own thread (code the backend
itself runs) would wait for themselves and raise ``RuntimeError`` instead.

It and :func:`~melange.backends.async_interfaces.as_async` undo each other: given to the
asyncio dispatcher or publishers, the wrapper is unwrapped and its backend awaited on the
caller's loop (not through a worker thread and this loop), and :func:`as_blocking` of an
``as_async`` adapter is the blocking backend inside it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from melange.backends.async_interfaces import AsyncMessagingBackend, BlockingBackendAdapter
from melange.backends.interfaces import BackendCapabilities, MessagingBackend
from melange.models import Message, QueueWrapper, TopicWrapper

T = TypeVar("T")


class BlockingAsyncBackend(MessagingBackend):
    """An :class:`AsyncMessagingBackend` behind the blocking contract (see :func:`as_blocking`).

    Args:
        backend: The asynchronous backend; from now on only its loop thread uses it.
        name: Name of the loop's thread.
    """

    blocking = True

    def __init__(self, backend: AsyncMessagingBackend, *, name: str | None = None) -> None:
        self.backend = backend
        self.loop_wait_seconds = backend.loop_wait_seconds
        self._loop = asyncio.new_event_loop()
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._serve, name=name or f"melange-loop-{backend.name}", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def __repr__(self) -> str:
        return f"<as_blocking({self.backend!r})>"

    def _run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run the coroutine ``make()`` builds on the loop and wait for its result."""
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "a blocking call from the event loop's own thread would wait for itself"
            )
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

        async def call() -> T:
            return await make()

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(call(), self._loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted while waiting (KeyboardInterrupt): do not leave the call running.
            future.cancel()
            raise

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Read the backend's state on its loop thread (plain methods are not thread-safe)."""

        async def read() -> T:
            return fn()

        return self._run(read)

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.backend.capabilities

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        return self._run(lambda: self.backend.declare_topic(topic_name))

    def get_topic(self, topic_name: str) -> TopicWrapper:
        return self._run(lambda: self.backend.get_topic(topic_name))

    def get_queue(self, queue_name: str) -> QueueWrapper:
        return self._run(lambda: self.backend.get_queue(queue_name))

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        return self._run(
            lambda: self.backend.declare_queue(
                queue_name, *topics_to_bind, dead_letter_queue_name=dead_letter_queue_name, **kwargs
            )
        )

    def delete_queue(self, queue: QueueWrapper) -> None:
        self._run(lambda: self.backend.delete_queue(queue))

    def delete_topic(self, topic: TopicWrapper) -> None:
        self._run(lambda: self.backend.delete_topic(topic))

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        self._run(lambda: self.backend.publish_to_queue(message, queue, **kwargs))

    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        self._run(lambda: self.backend.publish_to_topic(message, topic, **kwargs))

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        self._run(lambda: self.backend.publish_batch_to_queue(messages, queue, **kwargs))

    def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        self._run(lambda: self.backend.publish_batch_to_topic(messages, topic, **kwargs))

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        return self._run(lambda: self.backend.retrieve_messages(queue, **kwargs))

    def acknowledge(self, message: Message) -> None:
        self._run(lambda: self.backend.acknowledge(message))

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        self._run(lambda: self.backend.acknowledge_batch(messages))

    def nack(self, message: Message, delay: float = 0.0) -> None:
        self._run(lambda: self.backend.nack(message, delay))

    def release(self, message: Message, delay: float = 0.0) -> None:
        self._run(lambda: self.backend.release(message, delay))

    def holds(self, message: Message) -> bool:
        return self._on_loop(lambda: self.backend.holds(message))

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        return self._run(lambda: self.backend.dead_letter(message, headers))

    def extend_visibility(self, message: Message, seconds: float) -> None:
        self._run(lambda: self.backend.extend_visibility(message, seconds))

    def visibility_timeout_for(self, message: Message) -> float | None:
        return self._on_loop(lambda: self.backend.visibility_timeout_for(message))

    def interrupt(self) -> None:
        # Thread-safe by contract: it must reach a receive that is waiting on the loop now.
        self.backend.interrupt()

    def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine of your own on the backend's loop (e.g. a backend-specific call)."""
        return self._run(make)

    def close_connection(self) -> None:
        """Await the backend's ``aclose()``, then stop the loop and its thread."""
        with self._close_lock:
            if self._closed:
                return
            try:
                self._run(self.backend.aclose)
            finally:
                self._closed = True
                self._loop.call_soon_threadsafe(self._loop.stop)
                if threading.current_thread() is not self._thread:
                    self._thread.join(10.0)


def as_blocking(backend: AsyncMessagingBackend) -> MessagingBackend:
    """``backend`` as a blocking :class:`MessagingBackend` (see the module documentation).

    A blocking backend that :func:`~melange.backends.async_interfaces.as_async` wrapped comes
    back as it was.
    """
    if isinstance(backend, BlockingBackendAdapter):
        return backend.backend
    if not isinstance(backend, AsyncMessagingBackend):
        raise TypeError(f"backend must be an AsyncMessagingBackend, got {type(backend).__name__}")
    return BlockingAsyncBackend(backend)


__all__ = ["BlockingAsyncBackend", "as_blocking"]

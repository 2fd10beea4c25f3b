"""The NATS JetStream backend for blocking code: :class:`NATSBackend`.

nats-py is asyncio-only, so :class:`NATSBackend` runs an
:class:`~melange.backends.nats.async_backend.AsyncNATSBackend` on an event loop of its own,
in a daemon thread, and each call hands its coroutine to that loop. The two are one backend
(same streams, subjects, message format and options): what one publishes, the other consumes.

The bridge costs two thread wake-ups per call, which a consume loop and a publisher pay on
every message, so the hot calls do not cross it when they can help it. Two more connections,
each with an event loop no thread runs for good, are driven by the calling thread itself for
the time of its call (one thread at a time): one publishes, the other receives and settles
messages (``nack``, ``release``, ``dead_letter``; a message received on one connection can be
settled on any). A thread that finds the one it needs busy, or that runs an event loop of its
own, goes through the bridge, as do lease renewals, whose repeated ones run on the loop.
Nothing reads those connections between calls, so after a minute without one a connection is
closed and the next call opens a new one (the server drops a connection whose pings go
unanswered for a few minutes); the receiving one times the leases of what it reads from
markers it sends with its pull requests (see :meth:`AsyncNATSBackend.read_in_calls_only
<melange.backends.nats.async_backend.AsyncNATSBackend.read_in_calls_only>`).

Acknowledgements do not wait: JetStream does not answer them, so the call returns once they
are queued. The next receive sends them in the same write as its pull request, and the loop
sends those that no receive took within ``_ACK_DELAY`` seconds (an acknowledgement that never
reaches the server leaves its message to come back when its lease ends, as a lost connection
would). ``holds`` and ``visibility_timeout_for`` read the receipt and do not cross.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from melange.backends.interfaces import BackendCapabilities, MessagingBackend
from melange.backends.nats.async_backend import AsyncNATSBackend
from melange.backends.nats.inspect import QueueStats
from melange.backends.nats.topology import (
    DEFAULT_DUPLICATE_WINDOW,
    DEFAULT_MAX_ACK_PENDING,
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_TOPIC_MAX_AGE,
    DEFAULT_VISIBILITY_TIMEOUT,
    nats_capabilities,
)
from melange.models import Message, QueueWrapper, TopicWrapper

T = TypeVar("T")

#: Seconds a queued acknowledgement waits, at most, for a receive to carry it before the
#: loop sends it (see NATSBackend._send).
_ACK_DELAY = 0.02
#: Seconds without an acknowledgement after which the loop stops looking for queued ones.
_ACK_WATCH_IDLE = 1.0

#: Seconds a connection driven by the calling thread may go unused before it is replaced
#: (see the module docs): well within the server's two unanswered pings, two minutes apart.
_DIRECT_IDLE_SECONDS = 60.0


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close ``loop`` after cancelling what still runs on it (a client's reader and flusher,
    when closing its connection failed or timed out): left pending, they would be collected
    later with their sockets open, on a loop already closed."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    with contextlib.suppress(Exception):
        if tasks:
            # Not gather() of nothing: that would make its future on the thread's loop.
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


class _OwnConnection:
    """A connection of its own that the calling thread drives, one thread at a time.

    A call through the bridge hands the call to the loop's thread and the result back: two
    thread wake-ups and the loop's queue on each call, which a thread publishing or consuming
    one message at a time pays in full. Here the thread runs the call itself, on an event
    loop that runs only while a call does.
    """

    def __init__(self, make: Callable[[], AsyncNATSBackend]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backend: AsyncNATSBackend | None = None
        # The task of the call under way (see _stopping).
        self._task: asyncio.Task[Any] | None = None
        self._used = 0.0
        self._closed = False

    def interrupt(self) -> None:
        """Wake a receive waiting on this connection (from any thread)."""
        backend = self._backend
        if backend is not None:
            backend.interrupt()

    def acquire(self) -> bool:
        """Take the connection for this thread; ``False`` when it cannot (then use the bridge)."""
        if self._closed:
            return False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._lock.acquire(blocking=False)
        return False  # a thread running an event loop cannot run another

    def run(self, call: Callable[[AsyncNATSBackend], Coroutine[Any, Any, T]]) -> T:
        """With :meth:`acquire` taken: run ``call`` on this thread, then let the connection go."""
        try:
            if self._loop is not None and time.monotonic() - self._used > _DIRECT_IDLE_SECONDS:
                self._shut()
            if self._loop is None or self._backend is None:
                self._loop = asyncio.new_event_loop()
                self._backend = self._make()
            loop = self._loop
            # Not run_until_complete(), whose done callback stops the loop a turn later: a
            # turn (and a release of the GIL) more on every call.
            task: asyncio.Task[T] = loop.create_task(self._stopping(call(self._backend)))
            self._task = task
            try:
                while not task.done():
                    loop.run_forever()
                return task.result()
            except BaseException:
                task.cancel()  # interrupted: cancelled at the next run, not left to finish
                raise
            finally:
                self._used = time.monotonic()
        finally:
            self._lock.release()

    async def _stopping(self, call: Coroutine[Any, Any, T]) -> T:
        """Run ``call``, then stop the loop at the end of the turn it finished in, unless
        it is a task an interrupted call left to be cancelled."""
        try:
            return await call
        finally:
            if self._loop is not None and asyncio.current_task() is self._task:
                self._loop.stop()

    def _shut(self) -> None:
        loop, backend, self._loop, self._backend = self._loop, self._backend, None, None
        if loop is None:
            return
        if backend is not None:
            # Nothing is left to send (every publish waited for its acknowledgement); aclose
            # bounds its own waits, so it is not cut short, which would leave its socket open.
            with contextlib.suppress(Exception):
                loop.run_until_complete(backend.aclose())
        _close_loop(loop)

    def close(self, timeout: float) -> None:
        """Close the connection, once no publish holds it (or ``timeout`` seconds passed)."""
        if not self._lock.acquire(timeout=timeout):
            self._closed = True
            return  # a publish is stuck on it: the process ends with it
        try:
            self._closed = True
            self._shut()
        finally:
            self._lock.release()


async def _receive(
    backend: AsyncNATSBackend,
    acks: list[Message],
    queue: QueueWrapper,
    options: dict[str, Any],
) -> list[Message]:
    """Send the queued acknowledgements ``acks``, then receive: they leave in the same write
    as the pull request."""
    if acks:
        await backend.acknowledge_batch(acks)
    return await backend.retrieve_messages(queue, **options)


async def _written(backend: AsyncNATSBackend, call: Coroutine[Any, Any, T]) -> T:
    """Run ``call``, then let the client write what it queued: the loop of a thread's own
    connection stops when the call returns, and a settlement must not wait for the next."""
    result = await call
    await backend.flushed()
    return result


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
        settings: dict[str, Any] = dict(
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
        self.backend = AsyncNATSBackend(url, **settings)
        self._direct = _OwnConnection(lambda: AsyncNATSBackend(url, **settings))
        self._receiver: _OwnConnection | None = None
        if not options.get("no_echo"):  # its pull markers need the server's echo

            def receiver() -> AsyncNATSBackend:
                backend = AsyncNATSBackend(url, **settings)
                backend.read_in_calls_only()
                # One record of the first deliveries received, whichever connection
                # received them (see Receiver.firsts).
                backend.share_first_deliveries(self.backend)
                return backend

            self._receiver = _OwnConnection(receiver)
        self.visibility_timeout = self.backend.visibility_timeout
        self._storage = storage
        self._closed = False
        self._close_lock = threading.Lock()
        self._acks: list[Message] = []
        self._acks_lock = threading.Lock()
        # When the oldest queued acknowledgement and the last one were queued, and whether
        # the loop looks for them (see _send).
        self._acks_since = self._acks_last = 0.0
        self._acks_watched = False
        self._ack_delay = _ACK_DELAY if self._receiver is not None else 0.0
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
            _close_loop(self._loop)

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

    def _own(
        self,
        connection: _OwnConnection | None,
        call: Callable[[AsyncNATSBackend], Coroutine[Any, Any, T]],
    ) -> T:
        """Run ``call`` on this thread over ``connection`` when it is free, else over the
        bridge."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if connection is not None and connection.acquire():
            return connection.run(call)
        return self._call(call(self.backend))

    def _publish(self, call: Callable[[AsyncNATSBackend], Coroutine[Any, Any, None]]) -> None:
        self._own(self._direct, call)

    def _send(self, messages: Sequence[Message]) -> None:
        """Queue acknowledgements without waiting for them (see the module docs).

        The next receive takes them and sends them in the same write as its pull request,
        which in a consume loop follows at once. Should none come within ``_ACK_DELAY``
        seconds, the loop sends them: it looks every ``_ACK_DELAY`` seconds while
        acknowledgements keep coming, so that a steady stream of them wakes it only that
        often, not once per message.
        """
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        now = time.monotonic()
        with self._acks_lock:
            if not self._acks:
                self._acks_since = now
            self._acks.extend(messages)
            self._acks_last = now
            if self._acks_watched:
                return
            self._acks_watched = True
        self._loop.call_soon_threadsafe(self._watch_acks)

    def _take_acks(self) -> list[Message]:
        with self._acks_lock:
            messages, self._acks = self._acks, []
        return messages

    def _watch_acks(self) -> None:
        """On the loop: send the acknowledgements queued for ``_ACK_DELAY`` seconds, and look
        again while they keep coming."""
        now = time.monotonic()
        delay = self._ack_delay
        messages: list[Message] = []
        with self._acks_lock:
            if self._acks and now - self._acks_since >= delay:
                messages, self._acks = self._acks, []
            if self._acks:
                again: float | None = self._acks_since + delay - now
            elif delay > 0 and now - self._acks_last < _ACK_WATCH_IDLE:
                again = delay
            else:
                again = None
                self._acks_watched = False
        if messages:
            task = self._loop.create_task(self.backend.acknowledge_batch(messages))
            self._ack_tasks.add(task)
            task.add_done_callback(self._ack_tasks.discard)
        if again is not None:
            self._loop.call_later(max(again, 0.001), self._watch_acks)

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
        self._publish(lambda backend: backend.publish_to_queue(message, queue, **kwargs))

    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        self._publish(lambda backend: backend.publish_to_topic(message, topic, **kwargs))

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        self._publish(lambda backend: backend.publish_batch_to_queue(messages, queue, **kwargs))

    def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        self._publish(lambda backend: backend.publish_batch_to_topic(messages, topic, **kwargs))

    # -- consuming --------------------------------------------------------------------------

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        return self._own(self._receiver, lambda b: _receive(b, self._take_acks(), queue, kwargs))

    def acknowledge(self, message: Message) -> None:
        self._send([message])

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        if messages:
            self._send(list(messages))

    def nack(self, message: Message, delay: float = 0.0) -> None:
        self._own(self._receiver, lambda b: _written(b, b.nack(message, delay)))

    def release(self, message: Message, delay: float = 0.0) -> None:
        self._own(self._receiver, lambda b: _written(b, b.release(message, delay)))

    def holds(self, message: Message) -> bool:
        return self.backend.holds(message)

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        return self._own(self._receiver, lambda b: _written(b, b.dead_letter(message, headers)))

    def extend_visibility(self, message: Message, seconds: float) -> None:
        self._call(self.backend.extend_visibility(message, seconds))

    def visibility_timeout_for(self, message: Message) -> float | None:
        return self.backend.visibility_timeout_for(message)

    def interrupt(self) -> None:
        self.backend.interrupt()
        if self._receiver is not None:
            self._receiver.interrupt()

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
                self._direct.close(timeout=10.0)
                if self._receiver is not None:
                    self._receiver.interrupt()  # a receive waiting on it returns at once
                    self._receiver.close(timeout=10.0)
                if threading.current_thread() is not self._thread:
                    self._call(self._close())
            finally:
                self._closed = True
                self._loop.call_soon_threadsafe(self._loop.stop)
                if threading.current_thread() is not self._thread:
                    self._thread.join(10.0)


__all__ = ["NATSBackend"]

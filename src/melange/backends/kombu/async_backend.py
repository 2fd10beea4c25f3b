""":class:`AsyncKombuBackend`: the kombu backend under the asynchronous contract.

kombu has no asyncio API, so this backend is the blocking adapter
(:class:`~melange.backends.async_interfaces.BlockingBackendAdapter`) around a
:class:`~melange.backends.kombu.KombuBackend`, whose calls run on a pool of threads of its own,
bounded by ``max_threads``, rather than on asyncio's shared default pool: the same messages,
wire format, queues and guarantees, whichever API a service uses.

On AMQP the calls that need no round trip to the broker run on the event loop: a receive takes
what the queue's consumer was pushed and waits for more on the loop (the connection's socket
becoming readable), and acknowledgements are written from the loop. Only publishes, give-backs
and the first receive of a queue (which starts its consumer) go to a thread. On other
transports every call does; a receive that waits holds one of the threads for its wait.
:meth:`AsyncKombuBackend.interrupt` ends waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from melange.backends.async_interfaces import BlockingBackendAdapter
from melange.backends.kombu.backend import DEFAULT_URL, KombuBackend
from melange.backends.kombu.connection import IO_TIMEOUT
from melange.backends.kombu.topology import routing_key
from melange.backends.kombu.wire import publish_arguments
from melange.exceptions import BackendError, WouldBlock
from melange.models import Message, QueueWrapper, TopicWrapper

_T = TypeVar("_T")

#: Longest wait on the socket before looking again (messages beyond a full prefetch window
#: are not pushed: a receive on a thread takes them with ``basic.get``).
_SOCKET_WAIT = 0.5


class AsyncKombuBackend(BlockingBackendAdapter):
    """Queues and topics on a kombu transport, for asyncio services.

    Args:
        url: See :class:`~melange.backends.kombu.KombuBackend`.
        max_threads: Threads that run the blocking kombu calls (at least 2, so that a
            waiting receive never keeps settlements waiting).
        backend: A :class:`KombuBackend` to run instead of one made from ``url`` and
            ``options``; it is closed with this one.
        **options: Options of :class:`~melange.backends.kombu.KombuBackend`.
    """

    name = "kombu"
    backend: KombuBackend

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        max_threads: int = 4,
        backend: KombuBackend | None = None,
        **options: Any,
    ) -> None:
        if max_threads < 2:
            raise ValueError(f"max_threads must be at least 2, got {max_threads!r}")
        super().__init__(backend if backend is not None else KombuBackend(url, **options))
        self._executor = ThreadPoolExecutor(max_threads, thread_name_prefix="melange-kombu")
        #: Receives waiting on the loop for the AMQP socket, and the descriptor the loop
        #: watches for them (-1: none).
        self._socket_waiters: set[Callable[[], None]] = set()
        self._watched = -1

    def __repr__(self) -> str:
        return f"AsyncKombuBackend({self.backend.url!r})"

    async def run_blocking(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Run a kombu call on this backend's own threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    # -- publishing: written from the loop, confirms awaited on it (AMQP) ---------------------

    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        await self.publish_batch_to_queue([message], queue, **kwargs)

    async def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        """Publish the messages; on AMQP written from the loop, every confirm awaited on it."""
        name = queue.name
        if not kwargs and await self._publish_on_loop(messages, "", lambda _: name, name, "queue"):
            return
        await self.run_blocking(self.backend.publish_batch_to_queue, messages, queue, **kwargs)

    async def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        await self.publish_batch_to_topic([message], topic, **kwargs)

    async def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        """Publish the messages to the topic; on AMQP, once the topic is known to exist (a
        first publish on a thread checks it), written from the loop."""
        backend = self.backend
        if (
            not kwargs
            and topic.name in backend._link.exchanges
            and await self._publish_on_loop(
                messages,
                topic.name,
                lambda message: routing_key(message.manifest),
                topic.name,
                "topic",
            )
        ):
            return
        await self.run_blocking(backend.publish_batch_to_topic, messages, topic, **kwargs)

    async def _publish_on_loop(
        self,
        messages: Sequence[Message],
        exchange: str,
        key: Callable[[Message], str],
        name: str,
        kind: str,
    ) -> bool:
        """Publish from the loop and await the broker's confirms on it; ``False`` when the
        publish has to go to a thread instead (from the start, or again after the
        connection was lost before every confirm came: at least once, never lost)."""
        backend = self.backend
        if not backend.inline_when_free:
            return False
        backend._check_publish(name, messages, {})
        targets = [(publish_arguments(message), exchange, key(message)) for message in messages]
        try:
            seqs = backend._confirms.publish_now(targets)
        except WouldBlock:
            return False
        except BackendError as exc:
            raise backend._publish_failure(exc, name, kind) from None
        loop = asyncio.get_running_loop()
        # As long as a blocking read of the confirm may take before the connection is
        # given up.
        deadline = loop.time() + IO_TIMEOUT
        while True:
            try:
                if backend._confirms.confirmed_now(seqs):
                    backend._wakeups.ring()
                    return True
            except WouldBlock:
                pass  # another thread reads the connection: it tells the waiters
            except ConnectionError:
                return False
            left = deadline - loop.time()
            if left <= 0:
                await self.run_blocking(backend._link.drop)
                return False
            await self._readable(min(left, _SOCKET_WAIT), None)

    async def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Receive up to ``max_messages`` messages; with ``wait_seconds``, wait that long for
        one (on AMQP on the event loop, see the module doc)."""
        backend = self.backend
        if not backend.inline_when_free:
            return await super().retrieve_messages(queue, **kwargs)
        loop = asyncio.get_running_loop()
        wait = float(kwargs.get("wait_seconds") or 0.0)
        deadline = loop.time() + wait
        interrupts = backend._wakeups.interrupts
        ready = {**kwargs, "wait_seconds": 0}
        while True:
            try:
                got = backend.run_inline(backend.retrieve_messages, queue, **ready)
            except WouldBlock:
                # Not consumed yet, a full window or a busy connection: the blocking receive,
                # for what is left of the wait.
                left = max(0.0, deadline - loop.time())
                return await self.run_blocking(
                    backend.retrieve_messages, queue, **{**kwargs, "wait_seconds": left}
                )
            left = deadline - loop.time()
            if got or left <= 0:
                return got
            if not await self._readable(min(left, _SOCKET_WAIT), interrupts):
                return []
            # A busy queue's next deliveries are taken together (see gathering).
            gather = backend._busy.gather_seconds(queue.name, deadline - loop.time())
            if gather > 0:
                await asyncio.sleep(gather)

    async def _readable(self, seconds: float, interrupts: int | None) -> bool:
        """Wait on the loop until the connection's socket is readable, a delivery or a
        confirm was read by another thread, :meth:`interrupt` is called or ``seconds``
        pass; ``False`` when interrupted (only counted when ``interrupts`` is given)."""
        backend = self.backend
        loop = asyncio.get_running_loop()
        woken = loop.create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        def wake_threadsafe() -> None:
            # From whichever thread pushed a delivery or interrupted.
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(wake)

        sock = backend._consumers.consuming_socket()
        fd = -1
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                fd = sock.fileno()
        backend._wakeups.add_waiter(wake_threadsafe)
        timer = loop.call_later(seconds, wake)
        self._socket_waiters.add(wake)
        try:
            if fd >= 0 and fd != self._watched:
                # One reader per socket, whatever the number of receives waiting on it.
                self._unwatch(loop)
                loop.add_reader(fd, self._socket_readable)
                self._watched = fd
            if interrupts is None or backend._wakeups.interrupts == interrupts:
                await woken
        finally:
            timer.cancel()
            backend._wakeups.remove_waiter(wake_threadsafe)
            self._socket_waiters.discard(wake)
            if not self._socket_waiters:
                self._unwatch(loop)
        return interrupts is None or backend._wakeups.interrupts == interrupts

    def _socket_readable(self) -> None:
        for wake in list(self._socket_waiters):
            wake()

    def _unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._watched >= 0:
            loop.remove_reader(self._watched)
            self._watched = -1

    async def purge(self, queue_name: str) -> int | None:
        """Delete the ready messages of the queue; returns how many."""
        return await self.run_blocking(self.backend.purge, queue_name)

    async def aclose(self) -> None:
        """Close the blocking backend and stop the threads."""
        # A receive waiting on one of the threads would otherwise delay the close.
        self.backend.interrupt()
        await super().aclose()
        self._executor.shutdown(wait=False)


__all__ = ["AsyncKombuBackend"]

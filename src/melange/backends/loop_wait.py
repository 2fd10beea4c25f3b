"""A receive that waits on the event loop, for blocking backends that can be watched.

An embedded backend (in memory, SQLite) answers a receive in microseconds; only waiting for
messages to arrive would block. Rather than spend a worker thread on each waiting receive
(a thread hop per batch, and the default executor's cap on how many wait at once), the
asyncio adapter polls on the loop and, when the queue is empty, sleeps on a future that the
backend's :meth:`~melange.backends.interfaces.MessagingBackend.watch_queue` callback resolves
from the publishing thread, or that a timer resolves when the poll says something falls due.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from melange.backends.gathering import GATHER_SECONDS, BusyQueues
from melange.backends.interfaces import MessagingBackend
from melange.exceptions import WouldBlock
from melange.models import Message, QueueWrapper

#: First pause after a poll found the database locked by a writer, then doubled up to
#: :data:`BUSY_PAUSE_MAX` while it stays locked.
BUSY_PAUSE = 0.001
BUSY_PAUSE_MAX = 0.05


class _Wakeup:
    """The future a waiting receive sleeps on, resolvable from any thread."""

    __slots__ = ("armed", "future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.armed = True

    def rearm(self) -> None:
        self.future = self.loop.create_future()
        self.armed = True

    def resolve(self) -> None:
        """On the loop: end the current sleep."""
        if not self.future.done():
            self.future.set_result(None)

    def wake(self) -> None:
        """From any thread, under the backend's locks: schedule :meth:`resolve`."""
        # One call per sleep is enough: a publisher sending many messages while the receiver
        # sleeps writes to the loop's self-pipe once, not once per message.
        if not self.armed:
            return
        self.armed = False
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            self.loop.call_soon_threadsafe(self.resolve)


def can_wait_on_loop(backend: MessagingBackend) -> bool:
    """Whether ``backend``'s receives can wait on the loop: its descriptor says it polls and
    watches queues (``loop_wait``), and no subclass changed how it receives below where those
    are defined."""
    if not backend.capabilities.loop_wait:
        return False
    cls = type(backend)

    def owner(name: str) -> type:
        return next(c for c in cls.__mro__ if name in vars(c))

    receives = owner("retrieve_messages")
    return all(
        owner(name) is not MessagingBackend and issubclass(owner(name), receives)
        for name in ("poll_queue", "watch_queue")
    )


class LoopReceiver:
    """Receives from one watched backend on the running event loop.

    It remembers when each queue last delivered. A queue that delivered less than
    :data:`~melange.backends.gathering.BUSY_WINDOW` seconds ago is being fed: a receiver that
    finds it empty, or is woken by a publish to it, waits
    :data:`~melange.backends.gathering.GATHER_SECONDS` more before it claims, so a busy queue
    is taken in batches rather than one claim per publish (each claim is a write that
    publishers wait for). A quiet queue's message is claimed the moment it is published.
    """

    def __init__(
        self, backend: MessagingBackend, run_blocking: Callable[..., Awaitable[Any]]
    ) -> None:
        self.backend = backend
        # Polls run on the loop unless a commit may wait for the disk (SQLite with
        # synchronous FULL): those go through ``run_blocking`` (a worker thread), only the
        # wait stays on the loop.
        self._inline = not backend.blocking or backend.inline_when_free
        self._run_blocking = run_blocking
        # Timed by time.monotonic(), the clock of asyncio's loops.
        self._busy = BusyQueues()

    async def receive(
        self, queue: QueueWrapper, max_messages: int, wait_seconds: float
    ) -> list[Message] | None:
        """Receive from ``queue`` as the backend's ``retrieve_messages`` would, waiting up to
        ``wait_seconds`` on the running loop.

        ``None``: nothing was received, and the wait is the caller's to do on a thread (the
        backend refused the watch, or was locked when the caller may not wait).
        """
        received = await self._receive(queue, max_messages, wait_seconds)
        if received:
            self._busy.delivered(queue.name)
        return received

    async def _poll(
        self, queue: QueueWrapper, max_messages: int
    ) -> tuple[list[Message], float] | None:
        """One poll; ``None`` when it would have waited for a writer's lock."""
        backend = self.backend
        if not self._inline:
            polled: tuple[list[Message], float]
            polled = await self._run_blocking(backend.poll_queue, queue, max_messages)
            return polled
        try:
            return backend.run_inline(backend.poll_queue, queue, max_messages)
        except WouldBlock:
            return None

    async def _receive(
        self, queue: QueueWrapper, max_messages: int, wait_seconds: float
    ) -> list[Message] | None:
        backend = self.backend
        first = await self._poll(queue, max_messages)
        if first is None:
            if wait_seconds <= 0:
                return None  # not allowed to wait here, and a thread may wait for the lock
        elif first[0] or wait_seconds <= 0:
            return first[0]  # the common case under load: no watch, no future
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        if self._busy.busy(queue.name):
            # Publishers are at work: what they send in a moment is claimed together, without
            # a wake per publish.
            await asyncio.sleep(GATHER_SECONDS)
        wakeup = _Wakeup(loop)
        watch = backend.watch_queue(queue, wakeup.wake)
        if watch is None:
            return None
        busy = BUSY_PAUSE
        try:
            while True:
                # Polled again now that the watch is on: a publish between the first poll
                # and the watch is seen here, one after it wakes the sleep below.
                polled = await self._poll(queue, max_messages)
                remaining = deadline - loop.time()
                if polled is None:
                    # A writer holds the database. Sleep as SQLite's busy handler would, deaf
                    # to wakes: the writer is most often a publisher, whose ring would bring
                    # us back for one message at a time, each claim a write of its own.
                    if remaining <= 0 or watch.interrupted:
                        return []
                    await asyncio.sleep(min(busy, remaining))
                    busy = min(busy * 2, BUSY_PAUSE_MAX)
                else:
                    received, pause = polled
                    busy = BUSY_PAUSE
                    if received or remaining <= 0 or watch.interrupted:
                        return received
                    if pause > 0:
                        timer = loop.call_later(min(pause, remaining), wakeup.resolve)
                        try:
                            await wakeup.future
                        finally:
                            timer.cancel()
                        if self._busy.busy(queue.name) and not watch.interrupted:
                            await asyncio.sleep(min(GATHER_SECONDS, remaining))
                if watch.interrupted:
                    return []
                wakeup.rearm()
        finally:
            watch.cancel()


__all__ = ["LoopReceiver", "can_wait_on_loop"]

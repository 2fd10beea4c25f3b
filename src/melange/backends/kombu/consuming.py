"""The kombu backend's AMQP consumers: what the broker pushes to a receiving backend.

A receive that waits consumes its queue (``basic_consume``) with a prefetch count of
:data:`_WINDOW_BATCHES` of its batches: the broker pushes the next messages while the current
ones are handled, and the backend holds at most what it has not handed out yet (the broker
gives it back when the channel closes). A wait sleeps on the connection's socket, so a
delivery ends it at once. A thread keeps the AMQP heartbeats going while no call reads the
connection, and stops consuming the queues nobody receives from any more.
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from melange.backends.kombu.connection import NOT_FOUND, ChannelLost, Link, reply_code
from melange.backends.kombu.wakeups import Wakeups
from melange.backends.kombu.wire import Receipt, from_delivery
from melange.exceptions import QueueNotFoundError, WouldBlock
from melange.models import Message

#: An AMQP consumer's prefetch window, in batches of the receive that starts it: while one
#: batch is handled (and acknowledged together at its end), the broker pushes the next.
_WINDOW_BATCHES = 2

#: Longest sleep of a waiting AMQP receive on its socket: a delivery wakes it, but messages
#: beyond a full prefetch window are not pushed (they are taken when it looks again).
_CONSUMER_WAIT = 0.5

#: Seconds without a receive after which a queue is no longer consumed: what its consumer
#: was pushed goes back to the queue for other consumers (a stopped dispatcher, handlers
#: that take long).
_IDLE_CONSUMER = 5.0


class Consumers:
    """The AMQP consumers on a :class:`~melange.backends.kombu.connection.Link`'s receiving
    channel (one per queue a receive waited on), what they were pushed, and the thread that
    keeps heartbeats going (a watcher of the link: a lost receiving channel takes its
    consumers with it).

    Args:
        link: The backend's connection.
        wakeups: What ends waits: its waiters are told of each delivery, its socket pair
            ends a wait on the connection's socket.
        forget_queue: Called with a queue the broker says does not exist.
    """

    def __init__(self, link: Link, wakeups: Wakeups, forget_queue: Callable[[str], None]) -> None:
        self._link = link
        self._wakeups = wakeups
        self._forget_queue = forget_queue
        #: AMQP consumers of the receiving channel (queue -> consumer tag), and the
        #: deliveries they pushed that no receive has handed out yet.
        self._consumers: dict[str, str] = {}
        self._pushed: dict[str, deque[Any]] = {}
        self._took: dict[str, float] = {}  # queue -> when a receive last took from it
        #: Per consumed queue: its prefetch count, and the tags of the deliveries it pushed
        #: that are handed out and not settled yet (when they fill the window, the broker
        #: pushes nothing more).
        self._prefetch: dict[str, int] = {}
        self._window: dict[str, set[Any]] = {}
        self._beating: threading.Thread | None = None

    # -- the link's channels --------------------------------------------------------------------

    def connected(self) -> None:
        """Start the heartbeat thread (see :meth:`_beat`)."""
        self._beat()

    def publishing_opened(self, channel: Any) -> None:
        """Nothing to do: consumers live on the receiving channel."""

    def channel_lost(self, which: str) -> None:
        """A lost receiving channel takes its consumers with it (see :meth:`forget`)."""
        if which == "consume":
            self.forget()

    # -- consuming ------------------------------------------------------------------------------

    def take_pushed(self, channel: Any, queue: str, limit: int) -> list[Message]:
        """Up to ``limit`` messages the queue's consumer was pushed, read without waiting
        (under the lock).

        Raises:
            WouldBlock: the queue's consumer is not started, the broker cancelled it, or
                its window is full (each needs a round trip to the broker).
        """
        if queue not in self._consumers:
            raise WouldBlock(f"queue {queue!r} is not consumed yet")
        self._took[queue] = time.monotonic()
        self._link.drain()
        pushed = self._pushed.get(queue)
        window = self._window.get(queue)
        if (
            pushed is None
            or window is None
            or (not pushed and len(window) >= self._prefetch[queue])
        ):
            raise WouldBlock(f"queue {queue!r} needs a basic.get")
        return self._hand_out(queue, pushed, window, limit)

    def _hand_out(
        self, queue: str, pushed: deque[Any], window: set[Any], limit: int
    ) -> list[Message]:
        got: list[Message] = []
        while pushed and len(got) < limit:
            delivered = pushed.popleft()
            tag = delivered.delivery_tag
            window.add(tag)
            got.append(from_delivery(delivered, Receipt(queue, tag, self._link.generation, None)))
        return got

    def consume(self, channel: Any, queue: str, batch: int) -> None:
        """Consume ``queue`` on the receiving channel, if it is not consumed yet, with a
        prefetch count of :data:`_WINDOW_BATCHES` batches of ``batch`` messages."""
        if queue in self._consumers:
            return
        prefetch = batch * _WINDOW_BATCHES
        try:
            # Per consumer (RabbitMQ applies a non-global qos to the consumers started after).
            channel.basic_qos(0, prefetch, False)
            pushed = self._pushed.setdefault(queue, deque())
            self._window[queue] = set()
            self._prefetch[queue] = prefetch
            tag = channel.basic_consume(
                queue, no_ack=False, callback=self._pusher(pushed), on_cancel=self._cancelled
            )
        except self._link.connection.channel_errors as exc:
            self._link.lose_channel("consume")
            if reply_code(exc) == NOT_FOUND:
                self._forget_queue(queue)
                raise QueueNotFoundError(queue) from None
            raise ChannelLost("consume", exc) from exc
        self._consumers[queue] = tag

    def _pusher(self, pushed: deque[Any]) -> Callable[[Any], None]:
        """The callback of a consumer: keeps each delivery for a receive, and tells the
        receives waiting on an event loop (the thread that read it may be another one)."""
        wakeups = self._wakeups
        waiters = wakeups.waiters

        def push(delivered: Any) -> None:
            pushed.append(delivered)
            if waiters:
                wakeups.call_waiters()

        return push

    def settled(self, receipt: Receipt) -> None:
        """A delivery was acknowledged or rejected: it leaves its consumer's window."""
        window = self._window.get(receipt.queue)
        if window is not None:
            window.discard(receipt.delivery_tag)

    def cancel(self, channel: Any, queue: str) -> None:
        """Stop consuming ``queue`` and give back what its consumer was pushed and no receive
        took (under the lock), so that other consumers get it."""
        tag = self._consumers.pop(queue, None)
        if tag is None:
            return
        channel.basic_cancel(tag)
        self._link.drain()  # deliveries sent before the cancellation took effect
        self._window.pop(queue, None)
        for delivered in self._pushed.pop(queue, ()):
            channel.basic_reject(delivered.delivery_tag, requeue=True)

    def _cancelled(self, tag: str) -> None:
        """The broker cancelled a consumer (its queue was deleted): the next receive from
        that queue consumes again, or finds the queue missing."""
        for queue, current in list(self._consumers.items()):
            if current == tag:
                del self._consumers[queue]
                self._window.pop(queue, None)
                self._pushed.pop(queue, None)

    def forget(self) -> None:
        """The receiving channel is gone: so are its consumers, and what they were pushed
        (unacknowledged, it goes back to the queues)."""
        self._consumers.clear()
        self._pushed.clear()
        self._took.clear()
        self._window.clear()

    # -- waiting on the socket ------------------------------------------------------------------

    def consuming_socket(self) -> Any:
        """The AMQP connection's socket when it is up and consumed from, else ``None``
        (read without the lock: the caller copes with a socket closed meanwhile)."""
        link = self._link
        raw = link.raw
        if link.closed or link.consume is None or raw is None:
            return None
        return getattr(raw.transport, "sock", None)

    def await_delivery(self, seconds: float, interrupts: int) -> bool:
        """Sleep until the AMQP socket has something to read, the waits are interrupted or
        ``seconds`` pass (at most :data:`_CONSUMER_WAIT`), without the lock (so settlements
        go on meanwhile); ``False`` when interrupted since the count ``interrupts``."""
        seconds = min(seconds, _CONSUMER_WAIT)
        link = self._link
        wakeups = self._wakeups
        # Read without the lock: a connection reset or closed meanwhile makes the select fail
        # or return at once, and the caller looks again under the lock.
        if link.closed:
            return False
        waker = wakeups.waker if wakeups.waker is not None else wakeups.sockets()
        readable: list[Any] = [waker[0]]
        raw = link.raw
        # Only a connection that is up is waited on (kombu's ``connection`` would connect).
        if link.consume is not None and raw is not None:
            sock = getattr(raw.transport, "sock", None)  # no transport: closed meanwhile
            if sock is not None:
                readable.append(sock)
        if wakeups.interrupts != interrupts:  # an int read: interrupt() also rings the waker
            return False
        try:
            ready, _, _ = select.select(readable, [], [], seconds)
        except (OSError, ValueError):  # the connection was closed meanwhile
            ready = []
        if waker[0] in ready:
            with contextlib.suppress(OSError):
                waker[0].recv(4096)
        return wakeups.interrupts == interrupts

    # -- heartbeats -----------------------------------------------------------------------------

    def _beat(self) -> None:
        """Start the thread that keeps heartbeats going while no call runs (handlers may
        take longer than the broker waits for a heartbeat; a publisher may sit idle)."""
        if not self._link.amqp or self._beating is not None:
            return
        self._beating = threading.Thread(
            target=self._beat_loop, name="melange-kombu-heartbeat", daemon=True
        )
        self._beating.start()

    def _beat_loop(self) -> None:
        link = self._link
        recoverable = link.recoverable
        while not link.closed:
            # Without heartbeats, it only stops consuming queues nobody receives from.
            tick = link.heartbeat / 4 if link.heartbeat else _IDLE_CONSUMER / 2
            time.sleep(tick)
            # A receive or a settlement holding the lock drains and checks on its own.
            if not link.lock.acquire(timeout=tick):
                continue
            try:
                if link.closed or link.consume is None:
                    continue
                link.drain()
                idle = time.monotonic() - _IDLE_CONSUMER
                for queue in [q for q, took in self._took.items() if took < idle]:
                    del self._took[queue]
                    self.cancel(link.consume, queue)
            except recoverable:
                # Missed heartbeats or a broken socket: a new connection for the next call,
                # the broker gives back what the lost one held.
                link.reset()
            except link.connection.channel_errors:
                # The broker closed the receiving channel (its queue was deleted...): the next
                # call opens another, the broker gives back what this one held.
                link.lose_channel("consume")
            finally:
                link.lock.release()


__all__ = ["Consumers"]

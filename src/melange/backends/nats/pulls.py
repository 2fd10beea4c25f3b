"""The pull requests a NATS backend sends to its queues' durable consumers: :class:`Pulls`.

A pull request (``$JS.API.CONSUMER.MSG.NEXT``) is answered on the backend's inbox: the
messages come on their own subjects, told apart by their stream (so one request of a backend
is under way per queue at a time), and the server's statuses (no messages, request expired...)
on the request's own subject, ``<inbox>.<serial>``. A request is answered at once with what
is there, or held by the server up to a wait for the first message; a receive waiting for the
rest of its batch lingers while messages keep coming (:func:`linger`).

On a connection read only while a call runs (see
:meth:`~melange.backends.nats.async_backend.AsyncNATSBackend.read_in_calls_only`), a pull
marker goes out before the request, and while it waits: the server echoes it in order with
the deliveries, and the lease of a message is timed from the last marker read before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from melange.backends.nats.session import Session
from melange.backends.nats.topology import CONSUMER, Names

#: Seconds a waiting receive goes on collecting after a message came, while more keep coming.
LINGER = 0.005
#: Seconds a lingering receive on a loop of its caller's gives the loop to read what came
#: while it slept (see linger).
_READ_PAUSE = 0.001
#: Seconds the server keeps an immediate pull request open when it cannot answer it at once.
_IMMEDIATE_PULL_EXPIRES = 0.2
#: Seconds between the pull markers of a receive waiting for its first message.
_MARK_EVERY = 0.1
#: The last token of the pull markers' subject, on the backend's inbox (see read_in_calls_only).
_MARK = "mark"


@dataclass(eq=False)
class Pull:
    """One pull request waiting for its messages (collected by the inbox subscription).

    ``first`` is done once a message (or the end) came, ``done`` once the request is over.
    """

    queue: str
    batch: int
    done: asyncio.Future[None]
    first: asyncio.Future[None]
    messages: list[Msg] = field(default_factory=list)
    #: When the lease of each message began, at the earliest (see ``Pulls.lease_start``).
    starts: list[float] = field(default_factory=list)

    def end(self) -> None:
        """The request is over: wake whoever waits for it."""
        for future in (self.first, self.done):
            if not future.done():
                future.set_result(None)


class Pulls:
    """The pull requests of one backend, the pull markers that time the leases of what they
    bring, and the interrupts that end their waits."""

    def __init__(self, session: Session, names: Names) -> None:
        self._session = session
        self._names = names
        # The pull request under way for each queue stream, and each by its serial number.
        self._by_stream: dict[str, Pull] = {}
        self._by_serial: dict[str, Pull] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._serial = 0
        # Pull requests waiting for their first message, which interrupt() (or a message
        # for a later receive) wakes.
        self._waiters: set[asyncio.Future[None]] = set()
        #: How many times :meth:`interrupt` was called: a wait begun before one is over.
        self.interrupts = 0
        self._interrupt_lock = threading.Lock()
        #: None while the connection is read continuously; else the earliest time a message
        #: read from now on can have been sent (see read_in_calls_only).
        self.horizon: float | None = None

    def lease_start(self) -> float:
        """When the lease of a message read now began, at the earliest (see read_in_calls_only)."""
        return time.monotonic() if self.horizon is None else self.horizon

    async def pull(
        self,
        queue: str,
        batch: int,
        wait: float | None,
        interrupts: int | None = None,
        mark: bool = False,
    ) -> Pull:
        """Send a pull request for ``batch`` messages: answered at once (``wait`` None) or
        held by the server up to ``wait`` seconds for the first message."""
        stream = self._names.queue_stream(queue)
        # The server answers an immediate request within its expiry: no answer in a few
        # seconds means it was lost with a connection (then Session.run asks again).
        budget = _IMMEDIATE_PULL_EXPIRES + 5.0 if wait is None else wait + 1.0
        session = self._session

        async def op(nc: Client) -> Pull:
            loop = asyncio.get_running_loop()
            lock = self._locks.get(stream)
            if lock is None:
                lock = self._locks[stream] = asyncio.Lock()
            # One pull request of this backend per queue at a time: JetStream delivers the
            # messages on their own subjects, so they are told apart by their stream.
            async with lock:
                self._serial += 1
                serial = str(self._serial)
                pull = Pull(queue, batch, loop.create_future(), loop.create_future())
                self._by_stream[stream] = pull
                self._by_serial[serial] = pull
                request: dict[str, Any] = {"batch": batch}
                if wait is None:
                    # Answered at once, with a 404 when fewer messages are there; the expiry
                    # ends it (408) when max_ack_pending holds the messages back instead.
                    request["no_wait"] = True
                    request["expires"] = int(_IMMEDIATE_PULL_EXPIRES * 1e9)
                else:
                    request["expires"] = int(max(LINGER, wait) * 1e9)
                waiter: asyncio.Future[None] | None = None
                try:
                    if mark:
                        await self._mark(nc)
                    await nc.publish(
                        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{CONSUMER}",
                        json.dumps(request).encode(),
                        reply=f"{session.inbox}.{serial}",
                    )
                    session.unconfirmed = True
                    if wait is None:
                        await collect(pull, budget)
                    else:
                        # Also woken by interrupt(): the request stays with the server, and
                        # what it still brings becomes a leftover for the next receive.
                        waiter = loop.create_future()
                        self._waiters.add(waiter)
                        if interrupts is None or interrupts == self.interrupts:
                            await self._wait_first(nc, pull, waiter, budget)
                        if pull.messages and not waiter.done():
                            # The rest of the batch, while messages keep coming; what the
                            # request brings after that is a leftover for the next receive.
                            await linger(pull, LINGER, asleep=self.horizon is not None)
                except TimeoutError:
                    raise nats.errors.TimeoutError from None
                finally:
                    if waiter is not None:
                        self._waiters.discard(waiter)
                    pull.end()
                    self._by_serial.pop(serial, None)
                    if self._by_stream.get(stream) is pull:
                        del self._by_stream[stream]
                return pull

        return await session.run(op)

    async def _mark(self, nc: Client) -> None:
        """Send a pull marker, when this connection is read in calls only (see
        read_in_calls_only); the marker carries the time it was sent."""
        if self.horizon is not None:
            await nc.publish(f"{self._session.inbox}.{_MARK}", repr(time.monotonic()).encode())

    async def _wait_first(
        self, nc: Client, pull: Pull, waiter: asyncio.Future[None], budget: float
    ) -> None:
        """Wait up to ``budget`` seconds for the first message of ``pull`` or an interrupt.

        On a connection read in calls only, a marker goes out every ``_MARK_EVERY`` seconds
        meanwhile: what comes during a long wait has its lease timed from the last one, not
        from the start of the receive.
        """
        deadline = time.monotonic() + budget
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            pause = remaining if self.horizon is None else min(remaining, _MARK_EVERY)
            done, _ = await asyncio.wait(
                (pull.first, waiter), timeout=pause, return_when=asyncio.FIRST_COMPLETED
            )
            if done:
                return
            await self._mark(nc)

    def on_status(self, token: str, msg: Msg) -> None:
        """A message without a reply subject on the inbox's ``token``: a pull marker, or a
        status ending a pull request."""
        if token == _MARK:
            self.horizon = float(msg.data)
            return
        # A status on the request's own inbox: 404 no messages, 408 request expired, 409
        # consumer gone or too many waiting requests. The request is over.
        ended = self._by_serial.get(token)
        if ended is not None:
            ended.end()

    def take(self, msg: Msg, since: float) -> bool:
        """Add a delivered message to the pull request under way for its stream, leased from
        ``since``; ``False`` when none is (a late answer to a request that returned)."""
        pull = self._by_stream.get(msg.metadata.stream)
        if pull is not None and not pull.done.done():
            pull.messages.append(msg)
            pull.starts.append(since)
            if not pull.first.done():
                pull.first.set_result(None)
            if len(pull.messages) >= pull.batch:
                pull.done.set_result(None)
            return True
        return False

    def notify(self) -> None:
        """Wake the pull requests waiting for their first message."""
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def interrupt(self) -> None:
        """Wake the receives waiting for messages (from any thread)."""
        with self._interrupt_lock:
            self.interrupts += 1
        loop = self._session.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(self.notify)


async def linger(pull: Pull, pause: float, asleep: bool) -> None:
    """Wait while messages keep coming for ``pull``: until it is full or over, or ``pause``
    seconds pass without a message.

    ``asleep``: the loop is the calling thread's own (see ``read_in_calls_only``), so the
    thread sleeps through each pause, leaving what comes in the socket, and then lets the
    loop read it all at once.
    """
    seen = -1
    while not pull.done.done() and len(pull.messages) != seen:
        seen = len(pull.messages)
        if asleep:
            time.sleep(pause)
            await asyncio.wait((pull.done,), timeout=_READ_PAUSE)
        else:
            await asyncio.wait((pull.done,), timeout=pause)


async def collect(pull: Pull, budget: float) -> None:
    """Wait for an immediate pull request to end. The server ends it with a status when it
    has fewer messages than asked; when the consumer's ``max_ack_pending`` stops it midway,
    it keeps the request open instead, so a pause after the first messages ends it too."""
    deadline = time.monotonic() + budget
    seen = -1
    while not pull.done.done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if pull.messages and len(pull.messages) == seen:
            return  # what comes later becomes a leftover
        seen = len(pull.messages)
        pause = remaining if not pull.messages else min(remaining, 0.05)
        await asyncio.wait((pull.done,), timeout=pause)


__all__ = ["LINGER", "Pull", "Pulls", "collect", "linger"]

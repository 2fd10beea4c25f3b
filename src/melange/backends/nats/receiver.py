"""Receiving a queue's messages: :class:`Receiver`.

A receive pulls what is there (:mod:`melange.backends.nats.pulls`), or, when it may wait,
what comes while messages keep coming, then waits for the first message. Of what a pull
brings, it hands out the messages with half their lease left at least, each with a
:class:`~melange.backends.nats.receipts.NATSReceipt`; it moves those delivered too often to
the dead-letter queue, acknowledges and drops those a subscription filter does not want, and
drops first deliveries the server repeats. Messages that come after their receive returned
are kept for the next receive while their lease lasts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from nats.aio.msg import Msg

from melange.backends.nats.dead_letters import DeadLetters
from melange.backends.nats.pulls import LINGER, Pulls
from melange.backends.nats.receipts import NATSReceipt, Settler, fresh, receipt_of
from melange.backends.nats.session import Session
from melange.backends.nats.streams import Streams
from melange.backends.nats.topology import Names, QueueSettings
from melange.backends.nats.wire import backstop_headers, decode_message, manifest_of
from melange.exceptions import BackendConnectionError
from melange.models import Message, QueueWrapper

logger = logging.getLogger("melange.backends.nats")


class Receiver:
    """Receives a backend's messages, and keeps those that came late for the next receive."""

    def __init__(
        self,
        session: Session,
        names: Names,
        streams: Streams,
        pulls: Pulls,
        settler: Settler,
        dead_letters: DeadLetters,
    ) -> None:
        self._session = session
        self._names = names
        self._streams = streams
        self._pulls = pulls
        self._settler = settler
        self._dead_letters = dead_letters
        # Messages that reached a pull request that had already returned (an interrupted
        # wait), handed out by the next receive while their lease lasts.
        self._leftovers: dict[str, deque[Message]] = {}
        #: The stream sequence and timestamp of the latest first delivery (delivery count 1)
        #: received from each queue. The server delivers new messages in stream order, so a
        #: first delivery of a message at or before that one is a repeat: nats-server before
        #: 2.10.16 steps its consumer back when a pull request expires while a redelivery is
        #: being sent to it, and then delivers the last new message again with count 1, while
        #: the lease of its last delivery runs, or after that delivery was acknowledged and
        #: before the server processed the acknowledgement (it reads acknowledgements apart
        #: from pull requests). That message is not handed out again: the server settles a
        #: message whichever of its deliveries is acknowledged (or renewed, or given back),
        #: and delivers it again, with its true count, if none is. The timestamp tells a
        #: stream deleted and made again apart. Shared by the connections of one NATSBackend.
        self.firsts: dict[str, tuple[int, datetime]] = {}

    async def retrieve(self, queue: QueueWrapper, kwargs: Mapping[str, Any]) -> list[Message]:
        """Receive up to ``max_messages`` (default 10) messages of ``queue``, waiting up to
        ``wait_seconds`` (default 0) for the first, within a few seconds more than that."""
        max_messages = max(1, int(kwargs.get("max_messages") or 10))
        wait = float(kwargs.get("wait_seconds") or 0.0)
        budget = min(self._session.operation_timeout, max(wait, 1.0) + 5.0)
        try:
            # A timeout scope, not wait_for: no task of its own, so the acknowledgements sent
            # just before go out in the same write as this receive's pull request.
            async with asyncio.timeout(budget):
                return await self._retrieve(queue, max_messages, wait)
        except TimeoutError:
            raise BackendConnectionError(
                f"NATS at {self._session.describe} did not answer a receive from "
                f"{queue.name!r} within {budget:.0f}s"
            ) from None

    async def _retrieve(self, queue: QueueWrapper, max_messages: int, wait: float) -> list[Message]:
        pulls = self._pulls
        interrupts = pulls.interrupts
        name = queue.name
        settings = await self._streams.queue_settings(name)
        if settings.fifo:
            max_messages = 1  # one message of a FIFO queue out at a time (max_ack_pending)
        if settings.dead_letter_queue is not None and name not in self._dead_letters.watched:
            await self._dead_letters.watch(name)
        out = self._fresh_leftovers(name, max_messages)
        if out:
            return out
        deadline = time.monotonic() + wait
        mark = True  # one marker a receive (see read_in_calls_only): this call reads all along
        while True:
            if wait > 0 and pulls.interrupts == interrupts and not self._session.closed:
                # A short request first: answered with what is there, then with what comes
                # while messages keep coming (a caller that waits accepts that linger),
                # rather than come back for each one; it expires after LINGER, so none is
                # left open whose deliveries would wait for a later receive.
                pulled = await pulls.pull(name, max_messages, LINGER, interrupts, mark)
                remaining = deadline - time.monotonic()
                if not pulled.messages and remaining > 0.05 and pulls.interrupts == interrupts:
                    # Wait for the first message, and for more while they keep coming.
                    pulled = await pulls.pull(name, max_messages, remaining, interrupts)
            else:
                pulled = await pulls.pull(name, max_messages, None, mark=mark)
            mark = False
            out = await self._accept(settings, pulled.messages, pulled.starts)
            if out or not pulled.messages:
                return out + self._fresh_leftovers(name, max_messages - len(out))
            # Everything pulled was dead-lettered or filtered out: look again.

    async def late(self, msg: Msg, since: float) -> None:
        """A message answering a pull request that already returned: kept for the next
        receive (which ``notify`` wakes), leased from ``since``."""
        queue = self._names.queue_of_stream(msg.metadata.stream)
        settings = self._streams.known_settings(queue or "")
        if queue is None or settings is None:
            return  # redelivered when its lease ends
        for message in await self._accept(settings, [msg], [since]):
            self._leftovers.setdefault(queue, deque()).append(message)
        self._pulls.notify()

    def _fresh_leftovers(self, queue: str, limit: int) -> list[Message]:
        buffer = self._leftovers.get(queue)
        out: list[Message] = []
        now = time.monotonic()
        while buffer and len(out) < limit:
            message = buffer.popleft()
            receipt: NATSReceipt = message.metadata
            if fresh(receipt.lease, receipt.leased_until - receipt.lease, now):
                out.append(message)
        return out

    async def _accept(
        self, settings: QueueSettings, pulled: Sequence[Msg], starts: Sequence[float]
    ) -> list[Message]:
        """The messages to hand out, each leased from its start in ``starts``: those
        delivered too often go to the dead-letter queue, those a subscription filter does
        not want are acknowledged and dropped, those with less than half their lease left
        are left to come back, and first deliveries the server repeats are dropped (see
        ``firsts``)."""
        out: list[Message] = []
        now = time.monotonic()
        lease = settings.visibility_timeout
        queue = settings.queue
        firsts = self.firsts
        names = self._names
        for msg, start in zip(pulled, starts, strict=True):
            meta = msg.metadata
            delivered = meta.num_delivered
            sequence = meta.sequence.stream
            if delivered == 1:
                last = firsts.get(queue)
                if last is not None and sequence <= last[0] and meta.timestamp <= last[1]:
                    logger.debug(
                        "NATS delivered message %d of %s again as a first delivery: left to "
                        "its holder (it comes back when its lease ends)",
                        sequence,
                        queue,
                    )
                    continue
                firsts[queue] = (sequence, meta.timestamp)
            start = min(start, now)
            receipt = NATSReceipt(queue, msg.reply, sequence, delivered, lease, start + lease)
            from_topic = msg.subject.startswith(f"{names.prefix}.t.")
            if (
                from_topic
                and settings.filters
                and not settings.wants(msg.subject, manifest_of(msg.headers), names)
            ):
                await self._settler.settle(receipt, b"+ACK")
                continue
            message = decode_message(msg.data, msg.headers, delivered, receipt)
            if settings.dead_letter_queue is not None and delivered > settings.max_receive_count:
                headers = backstop_headers(settings.queue, delivered - 1)
                await self._dead_letters.move(message, settings, headers)
                continue
            if fresh(lease, start, now):
                out.append(message)
        return out

    def forget(self, queue: str) -> None:
        """Drop what is kept of a deleted queue."""
        self._leftovers.pop(queue, None)
        self.firsts.pop(queue, None)

    @property
    def has_leftovers(self) -> bool:
        """Whether messages that came late are kept (for a queue at least)."""
        return bool(self._leftovers)

    async def give_back_leftovers(self) -> None:
        """Give back at once (``-NAK``) the messages that came after their receive returned,
        rather than leave them to come back when their leases end."""
        leftovers = [m for buffer in self._leftovers.values() for m in buffer]
        self._leftovers.clear()
        for message in leftovers:
            await self._settler.settle(receipt_of(message), b"-NAK")


__all__ = ["Receiver"]

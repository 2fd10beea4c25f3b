"""Looking into the queues of the NATS backend from outside their consumers (``melange
queues``, ``melange dlq``): :class:`QueueStats`, and :class:`Inspector`, which lists queues and
topics, counts, peeks at and purges a queue.

- Counts come from the queue's stream (its messages) and its consumer (``num_ack_pending``,
  the messages handed out and not settled, or waiting out a retry delay: JetStream does not
  tell those apart).
- A peek reads the stream's messages by sequence through the JetStream API
  (``STREAM.MSG.GET``), without delivering them.
- A purge is ``STREAM.PURGE``.
"""

from __future__ import annotations

from dataclasses import dataclass

import nats.js.errors
from nats.aio.client import Client
from nats.js import api

from melange.backends.nats.session import Session
from melange.backends.nats.streams import Streams
from melange.backends.nats.topology import CONSUMER, Names
from melange.backends.nats.wire import stored_message
from melange.exceptions import QueueNotFoundError
from melange.models import Message


@dataclass(frozen=True)
class QueueStats:
    """A queue's message counts (``delayed`` is not known apart from ``in_flight``)."""

    ready: int
    in_flight: int
    total: int
    delayed: int | None = None


class Inspector:
    """Lists a backend's queues and topics, counts, peeks at and purges its queues."""

    def __init__(self, session: Session, names: Names, streams: Streams) -> None:
        self._session = session
        self._names = names
        self._streams = streams

    async def queue_names(self) -> list[str]:
        """Every queue of this prefix."""
        streams = await self._streams.stream_names(f"{self._names.prefix}_q_")
        return sorted(str(self._names.queue_of_stream(s)) for s in streams)

    async def topic_names(self) -> list[str]:
        """Every topic of this prefix."""
        streams = await self._streams.stream_names(f"{self._names.prefix}_t_")
        return sorted(str(self._names.topic_of_stream(s)) for s in streams)

    async def queue_stats(self, queue_name: str) -> QueueStats:
        """Messages of the queue: ready, in flight (handed out, unsettled or waiting out a
        retry delay: JetStream does not tell those apart) and in total."""
        stream = self._names.queue_stream(queue_name)
        session = self._session

        async def op(_nc: Client) -> QueueStats:
            try:
                info = await session.js.stream_info(stream)
                consumer = await session.js.consumer_info(stream, CONSUMER)
            except nats.js.errors.NotFoundError:
                raise QueueNotFoundError(queue_name) from None
            total = int(info.state.messages)
            in_flight = min(total, int(consumer.num_ack_pending or 0))
            return QueueStats(ready=total - in_flight, in_flight=in_flight, total=total)

        return await session.run(op)

    async def peek(self, queue_name: str, limit: int = 10) -> list[Message]:
        """Up to ``limit`` messages of the queue, oldest first, without receiving them."""
        stream = self._names.queue_stream(queue_name)
        info = await self._streams.stream_info(stream)
        if info is None:
            raise QueueNotFoundError(queue_name)
        session = self._session

        async def op(nc: Client) -> list[Message]:
            out: list[Message] = []
            seq = int(info.state.first_seq)
            while len(out) < limit and seq <= int(info.state.last_seq):
                try:
                    answer = await session.api(
                        nc, f"STREAM.MSG.GET.{stream}", {"seq": seq, "next_by_subj": ">"}
                    )
                except nats.js.errors.NotFoundError:
                    break
                raw = api.RawStreamMsg.from_response(answer["message"])
                out.append(stored_message(raw))
                seq = int(raw.seq or seq) + 1
            return out

        return await session.run(op)

    async def purge(self, queue_name: str) -> int:
        """Delete every message of the queue; returns how many."""
        stream = self._names.queue_stream(queue_name)
        session = self._session

        async def op(nc: Client) -> int:
            try:
                answer = await session.api(nc, f"STREAM.PURGE.{stream}", {})
            except nats.js.errors.NotFoundError:
                raise QueueNotFoundError(queue_name) from None
            return int(answer.get("purged", 0))

        return await session.run(op)


__all__ = ["Inspector", "QueueStats"]

"""Looking into the queues of the Redis Streams backend (the CLI and tests):
:class:`QueueStats` and the copies of messages a peek returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from melange.backends.redis_streams.wire import to_message
from melange.models import Message


@dataclass(frozen=True)
class QueueStats:
    """How many messages a queue holds, by state.

    Attributes:
        name: The queue.
        ready: Messages a receive would deliver now, or as soon as their FIFO group's head
            is settled (including those whose lease ran out).
        in_flight: Messages received and not yet settled, whose lease is still running.
        delayed: Messages given back with a delay that has not passed yet.
    """

    name: str
    ready: int
    in_flight: int
    delayed: int

    @property
    def total(self) -> int:
        """Every message of the queue, whatever its state."""
        return self.ready + self.in_flight + self.delayed


def stats_from(queue: str, answer: Sequence[Any]) -> QueueStats:
    """The statistics of the stats script's answer ``{ready, in flight, delayed}``."""
    ready, in_flight, delayed = (int(value) for value in answer)
    return QueueStats(queue, ready, in_flight, delayed)


def peeked(entries: Sequence[Any], failed: Sequence[Any]) -> list[Message]:
    """Copies of the entries ``XRANGE`` returned, with their failed attempts (from ``HMGET``),
    that cannot be settled."""
    return [
        to_message(str(entry_id), fields, None, int(count or 0))
        for (entry_id, fields), count in zip(entries, failed, strict=True)
    ]


__all__ = ["QueueStats", "peeked", "stats_from"]

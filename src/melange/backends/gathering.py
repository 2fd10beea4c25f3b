"""When a receiver waits a moment to take a busy queue's messages together.

A consumer that keeps up with its publishers finds one or two messages at each receive, and
pays a receive (a claim, a script, a round trip) for each. On a queue that is being fed, a
receiver that would wait for the next message first lets the publishers run for
:data:`GATHER_SECONDS`, so what they send in that moment is taken in one receive. A quiet
queue's message is taken the moment it arrives: the rule costs a busy queue's messages a
millisecond at most, and a quiet queue's nothing.

The rule is the same on every backend that applies it: the in-memory and SQLite backends,
Redis Streams and Kombu on AMQP, each under both APIs, and the asyncio Kafka backend
(whose aiokafka consumer fetches again as soon as its buffer is taken; librdkafka batches its
fetches by itself). Each backend only performs the pause its own way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

#: How long a receiver of a busy queue (see :data:`BUSY_WINDOW`) that would wait for more
#: messages pauses first, so that those published meanwhile are taken together.
GATHER_SECONDS = 0.001
#: A queue that delivered this recently, in seconds, is busy.
BUSY_WINDOW = 0.01


class BusyQueues:
    """When each queue last delivered to this receiver, and so whether it is busy.

    Args:
        clock: Seconds of a monotonic clock (an event loop's ``time`` for a receiver on it).
    """

    __slots__ = ("_clock", "_delivered_at")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._delivered_at: dict[str, float] = {}

    def delivered(self, queue_name: str) -> None:
        """A receive from ``queue_name`` returned messages just now."""
        self._delivered_at[queue_name] = self._clock()

    def busy(self, queue_name: str) -> bool:
        """Whether ``queue_name`` delivered less than :data:`BUSY_WINDOW` seconds ago."""
        delivered_at = self._delivered_at.get(queue_name)
        return delivered_at is not None and self._clock() - delivered_at < BUSY_WINDOW

    def gather_seconds(self, queue_name: str, at_most: float = math.inf) -> float:
        """How long a receiver about to wait on ``queue_name`` pauses first: ``0.0`` for a
        quiet queue, :data:`GATHER_SECONDS` for a busy one, never more than ``at_most`` (what
        is left of the receive's wait)."""
        if not self.busy(queue_name):
            return 0.0
        return max(0.0, min(GATHER_SECONDS, at_most))


__all__ = ["BUSY_WINDOW", "GATHER_SECONDS", "BusyQueues"]

"""Connections of the Redis Streams backends: the client settings both share, and the
interruptible wait of a blocking receive.

A receive with nothing to deliver waits with ``XREAD BLOCK`` on the queue's stream and its
bell (see :mod:`melange.backends.redis_streams.scripts`) from the last ids it saw, so that a
publish or a message given back wakes it at once, and for no longer than until the next lease
runs out. A receive that asks to wait starts with such a wait from where the previous receive
on the queue left off (:class:`WaitPoint`), with the receive script sent behind the
``XREAD BLOCK`` on the same connection, so a consumer keeping up with its publishers spends
one round trip on a receive. A wait holds a connection of its own and learns that
connection's client id in the same round trip; an interrupt ends every wait of a
backend with ``CLIENT UNBLOCK`` from another connection, so stopping a consumer does not wait
for the block to time out.

Connection errors are retried by redis-py (``retries`` times, with backoff): every script is
safe to run again, a publish at worst adds a message twice (at-least-once), and a receive
whose answer was lost leaves its messages leased to nobody, so they come back when their
lease runs out.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from melange.exceptions import ConfigurationError

#: The longest single ``XREAD BLOCK``, in seconds: longer waits are made of several, so a
#: connection that died silently is noticed (the socket timeout is longer than this).
MAX_BLOCK_SECONDS = 5.0
#: Seconds a reply may take before the connection counts as lost.
SOCKET_TIMEOUT = MAX_BLOCK_SECONDS + 5.0

_SCHEMES = {
    "redis+streams": "redis",
    "rediss+streams": "rediss",
    "redis": "redis",
    "rediss": "rediss",
    "unix": "unix",
}


def client_url(url: str) -> str:
    """The redis-py URL for a backend URL (``redis+streams://`` becomes ``redis://``)."""
    parts = urlsplit(url)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ConfigurationError(
            f"a Redis Streams URL starts with redis+streams://, rediss+streams://, redis://, "
            f"rediss:// or unix://, got {parts.scheme!r}"
        )
    return urlunsplit(parts._replace(scheme=scheme))


def redacted(url: str) -> str:
    """The URL without its password, for reprs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def client_options(retries: int, *, asyncio: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``from_url`` for the blocking or the asyncio client."""
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    retry: Any
    if asyncio:
        from redis.asyncio.retry import Retry as AsyncRetry

        retry = AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), retries)
    else:
        from redis.retry import Retry

        retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries)
    return {
        "decode_responses": True,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": 5.0,
        "socket_keepalive": True,
        "retry": retry,
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


def consumer_name() -> str:
    """A consumer name unique to one backend instance (host, process, random part)."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}"


class WaitPoint(NamedTuple):
    """Where a receive on a queue waits from: the last ids of its stream and bell that the
    previous receive saw, and when (``time.monotonic()``) its next lease runs out."""

    last: str
    bell: str
    due_at: float | None

    @classmethod
    def of(cls, answer: Sequence[Any]) -> WaitPoint:
        """The wait point of a receive script's answer (see ``scripts.RECEIVE``)."""
        next_due = int(answer[1])
        due_at = time.monotonic() + next_due / 1000 if next_due >= 0 else None
        return cls(str(answer[2]), str(answer[3]), due_at)

    def block_seconds(self, remaining: float) -> float:
        """How long a wait from here may block, with ``remaining`` seconds left to wait."""
        block = min(remaining, MAX_BLOCK_SECONDS)
        if self.due_at is not None:
            block = min(block, self.due_at - time.monotonic())
        return max(block, 0.0)


def xread_arguments(stream: str, bell: str, point: WaitPoint, seconds: float) -> list[Any]:
    """The ``XREAD BLOCK`` that waits for either key to move past ``point``."""
    block = max(1, round(seconds * 1000))
    return ["XREAD", "BLOCK", block, "COUNT", 1, "STREAMS", stream, bell, point.last, point.bell]


class Waits:
    """The client ids of the connections blocked in a receive, to end those waits."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: Incremented by each interrupt: a wait that began before it returns at once.
        self.interrupts = 0
        self.blocked: set[int] = set()

    def count(self) -> int:
        """The interrupts so far: a wait started with this count ends at the next one."""
        with self.lock:
            return self.interrupts

    def started(self, client_id: int, interrupts: int) -> bool:
        """Note the connection ``client_id`` blocked; ``True`` when an interrupt came since
        ``interrupts`` was counted (the caller then unblocks it)."""
        with self.lock:
            self.blocked.add(client_id)
            return self.interrupts != interrupts

    def ended(self, client_id: int | None, interrupts: int) -> bool:
        """Note the wait of ``client_id`` over; ``True`` when an interrupt ended it."""
        with self.lock:
            if client_id is not None:
                self.blocked.discard(client_id)
            return self.interrupts != interrupts

    def interrupt(self) -> list[int]:
        """Count an interrupt; returns the client ids of the waits to unblock."""
        with self.lock:
            self.interrupts += 1
            return list(self.blocked)


__all__ = [
    "MAX_BLOCK_SECONDS",
    "SOCKET_TIMEOUT",
    "WaitPoint",
    "Waits",
    "client_options",
    "client_url",
    "consumer_name",
    "redacted",
    "xread_arguments",
]

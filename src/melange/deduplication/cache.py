"""Deduplication caches: remember which consumer processed which message.

A dispatcher given a cache checks, before calling a consumer, whether that consumer already
processed the message id, and skips it if so (a skip counts as success, so the redelivered
message is acknowledged). Keys are ``<consumer name>.<message id>``.

The interface is the original's (``store``, ``get``, ``in``) plus four methods for safe
concurrent use, which caches shared between processes implement atomically:

- :meth:`DeduplicationCache.claim` takes a lease on the key before processing,
- :meth:`DeduplicationCache.renew` extends that lease while the handler still runs,
- :meth:`DeduplicationCache.mark_done` records success,
- :meth:`DeduplicationCache.release` drops the lease after a failure.

A cache that only implements ``store`` and ``get`` still works: ``claim`` then falls back to
a (non-atomic) lookup.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from melange.deduplication.redis_cache import RedisCache

#: Value stored for a processed key.
DONE = "done"
#: Prefix of the value of a key that is being processed under a lease.
CLAIM_PREFIX = "melange-claim:"


def check_lease(lease_seconds: float) -> None:
    """A claim's lease must be positive: a zero lease would end the claim at once."""
    if lease_seconds <= 0:
        raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")


def check_expire(expire: float | None) -> None:
    """A per-key ``expire`` must be a positive, finite number of seconds (or ``None``)."""
    if expire is None:
        return
    if (
        isinstance(expire, bool)
        or not isinstance(expire, int | float)
        or not math.isfinite(expire)
        or expire <= 0
    ):
        raise ValueError(f"expire must be a positive number of seconds or None, got {expire!r}")


class ClaimState(enum.Enum):
    """Answer of :meth:`DeduplicationCache.claim`."""

    CLAIMED = "claimed"  # the caller owns the key now and should process the message
    DONE = "done"  # already processed: skip it
    BUSY = "busy"  # another process is processing it right now: try again later


def state_of(value: Any) -> ClaimState:
    """What the value found under a key means for a claim by lookup: free (``CLAIMED``),
    someone's claim (``BUSY``) or processed (``DONE``; any other value, as 7.2.0 wrote)."""
    if value is None:
        return ClaimState.CLAIMED
    if isinstance(value, str) and value.startswith(CLAIM_PREFIX):
        return ClaimState.BUSY
    return ClaimState.DONE


class DeduplicationCache(ABC):
    """Where dispatchers record processed message ids.

    For an ``async`` cache see :class:`~melange.deduplication.async_cache.AsyncDeduplicationCache`.
    """

    #: Whether calls may block on I/O. The asyncio dispatcher runs the calls of a blocking
    #: cache on worker threads, and those of one that never blocks (in memory) on the loop.
    blocking: bool = True

    @abstractmethod
    def store(self, key: str, value: Any, expire: float | None = None) -> None:
        """Remember ``key`` with ``value``.

        ``expire`` is how many seconds this key is remembered; ``None`` uses the cache's
        own setting. Caches that forget nothing ignore it.
        """

    @abstractmethod
    def get(self, key: str) -> Any:
        """The value stored for ``key``, or ``None`` when there is none."""

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def claim(self, key: str, lease_seconds: float) -> ClaimState:
        """Take ``key`` for processing for at most ``lease_seconds``.

        The default is a plain lookup, fine for a cache used by one process; caches shared by
        several processes override it with an atomic operation.
        """
        return state_of(self.get(key))

    def renew(self, key: str, lease_seconds: float) -> bool:
        """Extend this instance's claim on ``key`` to ``lease_seconds`` from now.

        Returns ``False`` when the claim is no longer ours: it expired and another process
        took it over, or it was released, or the key was marked done.

        Why it exists: a lease must outlast the handler, but a long lease also blocks the
        message for that long when the claiming process crashes. Dispatchers therefore keep
        leases short and renew them while a handler runs, so a crashed process's claims
        expire within seconds instead of holding the message for a long lease. A ``False``
        answer tells the dispatcher that another process may be processing the message too.

        The default, for caches that only implement ``store`` and ``get`` (whose claims are
        plain lookups with no lease), has nothing to renew and returns ``True``.
        """
        return True

    def mark_done(self, key: str) -> None:
        """Record that ``key`` was processed successfully."""
        self.store(key, DONE)

    def release(self, key: str) -> None:
        """Give up a claim after a failure so the next delivery may process the message."""


class NullCache(DeduplicationCache):
    """A cache that remembers nothing: every delivery is processed."""

    blocking = False

    def store(self, key: str, value: Any, expire: float | None = None) -> None:
        return None

    def get(self, key: str) -> Any:
        return None


class InMemoryCache(DeduplicationCache):
    """A thread-safe cache in process memory, with atomic claims and optional expiry.

    Args:
        expire: Seconds a processed key is remembered (``None``: forever).
        clock: Monotonic clock in seconds.
    """

    blocking = False

    def __init__(
        self, expire: float | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._expire = expire
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[Any, float | None]] = {}

    def _live(self, key: str, now: float) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at is not None and expires_at <= now:
            del self._entries[key]
            return None
        return value

    def store(self, key: str, value: Any, expire: float | None = None) -> None:
        """Remember ``key`` for ``expire`` seconds (default: the cache's ``expire``)."""
        check_expire(expire)
        seconds = expire if expire is not None else self._expire
        with self._lock:
            now = self._clock()
            self._entries[key] = (value, now + seconds if seconds else None)

    def get(self, key: str) -> Any:
        with self._lock:
            return self._live(key, self._clock())

    def _claim_value(self) -> str:
        return f"{CLAIM_PREFIX}{id(self)}"

    def claim(self, key: str, lease_seconds: float) -> ClaimState:
        with self._lock:
            now = self._clock()
            state = state_of(self._live(key, now))
            if state is ClaimState.CLAIMED:
                self._entries[key] = (self._claim_value(), now + lease_seconds)
            return state

    def renew(self, key: str, lease_seconds: float) -> bool:
        """Extend this instance's live claim on ``key``; ``False`` when it is not ours."""
        check_lease(lease_seconds)
        with self._lock:
            now = self._clock()
            value = self._live(key, now)
            if value != self._claim_value():
                return False
            self._entries[key] = (value, now + lease_seconds)
            return True

    def release(self, key: str) -> None:
        with self._lock:
            value = self._live(key, self._clock())
            if isinstance(value, str) and value.startswith(CLAIM_PREFIX):
                del self._entries[key]

    def __len__(self) -> int:
        with self._lock:
            now = self._clock()
            return sum(1 for key in list(self._entries) if self._live(key, now) is not None)


def __getattr__(name: str) -> Any:
    # RedisCache lives in its own module so that importing this one never needs redis-py.
    if name == "RedisCache":
        from melange.deduplication.redis_cache import RedisCache

        return RedisCache
    raise AttributeError(f"module 'melange.deduplication.cache' has no attribute {name!r}")


__all__ = [
    "ClaimState",
    "DeduplicationCache",
    "InMemoryCache",
    "NullCache",
    "RedisCache",
]

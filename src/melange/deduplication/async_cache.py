"""The asynchronous deduplication cache contract, for the asyncio dispatcher.

:class:`AsyncDeduplicationCache` is :class:`~melange.deduplication.cache.DeduplicationCache`
with coroutines: the same methods, meanings and guarantees, so that the asyncio dispatcher
awaits its cache instead of calling a blocking client on a worker thread.
:class:`~melange.deduplication.redis_cache.AsyncRedisCache` implements it on ``redis.asyncio``::

    from melange.deduplication.redis_cache import AsyncRedisCache

    cache = AsyncRedisCache.from_url("redis://localhost:6379/0")
    dispatcher = AsyncMessageDispatcher(JsonSerializer(), cache=cache, backend=backend)

:func:`as_async_cache` presents a blocking cache through this contract (its calls run on
worker threads, or inline for a cache that never blocks, like the in-memory one); the asyncio
dispatcher does so itself with the blocking cache it is given.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from melange.deduplication.cache import DONE, ClaimState, DeduplicationCache, state_of

if TYPE_CHECKING:
    from melange.deduplication.redis_cache import AsyncRedisCache

_T = TypeVar("_T")


class AsyncDeduplicationCache(ABC):
    """Base class of deduplication caches whose I/O is asyncio-native.

    Each coroutine means what the :class:`~melange.deduplication.cache.DeduplicationCache`
    method of the same name means. A cache that only implements :meth:`store` and :meth:`get`
    works, with claims that are plain (non-atomic) lookups.
    """

    @abstractmethod
    async def store(self, key: str, value: Any, expire: float | None = None) -> None:
        """See :meth:`DeduplicationCache.store`."""

    @abstractmethod
    async def get(self, key: str) -> Any:
        """See :meth:`DeduplicationCache.get`."""

    async def claim(self, key: str, lease_seconds: float) -> ClaimState:
        """See :meth:`DeduplicationCache.claim` (the default is a plain lookup)."""
        return state_of(await self.get(key))

    async def renew(self, key: str, lease_seconds: float) -> bool:
        """See :meth:`DeduplicationCache.renew` (the default has nothing to renew)."""
        return True

    async def mark_done(self, key: str) -> None:
        """See :meth:`DeduplicationCache.mark_done`."""
        await self.store(key, DONE)

    async def release(self, key: str) -> None:
        """See :meth:`DeduplicationCache.release`."""

    async def aclose(self) -> None:
        """Release connections. The cache may not be used afterwards."""

    async def __aenter__(self) -> AsyncDeduplicationCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class BlockingCacheAdapter(AsyncDeduplicationCache):
    """A blocking :class:`DeduplicationCache` behind the asynchronous contract.

    Calls run on worker threads (``asyncio.to_thread``), or inline for a cache that never
    blocks (``blocking = False``: the in-memory cache). Use :func:`as_async_cache` rather than
    this class.
    """

    def __init__(self, cache: DeduplicationCache) -> None:
        #: The blocking cache behind this adapter.
        self.cache = cache

    def __repr__(self) -> str:
        return f"<as_async_cache({self.cache!r})>"

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self.cache.blocking:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    async def store(self, key: str, value: Any, expire: float | None = None) -> None:
        if expire is None:
            await self._call(self.cache.store, key, value)
        else:
            await self._call(self.cache.store, key, value, expire)

    async def get(self, key: str) -> Any:
        return await self._call(self.cache.get, key)

    async def claim(self, key: str, lease_seconds: float) -> ClaimState:
        return await self._call(self.cache.claim, key, lease_seconds)

    async def renew(self, key: str, lease_seconds: float) -> bool:
        return await self._call(self.cache.renew, key, lease_seconds)

    async def mark_done(self, key: str) -> None:
        await self._call(self.cache.mark_done, key)

    async def release(self, key: str) -> None:
        await self._call(self.cache.release, key)


def as_async_cache(
    cache: DeduplicationCache | AsyncDeduplicationCache,
) -> AsyncDeduplicationCache:
    """``cache`` through the asynchronous contract (itself when it already is one)."""
    if isinstance(cache, AsyncDeduplicationCache):
        return cache
    if isinstance(cache, DeduplicationCache):
        return BlockingCacheAdapter(cache)
    raise TypeError(
        "cache must be a DeduplicationCache or an AsyncDeduplicationCache, got "
        f"{type(cache).__name__}"
    )


def __getattr__(name: str) -> Any:
    # AsyncRedisCache lives with RedisCache, so that importing this module never needs redis-py.
    if name == "AsyncRedisCache":
        from melange.deduplication.redis_cache import AsyncRedisCache

        return AsyncRedisCache
    raise AttributeError(f"module 'melange.deduplication.async_cache' has no attribute {name!r}")


__all__ = [
    "AsyncDeduplicationCache",
    "AsyncRedisCache",
    "BlockingCacheAdapter",
    "as_async_cache",
]

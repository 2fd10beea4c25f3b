"""``store(key, value, expire=...)`` on the Redis caches, blocking and asyncio (the 7.2.0
``RedisCache.store`` took ``expire``): the key lives that long, whatever the cache default."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from reliability_support import redis_keys

pytestmark = pytest.mark.redis


@pytest.fixture
def prefix() -> Iterator[str]:
    with redis_keys() as keys:
        yield keys


def test_redis_store_with_expire_sets_that_key_s_time_to_live(prefix: str) -> None:
    import redis

    from melange.deduplication.redis_cache import RedisCache

    cache = RedisCache(key_prefix=prefix, expire=3600)
    raw = redis.Redis()
    try:
        cache.store("short", "done", expire=0.4)
        cache.store("default", "done")

        assert 0 < raw.pttl(prefix + "short") <= 400
        assert raw.ttl(prefix + "default") > 3500
        time.sleep(0.6)
        assert cache.get("short") is None
        assert cache.get("default") == "done"
    finally:
        cache.close()
        raw.close()


def test_async_redis_store_with_expire_sets_that_key_s_time_to_live(prefix: str) -> None:
    import redis

    from melange.deduplication.redis_cache import AsyncRedisCache

    async def scenario() -> None:
        cache = AsyncRedisCache(key_prefix=prefix, expire=None)
        try:
            await cache.store("short", "done", expire=30)
            await cache.store("forever", "done")
        finally:
            await cache.aclose()

    asyncio.run(scenario())
    raw = redis.Redis()
    try:
        assert 29_000 < raw.pttl(prefix + "short") <= 30_000
        assert raw.ttl(prefix + "forever") == -1  # the cache's own setting: no expiry
    finally:
        raw.close()

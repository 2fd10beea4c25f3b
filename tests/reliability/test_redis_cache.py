"""RedisCache and AsyncRedisCache against the real Redis: atomic claims, ownership of
releases, expiry, errors.

Every behaviour test runs on both caches (the ``kind`` fixture): the asyncio one through
:class:`Blocking`, which runs its coroutines on an event loop of its own, so that one test
body states what both must do.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from reliability_support import redis_keys, wait_for

from melange.deduplication.cache import ClaimState, DeduplicationCache
from melange.exceptions import ConfigurationError, DeduplicationCacheError

pytestmark = pytest.mark.redis

Make = Callable[..., DeduplicationCache]


class Blocking(DeduplicationCache):
    """An ``AsyncRedisCache`` called like a blocking cache: each call runs on ``loop``."""

    def __init__(self, cache: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.cache = cache
        self._loop = loop

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def store(self, key: str, value: Any) -> None:
        self._run(self.cache.store(key, value))

    def get(self, key: str) -> Any:
        return self._run(self.cache.get(key))

    def claim(self, key: str, lease_seconds: float) -> ClaimState:
        return self._run(self.cache.claim(key, lease_seconds))  # type: ignore[no-any-return]

    def renew(self, key: str, lease_seconds: float) -> bool:
        return self._run(self.cache.renew(key, lease_seconds))  # type: ignore[no-any-return]

    def mark_done(self, key: str) -> None:
        self._run(self.cache.mark_done(key))

    def release(self, key: str) -> None:
        self._run(self.cache.release(key))

    def close(self) -> None:
        self._run(self.cache.aclose())


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def build(kind: str) -> Iterator[Make]:
    """Makes a cache of ``kind`` with the given constructor arguments (closed afterwards)."""
    from melange.deduplication.redis_cache import AsyncRedisCache, RedisCache

    made: list[Any] = []
    if kind == "sync":

        def make_sync(**kwargs: Any) -> DeduplicationCache:
            made.append(RedisCache(**kwargs))
            return made[-1]  # type: ignore[no-any-return]

        yield make_sync
        for cache in made:
            cache.close()
        return
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="redis-cache-loop", daemon=True)
    thread.start()

    def make_async(**kwargs: Any) -> DeduplicationCache:
        made.append(Blocking(AsyncRedisCache(**kwargs), loop))
        return made[-1]  # type: ignore[no-any-return]

    try:
        yield make_async
    finally:
        for cache in made:
            with contextlib.suppress(Exception):
                cache.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def prefix() -> Iterator[str]:
    with redis_keys() as prefix:
        yield prefix


@pytest.fixture
def make(build: Make, prefix: str) -> Make:
    """Makes a cache of the test's kind on the test's own key prefix."""
    return lambda **kwargs: build(key_prefix=prefix, **kwargs)


def raw_client():  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)


def client_of(cache: Any) -> Any:
    return (cache.cache if isinstance(cache, Blocking) else cache)._client


def test_get_returns_none_on_a_miss_and_the_value_after_store(make: Make) -> None:
    cache = make()
    assert cache.get("absent") is None
    assert "absent" not in cache
    cache.store("k", "v")
    assert cache.get("k") == "v"
    assert "k" in cache


def test_defaults_are_localhost_6379_db_0_and_url_is_equivalent(build: Make) -> None:
    kwargs = client_of(build()).connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("localhost", 6379, 0)
    kwargs = client_of(build(url="redis://127.0.0.1:6379/3")).connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 6379, 3)
    assert kwargs["socket_timeout"] == 5.0


def test_from_url_is_the_url_argument() -> None:
    from melange.deduplication.redis_cache import AsyncRedisCache, RedisCache

    for cls in (RedisCache, AsyncRedisCache):
        cache: Any = cls.from_url("redis://127.0.0.1:6379/3", expire=60)
        kwargs = cache._client.connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"], cache.expire) == (
            "127.0.0.1",
            6379,
            3,
            60,
        )


def test_is_importable_from_the_cache_module_as_in_7_2_0() -> None:
    from melange.deduplication import cache
    from melange.deduplication.redis_cache import RedisCache

    assert cache.RedisCache is RedisCache


def test_importing_the_cache_module_does_not_import_redis() -> None:
    code = (
        "import sys, melange, melange.deduplication.cache, melange.message_dispatcher;"
        "sys.exit(1 if 'redis' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_only_one_of_many_concurrent_claimers_gets_the_key(make: Make) -> None:
    caches = [make() for _ in range(8)]
    barrier = threading.Barrier(len(caches))
    results: list[ClaimState] = []

    def claim(cache: DeduplicationCache) -> None:
        barrier.wait()
        results.append(cache.claim("msg", 30))

    threads = [threading.Thread(target=claim, args=(c,)) for c in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(r.value for r in results) == ["busy"] * 7 + ["claimed"]


def test_claim_is_done_after_mark_done_and_the_mark_expires(make: Make, prefix: str) -> None:
    first, second = make(expire=60), make(expire=60)
    assert first.claim("msg", 30) is ClaimState.CLAIMED
    assert second.claim("msg", 30) is ClaimState.BUSY
    first.mark_done("msg")
    assert second.claim("msg", 30) is ClaimState.DONE
    assert first.get("msg") == "done"
    ttl = raw_client().ttl(prefix + "msg")
    assert 0 < ttl <= 60


def test_a_claim_lease_is_written_with_its_expiry(make: Make, prefix: str) -> None:
    cache = make()
    assert cache.claim("msg", 20) is ClaimState.CLAIMED
    assert 0 < raw_client().pttl(prefix + "msg") <= 20_000


def test_value_written_by_7_2_0_counts_as_done(make: Make, prefix: str) -> None:
    # 7.2.0 stored the key itself as the value.
    raw_client().set(prefix + "consumers.Payment.m1", "consumers.Payment.m1")
    assert make().claim("consumers.Payment.m1", 30) is ClaimState.DONE


def test_an_expired_claim_can_be_taken_over(make: Make) -> None:
    first, second = make(), make()
    assert first.claim("msg", 0.05) is ClaimState.CLAIMED
    wait_for(lambda: second.claim("msg", 30) is ClaimState.CLAIMED, 10, "the lease to expire")


def test_release_deletes_only_our_own_claim(make: Make) -> None:
    first, second = make(), make()
    assert first.claim("msg", 0.05) is ClaimState.CLAIMED
    wait_for(lambda: second.claim("msg", 30) is ClaimState.CLAIMED, 10, "the lease to expire")
    first.release("msg")  # late: the key is the second's now
    assert make().claim("msg", 30) is ClaimState.BUSY
    second.release("msg")
    assert make().claim("msg", 30) is ClaimState.CLAIMED


def test_release_after_mark_done_keeps_the_done_mark(make: Make) -> None:
    cache = make()
    assert cache.claim("msg", 30) is ClaimState.CLAIMED
    cache.mark_done("msg")
    cache.release("msg")
    assert cache.claim("msg", 30) is ClaimState.DONE


def test_release_lets_the_next_delivery_claim_again(make: Make) -> None:
    cache = make()
    assert cache.claim("msg", 30) is ClaimState.CLAIMED
    cache.release("msg")
    assert cache.get("msg") is None
    assert make().claim("msg", 30) is ClaimState.CLAIMED


def test_an_unreachable_redis_raises_a_clear_error_quickly(build: Make) -> None:
    cache = build(port=1, socket_connect_timeout=1.0)
    started = time.monotonic()
    for call in (lambda: cache.get("k"), lambda: cache.claim("k", 5), lambda: cache.mark_done("k")):
        with pytest.raises(DeduplicationCacheError, match=r"localhost:1.*reachable"):
            call()
    assert time.monotonic() - started < 10


def test_password_is_not_shown_in_errors_nor_repr(build: Make) -> None:
    for cache in (
        build(url="redis://:s3cret@127.0.0.1:1/0", socket_connect_timeout=1.0),
        build(host="127.0.0.1", port=1, password="s3cret", socket_connect_timeout=1.0),
    ):
        with pytest.raises(DeduplicationCacheError) as info:
            cache.get("k")
        assert "s3cret" not in str(info.value)
        shown = repr(cache.cache if isinstance(cache, Blocking) else cache)
        assert "s3cret" not in shown and "127.0.0.1:1" in shown
    with pytest.raises(ConfigurationError) as refused:
        build(url="mysql://:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize("expire", [0, -5, 1.5])
def test_bad_expire_is_refused(build: Make, expire: object) -> None:
    with pytest.raises(ConfigurationError, match="expire"):
        build(expire=expire)


def test_a_redis_that_accepts_but_never_answers_fails_within_the_socket_timeout(
    build: Make,
) -> None:
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog; nothing ever answers
        port = silent.getsockname()[1]
        cache = build(host="127.0.0.1", port=port, socket_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(DeduplicationCacheError, match="claim"):
            cache.claim("k", 5)
        took = time.monotonic() - started
    # One try and two quick retries, each bounded by the socket timeout.
    assert took < 3


def test_renew_extends_only_our_own_live_claim(make: Make, prefix: str) -> None:
    first, second = make(), make()
    assert first.claim("msg", 1) is ClaimState.CLAIMED
    assert first.renew("msg", 20) is True
    assert 1_000 < raw_client().pttl(prefix + "msg") <= 20_000
    assert second.renew("msg", 20) is False  # not its claim
    first.mark_done("msg")
    assert first.renew("msg", 20) is False  # done: nothing to renew
    assert second.claim("msg", 30) is ClaimState.DONE

"""RedisCache against the real Redis: atomic claims, ownership of releases, expiry, errors."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from reliability_support import redis_keys, wait_for

from melange.deduplication.cache import ClaimState, DeduplicationCache
from melange.exceptions import ConfigurationError, DeduplicationCacheError

pytestmark = pytest.mark.redis


@pytest.fixture
def prefix() -> Iterator[str]:
    with redis_keys() as prefix:
        yield prefix


def make(prefix: str, **kwargs: object) -> DeduplicationCache:
    from melange.deduplication.redis_cache import RedisCache

    return RedisCache(key_prefix=prefix, **kwargs)  # type: ignore[arg-type]


def raw_client():  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)


def test_get_returns_none_on_a_miss_and_the_value_after_store(prefix: str) -> None:
    cache = make(prefix)
    assert cache.get("absent") is None
    assert "absent" not in cache
    cache.store("k", "v")
    assert cache.get("k") == "v"
    assert "k" in cache


def test_defaults_are_localhost_6379_db_0_and_url_is_equivalent() -> None:
    from melange.deduplication.redis_cache import RedisCache

    kwargs = RedisCache()._client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("localhost", 6379, 0)
    for cache in (
        RedisCache.from_url("redis://127.0.0.1:6379/3"),
        RedisCache(url="redis://127.0.0.1:6379/3"),
    ):
        kwargs = cache._client.connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 6379, 3)
        assert kwargs["socket_timeout"] == 5.0


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


def test_only_one_of_many_concurrent_claimers_gets_the_key(prefix: str) -> None:
    caches = [make(prefix) for _ in range(8)]
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


def test_claim_is_done_after_mark_done_and_the_mark_expires(prefix: str) -> None:
    first, second = make(prefix, expire=60), make(prefix, expire=60)
    assert first.claim("msg", 30) is ClaimState.CLAIMED
    assert second.claim("msg", 30) is ClaimState.BUSY
    first.mark_done("msg")
    assert second.claim("msg", 30) is ClaimState.DONE
    assert first.get("msg") == "done"
    ttl = raw_client().ttl(prefix + "msg")
    assert 0 < ttl <= 60


def test_a_claim_lease_is_written_with_its_expiry(prefix: str) -> None:
    cache = make(prefix)
    assert cache.claim("msg", 20) is ClaimState.CLAIMED
    assert 0 < raw_client().pttl(prefix + "msg") <= 20_000


def test_value_written_by_7_2_0_counts_as_done(prefix: str) -> None:
    # 7.2.0 stored the key itself as the value.
    raw_client().set(prefix + "consumers.Payment.m1", "consumers.Payment.m1")
    assert make(prefix).claim("consumers.Payment.m1", 30) is ClaimState.DONE


def test_an_expired_claim_can_be_taken_over(prefix: str) -> None:
    first, second = make(prefix), make(prefix)
    assert first.claim("msg", 0.05) is ClaimState.CLAIMED
    wait_for(lambda: second.claim("msg", 30) is ClaimState.CLAIMED, 10, "the lease to expire")


def test_release_deletes_only_our_own_claim(prefix: str) -> None:
    first, second = make(prefix), make(prefix)
    assert first.claim("msg", 0.05) is ClaimState.CLAIMED
    wait_for(lambda: second.claim("msg", 30) is ClaimState.CLAIMED, 10, "the lease to expire")
    first.release("msg")  # late: the key is the second's now
    assert make(prefix).claim("msg", 30) is ClaimState.BUSY
    second.release("msg")
    assert make(prefix).claim("msg", 30) is ClaimState.CLAIMED


def test_release_after_mark_done_keeps_the_done_mark(prefix: str) -> None:
    cache = make(prefix)
    assert cache.claim("msg", 30) is ClaimState.CLAIMED
    cache.mark_done("msg")
    cache.release("msg")
    assert cache.claim("msg", 30) is ClaimState.DONE


def test_release_lets_the_next_delivery_claim_again(prefix: str) -> None:
    cache = make(prefix)
    assert cache.claim("msg", 30) is ClaimState.CLAIMED
    cache.release("msg")
    assert cache.get("msg") is None
    assert make(prefix).claim("msg", 30) is ClaimState.CLAIMED


def test_an_unreachable_redis_raises_a_clear_error_quickly() -> None:
    from melange.deduplication.redis_cache import RedisCache

    cache = RedisCache(port=1, socket_connect_timeout=1.0)
    started = time.monotonic()
    for call in (lambda: cache.get("k"), lambda: cache.claim("k", 5), lambda: cache.mark_done("k")):
        with pytest.raises(DeduplicationCacheError, match=r"localhost:1.*reachable"):
            call()
    assert time.monotonic() - started < 10


def test_password_is_not_shown_in_errors() -> None:
    from melange.deduplication.redis_cache import RedisCache

    cache = RedisCache.from_url("redis://:s3cret@127.0.0.1:1/0", socket_connect_timeout=1.0)
    with pytest.raises(DeduplicationCacheError) as info:
        cache.get("k")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("expire", [0, -5, 1.5])
def test_bad_expire_is_refused(expire: object) -> None:
    from melange.deduplication.redis_cache import RedisCache

    with pytest.raises(ConfigurationError, match="expire"):
        RedisCache(expire=expire)  # type: ignore[arg-type]


def test_a_redis_that_accepts_but_never_answers_fails_within_the_socket_timeout() -> None:
    import socket

    from melange.deduplication.redis_cache import RedisCache

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog; nothing ever answers
        port = silent.getsockname()[1]
        cache = RedisCache(host="127.0.0.1", port=port, socket_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(DeduplicationCacheError, match="claim"):
            cache.claim("k", 5)
        took = time.monotonic() - started
    # One try and two quick retries, each bounded by the socket timeout.
    assert took < 3

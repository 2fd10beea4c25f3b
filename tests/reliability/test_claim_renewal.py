"""Claim renewal (``DeduplicationCache.renew``) on every cache that takes leases.

Each case runs on the in-memory cache, Redis, SQLite and PostgreSQL. The in-memory and SQL
caches take a clock, so time is moved by hand; Redis keeps its own time, so its cases sleep
for leases of a fraction of a second.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from reliability_support import redis_keys

from melange.deduplication.cache import (
    CLAIM_PREFIX,
    ClaimState,
    DeduplicationCache,
    InMemoryCache,
    NullCache,
)
from melange.deduplication.sql_cache import SQLDeduplicationCache
from melange.exceptions import DeduplicationCacheError
from service_check import require_service

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
KEY = "consumer.message-1"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    """Instances of one kind of cache sharing one store, and a way to let time pass."""

    make: Callable[[], DeduplicationCache]
    advance: Callable[[float], None]


def _in_memory() -> Iterator[Harness]:
    clock = Clock()
    shared = InMemoryCache(clock=clock)

    def make() -> DeduplicationCache:
        # Each InMemoryCache claims under its own id; giving a new instance the entries (and
        # lock) of the first one stands for several claimers sharing one store.
        cache = InMemoryCache(clock=clock)
        cache._entries = shared._entries
        cache._lock = shared._lock
        return cache

    def advance(seconds: float) -> None:
        clock.now += seconds

    yield Harness(make, advance)


def _redis() -> Iterator[Harness]:
    from melange.deduplication.redis_cache import RedisCache

    with redis_keys() as prefix:
        made: list[RedisCache] = []

        def make() -> DeduplicationCache:
            cache = RedisCache(host="127.0.0.1", key_prefix=prefix)
            made.append(cache)
            return cache

        yield Harness(make, time.sleep)
        for cache in made:
            cache.close()


def _sql(database: str) -> Iterator[Harness]:
    clock = Clock()
    table = f"renew_{uuid.uuid4().hex[:10]}"
    made: list[SQLDeduplicationCache] = []

    def make() -> DeduplicationCache:
        cache = SQLDeduplicationCache(database, table=table, clock=clock)
        made.append(cache)
        return cache

    def advance(seconds: float) -> None:
        clock.now += seconds

    yield Harness(make, advance)
    for cache in made:
        cache.close()
    if database == PG_URL:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
    ]
)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "memory":
        yield from _in_memory()
    elif request.param == "redis":
        yield from _redis()
    elif request.param == "sqlite":
        yield from _sql(str(tmp_path / "dedup.sqlite3"))
    else:
        require_service("postgres")
        yield from _sql(PG_URL)


def test_a_renewed_claim_is_still_held_past_its_original_lease(harness: Harness) -> None:
    owner, other = harness.make(), harness.make()
    assert owner.claim(KEY, 1.0) is ClaimState.CLAIMED
    harness.advance(0.6)
    assert owner.renew(KEY, 1.0) is True
    harness.advance(0.6)  # past the original lease, within the renewed one
    assert other.claim(KEY, 1.0) is ClaimState.BUSY
    harness.advance(0.5)  # past the renewed lease too
    assert other.claim(KEY, 1.0) is ClaimState.CLAIMED


def test_a_claim_that_is_not_renewed_expires_and_can_be_taken(harness: Harness) -> None:
    owner, other = harness.make(), harness.make()
    assert owner.claim(KEY, 0.3) is ClaimState.CLAIMED
    assert other.claim(KEY, 0.3) is ClaimState.BUSY
    harness.advance(0.4)
    assert other.claim(KEY, 0.3) is ClaimState.CLAIMED


def test_renew_after_a_takeover_fails_and_leaves_the_new_claim_alone(harness: Harness) -> None:
    owner, other, third = harness.make(), harness.make(), harness.make()
    assert owner.claim(KEY, 0.3) is ClaimState.CLAIMED
    harness.advance(0.4)
    assert other.claim(KEY, 0.3) is ClaimState.CLAIMED
    taken = other.get(KEY)
    assert isinstance(taken, str) and taken.startswith(CLAIM_PREFIX)
    assert owner.renew(KEY, 30) is False
    assert other.get(KEY) == taken  # still the other's claim
    assert third.claim(KEY, 0.3) is ClaimState.BUSY
    harness.advance(0.4)  # the other's lease ends when it would have: it was not extended
    assert third.claim(KEY, 0.3) is ClaimState.CLAIMED


def test_renew_after_mark_done_fails_and_the_key_stays_done(harness: Harness) -> None:
    owner, other = harness.make(), harness.make()
    assert owner.claim(KEY, 0.3) is ClaimState.CLAIMED
    owner.mark_done(KEY)
    assert owner.renew(KEY, 0.3) is False
    assert owner.get(KEY) == "done"
    harness.advance(0.4)
    assert other.claim(KEY, 0.3) is ClaimState.DONE
    assert other.get(KEY) == "done"


def test_renew_after_release_fails(harness: Harness) -> None:
    owner, other = harness.make(), harness.make()
    assert owner.claim(KEY, 30) is ClaimState.CLAIMED
    owner.release(KEY)
    assert owner.renew(KEY, 30) is False
    assert owner.get(KEY) is None
    assert other.claim(KEY, 30) is ClaimState.CLAIMED


def test_renew_of_a_key_never_claimed_fails(harness: Harness) -> None:
    owner, other = harness.make(), harness.make()
    assert owner.renew(KEY, 30) is False
    assert other.claim(KEY, 30) is ClaimState.CLAIMED
    assert owner.renew(KEY, 30) is False  # someone else's claim
    assert other.renew(KEY, 30) is True


@pytest.mark.parametrize("lease", [0, -1.0])
def test_a_lease_that_is_not_positive_is_refused(harness: Harness, lease: float) -> None:
    cache = harness.make()
    assert cache.claim(KEY, 30) is ClaimState.CLAIMED
    with pytest.raises(ValueError, match="lease_seconds"):
        cache.renew(KEY, lease)


def test_a_cache_with_only_store_and_get_has_nothing_to_renew() -> None:
    assert NullCache().renew(KEY, 30) is True


@pytest.mark.redis
def test_redis_renew_writes_the_new_lease() -> None:
    import redis

    from melange.deduplication.redis_cache import RedisCache

    with redis_keys() as prefix:
        cache = RedisCache(host="127.0.0.1", key_prefix=prefix)
        raw = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
        try:
            assert cache.claim(KEY, 1) is ClaimState.CLAIMED
            assert cache.renew(KEY, 20) is True
            assert 1_000 < raw.pttl(prefix + KEY) <= 20_000
        finally:
            raw.close()
            cache.close()


def test_redis_renew_without_a_claim_does_not_call_redis_and_errors_are_clear() -> None:
    pytest.importorskip("redis")
    from melange.deduplication.redis_cache import RedisCache

    cache = RedisCache(host="127.0.0.1", port=1, socket_connect_timeout=1.0)
    assert cache.renew(KEY, 5) is False  # no token held: no round trip, so no error
    cache._tokens[KEY] = f"{CLAIM_PREFIX}lost"
    with pytest.raises(DeduplicationCacheError, match=r"renew the claim on .*reachable"):
        cache.renew(KEY, 5)

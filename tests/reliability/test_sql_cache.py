"""SQLDeduplicationCache on SQLite and PostgreSQL: atomic claims, expiry, own transactions."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from melange.backends.memory import InMemoryMessagingBackend
from melange.consumers import Consumer
from melange.deduplication.cache import ClaimState
from melange.deduplication.sql_cache import SQLDeduplicationCache, deduplication_key
from melange.exceptions import ConfigurationError, DeduplicationCacheError
from melange.message_dispatcher import MessageDispatcher
from melange.policy import FailurePolicy
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer
from service_check import require_service

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


Factory = Callable[..., SQLDeduplicationCache]


@pytest.fixture(params=["sqlite", "postgresql"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """Builds caches sharing one fresh table on the parametrized database."""
    table = f"dedup_{uuid.uuid4().hex[:10]}"
    if request.param == "postgresql":
        require_service("postgres")
        database = PG_URL
    else:
        database = str(tmp_path / "dedup.sqlite3")
    made: list[SQLDeduplicationCache] = []

    def make(**kwargs: Any) -> SQLDeduplicationCache:
        cache = SQLDeduplicationCache(database, table=table, **kwargs)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()
    if request.param == "postgresql":
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")


def test_get_returns_none_on_a_miss_and_the_value_after_store(factory: Factory) -> None:
    cache = factory()
    assert cache.get("absent") is None
    assert "absent" not in cache
    cache.store("k", "v")
    assert cache.get("k") == "v"
    assert "k" in cache


def test_only_one_of_many_concurrent_claimers_gets_the_key(factory: Factory) -> None:
    caches = [factory() for _ in range(6)]
    barrier = threading.Barrier(len(caches))
    results: list[ClaimState] = []

    def claim(cache: SQLDeduplicationCache) -> None:
        barrier.wait()
        results.append(cache.claim("msg", 30))

    threads = [threading.Thread(target=claim, args=(c,)) for c in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(r.value for r in results) == ["busy"] * 5 + ["claimed"]


def test_done_key_is_skipped_until_its_memory_expires(factory: Factory) -> None:
    clock = Clock()
    first, second = factory(expire=60, clock=clock), factory(expire=60, clock=clock)
    assert first.claim("msg", 30) is ClaimState.CLAIMED
    first.mark_done("msg")
    assert second.claim("msg", 30) is ClaimState.DONE
    assert second.get("msg") == "done"
    clock.now += 61
    assert second.get("msg") is None
    assert second.claim("msg", 30) is ClaimState.CLAIMED


def test_done_key_without_expire_is_remembered_forever(factory: Factory) -> None:
    clock = Clock()
    cache = factory(clock=clock)
    cache.mark_done("msg")
    clock.now += 10 * 365 * 86400
    assert cache.claim("msg", 30) is ClaimState.DONE


def test_an_expired_claim_can_be_taken_over_but_a_live_one_cannot(factory: Factory) -> None:
    clock = Clock()
    first, second = factory(clock=clock), factory(clock=clock)
    assert first.claim("msg", 30) is ClaimState.CLAIMED
    clock.now += 29
    assert second.claim("msg", 30) is ClaimState.BUSY
    clock.now += 2
    assert second.claim("msg", 30) is ClaimState.CLAIMED


def test_release_deletes_only_our_own_claim(factory: Factory) -> None:
    clock = Clock()
    first, second = factory(clock=clock), factory(clock=clock)
    assert first.claim("msg", 5) is ClaimState.CLAIMED
    clock.now += 6
    assert second.claim("msg", 30) is ClaimState.CLAIMED
    first.release("msg")  # late: the row is the second's now
    assert factory(clock=clock).claim("msg", 30) is ClaimState.BUSY
    second.release("msg")
    assert factory(clock=clock).claim("msg", 30) is ClaimState.CLAIMED


def test_release_after_mark_done_keeps_the_done_mark(factory: Factory) -> None:
    cache = factory()
    assert cache.claim("msg", 30) is ClaimState.CLAIMED
    cache.mark_done("msg")
    cache.release("msg")
    assert cache.claim("msg", 30) is ClaimState.DONE


def test_purge_expired_deletes_only_expired_rows(factory: Factory) -> None:
    clock = Clock()
    cache = factory(expire=10, clock=clock)
    cache.mark_done("old")
    clock.now += 11
    cache.mark_done("new")
    assert cache.purge_expired() == 1
    assert cache.get("new") == "done"


def test_mark_done_in_commits_and_rolls_back_with_the_callers_transaction(
    factory: Factory,
) -> None:
    cache = factory()
    if cache.dialect == "postgresql":
        import psycopg

        conn: Any = psycopg.connect(PG_URL)
    else:
        import sqlite3

        conn = sqlite3.connect(cache._target)
    try:
        cache.mark_done_in(conn, "rolled-back")
        conn.rollback()
        assert cache.get("rolled-back") is None
        cache.mark_done_in(conn, "committed")
        assert cache.get("committed") is None  # not visible before the commit
        conn.commit()
        assert cache.claim("committed", 30) is ClaimState.DONE
    finally:
        conn.close()


def test_unreachable_postgres_raises_a_clear_error() -> None:
    with pytest.raises(DeduplicationCacheError, match="reachable"):
        SQLDeduplicationCache("postgresql://postgres@127.0.0.1:1/test", timeout=2)


@pytest.mark.parametrize("table", ["x; DROP TABLE y", "1abc", ""])
def test_a_table_name_that_is_not_an_identifier_is_refused(table: str) -> None:
    with pytest.raises(ConfigurationError, match="identifier"):
        SQLDeduplicationCache(":memory:", table=table)


def test_key_for_outside_a_consumer_needs_the_message() -> None:
    cache = SQLDeduplicationCache(":memory:")
    with pytest.raises(RuntimeError, match="pass the message"):
        cache.key_for("consumer")


# -- exactly once with the handler's own writes, through a dispatcher on PostgreSQL ---------


class Crash(Exception):
    """Stands for the process dying after the handler's commit, before the ack."""


def test_a_handler_commit_with_mark_done_in_is_never_repeated_on_postgres() -> None:
    require_service("postgres")
    import psycopg

    suffix = uuid.uuid4().hex[:10]
    table, orders = f"dedup_{suffix}", f"orders_{suffix}"
    cache = SQLDeduplicationCache(PG_URL, table=table)
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f"CREATE TABLE {orders} (order_id INT, message_id TEXT)")
    calls: list[int] = []

    class OrderWriter(Consumer):
        def process(self, message: Any, **kwargs: Any) -> None:
            calls.append(message["id"])
            with psycopg.connect(PG_URL) as conn:  # one transaction, committed on exit
                conn.execute(f"INSERT INTO {orders} VALUES (%s, %s)", (message["id"], "x"))
                cache.mark_done_in(conn, cache.key_for(self))
                if message["id"] == 2:
                    raise Crash("rolled back: nothing may be recorded")
            if message["id"] == 1 and calls.count(1) == 1:
                raise Crash("after the commit")

    try:
        backend = InMemoryMessagingBackend()
        backend.declare_queue("orders", dead_letter_queue_name="orders-dlq")
        dispatcher = MessageDispatcher(
            JsonSerializer(),
            cache=cache,
            backend=backend,
            consumers=[OrderWriter(name="order-writer")],
            failure_policy=FailurePolicy.no_delay(max_attempts=3),
        )
        publisher = QueuePublisher(JsonSerializer(), backend)
        publisher.publish("orders", {"id": 1})
        publisher.publish("orders", {"id": 2})
        for _ in range(6):
            dispatcher.consume_event("orders", max_messages=10)
        with psycopg.connect(PG_URL) as conn:
            rows = conn.execute(f"SELECT order_id FROM {orders} ORDER BY order_id").fetchall()
        # Order 1 ran once and was skipped on redelivery; order 2 never committed anything.
        assert rows == [(1,)]
        assert calls.count(1) == 1
        assert calls.count(2) == 3
        assert dispatcher.stats.duplicates_skipped == 1
        assert backend.queue_depth("orders") == 0
        assert len(backend.peek("orders-dlq")) == 1
        assert deduplication_key("order-writer", "m") == "order-writer.m"
    finally:
        cache.close()
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f"DROP TABLE IF EXISTS {orders}")
            admin.execute(f"DROP TABLE IF EXISTS {table}")


def test_caches_created_at_once_on_a_new_table_all_work(factory: Factory) -> None:
    barrier = threading.Barrier(6)
    made: list[SQLDeduplicationCache] = []
    errors: list[BaseException] = []

    def create() -> None:
        barrier.wait()
        try:
            made.append(factory())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert sorted(c.claim("k", 30).value for c in made) == ["busy"] * 5 + ["claimed"]

"""The relay on the in-memory backend: what it sends, in which order, what it leaves behind,
and how several relays share one table."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import pytest
from outbox_support import Database

from melange.backends.memory import InMemoryMessagingBackend
from melange.exceptions import BatchPublishError, ConfigurationError
from melange.models import Message, QueueWrapper
from melange.outbox import ORIGINAL_ID_HEADER, Outbox, Relay


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time() + 1  # after every row written so far

    def __call__(self) -> float:
        return self.now


def _ready(database: Database) -> Outbox:
    outbox = Outbox(table=database.table)
    with database.connect() as conn:
        outbox.create_table(conn)
    return outbox


def _relay(database: Database, backend: InMemoryMessagingBackend, **kwargs: Any) -> Relay:
    kwargs.setdefault("poll_interval", 0.05)
    return Relay(database.dsn, backend, table=database.table, **kwargs)


def _bodies(backend: InMemoryMessagingBackend, queue: str) -> list[Any]:
    return [json.loads(m.content) for m in backend.peek(queue)]


def test_committed_messages_reach_the_queue_with_their_envelope_and_leave_the_table(
    database: Database,
) -> None:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("orders")
    outbox = _ready(database)
    with database.connect() as conn:
        first = outbox.publish(conn, "orders", {"n": 1}, "g1", "d1", headers={"k": "v"})
        outbox.publish(conn, "orders", {"n": 2}, "g2")
        outbox.publish(conn, "orders", {"n": 3}, "g1")
    with _relay(database, backend) as relay:
        assert relay.drain() == 3
    delivered = backend.peek("orders")
    assert [json.loads(m.content)["n"] for m in delivered] == [1, 2, 3]
    sent = delivered[0]
    assert sent.message_id == first.message_id
    assert sent.headers[ORIGINAL_ID_HEADER] == first.message_id
    assert sent.headers["k"] == "v"
    assert (sent.group_id, sent.deduplication_id) == ("g1", "d1")
    assert (sent.manifest, sent.serializer_id) == (first.manifest, first.serializer_id)
    assert database.rows() == 0


def test_a_rolled_back_publish_is_never_sent(database: Database) -> None:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("orders")
    outbox = _ready(database)
    conn = database.connect()

    def publish_then_fail() -> None:
        with conn:
            outbox.publish(conn, "orders", {"n": 1})
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        publish_then_fail()
    with _relay(database, backend) as relay:
        assert relay.drain() == 0
    assert backend.peek("orders") == []


def test_topic_messages_fan_out_and_an_undeclared_topic_is_created(database: Database) -> None:
    backend = InMemoryMessagingBackend()
    events = backend.declare_topic("events")
    backend.declare_queue("audit", events)
    backend.declare_queue("billing", events)
    outbox = _ready(database)
    with database.connect() as conn:
        outbox.publish_to_topic(conn, "events", {"n": 1})
        outbox.publish_to_topic(conn, "nobody-listens-yet", {"n": 2})
    with _relay(database, backend) as relay:
        assert relay.drain() == 2
    assert _bodies(backend, "audit") == _bodies(backend, "billing") == [{"n": 1}]
    assert backend.get_topic("nobody-listens-yet") is not None
    assert database.rows() == 0


def test_a_delay_is_passed_to_the_backend_when_the_row_is_sent(database: Database) -> None:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("later")
    outbox = _ready(database)
    with database.connect() as conn:
        outbox.publish(conn, "later", {"n": 1}, delay_seconds=0.5)
        outbox.publish(conn, "later", {"n": 2})
    with _relay(database, backend) as relay:
        assert relay.drain() == 2
    queue = backend.get_queue("later")
    assert [json.loads(m.content) for m in backend.retrieve_messages(queue)] == [{"n": 2}]
    time.sleep(0.7)
    assert [json.loads(m.content) for m in backend.retrieve_messages(queue)] == [{"n": 1}]


def test_kept_sent_rows_are_marked_then_pruned(database: Database) -> None:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("orders")
    outbox = _ready(database)
    clock = FakeClock()
    with database.connect() as conn:
        outbox.publish(conn, "orders", {"n": 1})
    with _relay(database, backend, keep_sent=60, clock=clock) as relay:
        assert relay.drain() == 1
        assert relay.drain() == 0  # a sent row is not sent again
        assert database.scalar("SELECT count(*) FROM {t} WHERE sent_at IS NOT NULL") == 1
        clock.now += 61
        assert relay._store.prune() == 1
    assert database.rows() == 0
    assert len(backend.peek("orders")) == 1


def test_a_refused_row_backs_off_and_holds_back_its_group_but_not_others(
    database: Database,
) -> None:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("orders")
    outbox = _ready(database)
    clock = FakeClock()
    with database.connect() as conn:
        outbox.publish(conn, "missing", {"n": 1}, "g")  # the queue does not exist yet
        outbox.publish(conn, "orders", {"n": 2}, "g")
        outbox.publish(conn, "orders", {"n": 3}, "other")
    relay = _relay(database, backend, retry_delay=30, clock=clock)
    with relay:
        assert relay.drain() == 1
        assert _bodies(backend, "orders") == [{"n": 3}]
        assert database.scalar("SELECT attempts FROM {t} WHERE destination = 'missing'") == 1
        assert "missing" in database.scalar("SELECT last_error FROM {t} WHERE attempts = 1")
        clock.now += 10
        assert relay.drain() == 0  # still backing off: its group waits behind it
        backend.declare_queue("missing")
        clock.now += 30
        assert relay.drain() == 2
    assert _bodies(backend, "missing") == [{"n": 1}]
    assert _bodies(backend, "orders") == [{"n": 3}, {"n": 2}]
    assert database.rows() == 0


class RefusingBackend(InMemoryMessagingBackend):
    """Refuses the message whose body is in ``refuse`` from batch publishes."""

    def __init__(self, refuse: set[str]) -> None:
        super().__init__()
        self.refuse = refuse

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        refused = {i: "too large" for i, m in enumerate(messages) if m.content in self.refuse}
        super().publish_batch_to_queue(
            [m for m in messages if m.content not in self.refuse], queue, **kwargs
        )
        if refused:
            raise BatchPublishError(refused)


def test_messages_of_a_partly_refused_batch_are_recorded_one_by_one(database: Database) -> None:
    backend = RefusingBackend({json.dumps({"n": 2})})
    backend.declare_queue("orders")
    outbox = _ready(database)
    with database.connect() as conn:
        for n in range(1, 5):
            outbox.publish(conn, "orders", {"n": n})
    with _relay(database, backend) as relay:
        assert relay.drain() == 3
        assert relay.stats.refused == 1
    assert _bodies(backend, "orders") == [{"n": 1}, {"n": 3}, {"n": 4}]
    assert database.rows() == 1
    assert database.scalar("SELECT last_error FROM {t}") == "too large"


def test_rows_taken_by_a_relay_that_died_are_sent_by_another(database: Database) -> None:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("orders")
    outbox = _ready(database)
    clock = FakeClock()
    with database.connect() as conn:
        for n in range(3):
            outbox.publish(conn, "orders", {"n": n})
    dead = _relay(database, backend, lease_seconds=5, clock=clock)
    dead._store.setup()
    claim = dead._store.claim(10)
    assert len(claim.rows) == 3
    with _relay(database, backend, lease_seconds=5, clock=clock) as other:
        if database.dialect == "sqlite":
            assert other.drain() == 0  # the lease still stands
            clock.now += 6
        else:
            assert other.drain() == 0  # locked by the live transaction
        dead._store.close()  # PostgreSQL: the connection is gone, its locks with it
        sent, deadline = 0, time.monotonic() + 10
        while sent < 3 and time.monotonic() < deadline:  # the server notices the close
            sent += other.drain()
            time.sleep(0.01)
        assert sent == 3
    assert _bodies(backend, "orders") == [{"n": 0}, {"n": 1}, {"n": 2}]


class SlowBackend(InMemoryMessagingBackend):
    """Takes a few milliseconds per batch, as a broker's confirms do."""

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        time.sleep(0.005)
        super().publish_batch_to_queue(messages, queue, **kwargs)


def test_two_relays_at_once_send_everything_once_and_each_group_in_order(
    database: Database,
) -> None:
    backend = SlowBackend()
    backend.declare_queue("orders")
    outbox = _ready(database)
    groups = [f"g{i}" for i in range(8)]
    total = 400
    with database.connect() as conn:
        for n in range(total):
            outbox.publish(conn, "orders", {"n": n, "g": groups[n % 8]}, groups[n % 8])
    relays = [_relay(database, backend, batch_size=7).start() for _ in range(2)]
    deadline = time.monotonic() + 60
    while database.rows() and time.monotonic() < deadline:
        time.sleep(0.05)
    for relay in relays:
        relay.close()
    bodies = _bodies(backend, "orders")
    assert sorted(b["n"] for b in bodies) == list(range(total))
    for group in groups:
        ns = [b["n"] for b in bodies if b["g"] == group]
        assert ns == sorted(ns), f"group {group} out of order"
    assert all(r.stats.sent > 0 for r in relays), [r.stats for r in relays]
    assert database.rows() == 0


def test_started_relay_sends_what_commits_later_and_stops(database: Database) -> None:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("orders")
    outbox = _ready(database)
    relay = _relay(database, backend).start()
    try:
        with database.connect() as conn:
            outbox.publish(conn, "orders", {"n": 1})
        deadline = time.monotonic() + 10
        while not backend.peek("orders") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _bodies(backend, "orders") == [{"n": 1}]
    finally:
        relay.stop()
    assert relay._thread is not None and not relay._thread.is_alive()


def test_on_postgresql_a_commit_wakes_a_listening_relay_at_once(make_database: Any) -> None:
    database = make_database("postgresql")
    backend = InMemoryMessagingBackend()
    backend.declare_queue("orders")
    outbox = _ready(database)
    relay = _relay(database, backend, poll_interval=30).start()
    try:
        time.sleep(0.5)  # listening by now
        latencies = []
        for n in range(5):
            with database.connect() as conn:
                outbox.publish(conn, "orders", {"n": n})
            committed = time.monotonic()
            while len(backend.peek("orders")) <= n:
                assert time.monotonic() - committed < 5, "the notification did not wake it"
                time.sleep(0.001)
            latencies.append(time.monotonic() - committed)
        assert sorted(latencies)[2] < 1.0, latencies  # far below the 30 s poll
    finally:
        relay.stop()
        for conn in database.opened:
            conn.close()


def test_arun_relays_until_the_task_is_cancelled(database: Database) -> None:
    backend = InMemoryMessagingBackend()
    backend.declare_queue("orders")
    outbox = _ready(database)
    relay = _relay(database, backend)

    async def main() -> None:
        task = asyncio.create_task(relay.arun())
        with database.connect() as conn:
            outbox.publish(conn, "orders", {"n": 1})
        for _ in range(500):
            if backend.peek("orders"):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert _bodies(backend, "orders") == [{"n": 1}]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"keep_sent": -1}, "keep_sent"),
    ],
)
def test_bad_relay_settings_are_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Relay("/tmp/x.db", InMemoryMessagingBackend(), **options)


def test_a_private_in_memory_database_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="shared with the writers"):
        Relay(":memory:", InMemoryMessagingBackend())

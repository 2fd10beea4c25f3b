"""Behaviour of the SQLite backend beyond the shared conformance suite: durability, leases on
a fake clock, FIFO details, inspection helpers and clear errors for unusable files."""

from __future__ import annotations

import contextlib
import gc
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from melange.backends.sqlite import SCHEMA_VERSION, QueueStats, SQLiteBackend
from melange.consumers import Consumer
from melange.exceptions import (
    BackendError,
    ConfigurationError,
    MessageTooLargeError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.message_dispatcher import MessageDispatcher
from melange.models import FAILURE_QUEUE, FAILURE_REASON, Message
from melange.serializers.json import JsonSerializer
from melange.testing.conformance import make_message


class FakeClock:
    """A wall clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "melange.db"


@pytest.fixture
def backend(db: Path, clock: FakeClock) -> Iterator[SQLiteBackend]:
    backend = SQLiteBackend(db, clock=clock)
    yield backend
    backend.close_connection()


GROUPS_OF_THREE = ("x", "y", "z")


def fifo_message(content: str, group: str, dedup: str | None = None) -> Message:
    message = make_message(content, group=group)
    message.deduplication_id = dedup
    return message


# -- durability -------------------------------------------------------------------------------


def test_messages_and_topology_survive_reopening_the_file(db: Path) -> None:
    first = SQLiteBackend(db)
    topic = first.declare_topic("events")
    queue, _ = first.declare_queue("orders", topic, dead_letter_queue_name="orders-dlq")
    sent = make_message('{"id": 1}')
    sent.headers["causation_id"] = "c-9"
    first.publish_to_topic(sent, topic)
    first.close_connection()

    second = SQLiteBackend(db)
    assert second.queue_names() == ["orders", "orders-dlq"]
    assert second.subscriptions("events") == {"orders": None}
    [got] = second.retrieve_messages(second.get_queue("orders"))
    assert (got.message_id, got.content, got.manifest, got.serializer_id) == (
        sent.message_id,
        '{"id": 1}',
        "json",
        1,
    )
    assert got.headers == sent.headers
    second.acknowledge(got)
    assert second.queue_stats(queue.name).total == 0
    second.close_connection()


def test_unsettled_message_of_a_closed_backend_is_redelivered_after_its_lease(
    db: Path, clock: FakeClock
) -> None:
    first = SQLiteBackend(db, clock=clock)
    queue, _ = first.declare_queue("jobs", visibility_timeout=10)
    first.publish_to_queue(make_message('"job"'), queue)
    [taken] = first.retrieve_messages(queue)
    first.close_connection()  # as if the process died holding it

    second = SQLiteBackend(db, clock=clock)
    assert second.retrieve_messages(queue) == []
    clock.advance(10.5)
    [again] = second.retrieve_messages(queue)
    assert again.message_id == taken.message_id
    assert again.attempt == 1  # a crash is not a failed attempt
    second.close_connection()


def test_a_relative_path_keeps_naming_the_same_file_after_a_change_of_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    backend = SQLiteBackend("relative.db")
    queue, _ = backend.declare_queue("q")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with backend._db.read():  # holds the only open connection: the publish opens another
        backend.publish_to_queue(make_message('"x"'), queue)
    assert backend.queue_depth("q") == 1
    assert not (elsewhere / "relative.db").exists()
    backend.close_connection()


def test_database_runs_in_wal_mode_with_the_chosen_synchronous_setting(db: Path) -> None:
    backend = SQLiteBackend(db, synchronous="full")
    with backend._db.read() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    backend.close_connection()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM melange_meta WHERE key='schema_version'").fetchone()


# -- leases on a fake clock -------------------------------------------------------------------


def test_attempt_counts_failed_attempts_and_the_receive_limit_counts_deliveries(
    backend: SQLiteBackend, clock: FakeClock
) -> None:
    queue, _ = backend.declare_queue(
        "q", visibility_timeout=5, dead_letter_queue_name="q-dlq", max_receive_count=4
    )
    backend.publish_to_queue(make_message('"x"'), queue)
    attempts = []
    # Lease expiry, release and nack each deliver it again; only the nack is an attempt.
    for settle in ("expire", "release", "nack"):
        [got] = backend.retrieve_messages(queue)
        attempts.append(got.attempt)
        if settle == "release":
            backend.release(got)
        elif settle == "nack":
            backend.nack(got)
        else:
            assert backend.retrieve_messages(queue) == []
            clock.advance(5.01)
    [got] = backend.retrieve_messages(queue)
    attempts.append(got.attempt)
    assert attempts == [1, 1, 1, 2]
    # Every delivery counts towards the max_receive_count backstop: the 5th goes to the DLQ.
    clock.advance(5.01)
    assert backend.retrieve_messages(queue) == []
    [dead] = backend.retrieve_messages(backend.get_queue("q-dlq"))
    assert dead.message_id == got.message_id


def test_late_acknowledgement_does_not_delete_a_redelivered_message(
    backend: SQLiteBackend, clock: FakeClock
) -> None:
    queue, _ = backend.declare_queue("q", visibility_timeout=5)
    backend.publish_to_queue(make_message('"x"'), queue)
    [stale] = backend.retrieve_messages(queue)
    clock.advance(6)
    [current] = backend.retrieve_messages(queue)
    backend.acknowledge(stale)  # too late: another delivery owns it now
    assert backend.queue_stats("q") == QueueStats("q", ready=0, in_flight=1, delayed=0)
    backend.nack(stale)  # as late, and as harmless
    backend.acknowledge(current)
    assert backend.queue_stats("q").total == 0


def test_batch_acknowledgement_deletes_exactly_the_deliveries_it_still_holds(
    backend: SQLiteBackend, clock: FakeClock
) -> None:
    queue, _ = backend.declare_queue("q", visibility_timeout=5)
    for index in range(6):
        backend.publish_to_queue(make_message(f'"m{index}"'), queue)
    # Three receives: the first one's lease runs out and its messages are delivered again.
    stale = backend.retrieve_messages(queue, max_messages=2)
    clock.advance(6)
    first = backend.retrieve_messages(queue, max_messages=3)
    second = backend.retrieve_messages(queue, max_messages=10)
    assert {m.message_id for m in stale} <= {m.message_id for m in first + second}
    assert len(first) + len(second) == 6
    # One batch across deliveries, in no particular order: the stale receipts delete
    # nothing, the current ones what they hold.
    kept = second[-1]
    backend.acknowledge_batch([*reversed(second[:-1]), *stale, *first])
    assert backend.queue_stats("q") == QueueStats("q", ready=0, in_flight=1, delayed=0)
    assert [m.content for m in backend.peek("q")] == [kept.content]
    backend.acknowledge_batch([kept, kept])
    assert backend.queue_stats("q").total == 0


def test_extend_visibility_pushes_the_lease_back(backend: SQLiteBackend, clock: FakeClock) -> None:
    queue, _ = backend.declare_queue("q", visibility_timeout=5)
    backend.publish_to_queue(make_message('"x"'), queue)
    [got] = backend.retrieve_messages(queue)
    clock.advance(4)
    backend.extend_visibility(got, 10)
    clock.advance(9)
    assert backend.retrieve_messages(queue) == []
    clock.advance(2)
    assert [m.message_id for m in backend.retrieve_messages(queue)] == [got.message_id]


def test_broker_dead_letters_after_max_receive_count_with_a_reason(
    backend: SQLiteBackend, clock: FakeClock
) -> None:
    queue, dlq = backend.declare_queue(
        "q", dead_letter_queue_name="q-dlq", visibility_timeout=1, max_receive_count=2
    )
    assert dlq is not None
    backend.publish_to_queue(make_message('"poison"'), queue)
    for _ in range(2):
        assert len(backend.retrieve_messages(queue)) == 1
        clock.advance(1.5)  # the consumer never settles it
    assert backend.retrieve_messages(queue) == []
    [dead] = backend.retrieve_messages(dlq)
    assert dead.content == '"poison"'
    assert dead.attempt == 1
    assert dead.headers[FAILURE_REASON] == "max receive count exceeded"
    assert dead.headers[FAILURE_QUEUE] == "q"
    assert dead.headers["correlation_id"] == "corr-1"


def test_queue_delay_holds_every_new_message_back(backend: SQLiteBackend, clock: FakeClock) -> None:
    queue, _ = backend.declare_queue("q", delay_seconds=30)
    backend.publish_to_queue(make_message('"later"'), queue)
    assert backend.queue_stats("q") == QueueStats("q", ready=0, in_flight=0, delayed=1)
    assert backend.retrieve_messages(queue) == []
    clock.advance(30)
    assert len(backend.retrieve_messages(queue)) == 1


def test_a_delay_declared_through_another_instance_applies_to_the_next_publish(
    db: Path, clock: FakeClock
) -> None:
    publisher = SQLiteBackend(db, clock=clock)
    admin = SQLiteBackend(db, clock=clock)
    try:
        queue, _ = publisher.declare_queue("q")
        publisher.publish_to_queue(make_message('"now"'), queue)
        admin.declare_queue("q", delay_seconds=30)
        publisher.publish_to_queue(make_message('"later"'), queue)
        assert publisher.queue_stats("q") == QueueStats("q", ready=1, in_flight=0, delayed=1)
        admin.declare_queue("q", delay_seconds=0)
        publisher.publish_to_queue(make_message('"now again"'), queue)
        got = publisher.retrieve_messages(queue)
        assert [m.content for m in got] == ['"now"', '"now again"']
    finally:
        publisher.close_connection()
        admin.close_connection()


def test_publishing_to_a_queue_deleted_through_another_instance_raises_queue_not_found(
    db: Path,
) -> None:
    publisher = SQLiteBackend(db)
    admin = SQLiteBackend(db)
    try:
        queue, _ = publisher.declare_queue("q")
        publisher.publish_to_queue(make_message('"kept"'), queue)
        admin.delete_queue(admin.get_queue("q"))
        with pytest.raises(QueueNotFoundError, match="'q'"):
            publisher.publish_to_queue(make_message('"lost"'), queue)
        assert admin.queue_names() == []
    finally:
        publisher.close_connection()
        admin.close_connection()


def test_a_queue_recreated_as_fifo_elsewhere_refuses_a_publish_without_group(db: Path) -> None:
    publisher = SQLiteBackend(db)
    admin = SQLiteBackend(db)
    try:
        queue, _ = publisher.declare_queue("q")
        admin.delete_queue(admin.get_queue("q"))
        admin.declare_queue("q", fifo=True)
        with pytest.raises(ConfigurationError, match="message_group_id"):
            publisher.publish_to_queue(make_message('"no group"'), queue)
        assert admin.queue_stats("q").total == 0
    finally:
        publisher.close_connection()
        admin.close_connection()


def test_a_receive_dead_letters_exhausted_messages_and_delivers_the_rest(
    backend: SQLiteBackend, clock: FakeClock
) -> None:
    queue, dlq = backend.declare_queue(
        "q", dead_letter_queue_name="q-dlq", visibility_timeout=1, max_receive_count=1
    )
    assert dlq is not None
    backend.publish_to_queue(make_message('"first"'), queue)
    [first] = backend.retrieve_messages(queue)
    clock.advance(1.5)  # never settled: its one delivery is used up
    backend.publish_batch_to_queue([make_message('"second"'), make_message('"third"')], queue)
    got = backend.retrieve_messages(queue, max_messages=10)
    assert [(m.content, m.attempt) for m in got] == [('"second"', 1), ('"third"', 1)]
    [dead] = backend.retrieve_messages(dlq)
    assert (dead.content, dead.message_id) == ('"first"', first.message_id)
    assert dead.headers[FAILURE_REASON] == "max receive count exceeded"
    assert backend.queue_stats("q") == QueueStats("q", ready=0, in_flight=2, delayed=0)


def test_a_batch_is_handed_out_in_publish_order(backend: SQLiteBackend) -> None:
    queue, _ = backend.declare_queue("q")
    for index in range(25):
        backend.publish_to_queue(make_message(f'"{index}"'), queue)
    got = backend.retrieve_messages(queue, max_messages=25)
    assert [m.content for m in got] == [f'"{index}"' for index in range(25)]
    assert {m.attempt for m in got} == {1}


@contextlib.contextmanager
def write_lock_held_elsewhere(db: Path, seconds: float) -> Iterator[threading.Event]:
    """Hold the database's write lock from another connection for ``seconds``; the yielded
    event is set once the lock is taken."""
    taken = threading.Event()

    def hold() -> None:
        other = sqlite3.connect(db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            taken.set()
            time.sleep(seconds)  # the point is to keep the lock for this long
            other.execute("COMMIT")
        finally:
            other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert taken.wait(10)
        yield taken
    finally:
        thread.join(10)


def test_single_publish_and_acknowledgement_wait_for_another_writer(db: Path) -> None:
    backend = SQLiteBackend(db, busy_timeout=10)
    try:
        queue, _ = backend.declare_queue("q")
        backend.publish_to_queue(make_message('"first"'), queue)
        [first] = backend.retrieve_messages(queue)
        with write_lock_held_elsewhere(db, 0.3):
            started = time.monotonic()
            backend.publish_to_queue(make_message('"second"'), queue)
            backend.acknowledge(first)
            assert time.monotonic() - started >= 0.2
        assert [m.content for m in backend.peek("q")] == ['"second"']
    finally:
        backend.close_connection()


def test_single_publish_past_busy_timeout_fails_naming_it(db: Path) -> None:
    backend = SQLiteBackend(db, busy_timeout=0.1)
    try:
        queue, _ = backend.declare_queue("q")
        with (
            write_lock_held_elsewhere(db, 1.0),
            pytest.raises(BackendError, match=r"busy_timeout=0\.1"),
        ):
            backend.publish_to_queue(make_message('"blocked"'), queue)
        assert backend.queue_stats("q").total == 0
    finally:
        backend.close_connection()


def test_nack_with_delay_counts_as_delayed_until_due(
    backend: SQLiteBackend, clock: FakeClock
) -> None:
    queue, _ = backend.declare_queue("q")
    backend.publish_to_queue(make_message('"x"'), queue)
    [got] = backend.retrieve_messages(queue)
    backend.nack(got, delay=60)
    assert backend.queue_stats("q") == QueueStats("q", ready=0, in_flight=0, delayed=1)
    clock.advance(60)
    assert backend.queue_stats("q").ready == 1


# -- FIFO -------------------------------------------------------------------------------------


def test_fifo_deduplication_id_drops_repeats_within_five_minutes(
    backend: SQLiteBackend, clock: FakeClock
) -> None:
    queue, _ = backend.declare_queue("orders.fifo")
    backend.publish_to_queue(fifo_message("1", "g", dedup="order-1"), queue)
    clock.advance(200)
    backend.publish_batch_to_queue(
        [fifo_message("1 again", "g", dedup="order-1"), fifo_message("2", "g", dedup="order-2")],
        queue,
    )
    assert [m.content for m in backend.peek("orders.fifo")] == ["1", "2"]
    clock.advance(301)
    backend.publish_to_queue(fifo_message("1 much later", "g", dedup="order-1"), queue)
    assert backend.queue_stats("orders.fifo").total == 3


def test_fifo_receive_of_a_huge_batch_keeps_group_order(backend: SQLiteBackend) -> None:
    queue, _ = backend.declare_queue("bulk.fifo")
    backend.publish_batch_to_queue(
        [fifo_message(str(i), GROUPS_OF_THREE[i % 3]) for i in range(2_000)], queue
    )
    got = backend.retrieve_messages(queue, max_messages=5_000)
    assert len(got) == 2_000
    for group in GROUPS_OF_THREE:
        numbers = [int(m.content) for m in got if m.group_id == group]
        assert numbers == sorted(numbers)


def test_fifo_batch_without_group_id_is_refused_whole(backend: SQLiteBackend) -> None:
    queue, _ = backend.declare_queue("orders.fifo")
    batch = [fifo_message("ok", "g"), make_message("no group")]
    with pytest.raises(ConfigurationError, match="message_group_id"):
        backend.publish_batch_to_queue(batch, queue)
    assert backend.queue_stats("orders.fifo").total == 0


def test_topic_batch_is_all_or_nothing_across_subscribed_queues(backend: SQLiteBackend) -> None:
    topic = backend.declare_topic("events")
    backend.declare_queue("plain", topic)
    backend.declare_queue("ordered.fifo", topic)
    with pytest.raises(ConfigurationError, match=r"ordered\.fifo"):
        backend.publish_batch_to_topic([make_message("1"), make_message("2")], topic)
    assert backend.queue_stats("plain").total == 0


def test_fifo_nack_with_delay_keeps_the_group_blocked(
    backend: SQLiteBackend, clock: FakeClock
) -> None:
    queue, _ = backend.declare_queue("q.fifo")
    backend.publish_batch_to_queue(
        [fifo_message("a1", "a"), fifo_message("a2", "a"), fifo_message("b1", "b")], queue
    )
    [head] = backend.retrieve_messages(queue, max_messages=1)
    assert head.content == "a1"
    backend.nack(head, delay=10)
    # Group a waits for its head; group b is free.
    assert [m.content for m in backend.retrieve_messages(queue)] == ["b1"]
    clock.advance(10)
    assert [m.content for m in backend.retrieve_messages(queue)] == ["a1", "a2"]


def test_dead_lettering_the_head_of_a_fifo_group_releases_the_group(
    backend: SQLiteBackend,
) -> None:
    queue, dlq = backend.declare_queue("q.fifo", dead_letter_queue_name="q-dlq.fifo")
    assert dlq is not None
    backend.publish_batch_to_queue([fifo_message("1", "g"), fifo_message("2", "g")], queue)
    [head] = backend.retrieve_messages(queue, max_messages=1)
    assert backend.dead_letter(head, {FAILURE_REASON: "bad"}) is True
    [nxt] = backend.retrieve_messages(queue)
    assert nxt.content == "2"
    [dead] = backend.retrieve_messages(dlq)
    assert (dead.content, dead.group_id, dead.headers[FAILURE_REASON]) == ("1", "g", "bad")


# -- inspection -------------------------------------------------------------------------------


def test_stats_peek_and_purge_inspect_without_receiving(backend: SQLiteBackend) -> None:
    queue, _ = backend.declare_queue("q")
    backend.publish_batch_to_queue([make_message(str(i)) for i in range(5)], queue)
    backend.retrieve_messages(queue, max_messages=2)
    assert backend.queue_stats("q") == QueueStats("q", ready=3, in_flight=2, delayed=0)
    assert [m.content for m in backend.peek("q", limit=4)] == ["0", "1", "2", "3"]
    # Peeked copies tell their failed attempts: none yet.
    assert [m.attempt for m in backend.peek("q", limit=3)] == [None, None, None]
    assert backend.queue_stats("q").ready == 3  # peeking received nothing
    assert backend.purge("q") == 5
    assert backend.queue_stats("q").total == 0
    assert backend.queue_depth("q") == 0


def test_inspecting_a_missing_queue_raises_queue_not_found(backend: SQLiteBackend) -> None:
    for inspect in (backend.queue_stats, backend.peek, backend.purge):
        with pytest.raises(QueueNotFoundError, match="nope"):
            inspect("nope")
    with pytest.raises(TopicNotFoundError, match="nope"):
        backend.subscriptions("nope")


def test_names_and_subscriptions_list_the_topology(backend: SQLiteBackend) -> None:
    topic = backend.declare_topic("events")
    backend.declare_queue("b", topic, filter_events=["Created", "Deleted"])
    backend.declare_queue("a", topic)
    assert backend.queue_names() == ["a", "b"]
    assert backend.topic_names() == ["events"]
    assert backend.subscriptions("events") == {"a": None, "b": ["Created", "Deleted"]}
    backend.delete_queue(backend.get_queue("b"))
    assert backend.subscriptions("events") == {"a": None}
    backend.delete_topic(topic)
    assert backend.topic_names() == []


# -- waiting ----------------------------------------------------------------------------------


def test_publish_in_the_same_process_wakes_a_waiting_receiver(db: Path) -> None:
    # A poll interval far longer than the test: only the in-process wake-up can deliver.
    backend = SQLiteBackend(db, poll_interval=60)
    queue, _ = backend.declare_queue("q")
    result: list[list[Message]] = []
    receiver = threading.Thread(
        target=lambda: result.append(backend.retrieve_messages(queue, wait_seconds=30))
    )
    receiver.start()
    time.sleep(0.2)  # let it start waiting; the test holds either way
    started = time.monotonic()
    backend.publish_to_queue(make_message('"wake"'), queue)
    receiver.join(timeout=20)
    assert [m.content for m in result[0]] == ['"wake"']
    assert time.monotonic() - started < 10
    backend.close_connection()


def test_publish_through_another_instance_on_the_same_file_wakes_a_receiver(db: Path) -> None:
    receiving = SQLiteBackend(db, poll_interval=60)
    publishing = SQLiteBackend(db, poll_interval=60)
    queue, _ = receiving.declare_queue("q")
    result: list[list[Message]] = []
    receiver = threading.Thread(
        target=lambda: result.append(receiving.retrieve_messages(queue, wait_seconds=30))
    )
    receiver.start()
    time.sleep(0.2)
    started = time.monotonic()
    publishing.publish_to_queue(make_message('"wake"'), queue)
    receiver.join(timeout=20)
    assert [m.content for m in result[0]] == ['"wake"']
    assert time.monotonic() - started < 10
    publishing.close_connection()
    receiving.close_connection()


def test_interrupt_ends_a_waiting_receive_with_nothing(db: Path) -> None:
    backend = SQLiteBackend(db, poll_interval=60)
    queue, _ = backend.declare_queue("q")
    result: list[list[Message]] = []
    receiver = threading.Thread(
        target=lambda: result.append(backend.retrieve_messages(queue, wait_seconds=30))
    )
    started = time.monotonic()
    receiver.start()
    time.sleep(0.2)
    backend.interrupt()
    receiver.join(timeout=20)
    assert result == [[]]
    assert time.monotonic() - started < 10
    backend.close_connection()


def test_dispatcher_heartbeat_keeps_a_slow_message_from_other_consumers(db: Path) -> None:
    backend = SQLiteBackend(db, visibility_timeout=1)
    queue, _ = backend.declare_queue("slow")
    backend.publish_to_queue(Message.create('{"n": 1}', "json", 1), queue)
    other = SQLiteBackend(db)
    stolen: list[Message] = []
    handled = threading.Event()

    def handle(_: object) -> None:
        # While the handler runs for 2.5 leases, another consumer keeps trying to take it.
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            stolen.extend(other.retrieve_messages(other.get_queue("slow"), wait_seconds=0.2))
        handled.set()

    dispatcher = MessageDispatcher(
        JsonSerializer(), backend=backend, consumers=[Consumer(on_message=handle)]
    )
    dispatcher.consume_event("slow")
    assert handled.is_set()
    assert stolen == []
    assert dispatcher.stats.acknowledged == 1
    assert backend.queue_stats("slow").total == 0
    other.close_connection()
    backend.close_connection()


# -- bad input and unusable files -------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_refused_by_path(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not the bytes of a database " * 100)
    with pytest.raises(ConfigurationError, match=r"notes\.txt.*not an SQLite database"):
        SQLiteBackend(path)


def test_another_applications_database_is_refused_by_path(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
        conn.commit()
    with pytest.raises(ConfigurationError, match=r"app\.db.*not a Melange one.*users"):
        SQLiteBackend(path)


def test_a_newer_schema_version_is_refused(db: Path) -> None:
    SQLiteBackend(db).close_connection()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE melange_meta SET value = '99' WHERE key = 'schema_version'")
        conn.commit()
    with pytest.raises(ConfigurationError, match="schema version 99"):
        SQLiteBackend(db)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` unwritable, even for root (who ignores permission bits)."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"running as root without chattr +i: cannot make {path} read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_file_is_refused_by_path(db: Path) -> None:
    SQLiteBackend(db).close_connection()
    with read_only(db), pytest.raises(ConfigurationError, match=r"melange\.db.* is read-only"):
        SQLiteBackend(db)


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        SQLiteBackend(tmp_path / "absent" / "melange.db")


def test_bad_settings_are_refused_with_what_is_allowed(db: Path) -> None:
    with pytest.raises(ConfigurationError, match="NORMAL"):
        SQLiteBackend(db, synchronous="sometimes")
    with pytest.raises(ConfigurationError, match="visibility_timeout"):
        SQLiteBackend(db, visibility_timeout=0)
    backend = SQLiteBackend(db)
    with pytest.raises(ConfigurationError, match="visibility_timout"):
        backend.declare_queue("q", visibility_timout=5)
    with pytest.raises(ConfigurationError, match="max_receive_count"):
        backend.declare_queue("q", max_receive_count=0)
    with pytest.raises(ConfigurationError, match="list of manifests"):
        backend.declare_queue("q", filter_events="Created")
    backend.declare_queue("standard")
    with pytest.raises(ConfigurationError, match="already exists as a standard queue"):
        backend.declare_queue("standard", fifo=True)
    backend.close_connection()


def test_oversized_message_is_refused(db: Path) -> None:
    backend = SQLiteBackend(db, max_message_size=10)
    queue, _ = backend.declare_queue("q")
    with pytest.raises(MessageTooLargeError, match="10-byte limit"):
        backend.publish_to_queue(make_message("x" * 11), queue)
    assert backend.queue_stats("q").total == 0
    backend.close_connection()


def test_a_closed_backend_refuses_work(db: Path) -> None:
    backend = SQLiteBackend(db)
    backend.close_connection()
    backend.close_connection()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        backend.get_queue("q")


def test_settling_a_message_from_elsewhere_is_refused(backend: SQLiteBackend) -> None:
    with pytest.raises(ValueError, match="not received from an SQLite backend"):
        backend.acknowledge(make_message("x"))


def downgrade_to_version_2(db: Path) -> None:
    """Turn a database of the current schema into one of schema version 2 (no queue depths)."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DROP TRIGGER messages_counted")
        conn.execute("DROP TRIGGER messages_uncounted")
        conn.execute("ALTER TABLE queues DROP COLUMN depth")
        conn.execute("UPDATE melange_meta SET value = '2' WHERE key = 'schema_version'")


def test_a_version_1_database_is_migrated_keeping_each_message_attempts(
    db: Path, clock: FakeClock
) -> None:
    first = SQLiteBackend(db, clock=clock)
    queue, _ = first.declare_queue("jobs")
    first.publish_to_queue(make_message('"waiting"'), queue)
    first.close_connection()
    # Version 1: no attempts column; every delivery counted as an attempt.
    downgrade_to_version_2(db)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("ALTER TABLE messages DROP COLUMN attempts")
        conn.execute("UPDATE messages SET receive_count = 2")
        conn.execute("UPDATE melange_meta SET value = '1' WHERE key = 'schema_version'")
    migrated = SQLiteBackend(db, clock=clock)
    [got] = migrated.retrieve_messages(queue)
    assert got.attempt == 3  # two failed deliveries before, this is the third attempt
    migrated.nack(got)
    [again] = migrated.retrieve_messages(queue)
    assert again.attempt == 4
    assert migrated.queue_stats("jobs").total == 1
    migrated.close_connection()
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        [(version,)] = conn.execute(
            "SELECT value FROM melange_meta WHERE key = 'schema_version'"
        ).fetchall()
    assert version == str(SCHEMA_VERSION)


def test_a_publish_wakes_only_the_receivers_of_its_queue(db: Path) -> None:
    backend = SQLiteBackend(db, poll_interval=60)
    try:
        a, _ = backend.declare_queue("a")
        b, _ = backend.declare_queue("b")
        receives: list[str] = []
        original = backend._receive

        def counting(name: str, max_messages: int) -> Any:
            receives.append(name)
            return original(name, max_messages)

        backend._receive = counting  # type: ignore[method-assign]
        got: list[Message] = []
        waiter = threading.Thread(
            target=lambda: got.extend(backend.retrieve_messages(b, wait_seconds=30))
        )
        waiter.start()
        doorbell = backend._db.doorbell
        deadline = time.monotonic() + 10
        while "b" not in doorbell._conditions or not doorbell._conditions["b"]._waiters:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline
            time.sleep(0.001)
        for index in range(20):
            backend.publish_to_queue(make_message(f'"a{index}"'), a)
        backend.publish_to_queue(make_message('"b"'), b)
        waiter.join(10)
        assert [m.content for m in got] == ['"b"']
        assert receives == ["b", "b"]  # the first look, and the one after b's publish
    finally:
        backend.close_connection()


def test_queue_stats_follow_publishes_settles_and_dead_letters(
    backend: SQLiteBackend, clock: FakeClock
) -> None:
    queue, _ = backend.declare_queue("jobs", dead_letter_queue_name="jobs-dlq", max_receive_count=2)
    topic = backend.declare_topic("events")
    backend.declare_queue("jobs", topic)
    backend.publish_batch_to_queue([make_message(f'"{i}"') for i in range(5)], queue)
    backend.publish_to_topic(make_message('"t"'), topic)
    assert backend.queue_stats("jobs") == QueueStats("jobs", 6, 0, 0)
    first, second, third = backend.retrieve_messages(queue, max_messages=3)
    assert backend.queue_stats("jobs") == QueueStats("jobs", 3, 3, 0)
    backend.acknowledge(first)
    backend.nack(second, delay=10)
    assert backend.dead_letter(third, {FAILURE_REASON: "boom"})
    assert backend.queue_stats("jobs") == QueueStats("jobs", 3, 0, 1)
    assert backend.queue_stats("jobs-dlq") == QueueStats("jobs-dlq", 1, 0, 0)
    # Leases running out make messages ready again; the broker dead-letters the third delivery.
    rest = backend.retrieve_messages(queue, max_messages=10)
    assert len(rest) == 3
    clock.now += 60
    assert backend.queue_stats("jobs") == QueueStats("jobs", 4, 0, 0)
    again = backend.retrieve_messages(queue, max_messages=10)
    clock.now += 60
    assert len(again) == 4
    assert backend.retrieve_messages(queue, max_messages=10) == []
    assert backend.queue_stats("jobs") == QueueStats("jobs", 0, 0, 0)
    assert backend.queue_stats("jobs-dlq").total == 5
    assert backend.purge("jobs-dlq") == 5
    assert backend.queue_stats("jobs-dlq") == QueueStats("jobs-dlq", 0, 0, 0)
    backend.publish_to_queue(make_message('"x"'), queue)
    backend.delete_queue(queue)
    queue, _ = backend.declare_queue("jobs")
    assert backend.queue_stats("jobs") == QueueStats("jobs", 0, 0, 0)


def test_a_version_2_database_is_migrated_with_its_queue_depths(db: Path, clock: FakeClock) -> None:
    first = SQLiteBackend(db, clock=clock)
    jobs, _ = first.declare_queue("jobs")
    first.declare_queue("empty")
    first.publish_batch_to_queue([make_message(f'"{i}"') for i in range(7)], jobs)
    [held] = first.retrieve_messages(jobs, max_messages=1)
    first.close_connection()
    downgrade_to_version_2(db)
    migrated = SQLiteBackend(db, clock=clock)
    try:
        assert migrated.queue_stats("jobs") == QueueStats("jobs", 6, 1, 0)
        assert migrated.queue_stats("empty") == QueueStats("empty", 0, 0, 0)
        migrated.acknowledge(held)
        migrated.publish_to_queue(make_message('"new"'), jobs)
        assert migrated.queue_stats("jobs") == QueueStats("jobs", 7, 0, 0)
    finally:
        migrated.close_connection()
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        [(version,)] = conn.execute(
            "SELECT value FROM melange_meta WHERE key = 'schema_version'"
        ).fetchall()
    assert version == "3"


def test_a_queue_running_dry_after_deliveries_gives_freed_memory_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import melange.backends.sqlite.backend as sqlite_backend
    from melange.backends import heap

    calls: list[str] = []
    monkeypatch.setattr(sqlite_backend, "return_freed_memory_when_idle", lambda: calls.append("x"))
    backend = SQLiteBackend(str(tmp_path / "dry.db"))
    queue, _ = backend.declare_queue("jobs")
    assert not backend.retrieve_messages(queue)  # never delivered: nothing to give back
    messages = [Message.create(f'{{"n": {i}}}', "json", 1) for i in range(3)]
    backend.publish_batch_to_queue(messages, queue)
    backend.acknowledge_batch(backend.retrieve_messages(queue, max_messages=10))
    assert not calls
    assert not backend.retrieve_messages(queue)
    assert not backend.retrieve_messages(queue)
    assert calls == ["x"]  # once, when it ran dry
    backend.close_connection()
    # The process-wide call is spaced out, whoever calls it.
    monkeypatch.setattr(heap, "_last_idle_return", None)
    assert heap.return_freed_memory_when_idle(now=1000.0) == heap.return_freed_memory()
    assert not heap.return_freed_memory_when_idle(now=1000.0 + heap.IDLE_RETURN_INTERVAL - 1)
    assert heap.return_freed_memory_when_idle(now=1000.0 + heap.IDLE_RETURN_INTERVAL) in (
        True,
        False,
    )
    assert heap._last_idle_return == 1000.0 + heap.IDLE_RETURN_INTERVAL


def _connections_of_a_dropped_backend(path: str) -> list[sqlite3.Connection]:
    """Open a backend, use it from this thread and from another one (which opens an inline
    connection of its own), and drop it without closing it; its connections."""
    backend = SQLiteBackend(path)
    backend.declare_queue("orders")
    backend.publish_to_queue(make_message('"one"'), backend.get_queue("orders"))
    worker = threading.Thread(
        target=lambda: backend.run_inline(lambda: backend.queue_depth("orders"))
    )
    worker.start()
    worker.join()
    return [*backend._db._free, *backend._db._inline_conns]


@pytest.mark.parametrize("in_memory", [False, True])
def test_a_backend_dropped_without_closing_closes_its_connections(
    db: Path, in_memory: bool
) -> None:
    # Left to the garbage collector, each connection would warn (ResourceWarning, Python
    # 3.13) and close in no particular order.
    connections = _connections_of_a_dropped_backend(":memory:" if in_memory else str(db))
    assert connections
    gc.collect()
    for conn in connections:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")

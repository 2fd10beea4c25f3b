"""A damaged SQLite database: a row that is not a readable message is quarantined (moved to the
dead-letter queue with the reason, or delivered with what was stored) and never blocks the
messages behind it; opening a database in use takes no write lock; a path holding ``=`` is an
SQLite file."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from melange import Consumer, FailurePolicy, Message, MessageDispatcher
from melange.backends.factory import MessagingBackendFactory
from melange.backends.sqlite import SQLiteBackend
from melange.deduplication.sql_cache import SQLDeduplicationCache
from melange.models import FAILURE_QUEUE, FAILURE_REASON
from melange.serializers.json import JsonSerializer

#: The header a row's unreadable headers are delivered in.
CORRUPT_HEADERS_HEADER = "melange_corrupt_headers"


def _publish(backend: SQLiteBackend, queue: str, *numbers: int) -> list[Message]:
    messages = [Message.create(f'{{"n": {n}}}', "json", 1) for n in numbers]
    for message in messages:
        backend.publish_to_queue(message, backend.get_queue(queue))
    return messages


def _damage(path: Path, message_id: str, column: str, value: object) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(f"UPDATE messages SET {column} = ? WHERE message_id = ?", (value, message_id))


@pytest.mark.parametrize(
    ("column", "value"),
    [("headers", "{not json"), ("headers", "[1, 2]"), ("attempts", "many")],
)
def test_a_corrupt_row_is_dead_lettered_with_the_reason_and_the_queue_flows_on(
    tmp_path: Path, column: str, value: object
) -> None:
    path = tmp_path / "broker.db"
    backend = SQLiteBackend(path)
    MessagingBackendFactory(backend).init_queue("work", dead_letter_queue_name="work-dlq")
    _, bad, _ = _publish(backend, "work", 1, 2, 3)
    _damage(path, bad.message_id, column, value)
    received = backend.retrieve_messages(backend.get_queue("work"), max_messages=10)
    assert [m.content for m in received] == ['{"n": 1}', '{"n": 3}']
    backend.acknowledge_batch(received)
    [dead] = backend.retrieve_messages(backend.get_queue("work-dlq"), max_messages=10)
    assert dead.message_id == bad.message_id
    assert dead.content == '{"n": 2}'
    assert dead.headers[FAILURE_REASON].startswith("corrupt row: its ")
    assert dead.headers[FAILURE_QUEUE] == "work"
    assert backend.queue_depth("work") == 0
    backend.close_connection()


def test_a_corrupt_row_without_a_dead_letter_queue_is_delivered_with_what_was_stored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "broker.db"
    backend = SQLiteBackend(path)
    MessagingBackendFactory(backend).init_queue("work")
    _, bad, _ = _publish(backend, "work", 1, 2, 3)
    _damage(path, bad.message_id, "headers", "\x00garbage")
    received = backend.retrieve_messages(backend.get_queue("work"), max_messages=10)
    assert [m.content for m in received] == ['{"n": 1}', '{"n": 2}', '{"n": 3}']
    assert received[1].headers == {CORRUPT_HEADERS_HEADER: "\x00garbage"}
    backend.acknowledge_batch(received)
    assert backend.queue_depth("work") == 0
    backend.close_connection()


def test_a_dispatcher_dead_letters_a_message_whose_row_went_bad_while_in_flight(
    tmp_path: Path,
) -> None:
    path = tmp_path / "broker.db"
    backend = SQLiteBackend(path)
    MessagingBackendFactory(backend).init_queue("work", dead_letter_queue_name="work-dlq")
    [message] = _publish(backend, "work", 1)

    def fail(payload: object) -> None:
        # The row is damaged while its message is in hand: the move to the DLQ reads it.
        _damage(path, message.message_id, "headers", "{not json")
        raise ValueError("boom")

    dispatcher = MessageDispatcher(
        JsonSerializer(),
        backend=backend,
        consumers=[Consumer(fail)],
        failure_policy=FailurePolicy(max_attempts=1),
    )
    dispatcher.consume_event("work")
    assert dispatcher.stats.dead_lettered == 1
    [dead] = backend.retrieve_messages(backend.get_queue("work-dlq"))
    assert dead.headers[CORRUPT_HEADERS_HEADER] == "{not json"
    assert "boom" in dead.headers[FAILURE_REASON]
    backend.close_connection()


def test_opening_a_database_in_use_waits_for_no_writer(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    setup = SQLiteBackend(path)
    MessagingBackendFactory(setup).init_queue("work")
    _publish(setup, "work", 1)
    setup.close_connection()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process in the middle of a long write
    try:
        reader = SQLiteBackend(path, busy_timeout=0.5)
        assert reader.queue_depth("work") == 1
        assert reader.queue_stats("work").ready == 1
        assert [m.content for m in reader.peek("work")] == ['{"n": 1}']
        reader.close_connection()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_read_only_commands_do_not_take_the_write_lock(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from melange.cli import cli

    path = tmp_path / "broker.db"
    setup = SQLiteBackend(path)
    MessagingBackendFactory(setup).init_queue("work", dead_letter_queue_name="work-dlq")
    setup.close_connection()
    url = f"sqlite:///{path}?busy_timeout=0.5"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        runner = CliRunner()
        for args in (["queues", "list"], ["queues", "stats"], ["dlq", "show", "work-dlq"]):
            result = runner.invoke(cli, [*args, "--backend-url", url])
            assert result.exit_code == 0, (args, result.output)
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_path_holding_an_equals_sign_is_an_sqlite_deduplication_cache(tmp_path: Path) -> None:
    path = tmp_path / "cache=1.db"
    cache = SQLDeduplicationCache(str(path))
    assert cache.dialect == "sqlite"
    cache.mark_done("k")
    assert cache.get("k") == "done"
    assert path.exists()
    cache.close()
    relative = SQLDeduplicationCache("sqlite:///" + str(tmp_path / "a=b.db"))
    assert relative.dialect == "sqlite"
    relative.close()


def test_a_libpq_connection_string_is_still_postgresql() -> None:
    # Not connected: only the dialect the string is read as is checked.
    with pytest.raises(Exception, match="postgresql"):
        SQLDeduplicationCache("host=127.0.0.1 port=1 dbname=x connect_timeout=1", timeout=1)

"""The inbox: the handler's writes, the processed record and its outbox messages commit
together; a redelivery is skipped."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from outbox_support import Database

from melange.backends.memory import InMemoryMessagingBackend
from melange.consumers import Consumer
from melange.context import processing
from melange.deduplication.sql_cache import SQLDeduplicationCache
from melange.dispatch.threaded import MessageDispatcher
from melange.exceptions import ConfigurationError
from melange.models import Message
from melange.outbox import ORIGINAL_ID_HEADER, Inbox, Outbox, Relay, UnitOfWork
from melange.publishers import QueuePublisher
from melange.serializers.json import JsonSerializer


@pytest.fixture
def setup(database: Database) -> Iterator[tuple[Inbox, Database]]:
    """An inbox on the test database, with an ``effects`` table its handlers write to."""
    outbox = Outbox(table=database.table)
    effects = f"effects_{database.table}"
    with database.connect() as conn:
        outbox.create_table(conn)
        conn.execute(f"CREATE TABLE {effects} (id TEXT NOT NULL)")
    cache = SQLDeduplicationCache(database.dsn, table=f"done_{database.table}")
    inbox = Inbox(database.connect, cache, outbox=outbox)
    inbox.effects = effects  # type: ignore[attr-defined]
    yield inbox, database
    inbox.close()
    cache.close()


def _write(uow: UnitOfWork, table: str, value: str) -> None:
    mark = "%s" if type(uow.connection).__module__.startswith("psycopg") else "?"
    uow.connection.execute(f"INSERT INTO {table} (id) VALUES ({mark})", (value,))


def _count(database: Database, table: str) -> int:
    return int(database.scalar(f"SELECT count(*) FROM {table}"))


def test_a_message_is_processed_once_and_its_redelivery_skipped(
    setup: tuple[Inbox, Database],
) -> None:
    inbox, database = setup
    message = Message(None, "{}")
    calls = []

    def handler(uow: UnitOfWork) -> str:
        calls.append(uow.message.message_id)
        _write(uow, inbox.effects, "a")  # type: ignore[attr-defined]
        uow.publish("out", {"from": uow.message.message_id})
        return "done"

    assert inbox.run("payments", message, handler) == "done"
    assert inbox.run("payments", message, handler) is None
    assert calls == [message.message_id]
    assert _count(database, inbox.effects) == 1  # type: ignore[attr-defined]
    assert database.rows() == 1
    assert (inbox.stats.processed, inbox.stats.skipped) == (1, 1)
    # Another consumer has a record of its own.
    assert inbox.run("audit", message, lambda uow: "audited") == "audited"


def test_a_failing_handler_leaves_no_write_no_record_and_no_message(
    setup: tuple[Inbox, Database],
) -> None:
    inbox, database = setup
    message = Message(None, "{}")

    def failing(uow: UnitOfWork) -> None:
        _write(uow, inbox.effects, "a")  # type: ignore[attr-defined]
        uow.publish("out", {"n": 1})
        raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError):
        inbox.run("payments", message, failing)
    assert _count(database, inbox.effects) == 0  # type: ignore[attr-defined]
    assert database.rows() == 0
    # The retry runs the handler again.
    assert inbox.run("payments", message, lambda uow: "second try") == "second try"


def test_the_publishers_original_id_recognises_a_message_the_backend_renamed(
    setup: tuple[Inbox, Database],
) -> None:
    inbox, _ = setup
    first = Message("broker-id-1", "{}", headers={ORIGINAL_ID_HEADER: "published-id"})
    again = Message("broker-id-2", "{}", headers={ORIGINAL_ID_HEADER: "published-id"})
    assert inbox.run("payments", first, lambda uow: 1) == 1
    assert inbox.run("payments", again, lambda uow: 2) is None


def test_two_deliveries_processed_at_the_same_moment_run_the_handler_once(
    setup: tuple[Inbox, Database],
) -> None:
    inbox, database = setup
    message = Message(None, "{}")
    started = threading.Barrier(2)
    results: list[Any] = []

    def handler(uow: UnitOfWork) -> str:
        time.sleep(0.3)  # the other delivery arrives meanwhile
        _write(uow, inbox.effects, "a")  # type: ignore[attr-defined]
        return "ran"

    def deliver() -> None:
        started.wait()
        results.append(inbox.run("payments", message, handler))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results, key=str) == [None, "ran"]
    assert _count(database, inbox.effects) == 1  # type: ignore[attr-defined]


def test_a_dispatcher_consumer_in_the_inbox_is_exactly_once_in_effect_end_to_end(
    setup: tuple[Inbox, Database],
) -> None:
    inbox, database = setup
    backend = InMemoryMessagingBackend()
    backend.declare_queue("orders")
    backend.declare_queue("payments")

    @inbox.consumer(name="payments-service")
    def on_order(event: dict[str, Any], uow: UnitOfWork) -> None:
        _write(uow, inbox.effects, str(event["order_id"]))  # type: ignore[attr-defined]
        uow.publish("payments", {"order_id": event["order_id"], "paid": True})

    dispatcher = MessageDispatcher(JsonSerializer(), backend=backend, consumers=[on_order])
    sent = QueuePublisher(JsonSerializer(), backend).publish("orders", {"order_id": 7})
    # The broker delivers it twice (a lost acknowledgement): same envelope again.
    backend.publish_to_queue(
        Message(
            sent.message_id, sent.content, None, sent.serializer_id, sent.manifest, sent.headers
        ),
        backend.get_queue("orders"),
    )
    while dispatcher.consume_event("orders", wait_seconds=0):
        pass
    assert _count(database, inbox.effects) == 1  # type: ignore[attr-defined]
    with Relay(database.dsn, backend, table=database.table) as relay:
        assert relay.drain() == 1
    [payment] = backend.peek("payments")
    assert json.loads(payment.content) == {"order_id": 7, "paid": True}
    assert payment.headers["causation_id"] == sent.message_id
    assert (inbox.stats.processed, inbox.stats.skipped) == (1, 1)


def test_a_consumer_method_decorated_with_handler_runs_in_the_inbox(
    setup: tuple[Inbox, Database],
) -> None:
    inbox, database = setup

    class Payments(Consumer):
        @inbox.handler
        def process(self, event: Any, uow: UnitOfWork) -> None:
            _write(uow, inbox.effects, str(event))  # type: ignore[attr-defined]

    consumer = Payments(name="payments")
    message = Message(None, "1")
    for _ in range(2):
        with processing(message):
            consumer.process(1)
    assert _count(database, inbox.effects) == 1  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="while a dispatcher processes"):
        consumer.process(1)


def test_an_inbox_on_a_sqlalchemy_session(setup: tuple[Inbox, Database]) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from sqlalchemy.orm import sessionmaker

    base, database = setup
    url = (
        database.dsn.replace("postgresql://", "postgresql+psycopg://")
        if database.dialect == "postgresql"
        else f"sqlite:///{database.dsn}"
    )
    engine = sqlalchemy.create_engine(url)
    try:
        inbox = Inbox(sessionmaker(engine), base.cache, outbox=base.outbox)
        message = Message(None, "{}")

        def handler(uow: UnitOfWork) -> None:
            uow.connection.execute(
                sqlalchemy.text(f"INSERT INTO {base.effects} (id) VALUES ('s')")  # type: ignore[attr-defined]
            )
            uow.publish_to_topic("events", {"n": 1})

        for _ in range(2):
            inbox.run("sessions", message, handler)
        assert _count(database, base.effects) == 1  # type: ignore[attr-defined]
        assert database.rows() == 1
        with contextlib.suppress(Exception):
            inbox.close()
    finally:
        engine.dispose()


def test_publishing_without_an_outbox_and_mixed_databases_are_refused(
    setup: tuple[Inbox, Database], tmp_path: Any
) -> None:
    base, database = setup
    bare = Inbox(database.connect, base.cache)
    with pytest.raises(ConfigurationError, match="no outbox"):
        bare.run("x", Message(None, "{}"), lambda uow: uow.publish("out", {}))
    other = "postgresql" if database.dialect == "sqlite" else "sqlite"
    if other == "sqlite":
        cache = SQLDeduplicationCache(str(tmp_path / "other.db"))
        mixed = Inbox(database.connect, cache)
        with pytest.raises(ConfigurationError, match="same database"):
            mixed.run("x", Message(None, "{}"), lambda uow: None)
        cache.close()
    with pytest.raises(ConfigurationError, match="SQLDeduplicationCache"):
        Inbox(database.connect, object())  # type: ignore[arg-type]

"""Publishing into the caller's transaction: a row exists if and only if it commits."""

from __future__ import annotations

import json
from typing import Any

import pytest
from outbox_support import Database

from melange.context import processing
from melange.exceptions import ConfigurationError
from melange.models import CAUSATION_ID, CORRELATION_ID, Message
from melange.outbox import Outbox
from melange.serializers.json import JsonSerializer


def _ready(database: Database) -> Outbox:
    outbox = Outbox(JsonSerializer(), table=database.table)
    with database.connect() as conn:
        outbox.create_table(conn)
    return outbox


def test_a_committed_publish_is_a_row_holding_the_whole_envelope(database: Database) -> None:
    outbox = _ready(database)
    with database.connect() as conn:
        message = outbox.publish(
            conn,
            "orders",
            {"order_id": 42},
            "group-1",
            "dedup-1",
            headers={"tenant": "acme"},
            delay_seconds=3,
        )
    assert database.rows() == 1
    row = {
        column: database.scalar(f"SELECT {column} FROM {{t}}")
        for column in (
            "message_id",
            "destination_kind",
            "destination",
            "content",
            "manifest",
            "serializer_id",
            "headers",
            "group_id",
            "deduplication_id",
            "delay_seconds",
        )
    }
    assert row["message_id"] == message.message_id
    assert (row["destination_kind"], row["destination"]) == ("queue", "orders")
    assert json.loads(row["content"]) == {"order_id": 42}
    assert row["manifest"] == message.manifest
    assert row["serializer_id"] == JsonSerializer().identifier()
    assert json.loads(row["headers"])["tenant"] == "acme"
    assert (row["group_id"], row["deduplication_id"]) == ("group-1", "dedup-1")
    assert row["delay_seconds"] == 3


def test_a_rolled_back_transaction_leaves_no_row(database: Database) -> None:
    outbox = _ready(database)
    conn = database.connect()

    def fail_after_publishing() -> None:
        with conn:
            outbox.publish(conn, "orders", {"order_id": 1})
            raise RuntimeError("the handler failed after publishing")

    with pytest.raises(RuntimeError):
        fail_after_publishing()
    assert database.rows() == 0


def test_rows_are_invisible_to_others_until_the_commit(database: Database) -> None:
    outbox = _ready(database)
    conn = database.connect()
    if database.dialect == "sqlite":
        conn.execute("BEGIN")
    outbox.publish(conn, "orders", {"n": 1})
    assert database.rows() == 0
    conn.commit()
    assert database.rows() == 1


def test_bound_publishers_take_the_publishers_arguments(database: Database) -> None:
    outbox = _ready(database)
    with database.connect() as conn:
        queue = outbox.queue_publisher(conn)
        topic = outbox.topic_publisher(conn)
        queue.publish("orders", {"n": 1}, message_group_id="g", correlation_id="c-1")
        topic.publish("events", {"n": 2}, causation_id="cause-1")
        batch = queue.publish_batch("orders", [{"n": 3}, {"n": 4}], "g")
    assert len(batch) == 2
    kinds = database.scalar(
        "SELECT count(*) FROM {t} WHERE destination_kind = 'topic' AND destination = 'events'"
    )
    assert kinds == 1
    assert database.scalar("SELECT count(*) FROM {t} WHERE group_id = 'g'") == 3
    headers = json.loads(database.scalar("SELECT headers FROM {t} WHERE destination = 'events'"))
    assert headers[CAUSATION_ID] == "cause-1"


def test_a_publish_inside_a_consumer_carries_its_causation_and_correlation(
    database: Database,
) -> None:
    outbox = _ready(database)
    cause = Message("cause-id", "{}", headers={CORRELATION_ID: "conversation"})
    with processing(cause), database.connect() as conn:
        outbox.publish_to_topic(conn, "events", {"n": 1})
    headers = json.loads(database.scalar("SELECT headers FROM {t}"))
    assert headers[CAUSATION_ID] == "cause-id"
    assert headers[CORRELATION_ID] == "conversation"


def test_sqlalchemy_sessions_commit_and_roll_back_the_row(database: Database) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from sqlalchemy.orm import Session

    url = (
        database.dsn.replace("postgresql://", "postgresql+psycopg://")
        if database.dialect == "postgresql"
        else f"sqlite:///{database.dsn}"
    )
    engine = sqlalchemy.create_engine(url)
    try:
        outbox = Outbox(table=database.table)
        with Session(engine) as session, session.begin():
            outbox.create_table(session)
        with Session(engine) as session, session.begin():
            outbox.publish(session, "orders", {"n": 1})
            outbox.topic_publisher(session).publish("events", {"n": 2})
        assert database.rows() == 2

        def fail_after_publishing() -> None:
            with Session(engine) as session, session.begin():
                outbox.publish(session, "orders", {"n": 3})
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            fail_after_publishing()
        assert database.rows() == 2
        with engine.begin() as connection:
            outbox.publish(connection, "orders", {"n": 4})
        assert database.rows() == 3
    finally:
        engine.dispose()


@pytest.mark.parametrize("connection", [object(), "postgresql://db", None])
def test_something_that_is_not_a_connection_is_refused(connection: Any) -> None:
    with pytest.raises(ConfigurationError, match="sqlite3 connection, a psycopg 3"):
        Outbox().publish(connection, "orders", {"n": 1})


@pytest.mark.parametrize("table", ["", "outbox; DROP TABLE x", "1table", "a" * 60])
def test_a_table_name_that_is_not_an_identifier_is_refused(table: str) -> None:
    with pytest.raises(ConfigurationError, match="not a plain SQL identifier"):
        Outbox(table=table)


def test_headers_must_be_strings_and_delays_not_negative(database: Database) -> None:
    outbox = _ready(database)
    with database.connect() as conn:
        with pytest.raises(ConfigurationError, match="headers are str"):
            outbox.publish(conn, "orders", {}, headers={"n": 1})  # type: ignore[dict-item]
        with pytest.raises(ConfigurationError, match="delay_seconds"):
            outbox.publish(conn, "orders", {}, delay_seconds=-1)
        with pytest.raises(ConfigurationError, match="destination"):
            outbox.publish(conn, "", {})
    assert database.rows() == 0

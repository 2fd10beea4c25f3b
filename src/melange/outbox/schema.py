"""The outbox table: its columns, its DDL on each database, and how a row maps to a message.

One row per message published in a transaction::

    id               integer key, ascending   -- the order rows are sent in (per message group)
    message_id       text                     -- the envelope's id, kept by every resend
    destination_kind text                     -- "queue" or "topic"
    destination      text                     -- the queue or topic name
    content          text                     -- the serialized body
    manifest         text                     -- the serializer's manifest
    serializer_id    integer                  -- the serializer that produced content
    headers          text                     -- the string headers, as a JSON object
    group_id         text                     -- FIFO message group (ordering key), or NULL
    deduplication_id text                     -- FIFO broker-side deduplication id, or NULL
    delay_seconds    double precision         -- hold-back asked for at publish, or NULL
    created_at       double precision         -- Unix time of the publish
    available_at     double precision         -- not sent before (a refused row backs off)
    attempts         integer                  -- sends the broker refused so far
    last_error       text                     -- the broker's reason for the last refusal
    lease_owner      text                     -- SQLite: the relay holding the row
    lease_until      double precision         -- SQLite: when that lease runs out
    sent_at          double precision         -- when the broker confirmed it (kept rows only)

On PostgreSQL a statement-level trigger calls ``pg_notify`` with the table's name as the
channel after every insert: the notification is delivered when (and only if) the writing
transaction commits, which is what wakes a listening relay.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from melange.exceptions import ConfigurationError
from melange.models import Message

#: The default name of the outbox table (and of its PostgreSQL notification channel).
DEFAULT_TABLE = "melange_outbox"

#: Header carrying the id the publisher gave the message. Backends that assign their own id
#: on receipt (SQS) replace :attr:`Message.message_id`; this header lets an inbox recognise a
#: message the relay sent twice.
ORIGINAL_ID_HEADER = "melange_message_id"

QUEUE = "queue"
TOPIC = "topic"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")

#: The columns a writer fills, in the order of :func:`row_values`.
WRITE_COLUMNS = (
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
    "created_at",
    "available_at",
)

#: The columns the relay reads back, in the order :func:`message_from_row` takes them.
READ_COLUMNS = (
    "id",
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


def check_table_name(table: str) -> str:
    """``table`` if it is a plain SQL identifier (it is spliced into statements), else a
    :class:`~melange.exceptions.ConfigurationError`."""
    if not isinstance(table, str) or not _IDENTIFIER.match(table):
        raise ConfigurationError(
            f"outbox table name {table!r} is not a plain SQL identifier "
            "(letters, digits and _, at most 41 characters)"
        )
    return table


def create_statements(table: str, dialect: str) -> list[str]:
    """The statements creating ``table`` (and its indexes, and on PostgreSQL its notify
    trigger) when missing, for ``dialect`` (``"postgresql"`` or ``"sqlite"``)."""
    check_table_name(table)
    key = "BIGSERIAL PRIMARY KEY" if dialect == "postgresql" else "INTEGER PRIMARY KEY"
    statements = [
        f"CREATE TABLE IF NOT EXISTS {table} ("
        f" id {key},"
        " message_id TEXT NOT NULL,"
        " destination_kind TEXT NOT NULL,"
        " destination TEXT NOT NULL,"
        " content TEXT NOT NULL,"
        " manifest TEXT,"
        " serializer_id INTEGER,"
        " headers TEXT NOT NULL,"
        " group_id TEXT,"
        " deduplication_id TEXT,"
        " delay_seconds DOUBLE PRECISION,"
        " created_at DOUBLE PRECISION NOT NULL,"
        " available_at DOUBLE PRECISION NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0,"
        " last_error TEXT,"
        " lease_owner TEXT,"
        " lease_until DOUBLE PRECISION,"
        " sent_at DOUBLE PRECISION)",
        # The relay scans unsent rows in id order, and unsent rows of one group.
        f"CREATE INDEX IF NOT EXISTS {table}_unsent ON {table} (id) WHERE sent_at IS NULL",
        f"CREATE INDEX IF NOT EXISTS {table}_group ON {table} (group_id, id) "
        "WHERE sent_at IS NULL AND group_id IS NOT NULL",
        f"CREATE INDEX IF NOT EXISTS {table}_sent ON {table} (sent_at) WHERE sent_at IS NOT NULL",
    ]
    if dialect == "postgresql":
        statements += [
            f"CREATE OR REPLACE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_notify('{table}', ''); RETURN NULL; END $$",
            f"CREATE OR REPLACE TRIGGER {table}_notify AFTER INSERT ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify()",
        ]
    return statements


def insert_statement(table: str) -> str:
    """The ``INSERT`` of one row, with ``?`` placeholders in :data:`WRITE_COLUMNS` order."""
    marks = ", ".join("?" for _ in WRITE_COLUMNS)
    return f"INSERT INTO {table} ({', '.join(WRITE_COLUMNS)}) VALUES ({marks})"


def row_values(
    message: Message, kind: str, destination: str, delay_seconds: float | None, now: float
) -> tuple[Any, ...]:
    """The values of :data:`WRITE_COLUMNS` for ``message``, to be sent to ``destination``."""
    return (
        message.message_id,
        kind,
        destination,
        message.content,
        message.manifest,
        message.serializer_id,
        json.dumps(message.headers, separators=(",", ":")),
        message.group_id,
        message.deduplication_id,
        delay_seconds,
        now,
        now,
    )


@dataclass(slots=True)
class OutboxRow:
    """A row read back by the relay: where it goes and the envelope to send."""

    id: int
    kind: str
    destination: str
    message: Message
    delay_seconds: float | None


def message_from_row(row: tuple[Any, ...]) -> OutboxRow:
    """The :class:`OutboxRow` of a row selected in :data:`READ_COLUMNS` order."""
    (
        row_id,
        message_id,
        kind,
        destination,
        content,
        manifest,
        serializer_id,
        headers,
        group_id,
        deduplication_id,
        delay_seconds,
    ) = row
    header_map: dict[str, str] = json.loads(headers) if headers else {}
    header_map.setdefault(ORIGINAL_ID_HEADER, message_id)
    message = Message(
        message_id,
        content,
        None,
        serializer_id,
        manifest,
        header_map,
        group_id=group_id,
        deduplication_id=deduplication_id,
    )
    return OutboxRow(int(row_id), kind, destination, message, delay_seconds)


__all__ = [
    "DEFAULT_TABLE",
    "ORIGINAL_ID_HEADER",
    "QUEUE",
    "READ_COLUMNS",
    "TOPIC",
    "WRITE_COLUMNS",
    "OutboxRow",
    "check_table_name",
    "create_statements",
    "insert_statement",
    "message_from_row",
    "row_values",
]

"""Messages as rows of the ``messages`` table of the SQLite backend, and back.

A row keeps the message's id, content, serializer id and manifest, its headers as one JSON
object, its FIFO group and deduplication ids, and the counts of its deliveries
(``receive_count``) and failed attempts (``attempts``). A received message carries a
:class:`Receipt` in its ``metadata``: the row and the token of that delivery.

Also here, the row-level steps that publishing, receiving and dead-lettering share, each run
inside the caller's transaction: storing messages in a queue (:func:`enqueue`, with FIFO
deduplication in the ``deduplication`` table), choosing the rows a FIFO queue delivers next
(:func:`fifo_candidates`) and moving a row to its dead-letter queue
(:func:`move_to_dead_letter_queue`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from melange.backends.embedded_rules import DEDUPLICATION_WINDOW_SECONDS, dead_letter_copy
from melange.backends.sqlite.topology import QueueConfig, queue_config, upsert_queue
from melange.exceptions import ConfigurationError, QueueNotFoundError
from melange.models import Message

#: The columns of a message row, in the order of :class:`Row`.
COLUMNS = (
    "id, message_id, content, serializer_id, manifest, headers, group_id, dedup_id, "
    "receive_count, attempts"
)

INSERT = (
    "INSERT INTO messages (queue, message_id, content, serializer_id, manifest, headers,"
    " group_id, dedup_id, visible_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# The queue's delay and its existence come from the same statement as the insert.
INSERT_INTO_STANDARD_QUEUE = (
    "INSERT INTO messages (message_id, content, serializer_id, manifest, headers, group_id,"
    " dedup_id, visible_at, queue) SELECT ?, ?, ?, ?, ?, ?, ?, ? + delay_seconds, name"
    " FROM queues WHERE name = ? AND fifo = 0"
)


class Row(NamedTuple):
    """A message row, as :data:`COLUMNS` selects it."""

    id: int
    message_id: str
    content: str
    serializer_id: int | None
    manifest: str | None
    headers: str
    group_id: str | None
    dedup_id: str | None
    receive_count: int
    attempts: int


class Receipt(NamedTuple):
    """What a received message needs to be settled: its row and the token of this delivery."""

    queue: str
    row_id: int
    token: int
    lease: float = 0.0


def rows_by_id(conn: sqlite3.Connection, ids: list[int]) -> list[Row]:
    """The rows with these ids, in id (publish) order."""
    rows: list[Row] = []
    # In slices: SQLite caps the number of parameters of one statement.
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows.extend(
            Row(*row)
            for row in conn.execute(
                f"SELECT {COLUMNS} FROM messages WHERE id IN ({marks}) ORDER BY id", chunk
            )
        )
    return rows


def dump_headers(headers: Mapping[str, str]) -> str:
    """Headers as the JSON object a row keeps."""
    if not headers:
        return "{}"
    return _HEADERS_ENCODER.encode(dict(headers))


# One encoder for every row: ``json.dumps`` with options builds a new one per call.
_HEADERS_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


#: Header carrying, on a row whose stored headers were unreadable, what was stored.
CORRUPT_HEADERS_HEADER = "melange_corrupt_headers"


def row_problem(row: Row) -> str | None:
    """What makes a row unreadable as a message (written by something else than Melange, or
    damaged), or ``None``. Such a row is quarantined, never left to block its queue."""
    try:
        headers = json.loads(row.headers)
    except (TypeError, ValueError, RecursionError) as exc:
        return f"its headers are not JSON ({type(exc).__name__})"
    if not isinstance(headers, dict):
        return f"its headers are a JSON {type(headers).__name__}, not an object"
    for name, value in (("receive_count", row.receive_count), ("attempts", row.attempts)):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"its {name} is {value!r}, not a whole number"
    if not isinstance(row.message_id, str) or not isinstance(row.content, str | bytes):
        return "its message id or content is not text"
    return None


def read_headers(row: Row) -> dict[str, str]:
    """The row's headers; unreadable ones come back as one header holding what was stored."""
    try:
        headers = json.loads(row.headers)
    except (TypeError, ValueError, RecursionError):
        headers = None
    if not isinstance(headers, dict):
        return {CORRUPT_HEADERS_HEADER: str(row.headers)[:1000]}
    return {str(name): str(value) for name, value in headers.items()}


def whole_count(value: object) -> int:
    """A stored count, or 0 where a damaged row holds something else."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def to_message(row: Row, receipt: Receipt | None) -> Message:
    """The message a row holds; ``receipt`` is ``None`` for copies that cannot be settled."""
    # A received message is on its attempt after the failed ones; a peeked or dead-lettered
    # copy tells how many failed.
    attempts = whole_count(row.attempts)
    attempt = attempts + 1 if receipt is not None else attempts or None
    return Message(
        str(row.message_id),
        row.content,
        receipt,
        row.serializer_id,
        row.manifest,
        read_headers(row),
        attempt,
        row.group_id,
        row.dedup_id,
    )


class Deduplication:
    """The FIFO deduplication ids of the ``deduplication`` table, swept once a minute."""

    def __init__(self) -> None:
        self._next_sweep = 0.0

    def seen(self, conn: sqlite3.Connection, queue: str, dedup_id: str, now: float) -> bool:
        """Whether ``dedup_id`` was published to ``queue`` within the window; records it."""
        cutoff = now - DEDUPLICATION_WINDOW_SECONDS
        if now >= self._next_sweep:
            self._next_sweep = now + 60.0
            conn.execute("DELETE FROM deduplication WHERE seen_at < ?", (cutoff,))
        found = conn.execute(
            "SELECT seen_at FROM deduplication WHERE queue = ? AND dedup_id = ?",
            (queue, dedup_id),
        ).fetchone()
        if found is not None and found[0] >= cutoff:
            return True
        conn.execute(
            "INSERT OR REPLACE INTO deduplication (queue, dedup_id, seen_at) VALUES (?, ?, ?)",
            (queue, dedup_id, now),
        )
        return False


def enqueue(
    conn: sqlite3.Connection,
    queue: QueueConfig,
    messages: Sequence[Message],
    now: float,
    deduplication: Deduplication,
    headers: Sequence[Mapping[str, str]] | None = None,
) -> None:
    """Store messages in the queue, after its delay; a FIFO queue drops duplicates."""
    visible_at = now + queue.delay_seconds
    rows = []
    for index, message in enumerate(messages):
        if queue.fifo:
            if message.group_id is None:
                raise ConfigurationError(
                    f"queue {queue.name!r} is FIFO: publish with a message_group_id"
                )
            dedup = message.deduplication_id
            if dedup is not None and deduplication.seen(conn, queue.name, dedup, now):
                continue
        rows.append(
            (
                queue.name,
                message.message_id,
                message.content,
                message.serializer_id,
                message.manifest,
                dump_headers(headers[index] if headers is not None else message.headers),
                message.group_id,
                message.deduplication_id,
                visible_at,
            )
        )
    conn.executemany(INSERT, rows)


def fifo_candidates(
    conn: sqlite3.Connection, queue: str, now: float, max_messages: int
) -> list[int]:
    """Ids to deliver from a FIFO queue: each group from its oldest message on.

    A group whose oldest message is in flight or delayed is blocked, so a later message
    never overtakes an earlier one of its group.
    """
    blocked: set[str | None] = set()
    picked: list[int] = []
    cursor = conn.execute(
        "SELECT id, group_id, visible_at FROM messages "
        "WHERE queue = ? AND group_id IS NOT NULL ORDER BY id",
        (queue,),
    )
    try:
        for row_id, group, visible_at in cursor:
            if group in blocked:
                continue
            if visible_at > now:
                blocked.add(group)
                continue
            picked.append(row_id)
            if len(picked) >= max_messages:
                break
    finally:
        cursor.close()
    return picked


def move_to_dead_letter_queue(
    conn: sqlite3.Connection,
    queue: QueueConfig,
    row: Row,
    extra_headers: Mapping[str, str],
    reason: str,
    now: float,
    deduplication: Deduplication,
    default_visibility_timeout: float,
) -> None:
    """Store a copy of the row in the queue's dead-letter queue and delete the row."""
    assert queue.dead_letter_queue is not None
    try:
        dlq = queue_config(conn, queue.dead_letter_queue)
    except QueueNotFoundError:
        # Deleted behind our back: recreate it rather than drop the message.
        upsert_queue(
            conn, queue.dead_letter_queue, {"fifo": queue.fifo}, default_visibility_timeout, now
        )
        dlq = queue_config(conn, queue.dead_letter_queue)
    copy, headers = dead_letter_copy(
        to_message(row, None),
        {**read_headers(row), **extra_headers},
        source_queue=queue.name,
        reason=reason,
        into_fifo=dlq.fifo,
    )
    enqueue(conn, dlq, [copy], now, deduplication, [headers])
    conn.execute("DELETE FROM messages WHERE id = ?", (row.id,))


__all__ = [
    "COLUMNS",
    "CORRUPT_HEADERS_HEADER",
    "INSERT",
    "INSERT_INTO_STANDARD_QUEUE",
    "Deduplication",
    "Receipt",
    "Row",
    "dump_headers",
    "enqueue",
    "fifo_candidates",
    "move_to_dead_letter_queue",
    "read_headers",
    "row_problem",
    "rows_by_id",
    "to_message",
    "whole_count",
]

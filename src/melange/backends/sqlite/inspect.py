"""Looking into the queues of the SQLite backend (the CLI and tests): how many messages a
queue holds by state (:class:`QueueStats`), copies of its messages, and purging it."""

from __future__ import annotations

from dataclasses import dataclass

from melange.backends.sqlite.connection import Database
from melange.backends.sqlite.topology import queue_config
from melange.backends.sqlite.wire import COLUMNS, Row, to_message
from melange.exceptions import QueueNotFoundError
from melange.models import Message


@dataclass(frozen=True)
class QueueStats:
    """How many messages a queue holds, by state.

    Attributes:
        name: The queue.
        ready: Messages a receive would return now (including those whose lease ran out).
        in_flight: Messages received and not yet settled, whose lease is still running.
        delayed: Messages held back until a later time (queue delay or delayed ``nack``).
    """

    name: str
    ready: int
    in_flight: int
    delayed: int

    @property
    def total(self) -> int:
        """Every message of the queue, whatever its state."""
        return self.ready + self.in_flight + self.delayed


def queue_stats(db: Database, queue_name: str, now: float) -> QueueStats:
    """How many messages the queue holds at ``now``: ready, in flight and delayed.

    The queue's row counts its messages; only those not visible at ``now`` (in flight or
    delayed) are counted one by one, from the index on visibility: the time taken grows with
    them, never with the messages ready.
    """
    with db.read() as conn:
        # One read transaction: both statements see the same state.
        conn.execute("BEGIN")
        try:
            found = conn.execute(
                "SELECT depth FROM queues WHERE name = ?", (queue_name,)
            ).fetchone()
            if found is None:
                raise QueueNotFoundError(queue_name)
            hidden, in_flight = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(receipt IS NOT NULL), 0) FROM messages"
                " WHERE queue = ? AND visible_at > ?",
                (queue_name, now),
            ).fetchone()
        finally:
            conn.execute("COMMIT")
    hidden, in_flight = int(hidden), int(in_flight)
    return QueueStats(queue_name, int(found[0]) - hidden, in_flight, hidden - in_flight)


def peek(db: Database, queue_name: str, limit: int) -> list[Message]:
    """Up to ``limit`` messages of the queue in publish order, without receiving them."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    with db.read() as conn:
        queue_config(conn, queue_name)
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE queue = ? ORDER BY id LIMIT ?",
            (queue_name, limit),
        ).fetchall()
    return [to_message(Row(*row), None) for row in rows]


def purge(db: Database, queue_name: str) -> int:
    """Delete every message of the queue, in flight or not; returns how many."""
    with db.write() as conn:
        queue_config(conn, queue_name)
        deleted = conn.execute("DELETE FROM messages WHERE queue = ?", (queue_name,)).rowcount
    return int(deleted)


__all__ = ["QueueStats", "peek", "purge", "queue_stats"]

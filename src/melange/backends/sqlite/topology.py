"""Queues, topics and subscriptions of the SQLite backend: the rows of the ``queues``,
``topics`` and ``subscriptions`` tables.

A queue row holds the queue's settings (FIFO or not, visibility timeout, delay, dead-letter
queue, ``max_receive_count``), validated by the rules shared with the in-memory backend
(:mod:`melange.backends.embedded_rules`). A subscription row binds a queue to a topic, with the
manifests its filter lets through (``NULL``: every message).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from melange.backends.embedded_rules import check_filter_events, check_type_kept, queue_options
from melange.backends.sqlite.connection import Database
from melange.exceptions import QueueNotFoundError, TopicNotFoundError
from melange.models import QueueWrapper, TopicWrapper


class QueueConfig(NamedTuple):
    """The settings of a queue, as its row holds them."""

    name: str
    fifo: bool
    visibility_timeout: float
    delay_seconds: float
    dead_letter_queue: str | None
    max_receive_count: int


def queue_config(conn: sqlite3.Connection, name: str) -> QueueConfig:
    """The queue's settings; raises ``QueueNotFoundError`` when it does not exist."""
    row = conn.execute(
        "SELECT name, fifo, visibility_timeout, delay_seconds, dead_letter_queue, "
        "max_receive_count FROM queues WHERE name = ?",
        (name,),
    ).fetchone()
    if row is None:
        raise QueueNotFoundError(name)
    return QueueConfig(row[0], bool(row[1]), row[2], row[3], row[4], row[5])


def require_topic(conn: sqlite3.Connection, name: str) -> None:
    """Raise ``TopicNotFoundError`` unless the topic exists."""
    if conn.execute("SELECT 1 FROM topics WHERE name = ?", (name,)).fetchone() is None:
        raise TopicNotFoundError(name)


def upsert_queue(
    conn: sqlite3.Connection,
    name: str,
    options: Mapping[str, Any],
    default_visibility_timeout: float,
    now: float,
) -> None:
    """Create the queue, or change the options given of an existing one (messages stay)."""
    settings = queue_options("SQLite", name, options, default_visibility_timeout)
    created = conn.execute(
        "INSERT OR IGNORE INTO queues (name, fifo, visibility_timeout, delay_seconds, "
        "max_receive_count, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (
            name,
            int(settings.fifo),
            settings.visibility_timeout,
            settings.delay_seconds,
            settings.max_receive_count,
            now,
        ),
    ).rowcount
    if created:
        return
    existing = conn.execute("SELECT fifo FROM queues WHERE name = ?", (name,)).fetchone()
    check_type_kept(name, bool(existing[0]), settings)
    # Only the options given change; messages stay.
    values = {
        "visibility_timeout": settings.visibility_timeout,
        "delay_seconds": settings.delay_seconds,
        "max_receive_count": settings.max_receive_count,
    }
    for option, value in values.items():
        if option in settings.given:
            conn.execute(f"UPDATE queues SET {option} = ? WHERE name = ?", (value, name))


def declare_topic(db: Database, topic_name: str, clock: Callable[[], float]) -> TopicWrapper:
    """Create the topic if needed."""
    with db.write() as conn:
        conn.execute(
            "INSERT OR IGNORE INTO topics (name, created_at) VALUES (?, ?)",
            (topic_name, clock()),
        )
    return TopicWrapper(topic_name, topic_name)


def get_topic(db: Database, topic_name: str) -> TopicWrapper:
    """The existing topic; raises ``TopicNotFoundError``."""
    with db.read() as conn:
        require_topic(conn, topic_name)
    return TopicWrapper(topic_name, topic_name)


def get_queue(db: Database, queue_name: str) -> QueueWrapper:
    """The existing queue; raises ``QueueNotFoundError``."""
    with db.read() as conn:
        found = conn.execute("SELECT 1 FROM queues WHERE name = ?", (queue_name,)).fetchone()
    if found is None:
        raise QueueNotFoundError(queue_name)
    return QueueWrapper(queue_name, queue_name)


def declare_queue(
    db: Database,
    queue_name: str,
    topics_to_bind: Sequence[TopicWrapper],
    dead_letter_queue_name: str | None,
    options: dict[str, Any],
    default_visibility_timeout: float,
    clock: Callable[[], float],
) -> tuple[QueueWrapper, QueueWrapper | None]:
    """Create or update the queue, its dead-letter queue and its subscriptions (see
    :meth:`melange.backends.sqlite.SQLiteBackend.declare_queue`)."""
    filter_events = options.pop("filter_events", None)
    check_filter_events(filter_events)
    # Checked before anything is written, so a bad option changes nothing.
    queue_options("SQLite", queue_name, options, default_visibility_timeout)
    manifests = json.dumps(sorted(set(filter_events))) if filter_events else None
    now = clock()
    with db.write() as conn:
        if dead_letter_queue_name is not None and dead_letter_queue_name != queue_name:
            dlq_options = {k: v for k, v in options.items() if k == "fifo"}
            upsert_queue(conn, dead_letter_queue_name, dlq_options, default_visibility_timeout, now)
        upsert_queue(conn, queue_name, options, default_visibility_timeout, now)
        if dead_letter_queue_name is not None:
            conn.execute(
                "UPDATE queues SET dead_letter_queue = ? WHERE name = ?",
                (dead_letter_queue_name, queue_name),
            )
        for topic in topics_to_bind:
            conn.execute(
                "INSERT OR IGNORE INTO topics (name, created_at) VALUES (?, ?)",
                (topic.name, now),
            )
            conn.execute(
                "INSERT OR REPLACE INTO subscriptions (topic, queue, manifests) VALUES (?, ?, ?)",
                (topic.name, queue_name, manifests),
            )
    dlq = (
        QueueWrapper(dead_letter_queue_name, dead_letter_queue_name)
        if dead_letter_queue_name
        else None
    )
    return QueueWrapper(queue_name, queue_name), dlq


def delete_queue(db: Database, queue_name: str) -> None:
    """Delete the queue with its messages, subscriptions and deduplication ids."""
    with db.write() as conn:
        conn.execute("DELETE FROM messages WHERE queue = ?", (queue_name,))
        conn.execute("DELETE FROM subscriptions WHERE queue = ?", (queue_name,))
        conn.execute("DELETE FROM deduplication WHERE queue = ?", (queue_name,))
        conn.execute("DELETE FROM queues WHERE name = ?", (queue_name,))


def delete_topic(db: Database, topic_name: str) -> None:
    """Delete the topic and its subscriptions."""
    with db.write() as conn:
        conn.execute("DELETE FROM subscriptions WHERE topic = ?", (topic_name,))
        conn.execute("DELETE FROM topics WHERE name = ?", (topic_name,))


def queue_names(db: Database) -> list[str]:
    """Names of every queue, sorted."""
    with db.read() as conn:
        return [row[0] for row in conn.execute("SELECT name FROM queues ORDER BY name")]


def topic_names(db: Database) -> list[str]:
    """Names of every topic, sorted."""
    with db.read() as conn:
        return [row[0] for row in conn.execute("SELECT name FROM topics ORDER BY name")]


def subscriptions(db: Database, topic_name: str) -> dict[str, list[str] | None]:
    """The queues subscribed to a topic, each with its manifest filter (``None``: all)."""
    with db.read() as conn:
        if conn.execute("SELECT 1 FROM topics WHERE name = ?", (topic_name,)).fetchone() is None:
            raise TopicNotFoundError(topic_name)
        rows = conn.execute(
            "SELECT queue, manifests FROM subscriptions WHERE topic = ? ORDER BY queue",
            (topic_name,),
        ).fetchall()
    return {queue: json.loads(manifests) if manifests else None for queue, manifests in rows}


__all__ = [
    "QueueConfig",
    "declare_queue",
    "declare_topic",
    "delete_queue",
    "delete_topic",
    "get_queue",
    "get_topic",
    "queue_config",
    "queue_names",
    "require_topic",
    "subscriptions",
    "topic_names",
    "upsert_queue",
]

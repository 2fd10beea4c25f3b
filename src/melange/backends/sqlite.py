"""An embedded, durable broker in one SQLite file.

:class:`SQLiteBackend` keeps queues, topics, subscriptions and messages in a single database
file, using nothing but the standard library. Several processes on one machine may publish to
and consume from the same file at once: a message is claimed inside a ``BEGIN IMMEDIATE``
transaction together with a lease (its visibility timeout), so no two consumers hold it at the
same time, and a consumer that dies simply lets its lease run out, after which the message is
delivered again. It offers the same semantics as the in-memory reference backend: topics with
manifest filters, visibility timeouts and receive counts, dead-letter queues (by the broker
after ``max_receive_count`` deliveries, and on request), delayed delivery, FIFO queues
(names ending in ``.fifo``) ordered per message group, with deduplication ids.

Durability: the database runs in WAL mode. With the default ``synchronous="NORMAL"`` a
committed publish or acknowledgement survives the crash of any process, but a power cut or
an operating-system crash may lose the last transactions committed before it (the database
itself stays consistent). ``synchronous="FULL"`` syncs the log on every commit and closes that
window at a large cost in throughput.

The file is meant for one machine: SQLite's locking is not reliable on network file systems.

Storage (schema version 2): ``melange_meta`` (key/value: the schema version),
``queues``, ``topics``, ``subscriptions`` (topic, queue, JSON list of manifests or ``NULL``),
``messages`` (one row per message per queue; a row is visible once ``visible_at`` has passed
and is in flight while it carries a ``receipt`` and ``visible_at`` lies ahead; ``attempts``
counts its failed attempts, ``receive_count`` its deliveries), and
``deduplication`` (FIFO deduplication ids seen in the last five minutes). Times are Unix
timestamps, so every process on the machine shares one clock.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from melange.backends.embedded_rules import (
    DEDUPLICATION_WINDOW_SECONDS,
    check_filter_events,
    check_type_kept,
    dead_letter_copy,
    queue_options,
)
from melange.backends.interfaces import (
    BackendCapabilities,
    MessagingBackend,
)
from melange.exceptions import (
    BackendError,
    ConfigurationError,
    MessageTooLargeError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import FAILURE_REASON, Message, QueueWrapper, TopicWrapper

#: The schema version this module writes and understands.
SCHEMA_VERSION = 2

#: The ``synchronous`` settings SQLite knows, weakest first.
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

_MEMORY = ":memory:"

_SCHEMA = """
CREATE TABLE melange_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE queues (
    name TEXT PRIMARY KEY,
    fifo INTEGER NOT NULL,
    visibility_timeout REAL NOT NULL,
    delay_seconds REAL NOT NULL DEFAULT 0,
    dead_letter_queue TEXT,
    max_receive_count INTEGER NOT NULL DEFAULT 20,
    created_at REAL NOT NULL
);
CREATE TABLE topics (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE subscriptions (
    topic TEXT NOT NULL,
    queue TEXT NOT NULL,
    manifests TEXT,
    PRIMARY KEY (topic, queue)
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    content TEXT NOT NULL,
    serializer_id INTEGER,
    manifest TEXT,
    headers TEXT NOT NULL,
    group_id TEXT,
    dedup_id TEXT,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0
);
-- Receiving from a standard queue walks this index from its oldest visible entry.
CREATE INDEX messages_by_visibility ON messages (queue, visible_at, id);
-- FIFO receiving walks a queue in publish order. Every FIFO message has a group, so a
-- partial index covers them and spares standard queues the cost of a second index.
CREATE INDEX messages_in_groups ON messages (queue, id) WHERE group_id IS NOT NULL;
CREATE TABLE deduplication (
    queue TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (queue, dedup_id)
);
"""

_COLUMNS = (
    "id, message_id, content, serializer_id, manifest, headers, group_id, dedup_id, "
    "receive_count, attempts"
)

_INSERT = (
    "INSERT INTO messages (queue, message_id, content, serializer_id, manifest, headers,"
    " group_id, dedup_id, visible_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# The queue's delay and its existence come from the same statement as the insert.
_INSERT_INTO_STANDARD_QUEUE = (
    "INSERT INTO messages (message_id, content, serializer_id, manifest, headers, group_id,"
    " dedup_id, visible_at, queue) SELECT ?, ?, ?, ?, ?, ?, ?, ? + delay_seconds, name"
    " FROM queues WHERE name = ? AND fifo = 0"
)

# Deletes a message only while the delivery being settled still holds it.
_DELETE_SETTLED = "DELETE FROM messages WHERE id = ? AND receipt = ?"


class _QueueConfig(NamedTuple):
    name: str
    fifo: bool
    visibility_timeout: float
    delay_seconds: float
    dead_letter_queue: str | None
    max_receive_count: int


class _Row(NamedTuple):
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


class _Receipt(NamedTuple):
    """What a received message needs to be settled: its row and the token of this delivery."""

    queue: str
    row_id: int
    token: int
    lease: float = 0.0


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


class SQLiteBackend(MessagingBackend):
    """A durable broker in an SQLite file, shared safely by the processes of one machine.

    The file is created (with its schema) on first use. ``":memory:"`` keeps everything in
    this process instead, through a single connection (handy in tests; not persistent).

    Args:
        path: The database file. Its directory must exist and be writable (SQLite keeps
            ``-wal`` and ``-shm`` files next to it).
        visibility_timeout: Default seconds a received message stays invisible to other
            consumers before it is delivered again (per queue: ``declare_queue(...,
            visibility_timeout=...)``). The dispatcher's heartbeat extends the lease while
            a handler runs, every third of this value: give queues consumed by long
            handlers a visibility timeout no shorter than it.
        synchronous: SQLite's ``synchronous`` setting: ``"NORMAL"`` (default) survives process
            crashes but may lose the last commits on power loss; ``"FULL"`` syncs every
            commit; ``"OFF"`` leaves syncing to the operating system.
        busy_timeout: Seconds to wait for another process's write transaction before failing.
        poll_interval: Seconds between checks while a receive waits for messages published
            by other processes (publishes in this process wake it at once).
        max_message_size: Largest body accepted, in bytes (``None``: no limit).
        clock: Wall clock in seconds since the epoch (shared by every process using the
            file); tests pass a fake one to step through timeouts.

    Raises:
        ConfigurationError: the file is not a Melange database, was written by a newer
            version, is read-only, or cannot be created.
    """

    loop_wait_seconds = 1.0

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        visibility_timeout: float = 30.0,
        synchronous: str = "NORMAL",
        busy_timeout: float = 30.0,
        poll_interval: float = 0.05,
        max_message_size: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        mode = str(synchronous).upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ConfigurationError(
                f"synchronous must be one of {list(SYNCHRONOUS_MODES)}, got {synchronous!r}"
            )
        if visibility_timeout <= 0:
            raise ConfigurationError(
                f"visibility_timeout must be positive, got {visibility_timeout!r}"
            )
        if busy_timeout < 0 or poll_interval <= 0:
            raise ConfigurationError(
                f"busy_timeout must be >= 0 and poll_interval > 0, got {busy_timeout!r} and "
                f"{poll_interval!r}"
            )
        #: The database file as given.
        self.path = os.fspath(path)
        self._memory = self.path == _MEMORY
        # Connections opened later (one per concurrent thread) must reach the same file even
        # if the process changes its working directory meanwhile.
        self._target = self.path if self._memory else os.path.abspath(self.path)
        #: Default visibility timeout of new queues, in seconds (read by the heartbeat).
        self.visibility_timeout = float(visibility_timeout)
        self.synchronous = mode
        self._busy_timeout = float(busy_timeout)
        self._poll_interval = float(poll_interval)
        self._max_message_size = max_message_size
        self._clock = clock
        # Connections not in use. In-memory mode has exactly one, handed out under the
        # condition below: every connection to ":memory:" would be a different database.
        self._pool_cond = threading.Condition(threading.Lock())
        self._free: list[sqlite3.Connection] = []
        self._closed = False
        # Connections inherited from the parent process across fork, never used again.
        self._abandoned: list[sqlite3.Connection] = []
        # Wakes waiting receivers on publish: shared by every backend of this process on the
        # same file, so one instance's publish reaches another's receivers at once.
        self._doorbell = _Doorbell() if self._memory else _doorbell_for(self.path)
        self._wake = self._doorbell.condition
        self._interrupts = 0
        self._next_dedup_sweep = 0.0
        # Queues whose last receive here returned messages.
        self._busy_queues: set[str] = set()
        self._free.append(self._open(initialize=True))
        _OPEN_BACKENDS.add(self)

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(
            name="sqlite",
            persistent=not self._memory,
            fifo=True,
            topics=True,
            native_dead_letter=True,
            delayed_delivery=True,
            visibility_timeout=True,
            extend_visibility=True,
            receive_count=True,
            filter_policies=True,
            max_message_size=self._max_message_size,
            max_batch_size=None,
        )

    def __repr__(self) -> str:
        return f"SQLiteBackend({self.path!r})"

    # -- connections ------------------------------------------------------------------------

    def _open(self, initialize: bool = False) -> sqlite3.Connection:
        if not self._memory:
            directory = os.path.dirname(self._target)
            if not os.path.isdir(directory):
                raise ConfigurationError(
                    f"cannot open SQLite database {self.path!r}: directory {directory!r} "
                    "does not exist; create it first"
                )
        try:
            conn = sqlite3.connect(
                self._target,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            if initialize:
                self._initialize(conn)
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.Error as exc:
            conn.close()
            raise self._open_error(exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_error(self, exc: sqlite3.Error) -> ConfigurationError:
        text = str(exc)
        if "readonly" in text or "read-only" in text:
            return ConfigurationError(
                f"SQLite database {self.path!r} is read-only: the backend needs write access "
                "to the file and to its directory (for the -wal and -shm files)"
            )
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
            return ConfigurationError(
                f"{self.path!r} is not an SQLite database (so not a Melange one); point "
                "SQLiteBackend at a new file or at one Melange created"
            )
        return ConfigurationError(f"cannot use SQLite database {self.path!r}: {text}")

    def _initialize(self, conn: sqlite3.Connection) -> None:
        if not self._memory:
            if os.path.exists(self._target) and not os.access(self._target, os.W_OK):
                raise sqlite3.OperationalError("readonly file")
            # Persistent in the file; every later connection uses WAL too.
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
        # BEGIN IMMEDIATE: processes opening a new file together create the schema once.
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if "melange_meta" in tables:
                found = conn.execute(
                    "SELECT value FROM melange_meta WHERE key = 'schema_version'"
                ).fetchone()
                version = int(found[0]) if found else None
                if version == 1:
                    _migrate_from_version_1(conn)
                    version = SCHEMA_VERSION
                if version != SCHEMA_VERSION:
                    raise ConfigurationError(
                        f"SQLite database {self.path!r} has Melange schema version {version}, "
                        f"this version of Melange reads version {SCHEMA_VERSION}; use the "
                        "Melange version that created it, or a new file"
                    )
            elif tables:
                raise ConfigurationError(
                    f"{self.path!r} is an SQLite database but not a Melange one (it has "
                    f"tables {sorted(tables)[:5]}); point SQLiteBackend at a new file or at "
                    "one Melange created"
                )
            else:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO melange_meta (key, value) VALUES ('schema_version', ?), "
                    "('created_at', ?)",
                    (str(SCHEMA_VERSION), f"{time.time():.6f}"),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _after_fork(self) -> None:
        """In a forked child: drop the parent's connections and locks, which SQLite and
        threading do not support across ``fork``; the child opens its own on first use."""
        self._pool_cond = threading.Condition(threading.Lock())
        if not self._memory:
            # Never closed here: closing would touch the parent's file locks.
            self._abandoned = self._free
            self._free = []
            self._doorbell = _doorbell_for(self.path)
        else:
            self._doorbell = _Doorbell()
        self._wake = self._doorbell.condition

    def _acquire(self) -> sqlite3.Connection:
        with self._pool_cond:
            while True:
                if self._closed:
                    raise BackendError(f"SQLiteBackend({self.path!r}) is closed")
                if self._free:
                    return self._free.pop()
                if not self._memory:
                    break
                self._pool_cond.wait()
        return self._open()

    def _release(self, conn: sqlite3.Connection) -> None:
        with self._pool_cond:
            if self._closed:
                conn.close()
                return
            self._free.append(conn)
            self._pool_cond.notify()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode: each statement reads a consistent snapshot."""
        conn = self._acquire()
        try:
            yield conn
        except sqlite3.Error as exc:
            raise self._backend_error(exc) from exc
        finally:
            self._release(conn)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, holding the database's write lock from its first statement.

        Taking the lock up front (``BEGIN IMMEDIATE``) means two processes never read the
        same visible row and both claim it: the second waits, then sees the first's claim.
        """
        conn = self._acquire()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._backend_error(exc) from exc
        finally:
            self._release(conn)

    def _backend_error(self, exc: sqlite3.Error) -> BackendError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return BackendError(
                f"SQLite database {self.path!r} stayed locked by another connection for more "
                f"than busy_timeout={self._busy_timeout}s: {text}"
            )
        if "readonly" in text:
            return BackendError(
                f"SQLite database {self.path!r} became read-only: check the permissions of "
                f"the file and its directory ({text})"
            )
        return BackendError(f"SQLite database {self.path!r}: {text}")

    # -- topology ---------------------------------------------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO topics (name, created_at) VALUES (?, ?)",
                (topic_name, self._clock()),
            )
        return TopicWrapper(topic_name, topic_name)

    def get_topic(self, topic_name: str) -> TopicWrapper:
        with self._read() as conn:
            _require_topic(conn, topic_name)
        return TopicWrapper(topic_name, topic_name)

    def get_queue(self, queue_name: str) -> QueueWrapper:
        with self._read() as conn:
            found = conn.execute("SELECT 1 FROM queues WHERE name = ?", (queue_name,)).fetchone()
        if found is None:
            raise QueueNotFoundError(queue_name)
        return QueueWrapper(queue_name, queue_name)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create or update the queue, its dead-letter queue and its subscriptions.

        Options: ``fifo`` (default: the name ends in ``.fifo``), ``visibility_timeout``,
        ``delay_seconds`` (every new message waits this long), ``max_receive_count``
        (deliveries before the broker moves a message to the dead-letter queue, default 20),
        ``filter_events`` (manifests the subscriptions let through). Declaring again updates
        the options given and keeps the messages.
        """
        filter_events = kwargs.pop("filter_events", None)
        check_filter_events(filter_events)
        # Checked before anything is written, so a bad option changes nothing.
        queue_options("SQLite", queue_name, kwargs, self.visibility_timeout)
        manifests = json.dumps(sorted(set(filter_events))) if filter_events else None
        now = self._clock()
        with self._write() as conn:
            if dead_letter_queue_name is not None and dead_letter_queue_name != queue_name:
                dlq_options = {k: v for k, v in kwargs.items() if k == "fifo"}
                self._upsert_queue(conn, dead_letter_queue_name, dlq_options, now)
            self._upsert_queue(conn, queue_name, kwargs, now)
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
                    "INSERT OR REPLACE INTO subscriptions (topic, queue, manifests) "
                    "VALUES (?, ?, ?)",
                    (topic.name, queue_name, manifests),
                )
        dlq = (
            QueueWrapper(dead_letter_queue_name, dead_letter_queue_name)
            if dead_letter_queue_name
            else None
        )
        return QueueWrapper(queue_name, queue_name), dlq

    def _upsert_queue(
        self, conn: sqlite3.Connection, name: str, options: Mapping[str, Any], now: float
    ) -> None:
        settings = queue_options("SQLite", name, options, self.visibility_timeout)
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

    def delete_queue(self, queue: QueueWrapper) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM messages WHERE queue = ?", (queue.name,))
            conn.execute("DELETE FROM subscriptions WHERE queue = ?", (queue.name,))
            conn.execute("DELETE FROM deduplication WHERE queue = ?", (queue.name,))
            conn.execute("DELETE FROM queues WHERE name = ?", (queue.name,))

    def delete_topic(self, topic: TopicWrapper) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM subscriptions WHERE topic = ?", (topic.name,))
            conn.execute("DELETE FROM topics WHERE name = ?", (topic.name,))

    # -- inspection (the CLI and tests) -----------------------------------------------------

    def queue_names(self) -> list[str]:
        """Names of every queue, sorted."""
        with self._read() as conn:
            return [row[0] for row in conn.execute("SELECT name FROM queues ORDER BY name")]

    def topic_names(self) -> list[str]:
        """Names of every topic, sorted."""
        with self._read() as conn:
            return [row[0] for row in conn.execute("SELECT name FROM topics ORDER BY name")]

    def subscriptions(self, topic_name: str) -> dict[str, list[str] | None]:
        """The queues subscribed to a topic, each with its manifest filter (``None``: all)."""
        with self._read() as conn:
            if (
                conn.execute("SELECT 1 FROM topics WHERE name = ?", (topic_name,)).fetchone()
                is None
            ):
                raise TopicNotFoundError(topic_name)
            rows = conn.execute(
                "SELECT queue, manifests FROM subscriptions WHERE topic = ? ORDER BY queue",
                (topic_name,),
            ).fetchall()
        return {queue: json.loads(manifests) if manifests else None for queue, manifests in rows}

    def queue_stats(self, queue_name: str) -> QueueStats:
        """How many messages the queue holds: ready, in flight and delayed."""
        now = self._clock()
        with self._read() as conn:
            self._queue_config(conn, queue_name)
            ready, in_flight, delayed = conn.execute(
                "SELECT"
                " COALESCE(SUM(visible_at <= :now), 0),"
                " COALESCE(SUM(visible_at > :now AND receipt IS NOT NULL), 0),"
                " COALESCE(SUM(visible_at > :now AND receipt IS NULL), 0)"
                " FROM messages WHERE queue = :queue",
                {"now": now, "queue": queue_name},
            ).fetchone()
        return QueueStats(queue_name, int(ready), int(in_flight), int(delayed))

    def queue_depth(self, queue_name: str) -> int:
        """Messages in the queue, in flight or not."""
        return self.queue_stats(queue_name).total

    def peek(self, queue_name: str, limit: int = 10) -> list[Message]:
        """Up to ``limit`` messages of the queue in publish order, without receiving them.

        The copies cannot be settled (their ``metadata`` is ``None``); ``attempt`` tells how
        many attempts at each failed so far (``None``: none).
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        with self._read() as conn:
            self._queue_config(conn, queue_name)
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE queue = ? ORDER BY id LIMIT ?",
                (queue_name, limit),
            ).fetchall()
        return [_to_message(_Row(*row), None) for row in rows]

    def purge(self, queue_name: str) -> int:
        """Delete every message of the queue, in flight or not; returns how many."""
        with self._write() as conn:
            self._queue_config(conn, queue_name)
            deleted = conn.execute("DELETE FROM messages WHERE queue = ?", (queue_name,)).rowcount
        return int(deleted)

    def _queue_config(self, conn: sqlite3.Connection, name: str) -> _QueueConfig:
        row = conn.execute(
            "SELECT name, fifo, visibility_timeout, delay_seconds, dead_letter_queue, "
            "max_receive_count FROM queues WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            raise QueueNotFoundError(name)
        return _QueueConfig(row[0], bool(row[1]), row[2], row[3], row[4], row[5])

    # -- publishing -------------------------------------------------------------------------

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        self._check_sizes((message,))
        row = (
            message.message_id,
            message.content,
            message.serializer_id,
            message.manifest,
            _dump_headers(message.headers),
            message.group_id,
            message.deduplication_id,
            self._clock(),
            queue.name,
        )
        # One statement outside an explicit transaction is a transaction of its own (SQLite
        # takes the write lock for it, waiting up to busy_timeout), so a single message to a
        # standard queue needs no BEGIN and COMMIT. Anything else takes the general path.
        conn = self._acquire()
        try:
            inserted = conn.execute(_INSERT_INTO_STANDARD_QUEUE, row).rowcount
        except sqlite3.Error as exc:
            raise self._backend_error(exc) from exc
        finally:
            self._release(conn)
        if inserted:
            self._wake_receivers()
        else:
            self.publish_batch_to_queue([message], queue, **kwargs)

    def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper, **kwargs: Any
    ) -> None:
        """Publish every message in one transaction: all of them are stored, or none."""
        self._check_sizes(messages)
        if not messages:
            return
        now = self._clock()
        # Encoded before the transaction, so the write lock is held for SQLite's work only.
        rows = [
            (
                m.message_id,
                m.content,
                m.serializer_id,
                m.manifest,
                _dump_headers(m.headers),
                m.group_id,
                m.deduplication_id,
                now,
                queue.name,
            )
            for m in messages
        ]
        with self._write() as conn:
            # A standard queue takes the rows in one statement that also reads its settings;
            # nothing is inserted if the queue is FIFO (deduplication and groups to check
            # first) or missing, and the general path below decides.
            inserted = conn.executemany(_INSERT_INTO_STANDARD_QUEUE, rows).rowcount
            if inserted == 0:
                target = self._queue_config(conn, queue.name)
                self._enqueue(conn, target, messages, now)
            elif inserted != len(rows):
                # One queue row read within one transaction: all rows or none, never some.
                raise BackendError(
                    f"publishing {len(rows)} messages to {queue.name!r} stored {inserted}; "
                    "the transaction was rolled back, nothing was published"
                )
        self._wake_receivers()

    def publish_to_topic(self, message: Message, topic: TopicWrapper, **kwargs: Any) -> None:
        self.publish_batch_to_topic([message], topic, **kwargs)

    def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper, **kwargs: Any
    ) -> None:
        """Copy every message to each subscribed queue whose filter accepts it, in one
        transaction."""
        self._check_sizes(messages)
        now = self._clock()
        with self._write() as conn:
            if (
                conn.execute("SELECT 1 FROM topics WHERE name = ?", (topic.name,)).fetchone()
                is None
            ):
                raise TopicNotFoundError(topic.name)
            subscriptions = conn.execute(
                "SELECT queue, manifests FROM subscriptions WHERE topic = ? ORDER BY queue",
                (topic.name,),
            ).fetchall()
            for queue_name, manifests in subscriptions:
                try:
                    target = self._queue_config(conn, queue_name)
                except QueueNotFoundError:
                    continue
                allowed = set(json.loads(manifests)) if manifests else None
                selected = [m for m in messages if allowed is None or m.manifest in allowed]
                self._enqueue(conn, target, selected, now)
        self._wake_receivers()

    def _check_sizes(self, messages: Sequence[Message]) -> None:
        limit = self._max_message_size
        if limit is None:
            return
        for message in messages:
            size = len(message.content.encode("utf-8"))
            if size > limit:
                raise MessageTooLargeError(size, limit, "SQLite")

    def _enqueue(
        self,
        conn: sqlite3.Connection,
        queue: _QueueConfig,
        messages: Sequence[Message],
        now: float,
        headers: Sequence[Mapping[str, str]] | None = None,
    ) -> None:
        visible_at = now + queue.delay_seconds
        rows = []
        for index, message in enumerate(messages):
            if queue.fifo:
                if message.group_id is None:
                    raise ConfigurationError(
                        f"queue {queue.name!r} is FIFO: publish with a message_group_id"
                    )
                dedup = message.deduplication_id
                if dedup is not None and self._seen(conn, queue.name, dedup, now):
                    continue
            rows.append(
                (
                    queue.name,
                    message.message_id,
                    message.content,
                    message.serializer_id,
                    message.manifest,
                    _dump_headers(headers[index] if headers is not None else message.headers),
                    message.group_id,
                    message.deduplication_id,
                    visible_at,
                )
            )
        conn.executemany(_INSERT, rows)

    def _seen(self, conn: sqlite3.Connection, queue: str, dedup_id: str, now: float) -> bool:
        """Whether ``dedup_id`` was published to ``queue`` within the window; records it."""
        cutoff = now - DEDUPLICATION_WINDOW_SECONDS
        if now >= self._next_dedup_sweep:
            self._next_dedup_sweep = now + 60.0
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

    def _wake_receivers(self) -> None:
        with self._wake:
            self._doorbell.rings += 1
            self._wake.notify_all()

    # -- consuming --------------------------------------------------------------------------

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Claim up to ``max_messages`` (default 10) visible messages.

        With ``wait_seconds`` it waits that long for messages to arrive when there are none,
        checking every ``poll_interval`` for other processes' publishes; publishes from this
        process and :meth:`interrupt` wake it at once (an interrupt returns ``[]``).
        """
        max_messages = int(kwargs.get("max_messages") or 10)
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        wait = float(kwargs.get("wait_seconds") or 0.0)
        deadline = time.monotonic() + wait
        with self._wake:
            interrupts = self._interrupts
        while True:
            with self._wake:
                publishes = self._doorbell.rings
            received = self._receive(queue.name, max_messages)
            remaining = deadline - time.monotonic()
            if received or remaining <= 0:
                return received
            with self._wake:
                if self._interrupts != interrupts:
                    return []
                if self._doorbell.rings == publishes:
                    self._wake.wait(min(remaining, self._poll_interval))
                if self._interrupts != interrupts:
                    return []

    def _receive(self, queue_name: str, max_messages: int) -> list[Message]:
        # A plain read first: idle consumers polling an empty queue never take the write lock.
        # Skipped while the queue keeps yielding messages, where it would only cost time.
        if queue_name not in self._busy_queues:
            with self._read() as conn:
                self._queue_config(conn, queue_name)
                probe = conn.execute(
                    "SELECT 1 FROM messages WHERE queue = ? AND visible_at <= ? LIMIT 1",
                    (queue_name, self._clock()),
                ).fetchone()
            if probe is None:
                return []
        with self._write() as conn:
            now = self._clock()
            queue = self._queue_config(conn, queue_name)
            if queue.fifo:
                ids = self._fifo_candidates(conn, queue.name, now, max_messages)
                rows = self._rows_by_id(conn, ids)
            else:
                rows = [
                    _Row(*row)
                    for row in conn.execute(
                        f"SELECT {_COLUMNS} FROM messages WHERE queue = ? AND visible_at <= ? "
                        "ORDER BY visible_at, id LIMIT ?",
                        (queue.name, now, max_messages),
                    )
                ]
            deliver: list[_Row] = []
            for row in rows:
                if queue.dead_letter_queue and row.receive_count >= queue.max_receive_count:
                    self._move_to_dead_letter_queue(
                        conn, queue, row, {}, "max receive count exceeded", now
                    )
                else:
                    deliver.append(row)
            if not deliver:
                self._busy_queues.discard(queue.name)
                return []
            self._busy_queues.add(queue.name)
            token = secrets.randbits(62)
            conn.executemany(
                "UPDATE messages SET receipt = ?, visible_at = ?, "
                "receive_count = receive_count + 1 WHERE id = ?",
                [(token, now + queue.visibility_timeout, row.id) for row in deliver],
            )
        return [
            _to_message(row, _Receipt(queue.name, row.id, token, queue.visibility_timeout))
            for row in deliver
        ]

    @staticmethod
    def _fifo_candidates(
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

    @staticmethod
    def _rows_by_id(conn: sqlite3.Connection, ids: list[int]) -> list[_Row]:
        rows: list[_Row] = []
        # In slices: SQLite caps the number of parameters of one statement.
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows.extend(
                _Row(*row)
                for row in conn.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE id IN ({marks}) ORDER BY id", chunk
                )
            )
        return rows

    def _move_to_dead_letter_queue(
        self,
        conn: sqlite3.Connection,
        queue: _QueueConfig,
        row: _Row,
        extra_headers: Mapping[str, str],
        reason: str,
        now: float,
    ) -> None:
        assert queue.dead_letter_queue is not None
        try:
            dlq = self._queue_config(conn, queue.dead_letter_queue)
        except QueueNotFoundError:
            # Deleted behind our back: recreate it rather than drop the message.
            self._upsert_queue(conn, queue.dead_letter_queue, {"fifo": queue.fifo}, now)
            dlq = self._queue_config(conn, queue.dead_letter_queue)
        copy, headers = dead_letter_copy(
            _to_message(row, None),
            {**json.loads(row.headers), **extra_headers},
            source_queue=queue.name,
            reason=reason,
            into_fifo=dlq.fifo,
        )
        self._enqueue(conn, dlq, [copy], now, [headers])
        conn.execute("DELETE FROM messages WHERE id = ?", (row.id,))

    @staticmethod
    def _receipt(message: Message) -> _Receipt:
        receipt = message.metadata
        if not isinstance(receipt, _Receipt):
            raise ValueError(f"{message!r} was not received from an SQLite backend")
        return receipt

    def acknowledge(self, message: Message) -> None:
        """Delete the message. A late acknowledgement (another consumer has it now) is a
        no-op."""
        self.acknowledge_batch([message])

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Delete the messages in one transaction."""
        keys = [(receipt.row_id, receipt.token) for receipt in map(self._receipt, messages)]
        if not keys:
            return
        if len(keys) == 1:
            # One statement is a transaction of its own: no BEGIN and COMMIT needed.
            conn = self._acquire()
            try:
                conn.execute(_DELETE_SETTLED, keys[0])
            except sqlite3.Error as exc:
                raise self._backend_error(exc) from exc
            finally:
                self._release(conn)
            return
        with self._write() as conn:
            conn.executemany(_DELETE_SETTLED, keys)

    def nack(self, message: Message, delay: float = 0.0) -> None:
        """Make the message visible again after ``delay`` seconds (a failed attempt).

        On a FIFO queue a delayed message keeps its group blocked while it waits, so the
        group's order holds (and :meth:`queue_stats` counts it as in flight meanwhile).
        """
        self._give_back(message, delay, failed=True)

    def release(self, message: Message, delay: float = 0.0) -> None:
        """As :meth:`nack`, but not a failed attempt: ``attempt`` stays as it was (the
        delivery still counts towards ``max_receive_count``, the backstop)."""
        self._give_back(message, delay, failed=False)

    def _give_back(self, message: Message, delay: float, failed: bool) -> None:
        receipt = self._receipt(message)
        delay = max(0.0, float(delay))
        with self._write() as conn:
            found = conn.execute("SELECT fifo FROM queues WHERE name = ?", (receipt.queue,))
            row = found.fetchone()
            fifo = bool(row[0]) if row else False
            visible_at = self._clock() + delay
            # On a FIFO queue a delayed message keeps its receipt, which blocks its group.
            keep = "" if fifo and delay > 0 else ", receipt = NULL"
            conn.execute(
                f"UPDATE messages SET visible_at = ?, attempts = attempts + ?{keep} "
                "WHERE id = ? AND receipt = ?",
                (visible_at, int(failed), receipt.row_id, receipt.token),
            )
        if delay == 0:
            self._wake_receivers()

    def dead_letter(self, message: Message, headers: Mapping[str, str]) -> bool:
        receipt = self._receipt(message)
        with self._write() as conn:
            try:
                queue = self._queue_config(conn, receipt.queue)
            except QueueNotFoundError:
                return False
            if queue.dead_letter_queue is None:
                return False
            found = conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE id = ? AND receipt = ?",
                (receipt.row_id, receipt.token),
            ).fetchone()
            if found is None:
                # The lease was lost: the message will come back and be dead-lettered then.
                return True
            now = self._clock()
            reason = headers.get(FAILURE_REASON, "dead-lettered")
            self._move_to_dead_letter_queue(conn, queue, _Row(*found), headers, reason, now)
        self._wake_receivers()
        return True

    def visibility_timeout_for(self, message: Message) -> float | None:
        receipt = message.metadata
        if isinstance(receipt, _Receipt) and receipt.lease > 0:
            return receipt.lease
        return self.visibility_timeout

    def extend_visibility(self, message: Message, seconds: float) -> None:
        receipt = self._receipt(message)
        with self._write() as conn:
            conn.execute(
                "UPDATE messages SET visible_at = ? WHERE id = ? AND receipt = ?",
                (self._clock() + float(seconds), receipt.row_id, receipt.token),
            )

    def interrupt(self) -> None:
        """End every :meth:`retrieve_messages` wait in this process; they return ``[]``."""
        with self._wake:
            self._interrupts += 1
            self._wake.notify_all()

    def close_connection(self) -> None:
        """Interrupt waiting receivers and close every connection (idempotent)."""
        self.interrupt()
        with self._pool_cond:
            if self._closed:
                return
            self._closed = True
            free = list(self._free)
            self._free.clear()
            self._pool_cond.notify_all()
        for conn in free:
            conn.close()


_OPEN_BACKENDS: weakref.WeakSet[SQLiteBackend] = weakref.WeakSet()


def _reset_after_fork() -> None:
    global _DOORBELLS_GUARD
    # Another thread of the parent may have held the guard when it forked.
    _DOORBELLS_GUARD = threading.Lock()
    _DOORBELLS.clear()
    for backend in list(_OPEN_BACKENDS):
        backend._after_fork()


class _Doorbell:
    """A condition receivers wait on, and a count of the publishes that rang it."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.rings = 0


_DOORBELLS: dict[str, _Doorbell] = {}
_DOORBELLS_GUARD = threading.Lock()


def _doorbell_for(path: str) -> _Doorbell:
    """The doorbell of a database file, one per file in this process."""
    with _DOORBELLS_GUARD:
        return _DOORBELLS.setdefault(os.path.realpath(path), _Doorbell())


def _require_topic(conn: sqlite3.Connection, name: str) -> None:
    if conn.execute("SELECT 1 FROM topics WHERE name = ?", (name,)).fetchone() is None:
        raise TopicNotFoundError(name)


def _dump_headers(headers: Mapping[str, str]) -> str:
    if not headers:
        return "{}"
    return _HEADERS_ENCODER.encode(dict(headers))


# One encoder for every row: ``json.dumps`` with options builds a new one per call.
_HEADERS_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _migrate_from_version_1(conn: sqlite3.Connection) -> None:
    """Version 2 counts failed attempts apart from deliveries (``attempts``)."""
    conn.execute("ALTER TABLE messages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")
    # Version 1 counted every delivery as an attempt: keep the counts messages had.
    conn.execute(
        "UPDATE messages SET attempts = receive_count - (receipt IS NOT NULL) "
        "WHERE receive_count > 0"
    )
    conn.execute(
        "UPDATE melange_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
    )


def _to_message(row: _Row, receipt: _Receipt | None) -> Message:
    # A received message is on its attempt after the failed ones; a peeked or dead-lettered
    # copy tells how many failed.
    attempt = row.attempts + 1 if receipt is not None else row.attempts or None
    return Message(
        row.message_id,
        row.content,
        receipt,
        row.serializer_id,
        row.manifest,
        json.loads(row.headers),
        attempt,
        row.group_id,
        row.dedup_id,
    )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


__all__ = ["DEDUPLICATION_WINDOW_SECONDS", "SCHEMA_VERSION", "QueueStats", "SQLiteBackend"]

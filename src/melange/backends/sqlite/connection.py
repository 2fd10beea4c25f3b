"""The database file of :class:`~melange.backends.sqlite.SQLiteBackend`: opening it, its
schema and migrations, the pool of connections, transactions, the doorbell that wakes the
receivers of a queue, and what happens across ``fork``.

Storage (schema version 3): ``melange_meta`` (key/value: the schema version),
``queues`` (settings, and ``depth``: the messages the queue holds, kept by triggers on
``messages`` so that counting them never scans the queue), ``topics``, ``subscriptions``
(topic, queue, JSON list of manifests or ``NULL``), ``messages`` (one row per message per
queue; a row is visible once ``visible_at`` has passed and is in flight while it carries a
``receipt`` and ``visible_at`` lies ahead; ``attempts`` counts its failed attempts,
``receive_count`` its deliveries), and ``deduplication`` (FIFO deduplication ids seen in the
last five minutes). Times are Unix
timestamps, so every process on the machine shares one clock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from melange.exceptions import BackendError, ConfigurationError, WouldBlock
from melange.sql_connections import close_when_collected

_T = TypeVar("_T")

#: The schema version this module writes and understands.
SCHEMA_VERSION = 3

#: The ``synchronous`` settings SQLite knows, weakest first.
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

MEMORY = ":memory:"

_SCHEMA = (
    """
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
    created_at REAL NOT NULL,
    depth INTEGER NOT NULL DEFAULT 0
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
    + """
-- Each queue counts its messages, whoever inserts or deletes them.
CREATE TRIGGER messages_counted AFTER INSERT ON messages BEGIN
    UPDATE queues SET depth = depth + 1 WHERE name = NEW.queue;
END;
CREATE TRIGGER messages_uncounted AFTER DELETE ON messages BEGIN
    UPDATE queues SET depth = depth - 1 WHERE name = OLD.queue;
END;
"""
)

# The part of the schema that migrating from version 2 adds.
_TRIGGERS = _SCHEMA[_SCHEMA.index("-- Each queue counts") :]


def _statements(script: str) -> list[str]:
    """The statements of a script, one by one (a trigger's body holds statements too)."""
    statements: list[str] = []
    buffer = ""
    for part in script.split(";")[:-1]:
        buffer += part + ";"
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return statements


class _Inline(threading.local):
    """The call of this thread that runs inline (see :meth:`Database.run_inline`), if any."""

    active = False
    # Whether the call committed a write: from then on it cannot be given up.
    committed = False
    # This thread's connection for inline calls (file mode), which never waits for a lock.
    conn: sqlite3.Connection | None = None


class Database:
    """The connections of one backend to its database file (or to ``":memory:"``).

    The file is created (with its schema) when the first connection opens. Connections are
    pooled, one per concurrent thread; in-memory mode has exactly one, handed out in turn.
    Calls made through :meth:`run_inline` use a connection of their own per thread that never
    waits for the write lock.

    Raises:
        ConfigurationError: the file is not a Melange database, was written by a newer
            version, is read-only, or cannot be created.
    """

    def __init__(self, path: str, *, synchronous: str, busy_timeout: float) -> None:
        #: The database file as given.
        self.path = path
        self.memory = self.path == MEMORY
        # Connections opened later (one per concurrent thread) must reach the same file even
        # if the process changes its working directory meanwhile.
        self._target = self.path if self.memory else os.path.abspath(self.path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        # Connections not in use. In-memory mode has exactly one, handed out under the
        # condition below: every connection to ":memory:" would be a different database.
        self._pool_cond = threading.Condition(threading.Lock())
        self._free: list[sqlite3.Connection] = []
        self._closed = False
        # Connections inherited from the parent process across fork, never used again.
        self._abandoned: list[sqlite3.Connection] = []
        # Wakes waiting receivers on publish: shared by every backend of this process on the
        # same file, so one instance's publish reaches another's receivers at once.
        self.doorbell = Doorbell() if self.memory else doorbell_for(self.path)
        self._inline = _Inline()
        # The inline connections of every thread, to close with the pool.
        self._inline_conns: list[sqlite3.Connection] = []
        self._free.append(self.open(initialize=True))
        _OPEN_DATABASES.add(self)
        # A backend dropped without close_connection() (common in scripts and at exit) still
        # closes its connections, rather than leaving them to the garbage collector, which
        # warns about each (ResourceWarning, from Python 3.13) and closes them in any order.
        self._finalizer = close_when_collected(self, self._free, self._inline_conns)

    def open(
        self, initialize: bool = False, busy_timeout: float | None = None
    ) -> sqlite3.Connection:
        """A new connection, with the pragmas set (and, first time, the schema checked);
        it waits for a lock up to ``busy_timeout`` (by default the database's)."""
        if busy_timeout is None:
            busy_timeout = self.busy_timeout
        if not self.memory:
            directory = os.path.dirname(self._target)
            if not os.path.isdir(directory):
                raise ConfigurationError(
                    f"cannot open SQLite database {self.path!r}: directory {directory!r} "
                    "does not exist; create it first"
                )
        try:
            conn = sqlite3.connect(
                self._target,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
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
        if not self.memory:
            if os.path.exists(self._target) and not os.access(self._target, os.W_OK):
                raise sqlite3.OperationalError("readonly file")
            # Persistent in the file; every later connection uses WAL too. Asked first: a
            # file already in WAL mode is opened without waiting for anyone's lock.
            mode = conn.execute("PRAGMA journal_mode").fetchone()
            if not mode or str(mode[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if self._schema_is_current(conn):
                # Opening a database in use takes no write lock: readers (``melange queues``)
                # do not wait behind a long write, and never hold a writer up.
                return
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
                    version = 2
                if version == 2:
                    _migrate_from_version_2(conn)
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
                for statement in _statements(_SCHEMA):
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

    @staticmethod
    def _schema_is_current(conn: sqlite3.Connection) -> bool:
        """Whether the file holds Melange's current schema (read without a write lock)."""
        try:
            found = conn.execute(
                "SELECT value FROM melange_meta WHERE key = 'schema_version'"
            ).fetchone()
        except sqlite3.OperationalError:
            return False  # no such table: a new file, or not Melange's (checked under the lock)
        return found is not None and str(found[0]) == str(SCHEMA_VERSION)

    def after_fork(self) -> None:
        """In a forked child: drop the parent's connections and locks, which SQLite and
        threading do not support across ``fork``; the child opens its own on first use."""
        self._pool_cond = threading.Condition(threading.Lock())
        self._inline = _Inline()
        if not self.memory:
            # Never closed here: closing would touch the parent's file locks.
            self._abandoned = self._free + self._inline_conns
            self._finalizer.detach()  # it would close them too
            self._free = []
            self._inline_conns = []
            self._finalizer = close_when_collected(self, self._free, self._inline_conns)
            self.doorbell = doorbell_for(self.path)
        else:
            self.doorbell = Doorbell()

    def run_inline(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Call ``fn`` so that it never waits: on this thread's inline connection, whose
        busy timeout is 0 (in-memory mode: on the only connection, if it is free).

        Raises:
            WouldBlock: another connection held the write lock (or the in-memory database's
                connection was in use) before ``fn`` committed anything; nothing was done.
                A lock met after a commit is reported as usual (``BackendError``), never as
                ``WouldBlock``: the call cannot be made again without repeating its write.
        """
        state = self._inline
        if state.active:
            return fn(*args, **kwargs)
        state.active = True
        state.committed = False
        try:
            return fn(*args, **kwargs)
        finally:
            state.active = False

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"SQLiteBackend({self.path!r}) is closed")

    def _inline_connection(self, state: _Inline) -> sqlite3.Connection:
        if self.memory:
            with self._pool_cond:
                self._check_open()
                if not self._free:
                    raise WouldBlock("the in-memory SQLite database's connection is in use")
                return self._free.pop()
        self._check_open()
        conn = state.conn
        if conn is None:
            conn = self.open(busy_timeout=0.0)
            with self._pool_cond:
                if self._closed:  # closed while it opened: close() did not see it
                    conn.close()
                    self._check_open()
                self._inline_conns.append(conn)
            state.conn = conn
        return conn

    def acquire(self) -> sqlite3.Connection:
        """A connection of the pool, or a new one (in-memory mode: wait for the only one)."""
        state = self._inline
        if state.active:
            return self._inline_connection(state)
        with self._pool_cond:
            while True:
                self._check_open()
                if self._free:
                    return self._free.pop()
                if not self.memory:
                    break
                self._pool_cond.wait()
        return self.open()

    def release(self, conn: sqlite3.Connection) -> None:
        """Give a connection back to the pool (closed instead once the pool is)."""
        if conn is self._inline.conn:
            return  # this thread's inline connection stays with it
        with self._pool_cond:
            if self._closed:
                conn.close()
                return
            self._free.append(conn)
            self._pool_cond.notify()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode: each statement reads a consistent snapshot."""
        conn = self.acquire()
        try:
            yield conn
        except sqlite3.Error as exc:
            raise self.error(exc) from exc
        finally:
            self.release(conn)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, holding the database's write lock from its first statement.

        Taking the lock up front (``BEGIN IMMEDIATE``) means two processes never read the
        same visible row and both claim it: the second waits, then sees the first's claim.
        """
        conn = self.acquire()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            if self._inline.active:
                self._inline.committed = True
        except sqlite3.Error as exc:
            raise self.error(exc) from exc
        finally:
            self.release(conn)

    def execute(self, sql: str, parameters: Sequence[object]) -> int:
        """Run one statement as a transaction of its own (SQLite takes the write lock for
        it, waiting up to ``busy_timeout``, with no BEGIN and COMMIT); its row count."""
        conn = self.acquire()
        try:
            count: int = conn.execute(sql, parameters).rowcount
        except sqlite3.Error as exc:
            raise self.error(exc) from exc
        finally:
            self.release(conn)
        if count and self._inline.active:
            self._inline.committed = True
        return count

    def error(self, exc: sqlite3.Error) -> BackendError:
        """The :class:`~melange.exceptions.BackendError` an SQLite failure is reported as."""
        text = str(exc)
        if "locked" in text or "busy" in text:
            state = self._inline
            if state.active and not state.committed:
                return WouldBlock(f"SQLite database {self.path!r} is locked by another connection")
            return BackendError(
                f"SQLite database {self.path!r} stayed locked by another connection for more "
                f"than busy_timeout={self.busy_timeout}s: {text}"
            )
        if "readonly" in text:
            return BackendError(
                f"SQLite database {self.path!r} became read-only: check the permissions of "
                f"the file and its directory ({text})"
            )
        return BackendError(f"SQLite database {self.path!r}: {text}")

    def close(self) -> None:
        """Close every connection; later uses raise ``BackendError`` (idempotent)."""
        with self._pool_cond:
            if self._closed:
                return
            self._closed = True
            free = [*self._free, *self._inline_conns]
            self._free.clear()
            self._inline_conns.clear()
            self._pool_cond.notify_all()
        for conn in free:
            conn.close()


_OPEN_DATABASES: weakref.WeakSet[Database] = weakref.WeakSet()


def _reset_after_fork() -> None:
    global _DOORBELLS_GUARD
    # Another thread of the parent may have held the guard when it forked.
    _DOORBELLS_GUARD = threading.Lock()
    _DOORBELLS.clear()
    for database in list(_OPEN_DATABASES):
        database.after_fork()


class Doorbell:
    """What wakes the receivers of this process: a count of the publishes to each queue, and
    a condition per queue that its receivers wait on, so a publish wakes only the receivers
    of the queues it reached. All conditions share :attr:`lock`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._rings: dict[str, int] = {}
        self._conditions: dict[str, threading.Condition] = {}
        # Queue -> callbacks of receivers waiting without a thread (an event loop's).
        self._watchers: dict[str, list[Callable[[], None]]] = {}

    def rings(self, queue: str) -> int:
        """How many times publishes to ``queue`` rang (read before looking at the queue)."""
        return self._rings.get(queue, 0)

    def ring(self, *queues: str) -> None:
        """Count a publish to each queue and wake the receivers waiting on them."""
        with self.lock:
            for queue in queues:
                self._rings[queue] = self._rings.get(queue, 0) + 1
                condition = self._conditions.get(queue)
                if condition is not None:
                    condition.notify_all()
                for wake in self._watchers.get(queue, ()):
                    wake()

    def wait(self, queue: str, rings: int, timeout: float) -> None:
        """With :attr:`lock` held: wait up to ``timeout`` seconds for a publish to ``queue``,
        unless one rang since :meth:`rings` returned ``rings``."""
        if self._rings.get(queue, 0) != rings:
            return
        condition = self._conditions.get(queue)
        if condition is None:
            condition = self._conditions[queue] = threading.Condition(self.lock)
        condition.wait(timeout)

    def wake_all(self) -> None:
        """With :attr:`lock` held: wake every waiting receiver, whatever its queue."""
        for condition in self._conditions.values():
            condition.notify_all()
        for watchers in self._watchers.values():
            for wake in watchers:
                wake()

    def watch(self, queue: str, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake()`` (under :attr:`lock`) on each publish to ``queue`` and on
        :meth:`wake_all`; returns what ends that."""
        with self.lock:
            self._watchers.setdefault(queue, []).append(wake)

        def unwatch() -> None:
            with self.lock:
                watchers = self._watchers.get(queue)
                if watchers is not None and wake in watchers:
                    watchers.remove(wake)
                    if not watchers:
                        del self._watchers[queue]

        return unwatch


_DOORBELLS: dict[str, Doorbell] = {}
_DOORBELLS_GUARD = threading.Lock()


def doorbell_for(path: str) -> Doorbell:
    """The doorbell of a database file, one per file in this process."""
    with _DOORBELLS_GUARD:
        return _DOORBELLS.setdefault(os.path.realpath(path), Doorbell())


def _migrate_from_version_1(conn: sqlite3.Connection) -> None:
    """Version 2 counts failed attempts apart from deliveries (``attempts``)."""
    conn.execute("ALTER TABLE messages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")
    # Version 1 counted every delivery as an attempt: keep the counts messages had.
    conn.execute(
        "UPDATE messages SET attempts = receive_count - (receipt IS NOT NULL) "
        "WHERE receive_count > 0"
    )
    conn.execute("UPDATE melange_meta SET value = '2' WHERE key = 'schema_version'")


def _migrate_from_version_2(conn: sqlite3.Connection) -> None:
    """Version 3 counts each queue's messages (``queues.depth``, kept by triggers)."""
    conn.execute("ALTER TABLE queues ADD COLUMN depth INTEGER NOT NULL DEFAULT 0")
    conn.execute(
        "UPDATE queues SET depth = (SELECT COUNT(*) FROM messages WHERE queue = queues.name)"
    )
    for statement in _statements(_TRIGGERS):
        conn.execute(statement)
    conn.execute("UPDATE melange_meta SET value = '3' WHERE key = 'schema_version'")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


__all__ = ["MEMORY", "SCHEMA_VERSION", "SYNCHRONOUS_MODES", "Database", "Doorbell", "doorbell_for"]

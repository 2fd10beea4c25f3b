"""The relay's side of the outbox table: claiming rows to send, recording what was sent, and
waiting for new rows, on PostgreSQL and on SQLite.

Claims and message groups
-------------------------
A relay takes up to ``limit`` unsent rows in id order, skipping rows another relay holds, and
rows of a message group that has an earlier unsent row it cannot send now (held by another
relay, or backing off after the broker refused it): so within a group, rows are sent in id
order by one relay at a time.

* **PostgreSQL** locks the rows it takes with ``SELECT ... FOR UPDATE SKIP LOCKED`` in a
  transaction that stays open while they are sent, and deletes (or marks) them in that same
  transaction. A relay that dies loses its connection, the server rolls the transaction back
  and the rows are free at once: nothing is marked sent that the broker did not confirm. A
  row of a group whose earlier row is locked by another relay is dropped from the claim after
  the lock (the earlier row, not yet deleted, is still visible then).
* **SQLite** has no row locks: a claim is one ``BEGIN IMMEDIATE`` write transaction that
  writes a lease (owner and expiry) on the rows, the rows are sent outside it, and a second
  write transaction deletes the sent rows that still carry this relay's lease. A relay that
  dies leaves its lease to run out (``lease_seconds``); then another relay takes the rows.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from melange.deduplication.sql_cache import _is_conninfo
from melange.exceptions import ConfigurationError
from melange.outbox.connections import POSTGRESQL, SQLITE
from melange.outbox.schema import (
    READ_COLUMNS,
    OutboxRow,
    check_table_name,
    create_statements,
    message_from_row,
)

_COLUMNS = ", ".join(f"o.{name}" for name in READ_COLUMNS)


def database_dialect(database: str) -> tuple[str, str]:
    """``(dialect, target)`` for a database string: a PostgreSQL URL or conninfo, a
    ``sqlite:///path`` URL or a SQLite file path."""
    if database.startswith(("postgresql://", "postgres://")) or _is_conninfo(database):
        return POSTGRESQL, database
    target = database.removeprefix("sqlite:///").removeprefix("sqlite://")
    if not target or target == ":memory:":
        raise ConfigurationError(
            f"the relay needs a database file or server shared with the writers, got {database!r}"
        )
    return SQLITE, target


@dataclass(slots=True)
class Claim:
    """Rows taken by one relay, to be sent and then finished."""

    rows: list[OutboxRow]
    #: Rows taken but not to be sent in this round (a group's earlier row is elsewhere).
    held_back: list[int] = field(default_factory=list)


class RelayStore(Protocol):
    """What the relay needs from the database, whichever it is."""

    dialect: str

    def setup(self) -> None:
        """Create the outbox table if missing."""

    def claim(self, limit: int) -> Claim:
        """Take up to ``limit`` rows to send now."""

    def finish(self, claim: Claim, sent: Sequence[int], failed: Mapping[int, str]) -> None:
        """Delete (or mark) the ``sent`` rows, back off the ``failed`` ones (id to reason),
        and give every other row of ``claim`` back."""

    def abandon(self, claim: Claim) -> None:
        """Give every row of ``claim`` back unchanged (the send could not be recorded)."""

    def prune(self) -> int:
        """Delete sent rows kept longer than the retention; returns how many."""

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for new rows; ``True`` when told of some."""

    def close(self) -> None:
        """Close the store's connections (a later call reopens them)."""


class _Base:
    def __init__(
        self,
        target: str,
        table: str,
        *,
        retry_delay: float,
        keep_sent: float | None,
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._target = target
        self.table = check_table_name(table)
        self._retry_delay = retry_delay
        self._keep_sent = keep_sent
        self._timeout = timeout
        self._clock = clock
        self._conn: Any = None

    def _done_sql(self, marks: str) -> str:
        if self._keep_sent is None:
            return f"DELETE FROM {self.table} WHERE id IN ({marks})"
        return f"UPDATE {self.table} SET sent_at = ? WHERE id IN ({marks})"

    def _done_params(self, ids: Sequence[int]) -> tuple[Any, ...]:
        return tuple(ids) if self._keep_sent is None else (self._clock(), *ids)

    def _failed_sql(self) -> str:
        return (
            f"UPDATE {self.table} SET attempts = attempts + 1, last_error = ?, "
            "available_at = ?, lease_owner = NULL, lease_until = NULL WHERE id = ?"
        )

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        self._drop()


class PostgresRelayStore(_Base):
    """The relay's store on PostgreSQL (psycopg 3): row locks and LISTEN/NOTIFY."""

    dialect = POSTGRESQL

    def __init__(self, target: str, table: str, *, listen: bool = True, **kwargs: Any) -> None:
        super().__init__(target, table, **kwargs)
        self._listen_enabled = listen
        self._listener: Any = None

    def _connect(self, autocommit: bool) -> Any:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ConfigurationError(
                "the outbox relay on PostgreSQL needs psycopg 3: pip install 'melange[postgres]'"
            ) from exc
        return psycopg.connect(
            self._target,
            autocommit=autocommit,
            connect_timeout=max(1, int(self._timeout)),
            # The relay's commits record rows as sent: one lost in a server crash only means
            # those rows are sent again (at least once), so they need not wait for the disk.
            options="-c synchronous_commit=off",
        )

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect(autocommit=False)
        return self._conn

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def setup(self) -> None:
        conn = self._connection()
        for attempt in range(2):
            try:
                for statement in create_statements(self.table, POSTGRESQL):
                    conn.execute(statement)
                conn.commit()
                return
            except Exception:
                conn.rollback()
                # Relays starting together race on CREATE ... IF NOT EXISTS; the second
                # try sees what the first created.
                if attempt:
                    raise

    def claim(self, limit: int) -> Claim:
        conn = self._connection()
        now = self._clock()
        try:
            # Pipeline mode: the BEGIN and the SELECT travel in one round trip.
            with conn.pipeline():
                rows = conn.execute(
                    self._sql(
                        f"SELECT {_COLUMNS} FROM {self.table} o "
                        "WHERE o.sent_at IS NULL AND o.available_at <= ? AND (o.group_id IS NULL "
                        f"OR NOT EXISTS (SELECT 1 FROM {self.table} p WHERE p.group_id = "
                        "o.group_id AND p.id < o.id AND p.sent_at IS NULL AND p.available_at > ?)) "
                        "ORDER BY o.id LIMIT ? FOR UPDATE OF o SKIP LOCKED"
                    ),
                    (now, now, limit),
                ).fetchall()
            claim = Claim([message_from_row(row) for row in rows])
            groups = sorted({r.message.group_id for r in claim.rows if r.message.group_id})
            if groups:
                # An earlier row of a group that is not ours is held by another relay: the
                # rows of that group after it wait for the next round.
                ids = [r.id for r in claim.rows]
                firsts = dict(
                    conn.execute(
                        f"SELECT group_id, min(id) FROM {self.table} WHERE sent_at IS NULL "
                        "AND group_id = ANY(%s) AND NOT (id = ANY(%s)) GROUP BY group_id",
                        (groups, ids),
                    ).fetchall()
                )
                claim = _hold_back(claim, firsts)
            if not claim.rows:
                conn.rollback()
            return claim
        except Exception:
            self._drop()
            raise

    def finish(self, claim: Claim, sent: Sequence[int], failed: Mapping[int, str]) -> None:
        conn = self._connection()
        try:
            # Pipeline mode: the statements and the COMMIT travel in one round trip.
            with conn.pipeline():
                if sent:
                    # One array parameter: the same statement text for every batch size.
                    if self._keep_sent is None:
                        conn.execute(f"DELETE FROM {self.table} WHERE id = ANY(%s)", (list(sent),))
                    else:
                        conn.execute(
                            f"UPDATE {self.table} SET sent_at = %s WHERE id = ANY(%s)",
                            (self._clock(), list(sent)),
                        )
                if failed:
                    retry_at = self._clock() + self._retry_delay
                    with conn.cursor() as cursor:
                        cursor.executemany(
                            self._sql(self._failed_sql()),
                            [
                                (reason[:1000], retry_at, row_id)
                                for row_id, reason in failed.items()
                            ],
                        )
                conn.commit()  # also releases the locks on the rows neither sent nor failed
        except Exception:
            self._drop()
            raise

    def abandon(self, claim: Claim) -> None:
        if self._conn is not None:
            try:
                self._conn.rollback()
            except Exception:
                self._drop()

    def prune(self) -> int:
        if self._keep_sent is None:
            return 0
        conn = self._connection()
        try:
            cursor = conn.execute(
                f"DELETE FROM {self.table} WHERE sent_at IS NOT NULL AND sent_at < %s",
                (self._clock() - self._keep_sent,),
            )
            conn.commit()
            return int(cursor.rowcount)
        except Exception:
            self._drop()
            raise

    def wait(self, timeout: float) -> bool:
        if not self._listen_enabled:
            time.sleep(timeout)
            return False
        try:
            if self._listener is None or self._listener.closed:
                self._listener = self._connect(autocommit=True)
                self._listener.execute(f"LISTEN {self.table}")
            for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                return True
            return False
        except Exception:
            listener, self._listener = self._listener, None
            if listener is not None:
                with contextlib.suppress(Exception):
                    listener.close()
            raise

    def close(self) -> None:
        super().close()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.close()


class SQLiteRelayStore(_Base):
    """The relay's store on SQLite: leases written in short write transactions."""

    dialect = SQLITE

    def __init__(self, target: str, table: str, *, lease_seconds: float, **kwargs: Any) -> None:
        super().__init__(target, table, **kwargs)
        self._lease_seconds = lease_seconds
        self.owner = uuid.uuid4().hex

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self._target, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # The relay's commits write leases and record rows as sent: one lost in a power
            # failure only means rows sent again, so they need not wait for the disk.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conn = conn
        connection: sqlite3.Connection = self._conn
        return connection

    @contextlib.contextmanager
    def _write(self) -> Any:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error:
            self._drop()
            raise

    def setup(self) -> None:
        with self._write() as conn:
            for statement in create_statements(self.table, SQLITE):
                conn.execute(statement)

    def claim(self, limit: int) -> Claim:
        now = self._clock()
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM {self.table} o "
                "WHERE o.sent_at IS NULL AND o.available_at <= ? "
                "AND (o.lease_until IS NULL OR o.lease_until <= ?) AND (o.group_id IS NULL "
                f"OR NOT EXISTS (SELECT 1 FROM {self.table} p WHERE p.group_id = o.group_id "
                "AND p.id < o.id AND p.sent_at IS NULL AND (p.available_at > ? "
                "OR (p.lease_until IS NOT NULL AND p.lease_until > ?)))) "
                "ORDER BY o.id LIMIT ?",
                (now, now, now, now, limit),
            ).fetchall()
            claim = Claim([message_from_row(row) for row in rows])
            if claim.rows:
                ids = [r.id for r in claim.rows]
                marks = ", ".join("?" for _ in ids)
                conn.execute(
                    f"UPDATE {self.table} SET lease_owner = ?, lease_until = ? "
                    f"WHERE id IN ({marks})",
                    (self.owner, now + self._lease_seconds, *ids),
                )
        return claim

    def finish(self, claim: Claim, sent: Sequence[int], failed: Mapping[int, str]) -> None:
        done = set(sent)
        rest = [r.id for r in claim.rows if r.id not in failed and r.id not in done]
        retry_at = self._clock() + self._retry_delay
        with self._write() as conn:
            if sent:
                marks = ", ".join("?" for _ in sent)
                # Only rows still under our lease: one taken over after the lease ran out is
                # the other relay's to finish.
                sql = self._done_sql(marks) + " AND lease_owner = ?"
                if self._keep_sent is not None:
                    sql = sql.replace("SET sent_at = ?", "SET sent_at = ?, lease_owner = NULL")
                conn.execute(sql, (*self._done_params(sent), self.owner))
            for row_id, reason in failed.items():
                conn.execute(
                    self._failed_sql() + " AND lease_owner = ?",
                    (reason[:1000], retry_at, row_id, self.owner),
                )
            self._release(conn, rest)

    def _release(self, conn: sqlite3.Connection, ids: Sequence[int]) -> None:
        if ids:
            marks = ", ".join("?" for _ in ids)
            conn.execute(
                f"UPDATE {self.table} SET lease_owner = NULL, lease_until = NULL "
                f"WHERE id IN ({marks}) AND lease_owner = ?",
                (*ids, self.owner),
            )

    def abandon(self, claim: Claim) -> None:
        with self._write() as conn:
            self._release(conn, [r.id for r in claim.rows])

    def prune(self) -> int:
        if self._keep_sent is None:
            return 0
        with self._write() as conn:
            cursor = conn.execute(
                f"DELETE FROM {self.table} WHERE sent_at IS NOT NULL AND sent_at < ?",
                (self._clock() - self._keep_sent,),
            )
            return int(cursor.rowcount)

    def wait(self, timeout: float) -> bool:
        # SQLite cannot tell another process that rows arrived: the relay polls.
        time.sleep(timeout)
        return False


def _hold_back(claim: Claim, firsts: Mapping[str, int]) -> Claim:
    """``claim`` without the rows that come after another relay's row of their group."""
    kept: list[OutboxRow] = []
    held: list[int] = []
    for row in claim.rows:
        first = firsts.get(row.message.group_id or "")
        if first is not None and row.id > first:
            held.append(row.id)
        else:
            kept.append(row)
    return Claim(kept, held)


def open_store(
    database: str,
    table: str,
    *,
    lease_seconds: float = 30.0,
    retry_delay: float = 5.0,
    keep_sent: float | None = None,
    listen: bool = True,
    timeout: float = 10.0,
    clock: Callable[[], float] = time.time,
) -> RelayStore:
    """The relay store for ``database`` (see :func:`database_dialect`)."""
    dialect, target = database_dialect(database)
    common: dict[str, Any] = {
        "retry_delay": retry_delay,
        "keep_sent": keep_sent,
        "timeout": timeout,
        "clock": clock,
    }
    if dialect == POSTGRESQL:
        return PostgresRelayStore(target, table, listen=listen, **common)
    return SQLiteRelayStore(target, table, lease_seconds=lease_seconds, **common)


__all__ = [
    "Claim",
    "PostgresRelayStore",
    "RelayStore",
    "SQLiteRelayStore",
    "database_dialect",
    "open_store",
]

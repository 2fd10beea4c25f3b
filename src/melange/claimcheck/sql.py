"""A payload store in a SQL table: SQLite (standard library) or PostgreSQL (psycopg 3).

One table holds a row per payload::

    key        text primary key
    data       blob / bytea
    stored_at  double precision   -- Unix time of the put, for purge()

Connections are handled as by :class:`~melange.deduplication.sql_cache.SQLDeduplicationCache`:
one connection in autocommit mode, calls serialized on it, reopened after a failure.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from melange.claimcheck.store import (
    PayloadMissingError,
    PayloadStore,
    PayloadStoreError,
    check_key,
)
from melange.deduplication.sql_cache import _IDENTIFIER, _is_conninfo
from melange.exceptions import ConfigurationError
from melange.sql_connections import connect_autocommit


class SQLPayloadStore(PayloadStore):
    """Keeps payloads in a table of SQLite or PostgreSQL.

    Args:
        database: A PostgreSQL URL or conninfo (``postgresql://user@host/db``, needs the
            ``postgres`` extra, psycopg 3), a ``sqlite:///path`` URL, or a path to a SQLite
            file.
        table: Name of the table; it is created if missing.
        timeout: Seconds to wait for a connection or a lock before a call fails with
            :class:`~melange.claimcheck.store.PayloadStoreError`.
        clock: Wall clock in Unix seconds, for ``stored_at``.

    Thread-safe: calls are serialized on one connection.
    """

    def __init__(
        self,
        database: str,
        *,
        table: str = "melange_payloads",
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not _IDENTIFIER.match(table):
            raise ConfigurationError(
                f"table name {table!r} is not a plain SQL identifier (letters, digits, _)"
            )
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be positive, got {timeout!r}")
        self._table = table
        self._timeout = timeout
        self._clock = clock
        if database.startswith(("postgresql://", "postgres://")) or _is_conninfo(database):
            self.name = self.dialect = "postgresql"
            self._target = database
            self._param = "%s"
            blob = "BYTEA"
        else:
            self.name = self.dialect = "sqlite"
            self._target = database.removeprefix("sqlite:///").removeprefix("sqlite://")
            if not self._target:
                raise ConfigurationError(f"no SQLite path in {database!r}")
            self._param = "?"
            blob = "BLOB"
        self._lock = threading.Lock()
        self._conn: Any = None
        create = (
            f"CREATE TABLE IF NOT EXISTS {table} ("
            f" key TEXT PRIMARY KEY, data {blob} NOT NULL, stored_at DOUBLE PRECISION NOT NULL)"
        )
        with self._lock:
            try:
                self._execute(create, (), "create the table")
            except PayloadStoreError:
                # Processes starting together race on CREATE TABLE IF NOT EXISTS (PostgreSQL
                # then reports a duplicate type); the second try sees the table.
                self._execute(create, (), "create the table")

    def __repr__(self) -> str:
        # The target is not shown: a connection string may hold a password.
        return f"SQLPayloadStore({self.dialect}, table={self._table!r})"

    def _sql(self, text: str) -> str:
        return text.replace("{t}", self._table).replace("?", self._param)

    def _connect(self) -> Any:
        return connect_autocommit(
            self.dialect, self._target, self._timeout, "SQLPayloadStore", self
        )

    def _execute(self, sql: str, params: tuple[Any, ...], action: str) -> Any:
        """Run one statement in autocommit mode; return the cursor. Caller holds the lock."""
        try:
            if self._conn is None:
                self._conn = self._connect()
            return self._conn.execute(sql, params)
        except ConfigurationError:
            raise
        except Exception as exc:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()  # already broken; the next call reconnects
            raise PayloadStoreError(
                f"{self!r} failed to {action}: {type(exc).__name__}: {exc}"
            ) from exc

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (replacing a payload of the same key)."""
        check_key(key)
        sql = self._sql(
            "INSERT INTO {t} (key, data, stored_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET data = excluded.data, stored_at = excluded.stored_at"
        )
        with self._lock:
            self._execute(sql, (key, bytes(data), self._clock()), f"store payload {key!r}")

    def get(self, key: str) -> bytes:
        """The payload under ``key``."""
        check_key(key)
        with self._lock:
            row = self._execute(
                self._sql("SELECT data FROM {t} WHERE key = ?"), (key,), f"read payload {key!r}"
            ).fetchone()
        if row is None:
            raise PayloadMissingError(f"no payload {key!r} in {self!r}")
        return bytes(row[0])

    def delete(self, key: str) -> None:
        """Remove the payload under ``key`` (nothing if there is none)."""
        check_key(key)
        with self._lock:
            self._execute(
                self._sql("DELETE FROM {t} WHERE key = ?"), (key,), f"delete payload {key!r}"
            )

    def purge(self, stored_before: float) -> int:
        """Remove the payloads stored before ``stored_before``."""
        with self._lock:
            cursor = self._execute(
                self._sql("DELETE FROM {t} WHERE stored_at < ?"), (stored_before,), "purge"
            )
        return max(0, int(cursor.rowcount))

    def close(self) -> None:
        """Close the connection (the next call opens another)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


__all__ = ["SQLPayloadStore"]

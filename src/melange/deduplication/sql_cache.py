"""A deduplication cache in a SQL database: SQLite (standard library) or PostgreSQL.

One table holds a row per deduplication key::

    key         text primary key   -- "<consumer name>.<message id>"
    state       text not null      -- "claimed" while a process works on it, else the value
                                   -- stored ("done" after success)
    claim_token text               -- which claimer holds the row while it is "claimed"
    expires_at  double precision   -- Unix time the row stops counting (NULL: never)

A claim is one atomic statement: an ``INSERT ... ON CONFLICT DO UPDATE`` that only takes over
a row whose lease or memory has expired, so two processes never both get the same key.

Exactly once with the handler's own writes
------------------------------------------
A handler that writes to the same database can record the message as processed in its own
transaction. If the process dies after the commit but before the broker heard about it, the
redelivered message is skipped; if the transaction rolls back, nothing was recorded and the
message is processed again::

    cache = SQLDeduplicationCache("postgresql://app@db/orders")

    class OrderConsumer(Consumer):
        def process(self, event: dict) -> None:
            with psycopg.connect("postgresql://app@db/orders") as conn:  # one transaction
                conn.execute("INSERT INTO orders (id) VALUES (%s)", (event["id"],))
                cache.mark_done_in(conn, cache.key_for(self))  # key of the current message

Clocks: leases and expiry compare Unix times taken on the consuming hosts; keep their clocks
in sync (NTP) to within a small fraction of the lease.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from melange.consumers import Consumer
from melange.context import current_message
from melange.deduplication.cache import (
    CLAIM_PREFIX,
    DONE,
    ClaimState,
    DeduplicationCache,
    check_expire,
    check_lease,
)
from melange.exceptions import (
    ConfigurationError,
    DeduplicationCacheError,
    InvalidDeduplicationKeyError,
)
from melange.models import Message
from melange.sql_connections import connect_autocommit

_CLAIMED = "claimed"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Expired rows are deleted now and then, after this many writes.
_PURGE_EVERY = 1000


# The keywords of a libpq connection string ("host=db dbname=orders"): a path holding "="
# ("data/a=b.db") is an SQLite file, not a PostgreSQL connection string.
_CONNINFO_KEYWORDS = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "channel_binding",
        "connect_timeout",
        "client_encoding",
        "options",
        "application_name",
        "fallback_application_name",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "replication",
        "gssencmode",
        "sslmode",
        "requiressl",
        "sslcompression",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslrootcert",
        "sslcrl",
        "sslcrldir",
        "sslsni",
        "requirepeer",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "krbsrvname",
        "gsslib",
        "service",
        "target_session_attrs",
        "load_balance_hosts",
    }
)
_CONNINFO_PAIR = re.compile(r"\s*([A-Za-z_]+)\s*=")
# PostgreSQL refuses index entries over about 2,700 bytes; keys stay well below.
_POSTGRES_KEY_BYTES = 2000


def _is_conninfo(database: str) -> bool:
    """Whether ``database`` is a libpq ``keyword=value`` connection string."""
    if database.startswith("sqlite:"):
        return False
    first = _CONNINFO_PAIR.match(database)
    return first is not None and first.group(1).lower() in _CONNINFO_KEYWORDS


def _key_problem(key: object, dialect: str) -> str | None:
    """Why the database of ``dialect`` cannot store ``key``, or ``None``."""
    if not isinstance(key, str):
        return f"a key is text, got {type(key).__name__}"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid Unicode text (a lone surrogate)"
    if dialect == "postgresql":
        if "\x00" in key:
            return "PostgreSQL text cannot hold a NUL character"
        if size > _POSTGRES_KEY_BYTES:
            return f"it is {size} bytes long, over the {_POSTGRES_KEY_BYTES} kept for a key"
    return None


def deduplication_key(consumer: Consumer | str, message: Message | str) -> str:
    """The key under which a dispatcher records that ``consumer`` processed ``message``."""
    name = consumer if isinstance(consumer, str) else consumer.name
    message_id = message if isinstance(message, str) else message.message_id
    return f"{name}.{message_id}"


class SQLDeduplicationCache(DeduplicationCache):
    """Deduplication cache in SQLite or PostgreSQL, with atomic claims.

    Args:
        database: A PostgreSQL URL or conninfo (``postgresql://user@host/db``, needs the
            ``postgres`` extra, psycopg 3), a ``sqlite:///path`` URL, or a path to a SQLite
            file (``":memory:"`` for a private in-memory database).
        table: Name of the table; it is created if missing.
        expire: Seconds a processed key is remembered; ``None`` keeps it forever.
        timeout: Seconds to wait for a connection or a lock before the call fails with
            :class:`~melange.exceptions.DeduplicationCacheError`.
        clock: Wall clock in Unix seconds (tests pass a fake one).

    Thread-safe: calls are serialized on one connection, reopened after a failure.
    """

    def __init__(
        self,
        database: str,
        *,
        table: str = "melange_deduplication",
        expire: float | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not _IDENTIFIER.match(table):
            raise ConfigurationError(
                f"table name {table!r} is not a plain SQL identifier (letters, digits, _)"
            )
        if expire is not None and expire <= 0:
            raise ConfigurationError(f"expire must be positive seconds or None, got {expire!r}")
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be positive, got {timeout!r}")
        self._table = table
        self._expire = expire
        self._timeout = timeout
        self._clock = clock
        if database.startswith(("postgresql://", "postgres://")) or _is_conninfo(database):
            self.dialect = "postgresql"
            self._target = database
            self._param = "%s"
        else:
            self.dialect = "sqlite"
            self._target = database.removeprefix("sqlite:///").removeprefix("sqlite://")
            if not self._target:
                raise ConfigurationError(f"no SQLite path in {database!r}")
            self._param = "?"
        self._lock = threading.Lock()
        self._conn: Any = None
        self._tokens: dict[str, str] = {}
        self._writes = 0
        with self._lock:
            try:
                self._execute(self._create_sql(), (), "create the table for")
            except DeduplicationCacheError:
                # Processes starting together race on CREATE TABLE IF NOT EXISTS (PostgreSQL
                # then reports a duplicate type); the second try sees the table.
                self._execute(self._create_sql(), (), "create the table for")

    # -- SQL --------------------------------------------------------------------------------

    def _create_sql(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self._table} ("
            " key TEXT PRIMARY KEY,"
            " state TEXT NOT NULL,"
            " claim_token TEXT,"
            " expires_at DOUBLE PRECISION)"
        )

    def _sql(self, text: str) -> str:
        return text.replace("{t}", self._table).replace("?", self._param)

    def _connect(self) -> Any:
        return connect_autocommit(
            self.dialect, self._target, self._timeout, "SQLDeduplicationCache", self
        )

    def _execute(self, sql: str, params: tuple[Any, ...], action: str, key: str = "") -> Any:
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
                # Already broken; the next call reconnects.
                with contextlib.suppress(Exception):
                    conn.close()
            raise DeduplicationCacheError(
                f"SQL deduplication cache ({self.dialect}, table {self._table}) failed to "
                f"{action} {key!r}: {exc}. Check that the database is reachable; messages are "
                "left for redelivery meanwhile (unless the dispatcher fails open)."
            ) from exc

    def _check_key(self, key: str) -> None:
        """Refuse a key the database cannot store: a fault of the message that made it (its
        id), never a sign that the database is down."""
        problem = _key_problem(key, self.dialect)
        if problem is not None:
            raise InvalidDeduplicationKeyError(
                f"deduplication key {key[:60]!r} cannot be stored by the SQL deduplication "
                f"cache ({self.dialect}): {problem}"
            )

    def _expiry(self, now: float) -> float | None:
        return now + self._expire if self._expire is not None else None

    # -- 7.2.0 interface --------------------------------------------------------------------

    def store(self, key: str, value: Any, expire: float | None = None) -> None:
        """Remember ``key`` with ``str(value)`` for ``expire`` seconds (default: the cache's)."""
        check_expire(expire)
        self._upsert_done(key, str(value), expire)

    def get(self, key: str) -> str | None:
        """The value stored for ``key``, or ``None``; a live claim reads as a claim marker."""
        self._check_key(key)
        with self._lock:
            row = self._execute(
                self._sql("SELECT state, claim_token, expires_at FROM {t} WHERE key = ?"),
                (key,),
                "read",
                key,
            ).fetchone()
        if row is None:
            return None
        state, token, expires_at = row
        if expires_at is not None and expires_at <= self._clock():
            return None
        if state == _CLAIMED:
            return f"{CLAIM_PREFIX}{token}"
        return str(state)

    # -- atomic claims ----------------------------------------------------------------------

    def claim(self, key: str, lease_seconds: float) -> ClaimState:
        """Take ``key`` for ``lease_seconds``, or report it DONE or BUSY (one statement)."""
        check_lease(lease_seconds)
        self._check_key(key)
        token = uuid.uuid4().hex
        # Insert a claim, or take over a row whose lease or memory has expired.
        upsert = self._sql(
            "INSERT INTO {t} (key, state, claim_token, expires_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET state = excluded.state, "
            "claim_token = excluded.claim_token, expires_at = excluded.expires_at "
            "WHERE {t}.expires_at IS NOT NULL AND {t}.expires_at <= ?"
        )
        with self._lock:
            for _ in range(3):
                now = self._clock()
                cursor = self._execute(
                    upsert, (key, _CLAIMED, token, now + lease_seconds, now), "claim", key
                )
                if cursor.rowcount == 1:
                    self._tokens[key] = token
                    self._count_write()
                    return ClaimState.CLAIMED
                row = self._execute(
                    self._sql("SELECT state, expires_at FROM {t} WHERE key = ?"),
                    (key,),
                    "claim",
                    key,
                ).fetchone()
                if row is None:
                    continue  # released between the two statements: try again
                state, expires_at = row
                if expires_at is not None and expires_at <= now:
                    continue  # expired between the two statements
                return ClaimState.BUSY if state == _CLAIMED else ClaimState.DONE
        return ClaimState.BUSY

    def mark_done(self, key: str) -> None:
        """Record ``key`` as processed (replacing any claim)."""
        self._upsert_done(key, DONE)
        with self._lock:
            self._tokens.pop(key, None)

    def _upsert_done(self, key: str, value: str, expire: float | None = None) -> None:
        self._check_key(key)
        with self._lock:
            now = self._clock()
            expires_at = self._expiry(now) if expire is None else now + expire
            self._execute(self._done_sql(), (key, value, expires_at), "mark as done", key)
            self._count_write()

    def _done_sql(self) -> str:
        return self._sql(
            "INSERT INTO {t} (key, state, claim_token, expires_at) VALUES (?, ?, NULL, ?) "
            "ON CONFLICT (key) DO UPDATE SET state = excluded.state, claim_token = NULL, "
            "expires_at = excluded.expires_at"
        )

    def renew(self, key: str, lease_seconds: float) -> bool:
        """Move the end of this instance's claim on ``key`` to ``lease_seconds`` from now.

        One ``UPDATE`` that matches only the row still claimed with our token; ``False`` when
        the claim is no longer ours (taken over after expiring, released, or marked done).
        A lease that ran out but that nobody took over still carries our token, so it is
        renewed: no other process can have started on the key in between.
        """
        check_lease(lease_seconds)
        with self._lock:
            token = self._tokens.get(key)
            if token is None:
                return False
            cursor = self._execute(
                self._sql(
                    "UPDATE {t} SET expires_at = ? WHERE key = ? AND state = ? AND claim_token = ?"
                ),
                (self._clock() + lease_seconds, key, _CLAIMED, token),
                "renew the claim on",
                key,
            )
            return int(cursor.rowcount) == 1

    def release(self, key: str) -> None:
        """Delete ``key``'s row if it still holds this instance's claim."""
        with self._lock:
            token = self._tokens.pop(key, None)
            if token is None:
                return
            self._execute(
                self._sql("DELETE FROM {t} WHERE key = ? AND state = ? AND claim_token = ?"),
                (key, _CLAIMED, token),
                "release the claim on",
                key,
            )

    # -- the handler's own transaction ------------------------------------------------------

    def key_for(self, consumer: Consumer | str, message: Message | None = None) -> str:
        """The deduplication key of ``consumer`` for ``message`` (default: the message being
        processed in this context, see :func:`melange.context.current_message`)."""
        if message is None:
            message = current_message()
            if message is None:
                raise RuntimeError(
                    "key_for() without a message must be called while a dispatcher runs a "
                    "consumer; pass the message explicitly elsewhere"
                )
        return deduplication_key(consumer, message)

    def mark_done_in(self, connection: Any, key: str) -> None:
        """Record ``key`` as processed inside the caller's open transaction on ``connection``.

        ``connection`` is a DB-API connection to the same database (a psycopg 3 connection
        for PostgreSQL, a ``sqlite3`` connection for SQLite). Nothing is committed here: the
        mark becomes visible when the caller commits, together with the caller's own writes,
        and disappears with them on a rollback.
        """
        self._check_key(key)
        params = (key, DONE, self._expiry(self._clock()))
        try:
            if self.dialect == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(self._done_sql(), params)
            else:
                connection.execute(self._done_sql(), params)
        except Exception as exc:
            raise DeduplicationCacheError(
                f"could not record {key!r} as processed in the given transaction: {exc}. "
                f"Is the connection open and on the database holding table {self._table}?"
            ) from exc

    def record_done_in(self, connection: Any, key: str) -> bool:
        """Record ``key`` as processed inside the caller's open transaction on ``connection``,
        unless it already is; ``True`` when this transaction recorded it (run the handler),
        ``False`` when a committed record says it was processed (skip it).

        The inbox's first statement: the row it writes (or the one already there) is locked
        until the caller's transaction ends, so a second delivery of the same message
        processed at the same time waits on PostgreSQL (on SQLite, the write lock) and then
        sees the first one's outcome: skipped if it committed, run if it rolled back. A claim
        row (``"claimed"``, the dispatcher's own claim) or an expired record is taken over.
        """
        self._check_key(key)
        now = self._clock()
        sql = self._done_sql() + self._sql(
            " WHERE {t}.state = ? OR ({t}.expires_at IS NOT NULL AND {t}.expires_at <= ?)"
        )
        params = (key, DONE, self._expiry(now), _CLAIMED, now)
        try:
            if self.dialect == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(sql, params)
                    return int(cursor.rowcount) == 1
            return int(connection.execute(sql, params).rowcount) == 1
        except Exception as exc:
            raise DeduplicationCacheError(
                f"could not record {key!r} as processed in the given transaction: {exc}. "
                f"Is the connection open and on the database holding table {self._table}?"
            ) from exc

    # -- housekeeping -----------------------------------------------------------------------

    def _count_write(self) -> None:
        self._writes += 1
        if self._writes % _PURGE_EVERY == 0:
            self._execute(
                self._sql("DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= ?"),
                (self._clock(),),
                "purge expired keys from",
                self._table,
            )

    def purge_expired(self) -> int:
        """Delete the rows whose lease or memory has expired; returns how many."""
        with self._lock:
            cursor = self._execute(
                self._sql("DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= ?"),
                (self._clock(),),
                "purge expired keys from",
                self._table,
            )
            return int(cursor.rowcount)

    def close(self) -> None:
        """Close the cache's connection (a later call reopens it)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __repr__(self) -> str:
        where = self._target if self.dialect == "sqlite" else "postgresql"
        return f"SQLDeduplicationCache({where!r}, table={self._table!r})"


__all__ = ["SQLDeduplicationCache", "deduplication_key"]

"""The user's connection as the outbox sees it: which database it is on, and a way to run one
statement in whatever transaction it has open.

Three kinds are recognised: a ``sqlite3`` connection, a psycopg 3 connection (PostgreSQL),
and a SQLAlchemy ``Session`` or ``Connection`` (see :mod:`melange.outbox.sqlalchemy`, loaded
only when one is passed). Statements are written with ``?`` placeholders and translated to the
driver's style here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Protocol

from melange.exceptions import ConfigurationError

POSTGRESQL = "postgresql"
SQLITE = "sqlite"


class BoundConnection(Protocol):
    """One statement at a time, in the transaction the user's connection has open."""

    dialect: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run ``sql`` (``?`` placeholders) and return a DB-API cursor."""


class _SQLite:
    dialect = SQLITE

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._connection.execute(sql, tuple(params))


class _Psycopg:
    dialect = POSTGRESQL

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._connection.execute(sql.replace("?", "%s"), tuple(params))


def _is_psycopg(connection: object) -> bool:
    return any(cls.__module__.startswith("psycopg") for cls in type(connection).__mro__)


def _is_sqlalchemy(connection: object) -> bool:
    return any(cls.__module__.startswith("sqlalchemy.") for cls in type(connection).__mro__)


def bind(connection: Any) -> BoundConnection:
    """``connection`` as a :class:`BoundConnection`; a
    :class:`~melange.exceptions.ConfigurationError` for anything else."""
    if isinstance(connection, sqlite3.Connection):
        return _SQLite(connection)
    if _is_psycopg(connection):
        return _Psycopg(connection)
    if _is_sqlalchemy(connection):
        from melange.outbox.sqlalchemy import bind_sqlalchemy

        return bind_sqlalchemy(connection)
    if hasattr(connection, "dialect") and callable(getattr(connection, "execute", None)):
        bound: BoundConnection = connection  # already bound
        return bound
    raise ConfigurationError(
        "the outbox writes through a sqlite3 connection, a psycopg 3 connection or a "
        f"SQLAlchemy Session/Connection; got {type(connection).__name__}"
    )


__all__ = ["POSTGRESQL", "SQLITE", "BoundConnection", "bind"]

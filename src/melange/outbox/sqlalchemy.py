"""The outbox on SQLAlchemy: a ``Session`` or a ``Connection`` (needs the ``outbox`` extra).

The outbox row is written with the session's own connection, so it commits or rolls back with
the session's transaction::

    with Session(engine) as session, session.begin():
        session.add(Order(id=42))
        outbox.publish(session, "orders", {"order_id": 42})

PostgreSQL (psycopg 3 or psycopg2 drivers) and SQLite (the standard library driver) are
supported. This module is imported only when such an object is passed to the outbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from melange.exceptions import ConfigurationError
from melange.outbox.connections import POSTGRESQL, SQLITE, BoundConnection

try:
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the outbox on SQLAlchemy sessions needs SQLAlchemy: pip install 'melange[outbox]'"
    ) from exc


class _SQLAlchemy:
    def __init__(self, owner: Session | Connection) -> None:
        self._owner = owner
        connection = owner.connection() if isinstance(owner, Session) else owner
        name = connection.dialect.name
        if name not in (POSTGRESQL, SQLITE):
            raise ConfigurationError(
                f"the outbox supports PostgreSQL and SQLite; this SQLAlchemy engine is {name}"
            )
        self.dialect = name
        self._qmark = connection.dialect.paramstyle == "qmark"

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        # The session's connection of the current transaction (begun on first use).
        owner = self._owner
        connection = owner.connection() if isinstance(owner, Session) else owner
        text = sql if self._qmark else sql.replace("?", "%s")
        return connection.exec_driver_sql(text, tuple(params))


def bind_sqlalchemy(owner: Any) -> BoundConnection:
    """A SQLAlchemy ``Session`` or ``Connection`` as the outbox's bound connection."""
    if not isinstance(owner, Session | Connection):
        raise ConfigurationError(
            f"the outbox takes a SQLAlchemy Session or Connection, got {type(owner).__name__}"
        )
    return _SQLAlchemy(owner)


__all__ = ["bind_sqlalchemy"]

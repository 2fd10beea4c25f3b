"""Autocommit connections to the SQL databases Melange keeps its own tables in (the
deduplication cache, the claim-check payload store): PostgreSQL through psycopg 3, SQLite
through the standard library."""

from __future__ import annotations

import contextlib
import sqlite3
import weakref
from typing import Any

from melange.exceptions import ConfigurationError


def connect_autocommit(
    dialect: str, target: str, timeout: float, owner: str, holder: object
) -> Any:
    """An autocommit connection to ``target`` (a PostgreSQL connection string, or a SQLite
    path); every statement is bounded by ``timeout`` seconds. ``owner`` names the user of the
    connection in the error raised when psycopg is missing. The connection is closed when
    ``holder`` (the object keeping it) is collected, should nobody close it before: left to
    the garbage collector, a connection warns (``ResourceWarning``) and closes at any time.
    """
    conn = _connect(dialect, target, timeout, owner)
    close_when_collected(holder, [conn])
    return conn


def close_when_collected(holder: object, *pools: list[Any]) -> weakref.finalize:  # type: ignore[type-arg]
    """Close the connections in ``pools`` (lists, which may change meanwhile) when ``holder``
    is collected, should nobody close them before: left to the garbage collector, a
    connection warns (``ResourceWarning``, Python 3.13) and closes at any time. Not at exit:
    another thread may still be using one then. Returns the finalizer (``detach()`` it to
    keep the connections open)."""
    finalizer = weakref.finalize(holder, _close_quietly, *pools)
    finalizer.atexit = False
    return finalizer


def _close_quietly(*pools: list[Any]) -> None:
    for pool in pools:
        for conn in pool:
            with contextlib.suppress(Exception):
                conn.close()
        pool.clear()


def _connect(dialect: str, target: str, timeout: float, owner: str) -> Any:
    if dialect == "postgresql":
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ConfigurationError(
                f"{owner} on PostgreSQL needs psycopg 3: pip install melange[postgres]"
            ) from exc
        return psycopg.connect(
            target,
            autocommit=True,
            connect_timeout=max(1, int(timeout)),
            # A statement waiting on another transaction's lock must not hang forever.
            options=f"-c statement_timeout={int(timeout * 1000)}",
        )
    conn = sqlite3.connect(target, timeout=timeout, isolation_level=None, check_same_thread=False)
    if target != ":memory:":
        # WAL lets readers and one writer from several processes work at once.
        conn.execute("PRAGMA journal_mode=WAL")
    return conn


__all__ = ["close_when_collected", "connect_autocommit"]

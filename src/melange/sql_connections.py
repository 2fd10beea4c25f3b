"""Autocommit connections to the SQL databases Melange keeps its own tables in (the
deduplication cache, the claim-check payload store): PostgreSQL through psycopg 3, SQLite
through the standard library."""

from __future__ import annotations

import sqlite3
from typing import Any

from melange.exceptions import ConfigurationError


def connect_autocommit(dialect: str, target: str, timeout: float, owner: str) -> Any:
    """An autocommit connection to ``target`` (a PostgreSQL connection string, or a SQLite
    path); every statement is bounded by ``timeout`` seconds. ``owner`` names the user of the
    connection in the error raised when psycopg is missing."""
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


__all__ = ["connect_autocommit"]

"""What the outbox tests share: the database under test."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The console script installed next to the interpreter running the tests.
MELANGE = Path(sys.executable).with_name("melange")


def melange_command(*args: str) -> list[str]:
    """The argv that runs ``melange ARGS``."""
    if MELANGE.exists():
        return [str(MELANGE), *args]
    return [sys.executable, "-m", "melange.cli", *args]


def run_melange(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``melange ARGS`` to completion, without the caller's default backend URL."""
    environment = {k: v for k, v in os.environ.items() if k != "MELANGE_BACKEND_URL"}
    environment.update(env or {})
    return subprocess.run(
        melange_command(*args),
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Database:
    """One database under test: where it is, and how the application connects to it."""

    dialect: str
    dsn: str
    table: str
    opened: list[Any]

    def connect(self) -> Any:
        """A new application connection (its transactions commit on ``with`` exit)."""
        conn: Any
        if self.dialect == "postgresql":
            import psycopg

            conn = psycopg.connect(self.dsn)
        else:
            conn = sqlite3.connect(self.dsn, timeout=30)
        self.opened.append(conn)
        return conn

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """The first column of the first row of ``sql`` (``{t}`` is the outbox table)."""
        sql = sql.replace("{t}", self.table)
        if self.dialect == "postgresql":
            import psycopg

            with psycopg.connect(self.dsn, autocommit=True) as conn:
                row = conn.execute(sql.replace("?", "%s"), params).fetchone()
        else:
            with contextlib.closing(sqlite3.connect(self.dsn, timeout=30)) as conn:
                row = conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def rows(self) -> int:
        """Rows in the outbox table (sent or not)."""
        return int(self.scalar("SELECT count(*) FROM {t}"))

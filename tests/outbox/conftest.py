"""Fixtures for the outbox tests: a throwaway PostgreSQL database, SQLite files, and the
brokers of the fault tests (RabbitMQ on 127.0.0.1:5672, SQS on the moto server of tests/sqs).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from outbox_support import Database

from service_check import require_service

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _load(path: Path, name: str) -> ModuleType:
    # Loaded by path: every test directory's conftest module is called "conftest".
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


_sqs = _load(Path(__file__).resolve().parent.parent / "sqs" / "conftest.py", "outbox_sqs_conftest")
#: The moto SQS/SNS endpoint of the SQS tests, for the fault tests on SQS.
sqs_endpoint = _sqs.sqs_endpoint
Endpoint = _sqs.Endpoint


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A PostgreSQL database created for this test session and dropped after it."""
    require_service("postgres")
    import psycopg

    name = f"melange_outbox_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """The outbox's database, on SQLite and on PostgreSQL, with a table unique to the test."""
    table = f"outbox_{uuid.uuid4().hex[:10]}"
    if request.param == "postgresql":
        dsn = request.getfixturevalue("pg_dsn")
        db = Database("postgresql", dsn, table, [])
    else:
        db = Database("sqlite", str(tmp_path / "app.db"), table, [])
    try:
        yield db
    finally:
        for conn in db.opened:
            with contextlib.suppress(Exception):
                conn.close()


@pytest.fixture
def make_database(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], Database]:
    """Builds a :class:`Database` of the dialect asked for (for tests parametrized otherwise)."""

    def make(dialect: str) -> Database:
        table = f"outbox_{uuid.uuid4().hex[:10]}"
        if dialect == "postgresql":
            return Database(dialect, request.getfixturevalue("pg_dsn"), table, [])
        return Database(dialect, str(tmp_path / f"{table}.db"), table, [])

    return make

"""Fixtures for the claim check tests: payload stores (a directory, SQLite, PostgreSQL on
127.0.0.1:5432, S3 on the moto server of tests/sqs) and brokers (in memory, RabbitMQ on
127.0.0.1:5672, SQS on the same moto server)."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from claimcheck_support import Broker

from melange.backends.memory import InMemoryMessagingBackend
from melange.claimcheck import DirectoryPayloadStore, PayloadStore, S3PayloadStore, SQLPayloadStore
from service_check import require_service

PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _load(path: Path, name: str) -> ModuleType:
    # Loaded by path: every test directory's conftest module is called "conftest".
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


_sqs = _load(
    Path(__file__).resolve().parent.parent / "sqs" / "conftest.py", "claimcheck_sqs_conftest"
)
#: The moto endpoint of the SQS tests: it serves S3 too.
sqs_endpoint = _sqs.sqs_endpoint
#: AsyncAWSBackend, or a loud skip (a failure under CI) without the aws-async extra.
async_aws_class = _sqs.async_aws_class


@pytest.fixture
def s3_bucket(sqs_endpoint: Any) -> Iterator[tuple[Any, str]]:
    """A raw boto3 S3 client on the moto endpoint and a bucket made for the test."""
    client = sqs_endpoint.client("s3")
    bucket = f"melange-cc-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield client, bucket
    with contextlib.suppress(Exception):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", ()):
                client.delete_object(Bucket=bucket, Key=item["Key"])
        client.delete_bucket(Bucket=bucket)
    client.close()


@pytest.fixture
def pg_table() -> Iterator[str]:
    """A PostgreSQL table name unique to the test (dropped after it)."""
    require_service("postgres")
    table = f"cc_payloads_{uuid.uuid4().hex[:10]}"
    yield table
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str], PayloadStore]]:
    """Builds a payload store of the kind asked for: directory, sqlite, postgresql or s3."""
    closers: list[Callable[[], None]] = []

    def make(kind: str) -> PayloadStore:
        if kind == "directory":
            return DirectoryPayloadStore(tmp_path / "payloads")
        if kind == "sqlite":
            sqlite_store = SQLPayloadStore(str(tmp_path / "payloads.db"))
            closers.append(sqlite_store.close)
            return sqlite_store
        if kind == "postgresql":
            pg_store = SQLPayloadStore(PG_DSN, table=request.getfixturevalue("pg_table"))
            closers.append(pg_store.close)
            return pg_store
        assert kind == "s3"
        client, bucket = request.getfixturevalue("s3_bucket")
        return S3PayloadStore(bucket, client=client)

    yield make
    for close in closers:
        close()


@pytest.fixture
def make_broker(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Broker]]:
    """Builds a :class:`Broker` on ``memory``, ``sqlite`` (a file), ``rabbitmq`` or ``sqs``
    (cleaned up after)."""
    made: list[Broker] = []

    def make(kind: str) -> Broker:
        if kind == "memory":
            # A size limit as on SQS, so that the default threshold applies.
            broker = Broker(InMemoryMessagingBackend(max_message_size=256 * 1024))
        elif kind == "sqlite":
            from melange.backends.sqlite import SQLiteBackend

            path = request.getfixturevalue("tmp_path") / "broker.db"
            broker = Broker(SQLiteBackend(path, max_message_size=256 * 1024))
        elif kind == "rabbitmq":
            from melange.backends.rabbitmq import RabbitMQBackend

            host, port = require_service("rabbitmq")
            broker = Broker(RabbitMQBackend(host=host, port=port))
        else:
            assert kind == "sqs"
            from melange.backends.sqs.backend import AWSBackend

            endpoint = request.getfixturevalue("sqs_endpoint")
            broker = Broker(AWSBackend(**endpoint.options(), wait_time_seconds=1))
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.cleanup()
        with contextlib.suppress(Exception):
            broker.backend.close_connection()

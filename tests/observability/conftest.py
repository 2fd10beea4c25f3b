"""Fixtures of the observability tests: spans kept in memory, and a backend of each kind.

``broker`` is parametrized over every backend: in memory and SQLite in process, RabbitMQ,
Redis Streams and NATS JetStream on the machine's services, SQS on the moto server of
``tests/sqs``, Kafka on a tansu broker started for the session (``tests/kafka``). A missing
service fails under ``CI=true`` and is skipped loudly otherwise. Each test's queues have names
of their own and are deleted afterwards (Kafka's go with the session's broker).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from obs_support import Broker, Spans, load
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service_check import require_service

# The session's moto server (tests/sqs starts one for its own tests too).
sqs_endpoint = load("melange_tests_sqs_fixtures_obs", "sqs/conftest.py").sqs_endpoint

#: Every backend the tracing tests publish and consume on.
BROKERS = ["memory", "sqlite", "rabbitmq", "sqs", "redis-streams", "nats", "kafka"]

_tansu = load("melange_tests_tansu_broker_obs", "kafka/tansu_broker.py")


@pytest.fixture(scope="session")
def kafka_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tansu broker (Kafka protocol) on a free port, for the session's Kafka backends."""
    with _tansu.start_tansu(tmp_path_factory.mktemp("tansu") / "tansu.log") as url:
        yield url


@pytest.fixture(scope="session")
def kafka_options() -> dict[str, Any]:
    """The Kafka backends' settings: the Kafka tests' for tansu, and one partition, so that a
    test's messages are read in the order they were published."""
    return {**_tansu.TEST_OPTIONS, "partitions": 1}


@pytest.fixture
def spans() -> Iterator[Spans]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Spans(provider, exporter)
    provider.shutdown()


def _open(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[Any, Callable[[], None]]:
    """A backend of ``kind`` and what cleans up after it."""
    if kind == "memory":
        from melange.backends.memory import InMemoryMessagingBackend

        return InMemoryMessagingBackend(), lambda: None
    if kind == "sqlite":
        from melange.backends.sqlite import SQLiteBackend

        return SQLiteBackend(tmp_path / "broker.sqlite3"), lambda: None
    if kind == "rabbitmq":
        host, port = require_service("rabbitmq")
        from melange.backends.rabbitmq import RabbitMQBackend

        name = f"melange-obs-{uuid.uuid4().hex[:10]}"
        return RabbitMQBackend(host=host, port=port, connection_name=name), lambda: None
    if kind == "sqs":
        endpoint = request.getfixturevalue("sqs_endpoint")
        from melange.backends.sqs.backend import AWSBackend

        options = {**endpoint.options(), "wait_time_seconds": 1}
        return AWSBackend(**options), lambda: None
    if kind == "redis-streams":
        host, port = require_service("redis")
        from melange.backends.redis_streams import RedisStreamsBackend

        url = f"redis://{host}:{port}/0"
        prefix = f"melange-test-{uuid.uuid4().hex[:12]}:"
        helpers = load("melange_tests_redis_fixtures_obs", "redis_streams/conftest.py")
        return RedisStreamsBackend(url, prefix=prefix), lambda: helpers.delete_prefix(url, prefix)
    if kind == "nats":
        host, port = require_service("nats")
        from melange.backends.nats import NATSBackend

        url = f"nats://{host}:{port}"
        prefix = f"mtest-{uuid.uuid4().hex[:10]}"
        helpers = load("melange_tests_nats_support_obs", "nats/nats_support.py")
        return NATSBackend(url, prefix=prefix), lambda: helpers.delete_streams(url, prefix)
    if kind == "kafka":
        url = request.getfixturevalue("kafka_url")
        from melange.backends.kafka import KafkaBackend

        return KafkaBackend(url, **request.getfixturevalue("kafka_options")), lambda: None
    raise AssertionError(kind)


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    backend, forget = _open(request.param, request, tmp_path)
    made = Broker(request.param, backend)
    yield made
    # tansu answers a metadata request for a deleted topic in a way that crashes librdkafka's
    # consumer: Kafka's topics stay, on a broker that lives only as long as the session.
    if request.param != "kafka":
        made.cleanup()
    with contextlib.suppress(Exception):
        backend.close_connection()
    forget()

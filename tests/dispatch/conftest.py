"""Fixtures of the dispatcher behaviour suite: every test runs under both drivers.

- ``driver``: the threaded and the asyncio dispatcher (``indirect`` parametrization picks one).
- ``backend``: the in-memory and the SQLite backend, both on a fake clock; a test adds the
  real brokers (RabbitMQ, and SQS on the moto server of ``tests/sqs``) with
  ``@ON_EVERY_BACKEND`` (see ``test_behaviour.py``). A missing RabbitMQ or moto fails under
  ``CI=true`` and is skipped loudly otherwise.
- ``broker``: the backend with the helpers of :class:`drivers.Broker`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from drivers import (
    DRIVER_NAMES,
    EMBEDDED_BROKERS,
    NATIVE_CLIENTS,
    SQS_VISIBILITY_TIMEOUT,
    Broker,
    Driver,
    FakeClock,
    make_driver,
)

from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from service_check import require_service


def _sqs_fixtures() -> Any:
    """The fixtures of ``tests/sqs/conftest.py`` (its moto server), loaded under a name of
    their own: a conftest cannot be imported by name from another folder."""
    path = Path(__file__).resolve().parent.parent / "sqs" / "conftest.py"
    spec = importlib.util.spec_from_file_location("melange_tests_sqs_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


try:
    # The session's moto server (or ``MELANGE_SQS_ENDPOINT``), started on the first SQS test.
    # When this suite runs with ``tests/sqs``, each folder starts a server of its own.
    sqs_endpoint = _sqs_fixtures().sqs_endpoint
except ImportError as missing:  # boto3 not installed: SQS tests fail (CI) or skip loudly
    _missing = f"SERVICE MISSING: the SQS tests need the aws extra ({missing})"

    @pytest.fixture(scope="session")
    def sqs_endpoint() -> Any:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(_missing)
        pytest.skip(_missing)


@pytest.fixture
def closers() -> list[Callable[[], None]]:
    """Run before a backend closes: stop the loops still consuming from it."""
    return []


@pytest.fixture(params=DRIVER_NAMES)
def driver(request: pytest.FixtureRequest, closers: list[Callable[[], None]]) -> Iterator[Driver]:
    made = make_driver(request.param)
    closers.append(made.close)
    yield made
    made.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=EMBEDDED_BROKERS)
def backend(
    request: pytest.FixtureRequest,
    clock: FakeClock,
    tmp_path: Path,
    closers: list[Callable[[], None]],
) -> Iterator[MessagingBackend]:
    kind = request.param
    made: MessagingBackend
    if kind == "memory":
        made = InMemoryMessagingBackend(clock=clock)
    elif kind == "sqlite":
        made = SQLiteBackend(tmp_path / "broker.sqlite3", clock=clock)
    elif kind == "rabbitmq":
        host, port = require_service("rabbitmq")
        from melange.backends.rabbitmq import RabbitMQBackend

        name = f"melange-dispatch-{uuid.uuid4().hex[:10]}"
        made = RabbitMQBackend(host=host, port=port, connection_name=name)
        from melange.backends.rabbitmq import AsyncRabbitMQBackend

        NATIVE_CLIENTS[made] = lambda: AsyncRabbitMQBackend(
            host=host, port=port, connection_name=f"{name}-aio"
        )
    elif kind == "sqs":
        endpoint = request.getfixturevalue("sqs_endpoint")
        from melange.backends.sqs.backend import AWSBackend

        # Short leases (renewed by the dispatchers' heartbeat) and one-second long polls, so
        # that a stopping loop returns within a second.
        options = {
            **endpoint.options(),
            "visibility_timeout": SQS_VISIBILITY_TIMEOUT,
            "wait_time_seconds": 1,
        }
        made = AWSBackend(**options)
        try:
            from melange.backends.sqs.async_backend import AsyncAWSBackend
        except ImportError:  # no aws-async extra: asyncio-native adapts the blocking backend
            pass
        else:
            NATIVE_CLIENTS[made] = lambda: AsyncAWSBackend(**options)
    elif kind == "redis-streams":
        made = _redis_streams(request)
    elif kind == "nats":
        made = _nats(request)
    elif kind == "kafka":
        made = _kafka(request)
    elif kind in ("kombu-redis", "kombu-amqp"):
        made = _kombu(request, kind)
    else:
        raise ValueError(f"unknown backend {kind!r}")
    yield made
    for close in closers:
        close()
    made.close_connection()


def _redis_streams(request: pytest.FixtureRequest) -> MessagingBackend:
    """A Redis Streams backend on keys of the test's own prefix, deleted after the test; the
    asyncio-native driver gets ``AsyncRedisStreamsBackend`` on the same keys."""
    host, port = require_service("redis")
    from melange.backends.redis_streams import AsyncRedisStreamsBackend, RedisStreamsBackend

    url, prefix = f"redis://{host}:{port}/0", f"melange-dispatch-{uuid.uuid4().hex[:10]}:"
    made = RedisStreamsBackend(url, prefix=prefix)
    NATIVE_CLIENTS[made] = lambda: AsyncRedisStreamsBackend(url, prefix=prefix)

    def delete_keys() -> None:
        import redis

        with redis.Redis.from_url(url) as client:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)

    request.addfinalizer(delete_keys)
    return made


def _kombu(request: pytest.FixtureRequest, kind: str) -> MessagingBackend:
    """A kombu backend on kombu's Redis transport (keys under the test's own prefix, deleted
    after the test) or its AMQP transport (the tests' queues have unique names); the
    asyncio-native driver gets ``AsyncKombuBackend`` on the same broker."""
    from melange.backends.kombu import AsyncKombuBackend, KombuBackend

    if kind == "kombu-redis":
        host, port = require_service("redis")
        url = f"kombu+redis://{host}:{port}/0"
    else:
        host, port = require_service("rabbitmq")
        url = f"kombu+amqp://guest:guest@{host}:{port}//"
    prefix = f"melange-dispatch-{uuid.uuid4().hex[:10]}:"
    made = KombuBackend(url, prefix=prefix)
    NATIVE_CLIENTS[made] = lambda: AsyncKombuBackend(url, prefix=prefix)
    if kind == "kombu-redis":

        def delete_keys() -> None:
            import redis

            with redis.Redis(host=host, port=port, db=0) as client:
                keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
                if keys:
                    client.delete(*keys)

        request.addfinalizer(delete_keys)
    return made


def _nats(request: pytest.FixtureRequest) -> MessagingBackend:
    """A NATS JetStream backend on streams of the test's own prefix, deleted after the test;
    short leases (renewed by the dispatchers' heartbeat), as on SQS. The asyncio-native
    driver gets ``AsyncNATSBackend`` on the same streams."""
    host, port = require_service("nats")
    from melange.backends.nats import AsyncNATSBackend, NATSBackend

    url, prefix = f"nats://{host}:{port}", f"mdispatch-{uuid.uuid4().hex[:10]}"
    options: dict[str, Any] = {"prefix": prefix, "visibility_timeout": SQS_VISIBILITY_TIMEOUT}
    made = NATSBackend(url, **options)
    NATIVE_CLIENTS[made] = lambda: AsyncNATSBackend(url, **options)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "nats"))
    from nats_support import delete_streams

    request.addfinalizer(lambda: delete_streams(url, prefix))
    return made


@pytest.fixture(scope="session")
def kafka_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tansu broker (Kafka protocol) on a free port for the session's Kafka tests."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kafka"))
    from tansu_broker import start_tansu

    with start_tansu(tmp_path_factory.mktemp("tansu") / "tansu.log") as url:
        yield url


def _kafka(request: pytest.FixtureRequest) -> MessagingBackend:
    """A Kafka backend on the session's tansu broker, with one-second group sessions (tansu
    completes a join after half the session timeout, and each loop joins its queue's group)
    and one partition per topic (the tests expect a batch in the order it was published);
    the asyncio-native driver gets ``AsyncKafkaBackend`` clients. Several partitions, and
    consumers sharing them, are the Kafka tests' business (``tests/kafka``)."""
    url = request.getfixturevalue("kafka_url")
    from tansu_broker import ASYNC_TEST_OPTIONS, TEST_OPTIONS

    from melange.backends.kafka import AsyncKafkaBackend, KafkaBackend

    quick: dict[str, Any] = {"session_timeout": 1.0, "partitions": 1}
    made = KafkaBackend(url, **{**TEST_OPTIONS, **quick})
    NATIVE_CLIENTS[made] = lambda: AsyncKafkaBackend(url, **{**ASYNC_TEST_OPTIONS, **quick})
    return made


@pytest.fixture
def broker(
    backend: MessagingBackend, clock: FakeClock, closers: list[Callable[[], None]]
) -> Iterator[Broker]:
    kind = backend.capabilities.name
    made = Broker(kind, backend, clock if kind in EMBEDDED_BROKERS else None)
    yield made
    for close in closers:
        close()
    made.cleanup()

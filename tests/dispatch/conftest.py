"""Fixtures of the dispatcher behaviour suite: every test runs under both drivers.

- ``driver``: the threaded and the asyncio dispatcher (``indirect`` parametrization picks one).
- ``backend``: the in-memory and the SQLite backend, both on a fake clock; a test adds
  RabbitMQ with ``@pytest.mark.parametrize("backend", WITH_RABBITMQ, indirect=True)``. A
  missing RabbitMQ fails under ``CI=true`` and is skipped loudly otherwise.
- ``broker``: the backend with the helpers of :class:`drivers.Broker`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from drivers import DRIVER_NAMES, Broker, Driver, FakeClock, make_driver

from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from service_check import require_service

BACKEND_NAMES = ("memory", "sqlite")


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


@pytest.fixture(params=BACKEND_NAMES)
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

        made = RabbitMQBackend(
            host=host, port=port, connection_name=f"melange-dispatch-{uuid.uuid4().hex[:10]}"
        )
    else:
        raise ValueError(f"unknown backend {kind!r}")
    yield made
    for close in closers:
        close()
    made.close_connection()


@pytest.fixture
def broker(
    backend: MessagingBackend, clock: FakeClock, closers: list[Callable[[], None]]
) -> Iterator[Broker]:
    kind = backend.capabilities.name
    made = Broker(kind, backend, clock if kind in BACKEND_NAMES else None)
    yield made
    for close in closers:
        close()
    made.cleanup()

"""Fixtures for the RabbitMQ tests: backends on the broker at 127.0.0.1:5672."""

from __future__ import annotations

import contextlib
import importlib.util
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from melange.backends.rabbitmq import RabbitMQBackend


def _root_conftest() -> ModuleType:
    # Loaded by path: the module name "conftest" is shared by every test directory.
    path = Path(__file__).resolve().parent.parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("melange_tests_root_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


require_service = _root_conftest().require_service


@pytest.fixture
def rabbit_address() -> tuple[str, int]:
    return require_service("rabbitmq")


@pytest.fixture
def connection_name() -> str:
    """A name unique to the test, to find (and close) exactly its connections on the broker."""
    return f"melange-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_rabbit(
    rabbit_address: tuple[str, int], connection_name: str
) -> Iterator[Callable[..., RabbitMQBackend]]:
    """Opens backends on the broker and closes them after the test."""
    opened: list[RabbitMQBackend] = []
    host, port = rabbit_address

    def make(**kwargs: object) -> RabbitMQBackend:
        kwargs.setdefault("connection_name", connection_name)
        backend = RabbitMQBackend(host=host, port=port, **kwargs)  # type: ignore[arg-type]
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        with contextlib.suppress(Exception):
            backend.close_connection()


@pytest.fixture
def rabbit(make_rabbit: Callable[..., RabbitMQBackend]) -> RabbitMQBackend:
    return make_rabbit()

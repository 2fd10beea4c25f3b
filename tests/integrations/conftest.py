"""Fixtures of the framework integration tests: queue names unique to a test, on RabbitMQ."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import pytest
from integrations_support import RABBITMQ_URL

from melange.backends.factory import MessagingBackendFactory
from melange.backends.rabbitmq import RabbitMQBackend
from service_check import require_service


@pytest.fixture
def unique() -> str:
    """A suffix unique to the test, so tests running at once use queues of their own."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def rabbitmq_queues() -> Iterator[Callable[..., None]]:
    """Requires RabbitMQ; the queues named to the function returned are deleted after the
    test (with their retry queues), whatever it left in them."""
    require_service("rabbitmq")
    names: list[str] = []

    def delete_after(*queues: str) -> None:
        names.extend(queues)

    yield delete_after
    backend = RabbitMQBackend(RABBITMQ_URL)
    try:
        factory = MessagingBackendFactory(backend)
        for name in names:
            with contextlib.suppress(Exception):
                factory.delete_queue(name)
    finally:
        backend.close_connection()

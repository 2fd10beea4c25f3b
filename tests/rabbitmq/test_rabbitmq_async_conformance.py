"""The asyncio RabbitMQ backend passes the shared conformance suite, run through as_blocking."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from melange.backends.interfaces import MessagingBackend
from melange.backends.rabbitmq.async_backend import AsyncRabbitMQBackend
from melange.testing.blocking import as_blocking
from melange.testing.conformance import BackendConformance

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def make_async_rabbit(
    rabbit_address: tuple[str, int], connection_name: str
) -> Iterator[Callable[..., MessagingBackend]]:
    """Opens asyncio backends, each on its own loop thread, and closes them after the test."""
    opened: list[MessagingBackend] = []
    host, port = rabbit_address

    def make(**kwargs: object) -> MessagingBackend:
        kwargs.setdefault("connection_name", connection_name)
        backend = as_blocking(AsyncRabbitMQBackend(host=host, port=port, **kwargs))  # type: ignore[arg-type]
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close_connection()


class TestAsyncRabbitMQQuorumConformance(BackendConformance):
    @pytest.fixture
    def backend(self, make_async_rabbit: Callable[..., MessagingBackend]) -> MessagingBackend:
        return make_async_rabbit()

    @pytest.fixture
    def make_backend(
        self, make_async_rabbit: Callable[..., MessagingBackend]
    ) -> Callable[[], MessagingBackend]:
        return make_async_rabbit


class TestAsyncRabbitMQClassicConformance(BackendConformance):
    @pytest.fixture
    def backend(self, make_async_rabbit: Callable[..., MessagingBackend]) -> MessagingBackend:
        return make_async_rabbit(queue_type="classic")

    @pytest.fixture
    def make_backend(
        self, make_async_rabbit: Callable[..., MessagingBackend]
    ) -> Callable[[], MessagingBackend]:
        return lambda: make_async_rabbit(queue_type="classic")
